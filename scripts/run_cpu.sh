#!/usr/bin/env bash
# The README's main job on a CPU: set up, train the RCNN and the light-curve classifier (the
# 'cpu' variant of configs/hits.py), evaluate both on the simulated test set, draw the paper's
# figures and the simulated examples. Re-running resumes; finished runs are only re-evaluated.
#
#   bash scripts/run_cpu.sh [OUT_DIR]      (default OUT_DIR: workdirs/cpu_run, ignored by git; experiments/cpu_run/ is the recorded run)
#
# Extra ml-collections overrides for both trainings can be given in $OVERRIDES, e.g.
#   OVERRIDES='--config.train.num_steps=100' bash scripts/run_cpu.sh /tmp/short
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-workdirs/cpu_run}
work=${WORKDIRS:-workdirs}
py=.venv/bin/python
if [ ! -x "$py" ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install -q -e . 2>&1 | grep -v 'is ignored' || true
mkdir -p "$out"
log() { echo "[$(date +%H:%M:%S)] $*"; }
overrides=(${OVERRIDES:-})

start=$(date +%s)
log "simulated examples of every class -> $out/simulated_examples.png"
$py -m rcnn_jax.simulate --config configs/hits.py:cpu --num 14 --out "$work/cpu_examples.npz" \
  --plot "$out/simulated_examples.png"
log "training the RCNN (configs/hits.py:cpu) in $work/cpu_rcnn"
$py -m rcnn_jax.train --config configs/hits.py:cpu --workdir "$work/cpu_rcnn" "${overrides[@]}"
log "training the light-curve classifier (configs/hits_lc.py:cpu) in $work/cpu_lc"
$py -m rcnn_jax.train --config configs/hits_lc.py:cpu --workdir "$work/cpu_lc" "${overrides[@]}"
log "evaluating both on the simulated test set -> $out"
$py -m rcnn_jax.evaluate --workdir "$work/cpu_rcnn" --workdir "$work/cpu_lc" --out "$out"
for k in rcnn lc; do
  cp "$work/cpu_$k/metrics.jsonl" "$out/learning_curve_$k.jsonl"
  cp "$work/cpu_$k/config.json" "$out/config_$k.json"
done
log "done in $(( ($(date +%s) - start) / 60 )) min; results in $out"
