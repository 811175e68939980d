"""Built-in multi-band survey model: a cadence of visits, each in one band, and per-band conditions.

Used by ``survey.build_survey`` when ``config.survey.cadence`` exists (configs/ztf.py,
configs/lsst.py); the single-band HiTS model stays in ``survey._builtin_model``. Everything is
drawn once on the host from ``config.survey.model_seed``; every number comes from the config.

Per field, visited nights are spaced by ``cadence.night_gap_days`` (drawn uniformly from the
given choices), over ``cadence.season_days``, and a night is lost to weather with probability
``cadence.weather_loss``. A visited night holds ``cadence.visits_per_night`` visits separated by
``cadence.visit_gap_hours`` (+- 10 %). The visits' bands follow ``cadence.band_pattern``:

* ``'sequence'``: the night's visits take ``cadence.night_bands`` in order (ZTF's g then r);
* ``'weighted'``: each night draws one band per visit pair from ``cadence.band_weights``, and
  the pair's second visit is in the same band with probability ``cadence.same_band_pair``, else
  in another band drawn from the weights (LSST's WFD pairs in the same or different bands).

Per band b (``survey.band_conditions[b]``): seeing FWHM quantiles (arcsec), sky brightness
quantiles (mag / arcsec^2) and zero points (eq. 1: mag of 1 ADU/s). The sky in ADU per pixel
follows from eq. 1: T p^2 10^((zp - mu_sky) / 2.5) for pixel scale p, exposure T. The 5-sigma
limiting magnitude is that of an aperture of 3.7 FWHM^2 px (as the HiTS built-in model) on sky
and read noise: zp - 2.5 log10(5 sqrt(3.7 FWHM_px^2 (sky / g + (rn / g)^2)) / T).
"""

from __future__ import annotations

import numpy as np

from rcnn_jax.core import utils
from rcnn_jax.sim import bands as bands_lib

BAND_PATTERNS = ('sequence', 'weighted')


def split_normal(rng, q05, q50, q95, size, log=False):
  """Draws with the given 5/50/95 % quantiles (two half-normals joined at the median)."""
  f = np.log if log else (lambda x: x)
  lo, mid, hi = f(q05), f(q50), f(q95)
  z = rng.standard_normal(size)
  x = mid + np.where(z < 0, (mid - lo), (hi - mid)) / 1.6449 * z
  return np.exp(x) if log else x


def band_names(survey_config) -> tuple:
  """The survey's bands in their index order: ``survey.bands``, else ``(survey.band,)``."""
  return bands_lib.survey_bands(survey_config)


def visit_times(rng, cad, bands):
  """(times [days after the season start], band indices) of one field's visits, time-sorted."""
  times, band_idx = [], []
  gaps = np.asarray(cad.night_gap_days, float)
  night = float(rng.integers(0, int(np.ceil(gaps.max()))))  # fields start on different nights
  index = {b: i for i, b in enumerate(bands)}
  weights = None
  if cad.band_pattern == 'weighted':
    weights = np.asarray([cad.band_weights[b] for b in bands], float)
    weights = weights / weights.sum()
  while night < cad.season_days:
    if rng.uniform() >= cad.weather_loss:
      n = int(cad.visits_per_night)
      t0 = night + rng.uniform(*cad.night_start_range_days)
      dt = cad.visit_gap_hours / 24.0 * (1.0 + 0.1 * rng.standard_normal(n))
      times.extend(t0 + np.concatenate([[0.0], np.cumsum(np.abs(dt[1:]))]))
      if cad.band_pattern == 'sequence':
        seq = [index[b] for b in cad.night_bands]
        band_idx.extend(seq[j % len(seq)] for j in range(n))
      else:
        for j in range(0, n, 2):
          first = int(rng.choice(len(bands), p=weights))
          band_idx.append(first)
          if j + 1 < n:
            if rng.uniform() < cad.same_band_pair or len(bands) == 1:
              band_idx.append(first)
            else:
              w = weights.copy()
              w[first] = 0.0
              band_idx.append(int(rng.choice(len(bands), p=w / w.sum())))
    night += float(rng.choice(gaps))
  return np.asarray(times), np.asarray(band_idx, np.int32)


def limiting_magnitude(zero_point, sky_adu, seeing_arcsec, pixel_scale, gain, read_noise_e,
                       exp_time_s):
  """5-sigma point-source limit in an aperture of 3.7 FWHM^2 px on sky and read noise."""
  fwhm_px = seeing_arcsec / pixel_scale
  var_pix = sky_adu / gain + (read_noise_e / gain)**2
  s_ap = np.sqrt(3.7 * fwhm_px**2 * var_pix)
  return zero_point - 2.5 * np.log10(5.0 * s_ap / exp_time_s)


def sky_adu_per_pixel(sky_mag_arcsec2, zero_point, pixel_scale, exp_time_s):
  """Eq. 1 for the sky: ADU per pixel in the exposure from mag / arcsec^2."""
  return exp_time_s * pixel_scale**2 * 10.0**((zero_point - sky_mag_arcsec2) / 2.5)


def check(sc):
  """One-line errors for a malformed multi-band survey config."""
  bands = band_names(sc)
  cad = sc.cadence
  if len(set(bands)) != len(bands):
    raise utils.UserError(f'config.survey.bands={bands!r} is invalid: must be distinct names')
  missing = [b for b in bands if b not in sc.band_conditions]
  if missing:
    raise utils.UserError(f'config.survey.band_conditions: no entry for band {missing[0]!r}')
  if cad.band_pattern not in BAND_PATTERNS:
    raise utils.UserError(f'config.survey.cadence.band_pattern={cad.band_pattern!r} is invalid: '
                          f'must be one of {BAND_PATTERNS}')
  if cad.band_pattern == 'sequence':
    bad = [b for b in cad.night_bands if b not in bands]
    if bad or not cad.night_bands:
      raise utils.UserError(f'config.survey.cadence.night_bands={tuple(cad.night_bands)!r} is '
                            f'invalid: must be non-empty bands of {bands}')
  else:
    bad = [b for b in bands if b not in cad.band_weights or cad.band_weights[b] < 0]
    if bad:
      raise utils.UserError(f'config.survey.cadence.band_weights: band {bad[0]!r} needs a '
                            'weight >= 0')
  if not (0.0 <= cad.weather_loss < 1.0) or cad.season_days <= 0 or cad.visits_per_night < 1:
    raise utils.UserError('config.survey.cadence: weather_loss must be in [0, 1), season_days '
                          '> 0 and visits_per_night >= 1')
  if min(cad.night_gap_days) <= 0:
    raise utils.UserError(f'config.survey.cadence.night_gap_days={tuple(cad.night_gap_days)!r} '
                          'is invalid: must be > 0')


def builtin_multiband(sc):
  """Fields of visits (with a ``band`` index per epoch) and CCDs, drawn from ``config.survey``."""
  check(sc)
  bands = band_names(sc)
  rng = np.random.default_rng(sc.model_seed)
  pix, exp_time = float(sc.pixel_scale_arcsec), float(sc.exp_time_s)
  gain_med = float(np.median(sc.gain_range))
  fields = []
  for _ in range(sc.num_fields):
    t, band = visit_times(rng, sc.cadence, bands)
    n = len(t)
    seeing, sky, zp = np.empty(n), np.empty(n), np.empty(n)
    for i, b in enumerate(bands):
      on = band == i
      k = int(on.sum())
      bc = sc.band_conditions[b]
      seeing[on] = split_normal(rng, *bc.seeing_quantiles_arcsec, k, log=True)
      zp[on] = split_normal(rng, *bc.zero_point_quantiles, k)
      mu = split_normal(rng, *bc.sky_mag_quantiles, k)
      sky[on] = sky_adu_per_pixel(mu, zp[on], pix, exp_time)
    limmag = limiting_magnitude(zp, sky, seeing, pix, gain_med, sc.read_noise_median_e, exp_time)
    fields.append({
        'mjd': sc.mjd_start + t, 'seeing_arcsec': seeing, 'sky_adu': sky, 'zero_point': zp,
        'exp_time_s': np.full(n, exp_time), 'limmag5': limmag,
        'airmass': rng.uniform(*sc.airmass_range, n), 'band': band})
  c = sc.num_ccds
  camera = {
      'gain_e_per_adu': rng.uniform(*sc.gain_range, c),
      'read_noise_e': rng.uniform(*sc.read_noise_range_e, c),
      'saturation_adu': rng.uniform(*sc.saturation_range_adu, c),
  }
  return fields, camera
