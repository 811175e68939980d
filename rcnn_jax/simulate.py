"""Writes simulated, labelled objects to an .npz (and optionally a figure of every class).

    python -m rcnn_jax.simulate --config configs/hits.py --num 700 --out sim.npz --plot sim.png
"""

from __future__ import annotations

import os

from absl import app
from absl import flags
import jax
from ml_collections import config_flags
import numpy as np

from rcnn_jax.core import utils
from rcnn_jax.sim import simulator
from rcnn_jax.sim.batches import file_arrays
from rcnn_jax.sim.batches import simulate_to_host
from rcnn_jax.training import config_check


def _define_flags():
  """Command-line flags, defined only when the module runs as a command."""
  global _CONFIG, _NUM, _OUT, _PLOT, _CHUNK, _KEPT
  _CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file.', lock_config=True)
  _NUM = flags.DEFINE_integer('num', 700, 'Number of objects (classes balanced).')
  _OUT = flags.DEFINE_string('out', None, 'Output .npz path.')
  _PLOT = flags.DEFINE_string('plot', None, 'Optional PNG with example sequences of every class.')
  _CHUNK = flags.DEFINE_integer('chunk', 256, 'Objects simulated per compiled call.')
  _KEPT = flags.DEFINE_bool('kept_fraction', False, 'Instead: print the fraction of --num '
                            'attempts per variable class that the variability selection keeps.')


def main(argv):
  del argv
  if _KEPT.value:
    return _kept_fraction()
  if _OUT.value is None:
    raise app.UsageError('--out FILE.npz is required')
  if _NUM.value < 1:
    raise app.UsageError('--num must be >= 1')
  config = _CONFIG.value
  if config is None:
    raise app.UsageError('--config is required')
  config_check.validate(config)
  data = simulate_to_host(config, _NUM.value, _CHUNK.value)
  out = file_arrays(data)
  os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
  utils.atomic_savez(_OUT.value, **out)
  counts = np.bincount(out['label'], minlength=len(out['class_names']))
  print(f'wrote {_OUT.value}: {len(out["label"])} objects, per class '
        + ', '.join(f'{n}={c}' for n, c in zip(out['class_names'], counts)))
  if _PLOT.value:
    from rcnn_jax.core import plots  # lazy: matplotlib, only with --plot
    plots.plot_examples(data, _PLOT.value)
    print(f'wrote {_PLOT.value}')


def _kept_fraction():
  config = _CONFIG.value
  if config is None:
    raise app.UsageError('--config is required')
  config_check.validate(config)
  sim = simulator.build_simulator(config)
  kept = simulator.variability_kept_fraction(jax.random.key(config.seed), sim, _NUM.value)
  for name, frac in kept.items():
    print(f'{name}: {frac:.3f} of attempts with a valid window kept by the variability '
          'selection')


if __name__ == '__main__':
  _define_flags()
  utils.run(main)
