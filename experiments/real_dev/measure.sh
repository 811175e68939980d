#!/usr/bin/env bash
# All numbers of experiments/real_dev/README.md for one trained workdir:
#   bash experiments/real_dev/measure.sh WORKDIR NAME [BASELINE_CHECKOUT]
# before: the original real-data path, from a checkout of commit c48b2c5 (make one with
#         `git worktree add /tmp/c48b2c5 c48b2c5`); skipped when none is given;
# after:  evaluate --real (this code); kfold: 5-fold fine-tuning on 10 files per class.
# KFOLD_SET overrides the fine-tuning settings (default: a short CPU run).
set -euo pipefail
WD=${1:?workdir}; NAME=${2:?name}; BASE=${3:-}
HERE=$(cd "$(dirname "$0")" && pwd); ROOT=$(cd "$HERE/../.." && pwd)
HITS=${HITS:-$(cd "$ROOT/.." && pwd)/shared/data/hits2015}
PY=${PY:-python}
KFOLD_SET=${KFOLD_SET:-"--set finetune.num_steps=10 --set finetune.batch_size=16 --set finetune.learning_rate=3e-4"}
OUT="$HERE/$NAME"; mkdir -p "$OUT"
if [ -n "$BASE" ]; then
  HITS="$HITS" PYTHONPATH="$BASE" "$PY" "$HERE/before.py" "$WD" "$OUT/before.json"
fi
cd "$ROOT"
PYTHONPATH="$ROOT" "$PY" -m rcnn_jax.evaluate --workdir "$WD" --out "$OUT" \
  --real "$HITS/real_labelled_dev" --real "$HITS/real_nonvariable_dev=NonVariable"
# shellcheck disable=SC2086
PYTHONPATH="$ROOT" "$PY" -m rcnn_jax.finetune --workdir "$WD" --out "$OUT" --kfold \
  --real "$HITS/real_labelled_dev" --real "$HITS/real_nonvariable_dev=NonVariable" $KFOLD_SET
