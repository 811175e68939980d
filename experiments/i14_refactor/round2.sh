#!/usr/bin/env bash
# Round 2 of "same seeds, same numbers" (one checkpoint manager; the fused path's parameters
# through named methods): the same commands on two code trees, one after the other.
#
#   bash experiments/i14_refactor/round2.sh CODE_ROOT OUT_DIR [OLD_WORKDIR]
#
# Trains the smoke RCNN (12 steps, validation and checkpoints every 4) and light-curve
# classifier (6 steps), predicts three real development files with the RCNN, and, given
# OLD_WORKDIR (a workdir the other tree wrote), predicts them from it as well.
set -euo pipefail
code=$(cd "$1" && pwd); out=$(mkdir -p "$2" && cd "$2" && pwd); old=${3:-}
dev=$(cd "$(dirname "$0")/../../../shared/data/hits2015/real_labelled_dev" && pwd)
files=("$dev/EclipsingBinary/Blind15A_06_S21_132_3255_g.npz"
       "$dev/RRLyrae/Blind15A_04_N16_183_3343_g.npz" "$dev/Supernova/SNHiTS15J.npz")
cd "$code"
py=.venv/bin/python
rm -rf "$out/w_rcnn" "$out/w_lc"
$py -m rcnn_jax.train --config configs/hits.py:smoke --config.train.num_steps=12 \
  --config.train.eval_every=4 --config.ckpt.every=4 --workdir "$out/w_rcnn" > /dev/null
$py -m rcnn_jax.train --config configs/hits.py:smoke,lc --config.train.num_steps=6 \
  --workdir "$out/w_lc" > /dev/null
cp "$out/w_rcnn/metrics.jsonl" "$out/rcnn_metrics.jsonl"
cp "$out/w_lc/metrics.jsonl" "$out/lc_metrics.jsonl"
$py -m rcnn_jax.predict --workdir "$out/w_rcnn" "${files[@]}" --out "$out/predictions.csv" \
  > /dev/null
if [ -n "$old" ]; then
  $py -m rcnn_jax.predict --workdir "$old" "${files[@]}" --out "$out/predictions_old_workdir.csv" \
    > /dev/null
fi
ls "$out/w_rcnn" "$out/w_rcnn/checkpoints" > "$out/layout.txt"
