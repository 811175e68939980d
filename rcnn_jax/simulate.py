"""Writes simulated, labelled objects to an .npz (and optionally a figure of every class).

    python -m rcnn_jax.simulate --config configs/hits.py --num 700 --out sim.npz --plot sim.png
"""

from __future__ import annotations

import os

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np

from rcnn_jax import config_check
from rcnn_jax import simulator as sim_lib
from rcnn_jax import utils

def _define_flags():
  """Command-line flags, defined only when the module runs as a command."""
  global _CONFIG, _NUM, _OUT, _PLOT, _CHUNK
  _CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file.', lock_config=True)
  _NUM = flags.DEFINE_integer('num', 700, 'Number of objects (classes balanced).')
  _OUT = flags.DEFINE_string('out', None, 'Output .npz path.')
  _PLOT = flags.DEFINE_string('plot', None, 'Optional PNG with example sequences of every class.')
  _CHUNK = flags.DEFINE_integer('chunk', 256, 'Objects simulated per compiled call.')

# Arrays written, in the order of the README (truth after the model inputs).
FIELDS = ('images', 'time_gaps', 'mask', 'label', 'raw_adu', 'mjd', 'zero_point', 'sky_adu',
          'seeing_arcsec', 'exp_time_s', 'gain', 'source_flux_adu', 'host_flux_adu', 'magnitude',
          'has_host', 'epoch_valid', 'read_noise_e', 'field', 'ccd', 'redshift')


def simulate_to_host(config, num: int, chunk: int = 256, seed_offset: int = 0, progress=True):
  """Simulates ``num`` objects from config.seed on the host, in compiled chunks."""
  sim = sim_lib.build_simulator(config)
  key = jax.random.fold_in(jax.random.key(config.seed), seed_offset)
  chunk = max(1, min(chunk, num))
  fn = jax.jit(lambda k, off: sim_lib.simulate_batch(k, sim, chunk, off))
  parts = []
  for off in utils.progress(range(0, num, chunk), total=-(-num // chunk), desc='simulate',
                            disable=not progress):
    out = jax.device_get(fn(key, jnp.int32(off)))
    parts.append({k: v[:num - off] for k, v in out.items()})
  data = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
  data['mjd'] = sim.survey.mjd0 + data.pop('t_days').astype(np.float64)
  data['class_names'] = np.asarray(sim.class_names)
  if sim.num_bands > 1:
    data['band_names'] = np.asarray(sim.survey.bands)
  return data


def file_arrays(data) -> dict:
  """The arrays the command writes: FIELDS, class_names, and with several bands each epoch's
  ``band`` (an index into ``band_names``); plain numeric and string arrays (no pickle)."""
  out = {k: data[k] for k in FIELDS} | {'class_names': data['class_names']}
  if 'band' in data:
    out['band'] = data['band']
    out['band_names'] = data['band_names']
  return out


def main(argv):
  del argv
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
    from rcnn_jax import plots  # pylint: disable=g-import-not-at-top
    plots.plot_examples(data, _PLOT.value)
    print(f'wrote {_PLOT.value}')


if __name__ == '__main__':
  _define_flags()
  utils.run(main)
