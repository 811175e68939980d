"""Light curves of the seven classes (Table 2, Fig. 1): magnitudes at a field's epochs.

Host side (``build_lightcurve_model``, once per simulator): the SN Ia Hsiao template through the
DECam g bandpass is tabulated on a (redshift, rest-frame phase) grid with sncosmo and speclite,
distance moduli and SN redshift distributions come from an astropy cosmology and volumetric
rates, and the stellar magnitude prior is turned into an inverse CDF. Inside jit
(``sample_magnitudes``) everything is table interpolation and closed-form shapes, so one call
draws one object's light curve for any class id (traced): ``+inf`` means no point source.

Each class is one function in ``CURVES`` (a registry keyed by ``config.sim.class_names``):
``fn(key, t, num_epochs, mean_mag, model) -> (mag [E], reference magnitude, redshift)``. A new
class is a function here and an entry in the config's class names. The shapes:

* Supernovae: SN Ia (Hsiao template) and a parametric SN II, M ~ N(-16.8, 1.0) (Richardson et
  al. 2014), as before.
* RR Lyrae (RRab and RRc) and Cepheids: the sine-convention magnitude Fourier series
  m = A0 + A sum_k (q^k / k) sin(k x + (k - 1) pi), i.e. amplitude ratios R_k1 = q^(k-1) / k
  and phase differences phi_k1 = (k - 1) pi (Simon & Lee 1981 form; Kovacs & Kupi 2007,
  A&A 462, 1007, sine convention). Its closed form atan(q sin x / (1 + q cos x)) has exactly
  one minimum and one maximum per cycle and rises from minimum to maximum light in a fraction
  1/2 - asin(q)/pi of a cycle. RRab: q ~ 0.80-0.89 gives R21 = 0.40-0.45, R31 = 0.21-0.26,
  R41 ~ 0.13-0.18 (observed V-band RRab: R21 ~ 0.45-0.5, R31 ~ 0.3-0.35; Simon & Teays 1982,
  Kovacs & Kupi 2007) and a rise of 0.15-0.21 of a cycle, 0.12-0.18 with the broad minimum
  below. RRc: q ~ 0.25-0.45, R21 ~ 0.12-0.22
  (observed ~ 0.1-0.2), rise 0.35-0.42, near-sinusoidal. The observed phase differences (V,
  sine: RRab phi21 ~ 2.4-2.5, phi31 ~ 5.1) differ from (k - 1) pi by 0.6-1.2 rad; truncated
  4-7 term series with those phases and ratios have spurious extra minima on the declining
  branch (checked), so the closed form keeps the published amplitude ratios and rise times and
  gives up the exact phases. That curve is odd about maximum light, so its magnitudes have
  zero skewness, where a real RRab declines fast after maximum and then slowly into a broad
  minimum before its steep rise (Smith 1995, RR Lyrae Stars, ch. 1): RRab phases are warped
  by a standstill (``_standstill_phase``; ``rrab_minimum`` = centre 0.62 of a cycle after
  maximum, width 0.2, strength 0.8) that keeps one minimum and a rise of 0.12-0.18 of a
  cycle (q 0.80-0.89) and gives a magnitude skewness of -0.59 over a dense cycle; the
  4-term sine series with typical V-band RRab parameters (R21 0.48, R31 0.33, R41 0.23,
  phi21 2.45, phi31 5.1; Kovacs & Kupi 2007, Jurcsik & Kovacs 1996) has -0.67 and a rise of
  0.20 (with a small hump on the declining branch that the warp leaves out). RRc keep the
  plain series. Periods and g amplitudes: RRab P ~ N(0.60, 0.06) d with a Bailey
  relation A_g ~ 1.0 - 3 (P - 0.6) +- 0.15, RRc P ~ N(0.32, 0.04) d, A_g 0.3-0.6, RRc
  fraction 0.25 (Sesar et al. 2010, ApJ 708, 717, SDSS Stripe 82: RRab <P> = 0.6 d,
  A_g 0.6-1.3; RRc <P> ~ 0.3 d, A_g ~ 0.3-0.6; ~ 22 % RRc).
* Cepheids: the same series with q(P) ~ 0.5-0.75 (rise 0.23-0.33 of a cycle, R21 0.25-0.37)
  that dips near P = 10 d, where R21 has its minimum and the curves are most symmetric (Simon
  & Lee 1981, ApJ 248, 291), and the Hertzsprung progression as a standstill (a local slowing
  of the phase, monotone, so it never adds a minimum): on the descending branch ~0.2 of a
  cycle after maximum at P ~ 6 d, moving to maximum at ~10 d and onto the rising branch at
  10-16 d (Hertzsprung 1926; Bono, Marconi & Stellingwerf 2000, A&A 360, 245; Soszynski et
  al. 2008, OGLE-III LMC Cepheids). Periods log-uniform in 2-40 d, A_g 0.4-1.2.
* Contact (W UMa) binaries: the flux cosine series of Rucinski (1993, PASP 105, 1433),
  l = 1 + a1 cos 2 pi phi + a2 cos 4 pi phi + a4 cos 8 pi phi + b1 sin 2 pi phi, with a2 < 0
  (two minima per orbit), a1 <= 0 (primary at phase 0 deeper or equal), a4 between the
  inner-contact line a4 = a2 (0.125 - a2) (Rucinski 1997, AJ 113, 407) or a2 / 4 (below
  which each maximum would split in two), whichever is higher, and 0, and a small
  O'Connell term b1. Full amplitudes 0.1-0.8 mag, P log-normal about 0.37 d in 0.22-0.6 d
  (Rucinski 2007, MNRAS 382, 393: the short-period cutoff at 0.22 d).
* Detached binaries: two uniform spheres of radii r1, r2 (units of the separation a, from
  R1, R2 and Kepler's law with P log-uniform in 0.5-20 d and M1 + M2 ~ 1.5-3 Msun), circular
  orbit at inclination i with cos i uniform in [0, r1 + r2) (isotropic orbits that eclipse),
  surface-brightness ratio J = s2 / s1 <= 1. The flux lost is the overlap area of two disks at
  projected separation delta = sqrt(sin^2 2 pi phi + cos^2 i cos^2 2 pi phi) times the
  eclipsed star's surface brightness: flat outside eclipse, eclipse half-width
  asin(sqrt((r1 + r2)^2 - cos^2 i) / sin i) / (2 pi) in phase. Limb darkening is ignored.

The stellar magnitude prior (all stellar classes share it unless ``m_cutoff_rrlyrae``
differs): with probability ``bright_weight`` uniform in ``bright_range``, otherwise Fig. 1's
exponential star-count law times (1 - erf(m - m_cutoff)) / 2. See configs/hits.py for sources.
"""

from __future__ import annotations

import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np

from rcnn_jax.core.errors import UserError
from rcnn_jax.sim import bands as bands_lib

NO_SOURCE = jnp.inf

_IA_REF_ABSMAG = -19.3  # M_B of the tabulated template


def _hashable(x):
  if isinstance(x, dict):
    return tuple(sorted((k, _hashable(v)) for k, v in x.items()))
  if isinstance(x, (list, tuple)):
    return tuple(_hashable(v) for v in x)
  return x


@flax.struct.dataclass
class LightCurveModel:
  """Tables for ``sample_magnitudes`` (pytree leaves) and settings (static)."""
  mag_icdf: jnp.ndarray       # [2, Q] magnitudes at uniform quantiles: (stellar, RR Lyrae)
  ia_z: jnp.ndarray           # [Z] redshift grid of the Ia table
  ia_phase: jnp.ndarray       # [P] rest-frame phase grid (days from B maximum)
  ia_mag: jnp.ndarray         # [Z, P] apparent g at M_B = -19.3
  dist_mod: jnp.ndarray       # [Z] distance modulus on ia_z
  z_icdf: jnp.ndarray         # [2, Q] redshift at uniform quantiles: (Ia, II)
  # Several bands (None with one): the Ia table per band [NB, Z, P] through each band's
  # filter; per class and band the colour m_b - m_ref (mean, sd) and the amplitude ratio
  # A_b / A_ref [C, NB, 3]; SN II colour (at explosion, per 100 rest-frame days) [NB, 2].
  ia_mag_bands: jnp.ndarray = None
  colour: jnp.ndarray = None
  sn_ii_colour: jnp.ndarray = None
  num_bands: int = flax.struct.field(pytree_node=False, default=1)
  class_names: tuple = flax.struct.field(pytree_node=False, default=())
  # config.sim.lightcurves as sorted (name, value) pairs (hashable; read with .p).
  settings: tuple = flax.struct.field(pytree_node=False, default=())

  @property
  def p(self) -> dict:
    return dict(self.settings)


def magnitude_density(m, m_cutoff, slope_dex):
  """Fig. 1's unnormalised density: 10^(slope m) * (1 - erf(m - m_cutoff)) / 2."""
  from scipy.special import erf  # pylint: disable=g-import-not-at-top
  return 10.0**(slope_dex * (m - 20.0)) * (1.0 - erf(m - m_cutoff)) / 2.0


def _icdf(x, density, num=1025):
  cdf = np.concatenate([[0.0], np.cumsum(0.5 * (density[1:] + density[:-1]) * np.diff(x))])
  cdf /= cdf[-1]
  q = np.linspace(0.0, 1.0, num)
  return np.interp(q, cdf, x).astype(np.float32)


@functools.lru_cache(maxsize=16)
def _ia_table(z_max: float, num_z: int, phase_step: float, filter_name: str = 'decam2014-g'):
  """Hsiao template through a speclite filter (AB) at M_B = -19.3, Planck18, on a (z, rest
  phase) grid; DECam g by default (HiTS)."""
  from astropy.cosmology import Planck18  # pylint: disable=g-import-not-at-top
  import sncosmo  # pylint: disable=g-import-not-at-top

  g = bands_lib.load_filter(filter_name)
  band = sncosmo.Bandpass(g.wavelength, g.response, name=filter_name)
  model = sncosmo.Model('hsiao-subsampled')
  zs = np.linspace(0.01, z_max, num_z)
  phase = np.arange(model.source.minphase(), model.source.maxphase() + 1e-9, phase_step)
  table = np.empty((num_z, phase.size))
  for i, z in enumerate(zs):
    model.set(z=z, t0=0.0)
    model.set_source_peakabsmag(_IA_REF_ABSMAG, 'bessellb', 'ab', cosmo=Planck18)
    with np.errstate(all='ignore'):
      table[i] = model.bandmag(band, 'ab', phase * (1.0 + z))
  table = np.where(np.isfinite(table), np.minimum(table, 99.0), 99.0)
  mu = Planck18.distmod(zs).value
  # Comoving volume element per unit z over (1 + z): the observed-frame SN count density.
  dvdz = Planck18.differential_comoving_volume(zs).value / (1.0 + zs)
  return zs, phase, table, mu, dvdz


def stellar_magnitude_density(m, m_cutoff, slope_dex, bright_weight, bright_range):
  """The stellar prior's density (normalised): a mixture of Fig. 1's law (weight
  1 - bright_weight) and a uniform density on ``bright_range`` (weight bright_weight)."""
  m = np.asarray(m, float)
  fig1 = magnitude_density(m, m_cutoff, slope_dex)
  fig1 = fig1 / np.trapezoid(fig1, m)
  lo, hi = bright_range
  flat = ((m >= lo) & (m <= hi)) / (hi - lo)
  return (1.0 - bright_weight) * fig1 + bright_weight * flat


def build_lightcurve_model(sim_config, survey_config=None) -> LightCurveModel:
  """Tabulates everything ``sample_magnitudes`` needs, on the host, from ``config.sim``.

  With a multi-band ``survey_config`` (``survey.bands``), the Ia template is tabulated through
  every band's filter (``survey.filters``) and the colours come from ``sim.colours``
  (``bands.colour_tables``); one band keeps the single DECam g table.
  """
  lc = sim_config.lightcurves
  names = tuple(sim_config.class_names)
  missing = [n for n in names if n not in CURVES]
  if missing:
    raise UserError(f'config.sim.class_names: no light-curve model for {missing[0]!r} '
                    f'(known: {sorted(CURVES)}); add a function to lightcurves.CURVES')
  lo, hi = lc.mag_range
  w = float(lc.bright_weight)
  b_lo, b_hi = lc.bright_range
  if not (0.0 <= w <= 1.0 and lo <= b_lo < b_hi <= hi):
    raise UserError('config.sim.lightcurves: bright_weight must be in [0, 1] and bright_range '
                    f'an interval inside mag_range, got {w} and {tuple(lc.bright_range)}')
  m = np.linspace(lo, hi, 8001)
  icdf = np.stack([_icdf(m, stellar_magnitude_density(m, c, lc.count_slope_dex, w,
                                                      (b_lo, b_hi)))
                   for c in (lc.m_cutoff, lc.m_cutoff_rrlyrae)])
  band_names = bands_lib.survey_bands(survey_config)
  extra = {}
  if len(band_names) > 1:
    filters = [bands_lib.filter_name(survey_config, b) for b in band_names]
    ref = bands_lib.reference_index(sim_config, band_names)
    tables = [_ia_table(float(lc.z_max), int(lc.num_z), float(lc.phase_step), f)
              for f in filters]
    zs, phase, table, mu, dvdz = tables[ref]
    colour, ii_colour = bands_lib.colour_tables(sim_config, names, band_names)
    extra = dict(ia_mag_bands=jnp.asarray(np.stack([t[2] for t in tables]), jnp.float32),
                 colour=jnp.asarray(colour, jnp.float32),
                 sn_ii_colour=jnp.asarray(ii_colour, jnp.float32), num_bands=len(band_names))
  else:
    zs, phase, table, mu, dvdz = _ia_table(float(lc.z_max), int(lc.num_z),
                                           float(lc.phase_step))
  # Volumetric rates: Ia 2.5e-5 (1+z)^1.5 (Dilday et al. 2010); core collapse ~ (1+z)^2.7
  # (Madau & Dickinson 2014 star-formation history at low z). Only the shapes matter here.
  z_ia = _icdf(zs, dvdz * (1 + zs)**1.5)
  ii = zs <= lc.z_max_ii
  z_ii = _icdf(zs[ii], (dvdz * (1 + zs)**2.7)[ii])
  return LightCurveModel(
      mag_icdf=jnp.asarray(icdf), ia_z=jnp.asarray(zs, jnp.float32),
      ia_phase=jnp.asarray(phase, jnp.float32), ia_mag=jnp.asarray(table, jnp.float32),
      dist_mod=jnp.asarray(mu, jnp.float32), z_icdf=jnp.asarray(np.stack([z_ia, z_ii])),
      class_names=names, settings=_hashable(lc.to_dict()), **extra)


def _from_icdf(u, icdf):
  q = jnp.linspace(0.0, 1.0, icdf.shape[-1])
  return jnp.interp(u, q, icdf)


def _interp2(x, y, xs, ys, table):
  """Bilinear interpolation of table [X, Y] at scalar x and array y (clamped to the grid)."""
  i = jnp.clip(jnp.searchsorted(xs, x) - 1, 0, xs.shape[0] - 2)
  wx = jnp.clip((x - xs[i]) / (xs[i + 1] - xs[i]), 0.0, 1.0)
  row = (1 - wx) * table[i] + wx * table[i + 1]
  return jnp.interp(y, ys, row)


def _interp2_bands(x, y, band, xs, ys, tables):
  """``_interp2`` of tables [NB, X, Y] at scalar x and per-epoch (y, band) [E]."""
  i = jnp.clip(jnp.searchsorted(xs, x) - 1, 0, xs.shape[0] - 2)
  wx = jnp.clip((x - xs[i]) / (xs[i + 1] - xs[i]), 0.0, 1.0)
  rows = (1 - wx) * tables[:, i] + wx * tables[:, i + 1]  # [NB, Y]
  return jax.vmap(lambda yy, b: jnp.interp(yy, ys, rows[b]))(y, band)


def _supernova(key, t, num_epochs, mean_mag, model: LightCurveModel, band=None):
  """SN Ia (Hsiao) or II (parametric) observed at times t (days): (mag, peak mag, redshift).

  Redshifts from volumetric rates (Dilday et al. 2010; Madau & Dickinson 2014), SN II
  M ~ N(-16.8, 1.0) (Richardson et al. 2014); the stellar magnitude is not used. With
  ``band`` [E] (several bands) a Ia is read from each epoch's band's table (the template
  through that filter) and a II gets the configured colour, linear in rest-frame time; the
  peak magnitude stays the reference band's.
  """
  del num_epochs, mean_mag
  p = model.p
  k_type, k_z, k_m, k_t, k_shape = jax.random.split(key, 5)
  is_ia = jax.random.bernoulli(k_type, p['ia_fraction'])
  u = jax.random.uniform(k_z)
  z = jnp.where(is_ia, _from_icdf(u, model.z_icdf[0]), _from_icdf(u, model.z_icdf[1]))
  dilation = 1.0 + z
  t_first, t_last = t[0], t[-1]
  # Ia: B maximum placed so that the rise can fall inside the schedule.
  t_max = jax.random.uniform(k_t, minval=t_first - 5.0 * dilation,
                             maxval=t_last + 15.0 * dilation)
  phase = (t - t_max) / dilation
  dm_ia = jax.random.normal(k_m) * p['ia_absmag_sigma']
  if band is None:
    ia = _interp2(z, phase, model.ia_z, model.ia_phase, model.ia_mag) + dm_ia
  else:
    ia = _interp2_bands(z, phase, band, model.ia_z, model.ia_phase, model.ia_mag_bands) + dm_ia
  ia = jnp.where((phase < model.ia_phase[0]) | (phase > model.ia_phase[-1]) | (ia > 90.0),
                 NO_SOURCE, ia)
  ia_peak = _interp2(z, jnp.zeros(()), model.ia_z, model.ia_phase, model.ia_mag) + dm_ia
  # II: explosion at t_exp; rise to peak (quadratic in flux), plateau with a slow decline,
  # a drop at the plateau's end, then the 56Co tail (0.98 mag / 100 d).
  k1, k2, k3, k4, k5, k6 = jax.random.split(k_shape, 6)
  mu = jnp.interp(z, model.ia_z, model.dist_mod)
  m_peak = p['ii_absmag'][0] + p['ii_absmag'][1] * jax.random.normal(k_m) + mu
  t_exp = jax.random.uniform(k_t, minval=t_first - 12.0 * dilation, maxval=t_last)
  tau = (t - t_exp) / dilation
  t_rise = jax.random.uniform(k1, minval=5.0, maxval=15.0)
  slope = jax.random.uniform(k2, minval=0.0, maxval=0.04)  # mag/day on the plateau
  t_plateau = jax.random.uniform(k3, minval=60.0, maxval=120.0)
  drop = jax.random.uniform(k4, minval=1.5, maxval=3.0)
  t_drop = jax.random.uniform(k5, minval=10.0, maxval=30.0)
  del k6
  rise = m_peak - 2.5 * jnp.log10(jnp.clip(tau / t_rise, 1e-6, 1.0)**2)
  plateau = m_peak + slope * (tau - t_rise)
  end = m_peak + slope * (t_plateau - t_rise)
  falling = end + drop * jnp.clip((tau - t_plateau) / t_drop, 0.0, 1.0)
  tail = falling + 0.0098 * jnp.maximum(tau - t_plateau - t_drop, 0.0)
  ii = jnp.where(tau < t_rise, rise, jnp.where(tau < t_plateau, plateau, tail))
  if band is not None:
    c0, c1 = model.sn_ii_colour[band, 0], model.sn_ii_colour[band, 1]
    ii = ii + c0 + c1 * jnp.clip(tau, 0.0, 300.0) / 100.0
  ii = jnp.where(tau <= 0.0, NO_SOURCE, ii)
  mag = jnp.where(is_ia, ia, ii)
  peak = jnp.where(is_ia, ia_peak, m_peak)
  return mag, peak, z


def _uniform(key, lo_hi, shape=()):
  lo, hi = lo_hi
  return jax.random.uniform(key, shape, minval=lo, maxval=hi)


def pulsation_shape(phase, q):
  """Unit peak-to-peak pulsation shape in magnitudes, maximum light (-0.5) at phase 0.

  The sine-convention Fourier series sum_k (q^k / k) sin(k x + (k - 1) pi) (amplitude ratios
  R_k1 = q^(k-1) / k, phase differences phi_k1 = (k - 1) pi) in closed form,
  atan(q sin x / (1 + q cos x)) with 0 < q < 1: one minimum and one maximum per cycle, its
  maximum (faintest) at cos x = -q, x in (0, pi), its minimum (brightest) at 2 pi - that x,
  peak-to-peak 2 asin(q), rise from minimum to maximum light 1/2 - asin(q) / pi of a cycle.
  """
  x_faint = jnp.arccos(-q)
  x = 2 * jnp.pi * phase + (2 * jnp.pi - x_faint)  # phase 0 at maximum light
  m = jnp.arctan2(q * jnp.sin(x), 1.0 + q * jnp.cos(x))
  return m / (2.0 * jnp.arcsin(q))


def pulsation_rise_fraction(q):
  """Fraction of a cycle from minimum to maximum light of ``pulsation_shape``."""
  return 0.5 - np.arcsin(q) / np.pi


def _rr_lyrae(key, t, num_epochs, mean_mag, model: LightCurveModel):
  """RRab or RRc (Sesar et al. 2010 periods and g amplitudes; shapes in the module docstring).

  Returns (mag, mean magnitude, NaN)."""
  del num_epochs
  p = model.p
  k_type, k_p, k_a, k_ph, k_q = jax.random.split(key, 5)
  is_c = jax.random.bernoulli(k_type, p['rrc_fraction'])
  u_p, u_a = jax.random.normal(k_p), jax.random.normal(k_a)
  p_ab = jnp.clip(p['rrab_period_d'][0] + p['rrab_period_d'][1] * u_p, *p['rrab_period_clip_d'])
  p_c = jnp.clip(p['rrc_period_d'][0] + p['rrc_period_d'][1] * u_p, *p['rrc_period_clip_d'])
  period = jnp.where(is_c, p_c, p_ab)
  # Bailey diagram: RRab amplitudes fall with period (Sesar et al. 2010, Fig. 9).
  a0, slope, scatter = p['rrab_amp_bailey']
  amp_ab = jnp.clip(a0 + slope * (p_ab - p['rrab_period_d'][0]) + scatter * u_a,
                    *p['rrab_amp_clip'])
  amp_c = _uniform(k_a, p['rrc_amp'])
  amp = jnp.where(is_c, amp_c, amp_ab)
  q = jnp.where(is_c, _uniform(k_q, p['rrc_q']), _uniform(k_q, p['rrab_q']))
  phase = t / period + jax.random.uniform(k_ph)
  # RRab: a fast decline after maximum light that slows into a broad minimum before the
  # steep rise; a standstill on the declining branch (configs saved before it: none).
  center, width, strength = p.get('rrab_minimum', (0.5, 0.1, 0.0))
  phase = jnp.where(is_c, phase, _standstill_phase(phase, center, width, strength))
  return mean_mag + amp * pulsation_shape(phase, q), mean_mag, jnp.float32(jnp.nan)


def _standstill_phase(phase, center, width, strength):
  """A monotone warp of the phase that slows it near ``center`` (a standstill, the bump).

  psi = (phi - s w sqrt(2 pi) C(phi)) / (1 - s w sqrt(2 pi)) with C the cumulative of a
  wrapped Gaussian (centre, width w) that grows by one per cycle: psi(phi + 1) = psi(phi) + 1
  and d psi / d phi = (1 - s h) / (1 - s w sqrt(2 pi)) > 0 (h the Gaussian of unit peak) for
  s < 1, so the curve keeps its single minimum and maximum.
  """
  d = jnp.mod(phase - center + 0.5, 1.0) - 0.5  # in [-0.5, 0.5)
  cum = jnp.floor(phase - center + 0.5)
  c = sum(0.5 * (1 + jax.scipy.special.erf((d + n) / (width * np.sqrt(2.0))))
          for n in (-1, 0, 1)) - 1.0 + cum
  norm = strength * width * np.sqrt(2 * np.pi)
  return (phase - norm * c) / (1.0 - norm)


def _cepheid(key, t, num_epochs, mean_mag, model: LightCurveModel):
  """Classical Cepheid with a period-dependent shape (Hertzsprung progression).

  Shape q(P) = q0 (1 - dip exp(-((log P - 1) / 0.1)^2 / 2)): R21 smallest near 10 d (Simon &
  Lee 1981). Bump (standstill) centred ``cepheid_bump_slope`` (10 - P) cycles after maximum
  light (clipped to ``cepheid_bump_phase_clip``): ~0.2 after maximum at 6 d (descending
  branch), at maximum at 10 d, before maximum (rising branch) at 10-16 d (Bono et al. 2000;
  Soszynski et al. 2008); its strength tapers to zero outside ``cepheid_bump_periods_d``.
  Returns (mag, mean magnitude, NaN)."""
  del num_epochs
  p = model.p
  k_p, k_a, k_ph, k_q = jax.random.split(key, 4)
  log_p = _uniform(k_p, p['cepheid_log_period_d'])
  period = 10.0**log_p
  amp = _uniform(k_a, p['cepheid_amp'])
  q = _uniform(k_q, p['cepheid_q']) * (
      1.0 - p['cepheid_q_dip'] * jnp.exp(-0.5 * ((log_p - 1.0) / 0.1)**2))
  center = jnp.clip(p['cepheid_bump_slope'] * (10.0 - period), *p['cepheid_bump_phase_clip'])
  lo, hi = p['cepheid_bump_periods_d']
  on = jnp.clip(jnp.minimum(period - lo + 1.0, hi + 1.0 - period), 0.0, 1.0)
  phase = t / period + jax.random.uniform(k_ph)
  warped = _standstill_phase(phase, center, p['cepheid_bump_width'],
                             p['cepheid_bump_strength'] * on)
  return mean_mag + amp * pulsation_shape(warped, q), mean_mag, jnp.float32(jnp.nan)


def contact_flux(phase, a1, a2, a4, b1):
  """W UMa relative flux (Rucinski 1993): 1 + a1 cos 2pi phi + a2 cos 4pi phi + a4 cos 8pi phi
  + b1 sin 2pi phi; primary minimum at phase 0."""
  x = 2 * jnp.pi * phase
  return 1.0 + a1 * jnp.cos(x) + a2 * jnp.cos(2 * x) + a4 * jnp.cos(4 * x) + b1 * jnp.sin(x)


def contact_amplitude(key, amp_range, flat_to=None):
  """A W UMa full amplitude (mag), drawn with ``key``.

  ``flat_to`` None: uniform on ``amp_range`` (the model before issue 31). Otherwise the
  amplitude distribution A(a) of Rucinski (2001, AJ 122, 1007, "The photometric-amplitude and
  mass-ratio distributions of contact binary stars"): for isotropic orbits and the observed
  mass-ratio distribution, steep towards small q (Q(q) ~ (1 - q)^6), A(a) is about constant
  for small amplitudes, has its (local) maximum near 0.2-0.25 mag and falls to zero at the
  largest geometric amplitude, ~0.75-0.8 mag (q = 1 seen edge-on); the observed amplitudes of
  the OGLE Baade's Window contact binaries are "surprisingly small" (Rucinski 1997, AJ 113,
  1112). As a trapezoid: density constant on [lo, flat_to], falling linearly to zero at hi
  (lo, hi = amp_range). Its median on [0.1, 0.8] with flat_to 0.25 is 0.32 mag (uniform: 0.45).
  """
  if flat_to is None:
    return _uniform(key, amp_range)
  lo, hi = amp_range
  u = jax.random.uniform(key)
  c = jnp.clip(flat_to, lo, hi)
  w = hi - c
  flat, tail = c - lo, 0.5 * w
  r = u * (flat + tail)
  # Inverse CDF: linear on the flat part; y - y^2 / (2 w) = r - flat on the declining part.
  y = w - jnp.sqrt(jnp.maximum(w * w - 2.0 * w * (r - flat), 0.0))
  return jnp.where(r <= flat, lo + r, c + y)


def disk_overlap(d, r1, r2):
  """Overlap area of two disks of radii r1, r2 with centres d apart."""
  d = jnp.maximum(d, 1e-9)
  c1 = jnp.clip((d**2 + r1**2 - r2**2) / (2 * d * r1), -1.0, 1.0)
  c2 = jnp.clip((d**2 + r2**2 - r1**2) / (2 * d * r2), -1.0, 1.0)
  lens = (r1**2 * jnp.arccos(c1) + r2**2 * jnp.arccos(c2)
          - 0.5 * jnp.sqrt(jnp.maximum((-d + r1 + r2) * (d + r1 - r2) * (d - r1 + r2)
                                       * (d + r1 + r2), 0.0)))
  inside = jnp.pi * jnp.minimum(r1, r2)**2
  return jnp.where(d >= r1 + r2, 0.0, jnp.where(d <= jnp.abs(r1 - r2), inside, lens))


def detached_flux(phase, r1, r2, cos_i, surface_ratio):
  """Relative flux (1 out of eclipse) of two uniform spheres on a circular orbit.

  Radii in units of the separation, inclination i, surface-brightness ratio J = s2 / s1.
  Star 1 is eclipsed at phase 0 (primary eclipse when J <= 1), star 2 at phase 0.5."""
  x = 2 * jnp.pi * phase
  sin_i2 = 1.0 - cos_i**2
  delta = jnp.sqrt(jnp.sin(x)**2 + cos_i**2 * jnp.cos(x)**2)
  lost = disk_overlap(delta, r1, r2) * jnp.where(jnp.cos(x) > 0, 1.0, surface_ratio)
  del sin_i2
  total = jnp.pi * (r1**2 + surface_ratio * r2**2)
  return 1.0 - lost / total


def eclipse_half_width(r1, r2, cos_i):
  """Half-width of an eclipse in phase: asin(sqrt((r1 + r2)^2 - cos^2 i) / sin i) / (2 pi)."""
  s = np.sqrt(np.maximum((r1 + r2)**2 - cos_i**2, 0.0)) / np.sqrt(1.0 - cos_i**2)
  return np.arcsin(np.minimum(s, 1.0)) / (2 * np.pi)


def _eclipsing_binary(key, t, num_epochs, mean_mag, model: LightCurveModel):
  """Contact (W UMa) or detached binary; ``mean_mag`` is the magnitude at maximum light.

  Returns (mag, magnitude at maximum light, NaN); shapes and sources in the module docstring.
  """
  del num_epochs
  p = model.p
  (k_type, k_pc, k_amp, k_a1, k_a4, k_b1, k_pd, k_m, k_r1, k_r2, k_i, k_j,
   k_ph) = jax.random.split(key, 13)
  is_contact = jax.random.bernoulli(k_type, p['contact_fraction'])
  # Contact: a2 from the full amplitude (ignoring a1, a4), then a1, a4, b1 (Rucinski 1993, 1997).
  mu, sig = p['contact_log_period_d']
  p_con = jnp.clip(10.0**(mu + sig * jax.random.normal(k_pc)), *p['contact_period_clip_d'])
  # Configs saved before issue 31 have no contact_amp_flat_to: uniform amplitudes, as then.
  ratio = 10.0**(0.4 * contact_amplitude(k_amp, p['contact_amp'],
                                          p.get('contact_amp_flat_to', None)))
  a2 = -(ratio - 1.0) / (ratio + 1.0)
  a1 = a2 * _uniform(k_a1, p['contact_a1_over_a2'])  # same sign as a2: primary deeper
  # a4 above the inner-contact line and above a2 / 4 (below it each maximum splits in two).
  a4 = jnp.maximum(a2 * (0.125 - a2), 0.9 * a2 / 4) * jax.random.uniform(k_a4)
  b1 = jnp.abs(a2) * _uniform(k_b1, p['contact_oconnell'])
  # Detached: Kepler's law a = 4.2084 Rsun (M / Msun)^(1/3) (P / d)^(2/3).
  log_p = _uniform(k_pd, p['detached_log_period_d'])
  p_det = 10.0**log_p
  sep = 4.2084 * _uniform(k_m, p['detached_mass_msun'])**(1 / 3) * p_det**(2 / 3)
  rad1 = _uniform(k_r1, p['detached_radius_rsun'])
  rad2 = rad1 * _uniform(k_r2, p['detached_radius_ratio'])
  r_max = p['detached_max_fractional_radius']
  r1, r2 = jnp.minimum(rad1 / sep, r_max), jnp.minimum(rad2 / sep, r_max)
  cos_i = jax.random.uniform(k_i) * (r1 + r2)  # isotropic orbits that eclipse
  surface_ratio = _uniform(k_j, p['detached_surface_ratio'])
  period = jnp.where(is_contact, p_con, p_det)
  phase = t / period + jax.random.uniform(k_ph)
  con = contact_flux(phase, a1, a2, a4, b1)
  con_max = contact_flux(jnp.float32(0.25), a1, a2, a4, b1)
  det = detached_flux(phase, r1, r2, cos_i, surface_ratio)
  mag = jnp.where(is_contact, -2.5 * jnp.log10(con / con_max), -2.5 * jnp.log10(det))
  return mean_mag + mag, mean_mag, jnp.float32(jnp.nan)


def _constant(key, t, num_epochs, mean_mag, model):
  del key, num_epochs, model
  return jnp.full(t.shape, 1.0) * mean_mag, mean_mag, jnp.float32(jnp.nan)


def _no_source(key, t, num_epochs, mean_mag, model):
  """Galaxies: no point source (the galaxy is rendered as a host; its magnitude set there)."""
  del key, num_epochs, mean_mag, model
  return jnp.full(t.shape, NO_SOURCE), jnp.float32(NO_SOURCE), jnp.float32(jnp.nan)


def _asteroid(key, t, num_epochs, mean_mag, model):
  """An asteroid crosses the stamp in one epoch of the field (uniform among its epochs)."""
  del model
  hit = jax.random.randint(key, (), 0, jnp.maximum(num_epochs, 1))
  return (jnp.where(jnp.arange(t.shape[0]) == hit, mean_mag, NO_SOURCE), mean_mag,
          jnp.float32(jnp.nan))


# The registry: class name -> fn(key, t, num_epochs, mean_mag, model) -> (mag, ref, redshift).
CURVES = {
    'Supernova': _supernova,
    'RRLyrae': _rr_lyrae,
    'Cepheid': _cepheid,
    'EclipsingBinary': _eclipsing_binary,
    'NonVariable': _constant,
    'Galaxy': _no_source,
    'Asteroid': _asteroid,
}


def sample_magnitudes(key, class_id, t_days, num_epochs, model: LightCurveModel,
                      classes=None, band=None):
  """One object's g magnitudes at epochs t_days [E] (+inf: no point source), its reference
  magnitude and its redshift (NaN unless a supernova).

  ``class_id`` (traced) indexes ``model.class_names``; only the classes in ``classes`` (static
  ids; default all) are computed, any other id gives no source. The reference magnitude is the
  sampled mean (pulsators), maximum light (binaries), constant (non-variables), epoch magnitude
  (asteroids) or peak (supernovae); +inf for galaxies. Class c's curve depends only on
  (key, c, t): it is the same at a subset of the epochs and whichever ``classes`` are computed.
  Padded epochs (index >= num_epochs) are undefined and must be masked by the caller.

  ``band`` [E] (int, indices into the survey's bands) is used only when the model has several
  bands: each epoch's magnitude is then in its band (``_in_bands``); the reference magnitude
  stays the reference band's. With one band (HiTS) the result is the single-band curve.
  """
  multi = band is not None and model.num_bands > 1
  names = model.class_names
  classes = tuple(range(len(names))) if classes is None else tuple(classes)
  keys = jax.random.split(key, len(names) + 1)
  u = jax.random.uniform(keys[0])
  stellar = _from_icdf(u, model.mag_icdf[0])
  stellar_rr = _from_icdf(u, model.mag_icdf[1])
  e = t_days.shape[0]
  curves = [jnp.full((e,), NO_SOURCE)] * len(names)
  refs = [jnp.float32(NO_SOURCE)] * len(names)
  zs = [jnp.float32(jnp.nan)] * len(names)
  for c in classes:
    mean = stellar_rr if names[c] == 'RRLyrae' else stellar
    if multi and names[c] == 'Supernova':
      curves[c], refs[c], zs[c] = _supernova(keys[c + 1], t_days, num_epochs, mean, model, band)
      continue
    curves[c], refs[c], zs[c] = CURVES[names[c]](keys[c + 1], t_days, num_epochs, mean, model)
    if multi:
      curves[c] = _in_bands(keys[c + 1], curves[c], refs[c], c, band, model)
  return jnp.stack(curves)[class_id], jnp.stack(refs)[class_id], jnp.stack(zs)[class_id]


_COLOUR_KEY = 0x636F6C  # fold_in constant of an object's colour draw (independent of its curve)


def _in_bands(key, mag, ref, class_id, band, model: LightCurveModel):
  """A reference-band curve in each epoch's band: ref + colour_b + (A_b / A_ref)(mag - ref).

  colour_b = mean_b + sd_b z with one z ~ N(0, 1) per object (its colours move together, like
  a temperature); epochs without a source (+inf) stay so; a class without colours (Galaxy) is
  unchanged.
  """
  col = model.colour[class_id]  # [NB, 3]
  z = jax.random.normal(jax.random.fold_in(key, _COLOUR_KEY))
  colour = col[band, 0] + col[band, 1] * z
  out = ref + colour + col[band, 2] * (mag - ref)
  return jnp.where(jnp.isfinite(mag) & jnp.isfinite(ref), out, mag)


def detectable_variability(mag, limmag5, valid, min_epochs, k_sigma, floor):
  """The variability selection: True when at least ``min_epochs`` valid epochs deviate from the
  median flux by more than ``k_sigma`` sigma.

  Per epoch, sigma (relative to the median flux F) is sqrt((F_lim / 5 F)^2 + floor^2): the
  background noise of a point source at the epoch's 5-sigma limiting magnitude, plus a
  calibration floor (epoch-to-epoch zero-point scatter). Works on the noiseless curve, so it
  asks whether the variation is detectable in this cadence, not whether one noise draw shows it.
  """
  big = jnp.float32(1e9)
  m = jnp.where(valid, mag, big)
  count = valid.sum()
  med = jnp.sort(m)[jnp.maximum(count - 1, 0) // 2]
  rel = 10.0**(-0.4 * (mag - med))
  sigma = jnp.sqrt((10.0**(-0.4 * (limmag5 - med)) / 5.0)**2 + floor**2)
  dev = valid & (jnp.abs(rel - 1.0) > k_sigma * sigma)
  return dev.sum() >= min_epochs
