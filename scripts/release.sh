#!/usr/bin/env bash
# The release pipeline: evaluate a trained RCNN workdir, package it as the shipped model,
# fine-tune the shipped model on 10 real development files per class (the published protocol)
# and package that too; a k-fold estimate of the fine-tuned recall on unseen files.
#
#   bash scripts/release.sh [WORKDIR] [EXPERIMENT_DIR]
#       (defaults workdirs/long_rcnn, experiments/long; NO_KFOLD=1 skips the k-fold)
#
# Writes EXPERIMENT_DIR/{rcnn,rcnn_ft,kfold}/ and pretrained/hits2015_rcnn{,_finetuned}/
# (each packaging refuses to overwrite a model folder: move the old one aside first). The model
# cards: scripts/model_card.py.
set -euo pipefail
cd "$(dirname "$0")/.."
WD=${1:-workdirs/long_rcnn}
PY=${PY:-.venv/bin/python}
HITS=${HITS:-$(cd .. && pwd)/shared/data/hits2015}
REAL=(--real "$HITS/real_labelled_dev" --real "$HITS/real_nonvariable_dev=NonVariable")
CHECK=(--check_dir "$HITS/real_labelled_dev" --check_dir "$HITS/real_nonvariable_dev"
       --reference_root "$HITS")
log() { echo "[$(date +%H:%M:%S)] $*"; }
out=${2:-experiments/long}

log "simulated test set (config.eval.test_size) and the 70 real development files"
$PY -m rcnn_jax.evaluate --workdir "$WD" --out "$out/rcnn"
$PY -m rcnn_jax.evaluate --workdir "$WD" --out "$out/rcnn" "${REAL[@]}"
cp "$WD/metrics.jsonl" "$out/learning_curve_rcnn.jsonl"
cp "$WD/config.json" "$out/config_rcnn.json"

log "packaging pretrained/hits2015_rcnn (float16 weights; top class checked on the 70 files)"
$PY -m rcnn_jax.pretrained --workdir "$WD" --out pretrained/hits2015_rcnn "${CHECK[@]}"

log "fine-tuning the shipped model on 10 real files per class (config.finetune)"
$PY -m rcnn_jax.finetune --workdir pretrained/hits2015_rcnn "${REAL[@]}" --out "${WD}_ft"
$PY -m rcnn_jax.evaluate --workdir "${WD}_ft" --out "$out/rcnn_ft" "${REAL[@]}"
$PY -m rcnn_jax.pretrained --workdir "${WD}_ft" --out pretrained/hits2015_rcnn_finetuned \
  "${CHECK[@]}"
cp "${WD}_ft/finetune.json" "$out/rcnn_ft/finetune.json"

if [ -z "${NO_KFOLD:-}" ]; then
  log "k-fold estimate of the fine-tuned recall (each file tested by a model that never saw it)"
  $PY -m rcnn_jax.finetune --workdir pretrained/hits2015_rcnn "${REAL[@]}" --out "$out/kfold" \
    --kfold ${KFOLD_SET:-}
fi
log "done"
