#!/usr/bin/env bash
# The simulator benchmark of two checkouts, alternated with the GalSim peer in one sitting:
# GalSim, before, GalSim, after, ... (three times), GalSim. Each simulator's ratio is taken
# against the mean of the GalSim runs just before and after it.
#
#   git worktree add /tmp/before <commit>
#   bash experiments/bench/sim_ab.sh /tmp/before > experiments/bench/sim_vs_galsim_DATE.txt
#
# The peer runs in a side environment (not a project dependency):
#   python3 -m venv /tmp/peers && /tmp/peers/bin/pip install galsim numpy
set -euo pipefail
cd "$(dirname "$0")/../.."
after=$(pwd); before=$(cd "${1:?checkout to compare with}" && pwd)
py=$after/.venv/bin/python; peer_py=${PEER_PY:-/tmp/peers/bin/python}
galsim() { "$peer_py" ../shared/peers/galsim_stamps.py --n 2000 | sed 's/^/galsim_stamps --n 2000: /'; }
echo "# $(date -u +%FT%TZ) $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores; before = $(git -C "$before" rev-parse --short HEAD), after = $(git rev-parse --short HEAD) + working tree"
for _ in 1 2 3; do
  for which in before after; do
    galsim
    dir=$after; [ "$which" = before ] && dir=$before
    (cd "$dir" && PYTHONPATH="$dir" "$py" -m rcnn_jax.bench simulate --out "/tmp/bench_$which.jsonl" 2>&1 \
      | grep '^{' | sed "s/^/$which: /")
  done
done
galsim
