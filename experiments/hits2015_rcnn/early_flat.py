"""Issue 31 early answers: how many simulated variables look constant in their first steps.

    python experiments/hits2015_rcnn/early_flat.py [--num 600]

For each variable class, the attempts the simulator keeps (``simulator._attempt_parts``), and
for step s (images 1..s + n_w - 1 of the window) whether any epoch so far deviates from the
median of those epochs by more than k_sigma sigma of the variability selection (the same
sigma: limiting-magnitude noise and the calibration floor). Prints the fraction that does not
yet (looks constant) per step.
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..'))
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from configs import hits  # noqa: E402
from rcnn_jax.sim import lightcurves  # noqa: E402
from rcnn_jax.sim import sequences
from rcnn_jax.sim import simulator


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--num', type=int, default=600)
  args = ap.parse_args()
  config = hits.get_config('long')
  sim = simulator.build_simulator(config)
  surv = sim.survey
  steps = 8
  for name in ('RRLyrae', 'Cepheid', 'EclipsingBinary'):
    c = sim.class_names.index(name)

    def one(k, c=c):
      ok, var_ok, (field, _, klc, start) = simulator._attempt_parts(k, c, sim)  # pylint: disable=protected-access
      idx, valid, _ = sequences.window(start, surv.num_epochs[field], sim.max_steps, sim.n_w)
      mag, _, _ = lightcurves.sample_magnitudes(jax.random.wrap_key_data(klc), c,
                                                surv.t_days[field][idx],
                                                surv.num_epochs[field], sim.lightcurves, (c,))
      lim = surv.limmag5[field, idx]
      flat = []
      for s in range(1, steps + 1):
        v = valid & (jnp.arange(idx.shape[0]) < s + sim.n_w - 1)
        flat.append(~lightcurves.detectable_variability(mag, lim, v, 1, sim.var_k_sigma,
                                                        sim.var_floor))
      return ok & var_ok, jnp.stack(flat)

    kept, flat = jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(11), args.num))
    flat = np.asarray(flat)[np.asarray(kept)]
    print(name, 'kept', len(flat), 'looks constant at steps 1..%d:' % steps,
          np.round(flat.mean(0), 2).tolist(), flush=True)


if __name__ == '__main__':
  main()
