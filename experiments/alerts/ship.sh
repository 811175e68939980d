#!/usr/bin/env bash
# Issue 32: package the stream models and classify the shared alert samples with them.
#
#   bash experiments/alerts/ship.sh [ZTF_WORKDIR] [LSST_WORKDIR]
#
# Trainings (niced, on the shared 2-core CPU; see README.md here):
#   python -m rcnn_jax.train --config configs/ztf.py:long --config.train.num_steps=5000 \
#     --workdir /work/runs/ztf_long   # shipped since 2026-12-05 (before: configs/ztf.py:cpu)
#   nice -n 19 python -m rcnn_jax.train --config configs/lsst.py:cpu --config.train.num_steps=100 \
#     --config.ckpt.every=50 --config.train.eval_every=50 --config.train.warmup_steps=10 \
#     --config.eval.val_size=140 --config.eval.test_size=140 --config.eval.batch_size=70 \
#     --workdir /work/runs/lsst_cpu100
# Writes pretrained/{ztf,lsst}_rcnn/ and experiments/alerts/{learning_curve_*,config_*,samples_*}.
# A workdir given as - keeps that model as shipped (only the samples are classified again).
# pretrained refuses to overwrite a model folder: move the old one aside first.
set -euo pipefail
cd "$(dirname "$0")/../.."
ZTF=${1:-/work/runs/ztf_long}
LSST=${2:-/work/runs/lsst_cpu100}
PY=${PY:-.venv/bin/python}
ALERTS=${ALERTS:-$(cd .. && pwd)/shared/data/alerts}
out=experiments/alerts
log() { echo "[$(date -u +%H:%M:%S)] $*"; }

for pair in "ztf:$ZTF" "lsst:$LSST"; do
  name=${pair%%:*}; wd=${pair#*:}
  [ "$wd" = - ] && continue
  log "packaging pretrained/${name}_rcnn from $wd (float16 weights)"
  $PY -m rcnn_jax.pretrained --workdir "$wd" --out "pretrained/${name}_rcnn"
  cp "$wd/metrics.jsonl" "$out/learning_curve_${name}.jsonl"
  cp "$wd/config.json" "$out/config_${name}.json"
done

tmp=$(mktemp -d)
for pair in "ztf:ztf" "lsst:rubin"; do
  model=${pair%%:*}; survey=${pair#*:}
  log "classifying $ALERTS/$survey with pretrained/${model}_rcnn, twice (the rerun changes nothing)"
  $PY -m rcnn_jax.alerts --workdir "pretrained/${model}_rcnn" --state "$tmp/$survey.db" \
    --out "$out/samples_$survey.csv" --noprogress "$ALERTS/$survey" \
    > "$out/samples_$survey.log" 2>&1 || true
  $PY -m rcnn_jax.alerts --workdir "pretrained/${model}_rcnn" --state "$tmp/$survey.db" \
    --out "$tmp/rerun_$survey.csv" --noprogress "$ALERTS/$survey" \
    >> "$out/samples_$survey.log" 2>&1 || true
  cmp "$out/samples_$survey.csv" "$tmp/rerun_$survey.csv" && log "rerun: same rows"
done
rm -rf "$tmp"
log "done"
