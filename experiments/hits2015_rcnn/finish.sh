#!/usr/bin/env bash
# After the long_v8 RCNN finishes: move the earlier shipped folders aside (they stay in git
# history and in experiments/long/), release (evaluate, package, fine-tune, package), cards.
set -euo pipefail
cd "$(dirname "$0")/../.."
WD=${1:-/work/runs/long_rcnn_v8}
mkdir -p /work/runs/old_pretrained
for f in hits2015_rcnn hits2015_rcnn_finetuned; do
  if [ -d "pretrained/$f" ] && [ ! -d "/work/runs/old_pretrained/$f" ]; then
    mv "pretrained/$f" "/work/runs/old_pretrained/$f"
  fi
done
bash scripts/release.sh "$WD" experiments/hits2015_rcnn  # NO_KFOLD=1 skips the k-fold
