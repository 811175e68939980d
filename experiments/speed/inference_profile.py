"""Times the alert-broker update (paper RCNN, 1,024 objects, one new image each, float32) as
the bench does, splits a call into its host side and its jitted step, and prints the step's XLA
ops by time (summed over XLA's threads) with their source lines.

    GLIBC_TUNABLES=glibc.malloc.hugetlb=1 .venv/bin/python experiments/speed/inference_profile.py
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', '..'))
sys.path.insert(0, os.path.dirname(__file__))
import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from configs import hits  # pylint: disable=g-import-not-at-top
from rcnn_jax import models  # pylint: disable=g-import-not-at-top
from rcnn_jax.serving.classifier import Classifier  # pylint: disable=g-import-not-at-top
import profiling  # pylint: disable=g-import-not-at-top


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--objects', type=int, default=1024)
  ap.add_argument('--calls', type=int, default=20)
  ap.add_argument('--dtype', default='float32')
  ap.add_argument('--top', type=int, default=25)
  args = ap.parse_args()
  config = hits.get_config('paper')
  n, s, n_w = args.objects, config.sim.stamp_size, config.sim.n_w
  model = models.build_model(config.model, len(config.sim.class_names))
  variables = jax.jit(lambda k: model.init(k, jnp.zeros((1, 1, s, s, n_w)),
                                           jnp.zeros((1, 1, n_w)), jnp.ones((1, 1), bool)))(
                                               jax.random.key(0))
  clf = Classifier(config, variables['params'], variables['batch_stats'],
                           dtype=args.dtype)
  rng = np.random.default_rng(0)
  images = (120.0 + rng.normal(0.0, 10.0, (4, n, s, s))).astype(np.float32)
  state = clf.new_state(n)
  t_call, t_step = [], []
  for i in range(args.calls + n_w + 3):
    t0 = time.perf_counter()
    _, state = clf.update(state, images[i % 4], np.full(n, 57070.0 + i), np.full(n, 25.0),
                          np.full(n, 120.0))
    t_call.append(time.perf_counter() - t0)
  # pylint: disable=protected-access
  args_step = (clf._variables(), state.carry, state.window, state.window_t, state.probs,
               images[0] - 120.0, np.ones(n, np.float32), np.ones(n, bool), np.ones(n, bool))
  for _ in range(args.calls):
    t0 = time.perf_counter()
    jax.block_until_ready(clf._update(*args_step))  # pylint: disable=protected-access
    t_step.append(time.perf_counter() - t0)
  med = lambda t: 1e3 * float(np.median(t[n_w + 3:] if len(t) > args.calls else t))
  print(f'update call median {med(t_call):.0f} ms ({n / med(t_call) * 1e3:,.0f} images/s); '
        f'jitted step alone {med(t_step):.0f} ms, best {1e3 * min(t_step):.0f} ms')
  per_op = profiling.ops_by_time(lambda: clf._update(*args_step))
  profiling.print_ops(per_op, clf._update.lower(*args_step).compile().as_text(), args.top)


if __name__ == '__main__':
  main()
