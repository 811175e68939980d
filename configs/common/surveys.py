"""Survey-condition helpers shared by the several-band configs (``configs/lsst.py``,
``configs/ztf.py``): per-band conditions, the cadence block, per-class colours through the
ugrizy bands, and the changes to the HiTS-calibrated simulator priors for another survey.

``~`` marks approximations, as in the survey configs' docstrings.
"""

import math

import ml_collections

UGRIZY = ('u', 'g', 'r', 'i', 'z', 'y')  # the bands of the colour tables below


def colours(bands):
  """Per-class colours m_b - m_g (mean, sd) and amplitude ratios A_b / A_g for ``bands``.

  Approximate literature values (~), ugrizy with y ~ z + small:
  * RR Lyrae: mean colours of SDSS Stripe 82 RRab/RRc (Sesar et al. 2010, ApJ 708, 717:
    u - g ~ 1.15, g - r ~ 0.2, r - i ~ 0.05, i - z ~ 0.02); amplitude ratios A_u : A_g : A_r :
    A_i : A_z ~ 1.25 : 1 : 0.73 : 0.58 : 0.53 (Sesar et al. 2010, Sec. 3).
  * Cepheids: F-G supergiants, g - r ~ 0.55 +- 0.2; amplitudes fall to the red as A_V : A_I
    ~ 1 : 0.6 (Madore & Freedman 1991, PASP 103, 933).
  * Eclipsing binaries: field F-K stars, g - r ~ 0.45 +- 0.25; eclipses nearly grey
    (ratio 1 ~ for similar components).
  * Non-variable stars: g - r ~ 0.6 +- 0.35 (SDSS field stars, Ivezic et al. 2008, ApJ 684, 287,
    Fig. 2: the disk and halo loci between g - r 0.2 and 1.4).
  * Asteroids: reflected sunlight, S and C types g - r ~ 0.55 +- 0.1 (Ivezic et al. 2001,
    AJ 122, 2749).
  * Hosts and galaxies: a typical low-z galaxy, u - g 1.4, g - r 0.65, r - i 0.35, i - z 0.25
    (Blanton & Roweis 2007, AJ 133, 734 ~).
  * SN II: g - r ~ 0 at explosion, reddening ~1 mag per 100 d (de Jaeger et al. 2018, MNRAS
    476, 4592 ~); u fades faster, i, z, y slower.
  """
  table = {
      # per band u, g, r, i, z, y: (mean colour X - g, its scatter, amplitude ratio A_X / A_g)
      'RRLyrae': ((1.15, 0.1, 1.25), (0.0, 0.0, 1.0), (-0.2, 0.05, 0.73), (-0.25, 0.06, 0.58),
                  (-0.27, 0.07, 0.53), (-0.28, 0.08, 0.50)),
      'Cepheid': ((1.5, 0.3, 1.2), (0.0, 0.0, 1.0), (-0.55, 0.2, 0.75), (-0.8, 0.25, 0.6),
                  (-0.9, 0.3, 0.5), (-0.95, 0.3, 0.45)),
      'EclipsingBinary': ((1.1, 0.3, 1.0), (0.0, 0.0, 1.0), (-0.45, 0.25, 1.0),
                          (-0.6, 0.3, 1.0), (-0.65, 0.35, 1.0), (-0.7, 0.35, 1.0)),
      'NonVariable': ((1.3, 0.6, 1.0), (0.0, 0.0, 1.0), (-0.6, 0.35, 1.0), (-0.85, 0.5, 1.0),
                      (-0.95, 0.6, 1.0), (-1.0, 0.65, 1.0)),
      'Asteroid': ((1.6, 0.2, 1.0), (0.0, 0.0, 1.0), (-0.55, 0.1, 1.0), (-0.72, 0.12, 1.0),
                   (-0.75, 0.15, 1.0), (-0.8, 0.15, 1.0)),
  }
  host = dict(zip(UGRIZY, (1.4, 0.0, -0.65, -1.0, -1.25, -1.4)))
  sn_ii = dict(zip(UGRIZY, ((0.3, 1.8), (0.0, 0.0), (0.0, -1.0), (0.05, -1.3),
                            (0.1, -1.4), (0.15, -1.5))))
  c = ml_collections.ConfigDict()
  c.reference = 'g'  # the band of the stellar magnitude prior and the light-curve shapes
  c.classes = {name: {b: row[UGRIZY.index(b)] for b in bands}
               for name, row in table.items()}
  c.host = {b: host[b] for b in bands}
  c.sn_ii = {b: sn_ii[b] for b in bands}
  return c


def band_conditions(bands, seeing, sky_dark, zp_e, gain, sky_spread, zp_spread, seeing_spread):
  """Per band: seeing quantiles (5/50/95 %), sky brightness quantiles, zero-point quantiles.

  ``seeing`` (median FWHM, arcsec), ``sky_dark`` (mag / arcsec^2) and ``zp_e`` (zero point for
  1 e-/s) are dicts by band; the zero point in ADU is ``zp_e - 2.5 log10(gain)``. The spreads
  give the 5 and 95 % quantiles about the median: seeing times ``seeing_spread``, sky plus
  ``sky_spread`` (5, 50, 95 %), zero point plus ``zp_spread``.
  """
  out = ml_collections.ConfigDict()
  for b in bands:
    bc = ml_collections.ConfigDict()
    s = seeing[b]
    bc.seeing_quantiles_arcsec = (s * seeing_spread[0], s, s * seeing_spread[1])
    mu = sky_dark[b]
    bc.sky_mag_quantiles = (mu + sky_spread[0], mu + sky_spread[1], mu + sky_spread[2])
    zp = zp_e[b] - 2.5 * math.log10(gain)
    bc.zero_point_quantiles = (zp + zp_spread[0], zp, zp + zp_spread[1])
    out[b] = bc
  return out


def cadence(season_days, night_gap_days, weather_loss, visits_per_night, visit_gap_hours,
            night_start_range_days, band_pattern, band_weights, same_band_pair, night_bands):
  """``survey.cadence``, the several-band cadence model (rcnn_jax/sim/cadence.py): visited
  nights ``night_gap_days`` apart (drawn from the tuple) over ``season_days``, each lost to
  weather with probability ``weather_loss``; ``visits_per_night`` visits ``visit_gap_hours``
  apart; the visits' bands by ``band_pattern``: 'weighted' (pairs drawn from ``band_weights``,
  the second visit in the same band with probability ``same_band_pair``) or 'sequence'
  (``night_bands`` in order)."""
  c = ml_collections.ConfigDict()
  c.season_days = season_days
  c.night_gap_days = night_gap_days
  c.weather_loss = weather_loss
  c.visits_per_night = visits_per_night
  c.visit_gap_hours = visit_gap_hours
  c.night_start_range_days = night_start_range_days
  c.band_pattern = band_pattern
  c.band_weights = band_weights
  c.same_band_pair = same_band_pair
  c.night_bands = night_bands
  return c


def adapt_sim(sim, bands):
  """HiTS's simulator with another survey's PSF, colours and calibration errors (LSST, ZTF)."""
  sim.colours = colours(bands)
  # The HiTS PSF relation and scatters were calibrated on HiTS stars: here seeing is the FWHM.
  sim.psf.moffat_beta = 3.0
  sim.psf.seeing_scale = 1.0
  sim.psf.seeing_offset_arcsec = 0.0
  sim.psf.fwhm_scatter = 0.03  # ~
  sim.calibration.zero_point_rms = 0.01  # ~1 % per epoch ~
  sim.calibration.night_rms = 0.01  # ~
  sim.astrometry.centroid_jitter_px = 0.1  # ~
  return sim
