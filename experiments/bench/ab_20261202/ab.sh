#!/usr/bin/env bash
# Side-by-side benchmark: before the #14 refactor (27eda9b), main before this session (761433c),
# and after (enc), interleaved, in one sitting.
set -u
out=/tmp/ab; mkdir -p $out
date -u +%FT%TZ > $out/start
/tmp/peers/bin/python /work/shared/peers/galsim_stamps.py --n 2000 > $out/galsim_1.txt 2>&1
i=0
for tree in wt_before main wt2 wt_before wt2; do
  i=$((i+1))
  (cd /work/$tree && .venv/bin/python -m rcnn_jax.bench simulate train inference --batch 32 --steps 20 \
     --out $out/${i}_$tree.jsonl > $out/${i}_$tree.log 2>&1)
done
/tmp/peers/bin/python /work/shared/peers/galsim_stamps.py --n 2000 > $out/galsim_2.txt 2>&1
date -u +%FT%TZ > $out/end
