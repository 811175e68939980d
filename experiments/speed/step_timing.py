"""Times the paper's fused training step (batch 32 x 20 steps) step by step, with the minor page
faults, steal and idle ticks of each step, and optionally an op-by-op profile.

    .venv/bin/python experiments/speed/step_timing.py [--steps 8] [--chunk -1] [--profile]

Run it under both ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` and without to see the page-fault
cost (the CLIs set the tunable themselves; this script does not). ``--profile`` traces three
steps with jax.profiler and prints the ops by time (summed over XLA's threads).
"""
import argparse
import os
import resource
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', '..'))
sys.path.insert(0, os.path.dirname(__file__))
import jax  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from configs import hits  # pylint: disable=g-import-not-at-top
from rcnn_jax.training import steps as steps_lib  # pylint: disable=g-import-not-at-top
import profiling  # pylint: disable=g-import-not-at-top


def _ticks():
  with open('/proc/stat') as f:
    v = f.readline().split()
  return int(v[4]), int(v[8])  # idle, steal


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--steps', type=int, default=8)
  ap.add_argument('--chunk', type=int, default=-1)
  ap.add_argument('--profile', action='store_true')
  args = ap.parse_args()
  config = hits.get_config('paper')
  config.train.batch_size, config.sim.max_steps = 32, 20
  config.model.encoder_chunk = args.chunk
  mesh = steps_lib.make_mesh()
  sim, model, tx = steps_lib.build(config)
  state = steps_lib.init_state(config, sim, model, tx, mesh)
  step = steps_lib.make_train_step(config, sim, model, tx, mesh)
  root = jax.random.key(0)
  state, m = step(state, root)
  jax.block_until_ready(m)
  times = []
  for _ in range(args.steps):
    f0, (i0, s0) = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, _ticks()
    t0 = time.perf_counter()
    state, m = step(state, root)
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t0)
    i1, s1 = _ticks()
    print(f'step {times[-1]:.3f} s  minor faults '
          f'{resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0}  idle {i1 - i0}  '
          f'steal {s1 - s0} ticks', flush=True)
  print(f'median {32 / np.median(times):.1f} sequences/s, best {32 / min(times):.1f}')
  if args.profile:
    def run():
      nonlocal state
      state, m = step(state, root)
      return m
    profiling.print_ops(profiling.ops_by_time(run, reps=3), top=30)


if __name__ == '__main__':
  main()
