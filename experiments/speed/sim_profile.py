"""Times the jitted simulator (paper config, 256 objects x 22 stamps a call) and prints its
XLA ops by time (summed over XLA's threads), from a jax.profiler trace.

    GLIBC_TUNABLES=glibc.malloc.hugetlb=1 .venv/bin/python experiments/speed/sim_profile.py
"""
import argparse
import collections
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', '..'))
sys.path.insert(0, os.path.dirname(__file__))
import jax  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from configs import hits  # pylint: disable=g-import-not-at-top
from rcnn_jax.sim import simulator as sim_lib  # pylint: disable=g-import-not-at-top
import profiling  # pylint: disable=g-import-not-at-top


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--batch', type=int, default=256)
  ap.add_argument('--calls', type=int, default=20)
  ap.add_argument('--top', type=int, default=25)
  args = ap.parse_args()
  sim = sim_lib.build_simulator(hits.get_config('paper'))
  fn = jax.jit(lambda k: sim_lib.simulate_batch(k, sim, args.batch)['images'])
  key = jax.random.key(0)
  t0 = time.perf_counter()
  jax.block_until_ready(fn(key))
  print(f'compile {time.perf_counter() - t0:.1f} s')
  for i in range(3):
    jax.block_until_ready(fn(jax.random.fold_in(key, 1000 + i)))
  times = []
  for i in range(args.calls):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(jax.random.fold_in(key, i)))
    times.append(time.perf_counter() - t0)
  stamps = args.batch * sim.num_images
  print(f'median {1e3 * np.median(times):.1f} ms ({stamps / np.median(times):,.0f} stamps/s), '
        f'best {1e3 * min(times):.1f} ms ({stamps / min(times):,.0f} stamps/s)')
  calls = iter(range(10**6))
  per_op = profiling.ops_by_time(lambda: fn(jax.random.fold_in(key, next(calls))))
  where = profiling.print_ops(per_op, fn.lower(key).compile().as_text(), args.top)
  by_fn = collections.Counter()
  for name, ms in per_op.items():
    by_fn[':'.join(where[name].split(':')[:2]) if where.get(name) else '?'] += ms
  print('by function (innermost rcnn_jax frame):')
  for name, ms in by_fn.most_common(args.top):
    print(f'{ms:8.2f} ms  {name}')


if __name__ == '__main__':
  main()
