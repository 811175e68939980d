#!/bin/bash
# One GPU, about 8 minutes: the tests that use a GPU, bench train at the paper's batch 256
# (steps/s, sequences/s, the simulator's share, peak device memory), bench inference at a
# broker-sized batch, and a timed run of configs/hits.py (the paper's config) that checkpoints
# and then resumes. Everything goes under $OUT (default experiments/distributed/gpu_<date>).
#
#   scripts/gpu_check.sh                  # on the GPU machine
#   GPU_CHECK_DRY=1 scripts/gpu_check.sh  # CPU dry run: tiny sizes, checks the script itself
set -u
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-experiments/distributed/gpu_$(date -u +%Y%m%d_%H%M)}
mkdir -p "$OUT"
export RCNN_JAX_HUGEPAGES=0 XLA_PYTHON_CLIENT_PREALLOCATE=false
if [ "${GPU_CHECK_DRY:-0}" = 1 ]; then
  BATCH=4; OBJECTS=8; RUN_S=20; CFG=smoke; TESTS="tests/test_distributed.py -k settings"
  BENCH_EXTRA="--config_arg smoke --iters 1 --min_time_s 0.1 --steps 6"
else
  BATCH=256; OBJECTS=4096; RUN_S=120; CFG=paper
  TESTS="tests/test_models.py tests/test_train.py -k two_devices_or_traces_once_or_resume_equals"
  BENCH_EXTRA=""
fi
{ date -u; git rev-parse HEAD; nvidia-smi 2>/dev/null || echo 'no nvidia-smi'; $PY -c 'import jax; print(jax.__version__, jax.devices())'; } > "$OUT/hardware.txt" 2>&1

# 1. Tests (their GPU paths: plain XLA formulations, the step's sharding and tracing).
timeout 180 $PY -m pytest -q -p no:cacheprovider $TESTS > "$OUT/tests.txt" 2>&1
echo "tests rc=$?" >> "$OUT/summary.txt"

# 2-3. Benchmarks, with the process's peak device memory printed at exit.
MEM='import atexit, json, runpy, sys, jax
def _mem():
  print(json.dumps({"peak_bytes_in_use": [(d.memory_stats() or {}).get("peak_bytes_in_use") for d in jax.local_devices()]}), flush=True)
atexit.register(_mem)
sys.argv = ["rcnn_jax.bench"] + sys.argv[1:]
runpy.run_module("rcnn_jax.bench", run_name="__main__")'
timeout 150 $PY -c "$MEM" train --batch $BATCH --out "$OUT/bench_train.jsonl" $BENCH_EXTRA > "$OUT/bench_train.txt" 2>&1
echo "bench train rc=$?" >> "$OUT/summary.txt"
timeout 90 $PY -c "$MEM" inference --objects $OBJECTS --out "$OUT/bench_inference.jsonl" $BENCH_EXTRA > "$OUT/bench_inference.txt" 2>&1
echo "bench inference rc=$?" >> "$OUT/summary.txt"

# 4. The paper's config for RUN_S seconds (checkpoint every 50 steps), stopped, then resumed.
W="$OUT/workdir"
timeout -s INT $RUN_S $PY -m rcnn_jax.train --config configs/hits.py:$CFG --workdir "$W" \
  --config.ckpt.every=50 > "$OUT/train_first.txt" 2>&1
echo "train first rc=$? (124: stopped by the timer, as planned)" >> "$OUT/summary.txt"
timeout 60 $PY -m rcnn_jax.train --config configs/hits.py:$CFG --workdir "$W" \
  --config.ckpt.every=50 > "$OUT/train_resume.txt" 2>&1
echo "train resume rc=$? (124: stopped by the timer after resuming)" >> "$OUT/summary.txt"
tail -n 3 "$W/metrics.jsonl" >> "$OUT/summary.txt" 2>/dev/null
cat "$OUT/summary.txt"
