#!/usr/bin/env bash
# Issue 30's "same seeds, same numbers": run the commands a user runs, from the checkout given
# as SRC (default: this one), and write what they produce to OUT. Compare two OUT folders with
# experiments/layout/compare.py.
#
#   SRC=/path/to/checkout bash experiments/layout/fingerprint.sh OUT [MODEL]
#
# MODEL (default pretrained/hits2015_rcnn of SRC) is the shipped folder that `predict` uses.
set -euo pipefail
out=$(realpath -m "$1")
SRC=${SRC:-$(cd "$(dirname "$0")/../.." && pwd)}
PY=${PY:-$SRC/.venv/bin/python}
[ -x "$PY" ] || PY=/work/main/.venv/bin/python
MODEL=$(realpath "${2:-$SRC/pretrained/hits2015_rcnn}")
HITS=${HITS:-$(cd "$SRC/.." && pwd)/shared/data/hits2015}
[ -d "$HITS" ] || HITS=/work/shared/data/hits2015
mkdir -p "$out"
cd "$SRC"
export PYTHONPATH=$SRC
log() { echo "[$(date +%H:%M:%S)] $*"; }
log "simulator: 64 objects of configs/hits.py:smoke"
$PY -m rcnn_jax.simulate --config configs/hits.py:smoke --num 64 --out "$out/sim.npz"
log "smoke training"
$PY -m rcnn_jax.train --config configs/hits.py:smoke --workdir "$out/wd"
log "evaluation: the simulated test set"
$PY -m rcnn_jax.evaluate --workdir "$out/wd" --out "$out/eval_sim"
log "evaluation: the 70 development files"
$PY -m rcnn_jax.evaluate --workdir "$out/wd" --out "$out/eval" \
  --real "$HITS/real_labelled_dev" --real "$HITS/real_nonvariable_dev=NonVariable"
log "predict with $MODEL on the 70 development files"
$PY -m rcnn_jax.predict --workdir "$MODEL" --out "$out/predict.csv" \
  "$HITS/real_labelled_dev" "$HITS/real_nonvariable_dev"
log "done"
