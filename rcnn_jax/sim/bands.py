"""Several bands: filters, colours, and the band of each image in the model input.

A survey's bands are ``config.survey.bands`` (index order), or ``(config.survey.band,)`` for a
single-band survey (HiTS). With one band nothing here changes a simulated batch or a model
input: the band one-hot enters the model only when there are several bands.

* Filters: ``config.survey.filters`` maps a band to a speclite filter name (offline: speclite
  ships DECam, LSST, Pan-STARRS, SDSS, HSC, ...); the SN Ia template is tabulated through it.
* Colours (``config.sim.colours``): per class and band, the colour m_b - m_ref (mean, sd) and
  the amplitude ratio A_b / A_ref of its variation, about the reference band
  ``config.sim.colours.reference`` in which the stellar magnitude prior and the light-curve
  shapes are defined; ``host`` the galaxies' colours; ``sn_ii`` a SN II colour at explosion and
  its change per 100 rest-frame days.
* Model input: each step's side input (``time_gaps`` of the batch) is the n_w time gaps followed
  by the n_w images' band one-hots, [T, n_w + n_w * NB]; ``side_input`` builds it for the
  simulator, real files and the streaming mode alike, so every consumer of ``time_gaps`` (train,
  evaluate, fine-tuning, predict) passes it to the model unchanged and the LSTM's input width
  follows (Table 3's 4 H (dense + n_w) becomes 4 H (dense + n_w (1 + NB))).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from rcnn_jax.core import utils
from rcnn_jax.core.errors import UserError
from rcnn_jax.sim import sequences


def survey_bands(survey_config) -> tuple:
  """The survey's bands in index order (``('g',)`` when no survey config is given)."""
  if survey_config is None:
    return ('g',)
  bands = survey_config.get('bands', None)
  return tuple(str(b) for b in bands) if bands else (str(survey_config.band),)


def require_one_band(config, what: str) -> None:
  """Refuses (one-line UserError) a command on real files for a config of several bands.

  The real files these commands read (``realdata``: HiTS 2015, DECam g) hold one band and no
  band per image, while a model of several bands takes each image's band in its input and a
  realism twin needs the band's zero point, sky and PSF: there is nothing real to compare with.
  """
  survey = config.get('survey', None)
  names = survey_bands(survey)
  if len(names) > 1:
    raise UserError(f'{what} needs a single-band config: survey {survey.get("name", "?")!r} '
                    f'has the bands {", ".join(names)}, and real files (HiTS, DECam g) carry '
                    'no band per image; use a single-band config such as configs/hits.py')


def filter_name(survey_config, band: str) -> str:
  filters = survey_config.get('filters', None)
  if filters is None or band not in filters:
    raise utils.UserError(f'config.survey.filters: no filter for band {band!r} (a speclite '
                          "name such as 'lsst2016-r')")
  return str(filters[band])


def load_filter(name: str):
  """A speclite filter by name (shipped with speclite: no network)."""
  import speclite.filters  # pylint: disable=g-import-not-at-top
  try:
    return speclite.filters.load_filter(name)
  except (ValueError, OSError) as e:
    raise utils.UserError(f'filter {name!r}: not a speclite filter ({e})') from None


def reference_index(sim_config, band_names) -> int:
  ref = str(sim_config.colours.reference)
  if ref not in band_names:
    raise utils.UserError(f'config.sim.colours.reference={ref!r} is invalid: must be one of '
                          f'the survey bands {band_names}')
  return band_names.index(ref)


def colour_tables(sim_config, class_names, band_names):
  """([C, NB, 3] (colour mean, sd, amplitude ratio), [NB, 2] SN II colour) from the config.

  A class absent from ``sim.colours.classes`` (Supernova: its template; Galaxy: ``host``) gets
  colour 0 and ratio 1; the reference band must have colour 0, sd 0 and ratio 1.
  """
  cc = sim_config.colours
  ref = reference_index(sim_config, band_names)
  out = np.zeros((len(class_names), len(band_names), 3))
  out[..., 2] = 1.0
  for c, name in enumerate(class_names):
    if name not in cc.classes:
      continue
    for b, band in enumerate(band_names):
      if band not in cc.classes[name]:
        raise utils.UserError(f'config.sim.colours.classes.{name}: no entry for band {band!r}')
      v = tuple(float(x) for x in cc.classes[name][band])
      if len(v) != 3 or v[1] < 0 or v[2] < 0:
        raise utils.UserError(f'config.sim.colours.classes.{name}.{band}={v!r} is invalid: '
                              'must be (colour mean, sd >= 0, amplitude ratio >= 0)')
      out[c, b] = v
    if tuple(out[c, ref]) != (0.0, 0.0, 1.0):
      raise utils.UserError(f'config.sim.colours.classes.{name}.{band_names[ref]} must be '
                            '(0, 0, 1): it is the reference band')
  ii = np.zeros((len(band_names), 2))
  for b, band in enumerate(band_names):
    if band not in cc.sn_ii:
      raise utils.UserError(f'config.sim.colours.sn_ii: no entry for band {band!r}')
    ii[b] = tuple(float(x) for x in cc.sn_ii[band])
  return out, ii


def host_colours(sim_config, band_names) -> np.ndarray:
  """[NB] galaxy colour m_b - m_ref (hosts and the Galaxy class)."""
  cc = sim_config.colours
  missing = [b for b in band_names if b not in cc.host]
  if missing:
    raise utils.UserError(f'config.sim.colours.host: no entry for band {missing[0]!r}')
  return np.asarray([float(cc.host[b]) for b in band_names], np.float32)


def one_hot_steps(band, step_mask, n_w, n_bands):
  """[E] band indices -> [T, n_w * NB] one-hots of each step's images (zeros on padded steps)."""
  oh = jax.nn.one_hot(band, n_bands, dtype=jnp.float32)  # [E, NB]
  steps = sequences.stack_steps(oh, n_w)  # [T, NB, n_w]
  steps = jnp.swapaxes(steps, -1, -2).reshape(steps.shape[0], -1)  # image-major
  return jnp.where(step_mask[:, None], steps, 0.0)


def side_input(time_gaps, band, step_mask, n_w, n_bands):
  """The per-step side input: time gaps [T, n_w], then the images' band one-hots if NB > 1."""
  if n_bands <= 1:
    return time_gaps
  return jnp.concatenate([time_gaps, one_hot_steps(band, step_mask, n_w, n_bands)], -1)


def side_width(n_w: int, n_bands: int) -> int:
  return n_w * (1 + n_bands) if n_bands > 1 else n_w


def band_indices(band, band_names, k: int) -> np.ndarray:
  """[K] band names or indices -> int32 indices into ``band_names`` (one-line errors)."""
  if band is None:
    raise UserError(f'band is required: the model was trained on the bands {band_names}')
  b = np.asarray(band).reshape(-1)
  if b.shape[0] != k:
    raise UserError(f'band must have one entry per image ({k}), got {b.shape[0]}')
  if b.dtype.kind in 'US':
    unknown = [x for x in b if str(x) not in band_names]
    if unknown:
      raise UserError(f'band {unknown[0]!r} is not one of the model\'s bands {band_names}')
    return np.asarray([band_names.index(str(x)) for x in b], np.int32)
  if b.dtype.kind not in 'iu' or b.min() < 0 or b.max() >= len(band_names):
    raise UserError(f'band indices must be integers in [0, {len(band_names)}), got {b}')
  return b.astype(np.int32)
