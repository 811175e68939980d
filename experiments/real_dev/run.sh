#!/usr/bin/env bash
# Real-data evaluation (Sec. 4, Fig. 8) of a workdir on the 70 development files:
#   bash experiments/real_dev/run.sh WORKDIR OUTDIR
# writes OUTDIR/metrics_real.json and OUTDIR/real_recall.png. DETECTION=photometry: the
# supernovae's first detection by plain photometry, the rule before 2026-12-02.
set -euo pipefail
WD=${1:?workdir}; OUT=${2:?out dir}
HITS=${HITS:-$(cd "$(dirname "$0")/../../.." && pwd)/shared/data/hits2015}
PY=${PY:-python}
"$PY" -m rcnn_jax.evaluate --workdir "$WD" --out "$OUT" \
  --real "$HITS/real_labelled_dev" --real "$HITS/real_nonvariable_dev=NonVariable" \
  ${DETECTION:+--detection_method="$DETECTION"}
