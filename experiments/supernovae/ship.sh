#!/usr/bin/env bash
# Issue 42's release, after queue.sh's `long` run: the previous shipped model's figures are
# kept for the cards (experiments/supernovae/previous_model/), its folders moved aside (they
# stay in git history), then scripts/release.sh evaluates, packages, fine-tunes, packages and
# runs the k-fold into EXP (default experiments/hits2015_rcnn_next; swapped in by hand after).
#
#   WD=/work/runs/sn42/long_long bash experiments/supernovae/ship.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
WD=${WD:-/work/runs/sn42/long_long}
EXP=${EXP:-experiments/hits2015_rcnn_next}
ASIDE=${ASIDE:-/work/runs/old_pretrained42}
log() { echo "[$(date -u +%FT%TZ)] $*"; }
while pgrep -f "supernovae/queue.sh" >/dev/null; do sleep 30; done
log "queue finished; previous model's figures -> experiments/supernovae/previous_model"
prev=experiments/supernovae/previous_model
mkdir -p "$prev/rcnn" "$prev/rcnn_ft" "$prev/kfold"
cp experiments/hits2015_rcnn/rcnn/metrics*.json "$prev/rcnn/"
cp experiments/hits2015_rcnn/rcnn_ft/*.json "$prev/rcnn_ft/"
cp experiments/hits2015_rcnn/kfold/kfold.json "$prev/kfold/"
mkdir -p "$ASIDE"
for f in hits2015_rcnn hits2015_rcnn_finetuned; do
  if [ -d "pretrained/$f" ]; then
    if [ -e "$ASIDE/$f" ]; then echo "ship.sh: $ASIDE/$f exists; not moving pretrained/$f" >&2; exit 2; fi
    mv "pretrained/$f" "$ASIDE/$f"
  fi
done
bash scripts/release.sh "$WD" "$EXP"
log "ship done"
