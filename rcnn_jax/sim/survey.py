"""Table 1: camera and exposure parameters, held as arrays so the simulator can index them in jit.

Two sources, chosen by ``config.survey``:

* built-in model (``conditions_path == ''``): fields, epochs and CCDs drawn once on the host from
  the distributions in the config (cadence, seeing, sky, zero point, camera spread). The HiTS
  2015 g-band numbers live in ``configs/hits.py``; another survey is another config.
* empirical tables (``conditions_path``/``camera_path``): the column format of
  ``shared/data/hits2015/{conditions,camera}.csv``; objects then use the real epochs of a random
  field and CCD, as the paper did.
"""

from __future__ import annotations

import os

import flax
import jax.numpy as jnp
import numpy as np

from rcnn_jax.core.errors import MissingFile
from rcnn_jax.core.errors import UserError
from rcnn_jax.sim import bands as bands_lib
from rcnn_jax.sim import cadence

CONDITION_COLUMNS = ('field', 'filter', 'mjd', 'exp_time_s', 'seeing_arcsec', 'sky_adu',
                     'zero_point', 'limmag5')
CAMERA_COLUMNS = ('gain_e_per_adu', 'read_noise_e', 'saturation_adu')


@flax.struct.dataclass
class Survey:
  """Exposures per field, padded to a common epoch count, and the camera's CCDs.

  Epoch arrays are [F, E]; entries at or beyond ``num_epochs[f]`` repeat the field's last epoch.
  Times are days after ``mjd0`` (float32 keeps ~1 s resolution over a season).
  """
  t_days: jnp.ndarray
  seeing_arcsec: jnp.ndarray
  sky_adu: jnp.ndarray
  zero_point: jnp.ndarray
  exp_time_s: jnp.ndarray
  limmag5: jnp.ndarray
  airmass: jnp.ndarray
  num_epochs: jnp.ndarray  # [F] int32
  gain: jnp.ndarray  # [C] e-/ADU
  read_noise_e: jnp.ndarray  # [C]
  saturation_adu: jnp.ndarray  # [C]
  band_index: jnp.ndarray = None  # [F, E] int32 index into ``bands`` (zeros for one band)
  mjd0: float = flax.struct.field(pytree_node=False, default=0.0)
  pixel_scale: float = flax.struct.field(pytree_node=False, default=0.263)
  band: str = flax.struct.field(pytree_node=False, default='g')
  name: str = flax.struct.field(pytree_node=False, default='')
  bands: tuple = flax.struct.field(pytree_node=False, default=('g',))

  @property
  def num_bands(self) -> int:
    return len(self.bands)

  @property
  def num_fields(self) -> int:
    return self.t_days.shape[0]

  @property
  def max_epochs(self) -> int:
    return self.t_days.shape[1]

  @property
  def num_ccds(self) -> int:
    return self.gain.shape[0]


def build_survey(survey_config, min_epochs: int = 1) -> Survey:
  """Builds the survey from files when paths are given, else from the built-in model."""
  sc = survey_config
  if bool(sc.conditions_path) != bool(sc.camera_path):
    raise UserError('config.survey: set both conditions_path and camera_path, or neither')
  if sc.conditions_path and sc.get('cadence', None) is not None:
    raise UserError('config.survey: conditions_path (empirical tables) and cadence (the '
                    'multi-band built-in model) exclude each other')
  if sc.conditions_path:
    fields = read_conditions(sc.conditions_path, band=sc.band,
                             max_seeing_arcsec=sc.max_seeing_arcsec, min_epochs=min_epochs)
    camera = read_camera(sc.camera_path)
  else:
    if sc.get('cadence', None) is not None:
      fields, camera = cadence.builtin_multiband(sc)
    else:
      fields, camera = _builtin_model(sc)
    fields = [_cut_seeing(f, sc.max_seeing_arcsec) for f in fields]
    fields = [f for f in fields if len(f['mjd']) >= min_epochs]
    if not fields:
      raise UserError(f'config.survey: the built-in model leaves no field with >= {min_epochs} '
                      f'epochs of seeing <= {sc.max_seeing_arcsec}"')
  return _pack(fields, camera, sc)


def _cut_seeing(f, max_seeing):
  keep = np.asarray(f['seeing_arcsec']) <= max_seeing
  return {k: np.asarray(v)[keep] for k, v in f.items()}


def _pack(fields, camera, sc) -> Survey:
  mjd0 = float(min(f['mjd'][0] for f in fields))
  e_max = max(len(f['mjd']) for f in fields)

  def pad(key, shift=0.0):
    out = np.empty((len(fields), e_max), np.float64)
    for i, f in enumerate(fields):
      v = np.asarray(f[key], np.float64) - shift
      out[i, :len(v)] = v
      out[i, len(v):] = v[-1]
    return jnp.asarray(out, jnp.float32)

  band = np.zeros((len(fields), e_max), np.int32)
  for i, f in enumerate(fields):
    if 'band' in f:
      b = np.asarray(f['band'], np.int32)
      band[i, :len(b)] = b
      band[i, len(b):] = b[-1]
  return Survey(
      t_days=pad('mjd', mjd0), seeing_arcsec=pad('seeing_arcsec'), sky_adu=pad('sky_adu'),
      zero_point=pad('zero_point'), exp_time_s=pad('exp_time_s'), limmag5=pad('limmag5'),
      airmass=pad('airmass'),
      num_epochs=jnp.asarray([len(f['mjd']) for f in fields], jnp.int32),
      gain=jnp.asarray(camera['gain_e_per_adu'], jnp.float32),
      read_noise_e=jnp.asarray(camera['read_noise_e'], jnp.float32),
      saturation_adu=jnp.asarray(camera['saturation_adu'], jnp.float32),
      band_index=jnp.asarray(band), mjd0=mjd0, pixel_scale=float(sc.pixel_scale_arcsec),
      band=str(sc.band), name=str(sc.name), bands=bands_lib.survey_bands(sc))


# ----------------------------------------------------------------------------------------------
# Empirical tables


def _read_table(path, what):
  from astropy.table import Table  # pylint: disable=g-import-not-at-top
  if not os.path.isfile(path):
    raise MissingFile(f'{what} table not found: {path}')
  try:
    return Table.read(path, format='ascii.csv')
  except Exception as e:  # astropy raises many types for malformed text
    raise UserError(f'{path}: cannot be read as a CSV table ({type(e).__name__}: '
                    f'{str(e).splitlines()[0] if str(e) else ""})') from None


def _column(table, path, name, finite=True, positive=False):
  if name not in table.colnames:
    raise UserError(f'{path}: missing column {name!r} (has: {", ".join(table.colnames)})')
  col = table[name]
  try:
    v = np.ma.filled(np.ma.asarray(col, dtype=np.float64), np.nan)
  except (TypeError, ValueError):
    raise UserError(f'{path}: column {name!r} is not numeric') from None
  bad = ~np.isfinite(v) if finite else np.zeros(len(v), bool)
  if positive:
    bad |= ~(v > 0)
  if bad.any():
    i = int(np.flatnonzero(bad)[0])
    raise UserError(f'{path}: unusable value {col[i]!r} in column {name!r} at data row {i + 1}')
  return v


def read_conditions(path, band='g', max_seeing_arcsec=2.0, min_epochs=1):
  """Reads per-epoch conditions; returns one dict of arrays per field, epochs sorted by MJD."""
  t = _read_table(path, 'conditions')
  for c in CONDITION_COLUMNS:
    if c not in t.colnames:
      raise UserError(f'{path}: missing column {c!r} (has: {", ".join(t.colnames)})')
  t = t[np.asarray([str(x) == band for x in t['filter']])]
  if len(t) == 0:
    raise UserError(f'{path}: no epochs in band {band!r}')
  cols = {
      'mjd': _column(t, path, 'mjd'),
      'exp_time_s': _column(t, path, 'exp_time_s', positive=True),
      'seeing_arcsec': _column(t, path, 'seeing_arcsec', positive=True),
      'sky_adu': _column(t, path, 'sky_adu'),
      'zero_point': _column(t, path, 'zero_point'),
      'limmag5': _column(t, path, 'limmag5'),
  }
  cols['airmass'] = (_column(t, path, 'airmass', positive=True) if 'airmass' in t.colnames
                     else np.ones(len(t)))
  if (cols['sky_adu'] < 0).any():
    i = int(np.flatnonzero(cols['sky_adu'] < 0)[0])
    raise UserError(f'{path}: unusable value {cols["sky_adu"][i]!r} in column \'sky_adu\' at '
                    f'{band}-band row {i + 1}')
  field = np.asarray([str(x) for x in t['field']])
  fields = []
  for name in sorted(set(field), key=lambda s: (len(s), s)):
    sel = field == name
    f = {k: v[sel] for k, v in cols.items()}
    order = np.argsort(f['mjd'], kind='stable')
    f = _cut_seeing({k: v[order] for k, v in f.items()}, max_seeing_arcsec)
    if len(f['mjd']) >= min_epochs:
      fields.append(f)
  if not fields:
    raise UserError(f'{path}: no field keeps >= {min_epochs} {band}-band epochs with seeing '
                    f'<= {max_seeing_arcsec}"')
  return fields


def read_camera(path):
  """Reads per-CCD gain, read noise and saturation."""
  t = _read_table(path, 'camera')
  if len(t) == 0:
    raise UserError(f'{path}: no CCD rows')
  return {c: _column(t, path, c, positive=True) for c in CAMERA_COLUMNS}


# ----------------------------------------------------------------------------------------------
# Built-in model


def _builtin_model(sc):
  """Fields of epochs and CCDs drawn from the configured distributions (host side, seeded)."""
  rng = np.random.default_rng(sc.model_seed)
  moon = {float(n): float(s) for n, s in sc.moon_sky_adu}
  pix = sc.pixel_scale_arcsec
  fields = []
  for _ in range(sc.num_fields):
    times, nights = [], []
    for night, (lo, hi) in zip(sc.nights, sc.epochs_per_night):
      n = int(rng.integers(lo, hi + 1))
      if n == 0:
        continue
      t0 = night + rng.uniform(0.02, 0.12)
      dt = sc.epoch_spacing_hours / 24.0 * (1.0 + 0.1 * rng.standard_normal(n))
      times.extend(t0 + np.concatenate([[0.0], np.cumsum(np.abs(dt[1:]))]))
      nights.extend([night] * n)
    n = len(times)
    nights = np.asarray(nights)
    seeing = cadence.split_normal(rng, *sc.seeing_quantiles_arcsec, n, log=True)
    sky = cadence.split_normal(rng, *sc.sky_quantiles_adu, n, log=True)
    for night, level in moon.items():
      on = nights == night
      sky[on] = level * np.exp(0.05 * rng.standard_normal(on.sum()))
    zp = cadence.split_normal(rng, *sc.zero_point_quantiles, n)
    exp_time = np.full(n, sc.exp_time_s)
    # 5-sigma limit in an aperture of ~3.7 FWHM^2 px (median relation of HiTS 2015 epochs).
    fwhm_px = seeing / pix
    var_pix = sky / np.median(sc.gain_range) + (sc.read_noise_median_e / np.median(sc.gain_range))**2
    s_ap = np.sqrt(3.7 * fwhm_px**2 * var_pix) * np.exp(0.3 * rng.standard_normal(n))
    limmag = zp - 2.5 * np.log10(5.0 * s_ap / exp_time)
    fields.append({
        'mjd': sc.mjd_start + np.asarray(times), 'seeing_arcsec': seeing, 'sky_adu': sky,
        'zero_point': zp, 'exp_time_s': exp_time, 'limmag5': limmag,
        'airmass': rng.uniform(*sc.airmass_range, n)})
  c = sc.num_ccds
  camera = {
      'gain_e_per_adu': sc.gain_range[0] + (sc.gain_range[1] - sc.gain_range[0]) * rng.beta(2, 5, c),
      'read_noise_e': np.minimum(
          sc.read_noise_range_e[0] + rng.exponential(sc.read_noise_median_e
                                                     - sc.read_noise_range_e[0], c) / np.log(2),
          sc.read_noise_range_e[1]),
      'saturation_adu': rng.uniform(*sc.saturation_range_adu, c),
  }
  return fields, camera
