"""Simulated objects brought to the host in chunks (the library behind
``python -m rcnn_jax.simulate`` and the ``hits_sim`` dataset builder): the fields a file or a
dataset keeps.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from rcnn_jax.core import utils
from rcnn_jax.sim import simulator as sim_lib

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
