#!/usr/bin/env bash
# The project's benchmarks beside the peers (../shared/peers), one after the other in one
# session: only ratios taken in one run mean anything on a shared machine.
#
#   bash experiments/bench/compare_peers.sh [OUT_DIR]     (default experiments/bench)
#
# The peers run in a side environment (torch 2.13.0 and GalSim; not project dependencies):
#   python3 -m venv /tmp/peers && /tmp/peers/bin/pip install torch==2.13.0 galsim numpy
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-experiments/bench}
peers=${PEERS_DIR:-../shared/peers}
peer_py=${PEER_PY:-/tmp/peers/bin/python}
mkdir -p "$out"
{
  echo "# $(date -u +%FT%TZ) $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores"
  if [ -x "$peer_py" ]; then
    "$peer_py" "$peers/galsim_stamps.py" --n 2000
    "$peer_py" "$peers/torch_rcnn.py" --batch 32 --steps 20 --iters 5
  else
    echo "peers not run: no $peer_py"
  fi
} | tee "$out/peers.txt"
# Inference on a trained RCNN when the main job has made one (precision costs show only there).
wd=${BENCH_WORKDIR:-workdirs/cpu_rcnn}
extra=()
if [ -d "$wd/checkpoints" ]; then extra=(--workdir "$wd"); fi
.venv/bin/python -m rcnn_jax.bench simulate train inference --batch 32 --steps 20 \
  "${extra[@]}" --out "$out/$(date +%Y-%m-%d).jsonl" 2>&1 | grep '^{'
