"""Light curves of the seven classes (Table 2, Fig. 1): magnitudes at a field's epochs.

Host side (``build_lightcurve_model``, once per simulator): the SN Ia Hsiao template through the
DECam g bandpass is tabulated on a (redshift, rest-frame phase) grid with sncosmo and speclite,
distance moduli and SN redshift distributions come from an astropy cosmology and volumetric
rates, and the magnitude distribution of Fig. 1 (an exponential star-count law times the cutoff
``(1 - erf(m - m_cutoff)) / 2``) is turned into an inverse CDF. Inside jit
(``sample_magnitudes``) everything is table interpolation and closed-form shapes, so one call
draws one object's light curve for any class id (traced): ``+inf`` means no point source.

Parametric shapes where no template ships offline (SN II, RR Lyrae, Cepheids, eclipsing
binaries) follow published distributions: SN II rise-plateau-drop-tail with M ~ N(-16.8, 1.0)
(Richardson et al. 2014), RRab/RRc Fourier shapes and period/amplitude ranges (Sesar et al.
2010), Cepheid Fourier shapes with log-uniform periods, detached and contact eclipsing binaries.
"""

from __future__ import annotations

import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np

# Class ids in the paper's label order (config.sim.class_names must use these names).
SUPERNOVA, RRLYRAE, CEPHEID, ECLIPSING_BINARY, NON_VARIABLE, GALAXY, ASTEROID = range(7)
CLASS_ORDER = ('Supernova', 'RRLyrae', 'Cepheid', 'EclipsingBinary', 'NonVariable', 'Galaxy',
               'Asteroid')
NO_SOURCE = jnp.inf

_IA_REF_ABSMAG = -19.3  # M_B of the tabulated template


@flax.struct.dataclass
class LightCurveModel:
  """Tables for ``sample_magnitudes`` (pytree leaves) and scalar settings (static)."""
  mag_icdf: jnp.ndarray       # [2, Q] magnitudes at uniform quantiles: (m_cutoff, RR Lyrae)
  ia_z: jnp.ndarray           # [Z] redshift grid of the Ia table
  ia_phase: jnp.ndarray       # [P] rest-frame phase grid (days from B maximum)
  ia_mag: jnp.ndarray         # [Z, P] apparent g at M_B = -19.3
  dist_mod: jnp.ndarray       # [Z] distance modulus on ia_z
  z_icdf: jnp.ndarray         # [2, Q] redshift at uniform quantiles: (Ia, II)
  ia_fraction: float = flax.struct.field(pytree_node=False, default=0.5)
  ia_absmag_sigma: float = flax.struct.field(pytree_node=False, default=0.15)
  ii_absmag: tuple = flax.struct.field(pytree_node=False, default=(-16.8, 1.0))
  rrc_fraction: float = flax.struct.field(pytree_node=False, default=0.25)
  contact_fraction: float = flax.struct.field(pytree_node=False, default=0.5)


def magnitude_density(m, m_cutoff, slope_dex):
  """Fig. 1's unnormalised density: 10^(slope m) * (1 - erf(m - m_cutoff)) / 2."""
  from scipy.special import erf  # pylint: disable=g-import-not-at-top
  return 10.0**(slope_dex * (m - 20.0)) * (1.0 - erf(m - m_cutoff)) / 2.0


def _icdf(x, density, num=1025):
  cdf = np.concatenate([[0.0], np.cumsum(0.5 * (density[1:] + density[:-1]) * np.diff(x))])
  cdf /= cdf[-1]
  q = np.linspace(0.0, 1.0, num)
  return np.interp(q, cdf, x).astype(np.float32)


@functools.lru_cache(maxsize=4)
def _ia_table(z_max: float, num_z: int, phase_step: float):
  """Hsiao template in DECam g (AB) at M_B = -19.3, Planck18, on a (z, rest phase) grid."""
  import sncosmo  # pylint: disable=g-import-not-at-top
  import speclite.filters  # pylint: disable=g-import-not-at-top
  from astropy.cosmology import Planck18  # pylint: disable=g-import-not-at-top
  g = speclite.filters.load_filter('decam2014-g')
  band = sncosmo.Bandpass(g.wavelength, g.response, name='decam2014-g')
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


def build_lightcurve_model(sim_config) -> LightCurveModel:
  """Tabulates everything ``sample_magnitudes`` needs, on the host, from ``config.sim``."""
  lc = sim_config.lightcurves
  names = tuple(sim_config.class_names)
  if names != CLASS_ORDER:
    raise ValueError(f'config.sim.class_names must be {CLASS_ORDER} in this order '
                     f'(light-curve models are tied to it), got {names}')
  lo, hi = lc.mag_range
  m = np.linspace(lo, hi, 4001)
  icdf = np.stack([_icdf(m, magnitude_density(m, c, lc.count_slope_dex))
                   for c in (lc.m_cutoff, lc.m_cutoff_rrlyrae)])
  zs, phase, table, mu, dvdz = _ia_table(float(lc.z_max), int(lc.num_z), float(lc.phase_step))
  # Volumetric rates: Ia 2.5e-5 (1+z)^1.5 (Dilday et al. 2010); core collapse ~ (1+z)^2.7
  # (Madau & Dickinson 2014 star-formation history at low z). Only the shapes matter here.
  z_ia = _icdf(zs, dvdz * (1 + zs)**1.5)
  ii = zs <= lc.z_max_ii
  z_ii = _icdf(zs[ii], (dvdz * (1 + zs)**2.7)[ii])
  return LightCurveModel(
      mag_icdf=jnp.asarray(icdf), ia_z=jnp.asarray(zs, jnp.float32),
      ia_phase=jnp.asarray(phase, jnp.float32), ia_mag=jnp.asarray(table, jnp.float32),
      dist_mod=jnp.asarray(mu, jnp.float32), z_icdf=jnp.asarray(np.stack([z_ia, z_ii])),
      ia_fraction=float(lc.ia_fraction), ia_absmag_sigma=float(lc.ia_absmag_sigma),
      ii_absmag=tuple(float(v) for v in lc.ii_absmag), rrc_fraction=float(lc.rrc_fraction),
      contact_fraction=float(lc.contact_fraction))


def _from_icdf(u, icdf):
  q = jnp.linspace(0.0, 1.0, icdf.shape[-1])
  return jnp.interp(u, q, icdf)


def _interp2(x, y, xs, ys, table):
  """Bilinear interpolation of table [X, Y] at scalar x and array y (clamped to the grid)."""
  i = jnp.clip(jnp.searchsorted(xs, x) - 1, 0, xs.shape[0] - 2)
  wx = jnp.clip((x - xs[i]) / (xs[i + 1] - xs[i]), 0.0, 1.0)
  row = (1 - wx) * table[i] + wx * table[i + 1]
  return jnp.interp(y, ys, row)


def _supernova(key, t, model: LightCurveModel):
  """SN Ia (Hsiao) or II (parametric) observed at times t (days); returns (mag, peak mag)."""
  k_type, k_z, k_m, k_t, k_shape = jax.random.split(key, 5)
  is_ia = jax.random.bernoulli(k_type, model.ia_fraction)
  u = jax.random.uniform(k_z)
  z = jnp.where(is_ia, _from_icdf(u, model.z_icdf[0]), _from_icdf(u, model.z_icdf[1]))
  dilation = 1.0 + z
  t_first, t_last = t[0], t[-1]
  # Ia: B maximum placed so that the rise can fall inside the schedule.
  t_max = jax.random.uniform(k_t, minval=t_first - 5.0 * dilation,
                             maxval=t_last + 15.0 * dilation)
  phase = (t - t_max) / dilation
  dm_ia = jax.random.normal(k_m) * model.ia_absmag_sigma
  ia = _interp2(z, phase, model.ia_z, model.ia_phase, model.ia_mag) + dm_ia
  ia = jnp.where((phase < model.ia_phase[0]) | (phase > model.ia_phase[-1]) | (ia > 90.0),
                 NO_SOURCE, ia)
  ia_peak = _interp2(z, jnp.zeros(()), model.ia_z, model.ia_phase, model.ia_mag) + dm_ia
  # II: explosion at t_exp; rise to peak (quadratic in flux), plateau with a slow decline,
  # a drop at the plateau's end, then the 56Co tail (0.98 mag / 100 d).
  k1, k2, k3, k4, k5, k6 = jax.random.split(k_shape, 6)
  mu = jnp.interp(z, model.ia_z, model.dist_mod)
  m_peak = model.ii_absmag[0] + model.ii_absmag[1] * jax.random.normal(k_m) + mu
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
  ii = jnp.where(tau <= 0.0, NO_SOURCE, ii)
  mag = jnp.where(is_ia, ia, ii)
  peak = jnp.where(is_ia, ia_peak, m_peak)
  return mag, peak


def _fourier(phase, amps, phis):
  """Sum_k a_k cos(2 pi k phase + phi_k), normalised to unit peak-to-peak, brightest = -0.5."""
  k = jnp.arange(1, amps.shape[0] + 1)
  grid = jnp.linspace(0.0, 1.0, 64, endpoint=False)
  shape = lambda p: jnp.sum(amps * jnp.cos(2 * jnp.pi * k * p[..., None] + phis), -1)
  ref = shape(grid)
  lo, hi = ref.min(), ref.max()
  # Brighter is smaller magnitude: the maximum of the series is the light maximum.
  return (hi - shape(phase)) / (hi - lo) - 0.5


def _rr_lyrae(key, t, mean_mag, model: LightCurveModel):
  k_type, k_p, k_a, k_ph, k_r = jax.random.split(key, 5)
  is_c = jax.random.bernoulli(k_type, model.rrc_fraction)
  period = jnp.where(is_c, jax.random.uniform(k_p, minval=0.24, maxval=0.43),
                     jnp.clip(0.57 + 0.08 * jax.random.normal(k_p), 0.42, 0.85))
  amp = jnp.where(is_c, jax.random.uniform(k_a, minval=0.25, maxval=0.6),
                  jax.random.uniform(k_a, minval=0.5, maxval=1.3))
  r = 1.0 + 0.1 * jax.random.normal(k_r, (3,))
  amps_ab = jnp.array([1.0, 0.48, 0.33, 0.21]) * jnp.concatenate([jnp.ones(1), r])
  amps_c = jnp.array([1.0, 0.18, 0.08, 0.03]) * jnp.concatenate([jnp.ones(1), r])
  phis_ab = jnp.array([0.0, 2.45 + jnp.pi, 5.1, 1.6])
  phis_c = jnp.array([0.0, 4.6, 2.9, 1.0])
  phase = t / period + jax.random.uniform(k_ph)
  shape = jnp.where(is_c, _fourier(phase, amps_c, phis_c), _fourier(phase, amps_ab, phis_ab))
  return mean_mag + amp * shape


def _cepheid(key, t, mean_mag):
  k_p, k_a, k_ph, k_r = jax.random.split(key, 4)
  period = 10.0**jax.random.uniform(k_p, minval=0.3, maxval=1.6)
  amp = jax.random.uniform(k_a, minval=0.4, maxval=1.2)
  r = 1.0 + 0.15 * jax.random.normal(k_r, (2,))
  amps = jnp.array([1.0, 0.4 * r[0], 0.2 * r[1]])
  phis = jnp.array([0.0, 2.3 + jnp.pi, 4.9])
  phase = t / period + jax.random.uniform(k_ph)
  return mean_mag + amp * _fourier(phase, amps, phis)


def _eclipsing_binary(key, t, mean_mag, model: LightCurveModel):
  """Detached (two Gaussian eclipses) or contact (W UMa, continuous) binaries."""
  k_type, k_p, k_d, k_r, k_w, k_ph, k_pc, k_a = jax.random.split(key, 8)
  is_contact = jax.random.bernoulli(k_type, model.contact_fraction)
  p_det = 10.0**jax.random.uniform(k_p, minval=-0.3, maxval=1.3)  # 0.5 to 20 d
  p_con = jax.random.uniform(k_pc, minval=0.22, maxval=0.6)
  period = jnp.where(is_contact, p_con, p_det)
  phase = jnp.mod(t / period + jax.random.uniform(k_ph), 1.0)
  d1 = jax.random.uniform(k_d, minval=0.1, maxval=1.2)
  d2 = d1 * jax.random.uniform(k_r)
  width = jax.random.uniform(k_w, minval=0.015, maxval=0.07)
  dist = lambda c: jnp.minimum(jnp.abs(phase - c), 1.0 - jnp.abs(phase - c))
  detached = (d1 * jnp.exp(-0.5 * (dist(0.0) / width)**2)
              + d2 * jnp.exp(-0.5 * (dist(0.5) / width)**2))
  amp = jax.random.uniform(k_a, minval=0.1, maxval=0.8)
  contact = amp * (0.5 * (1.0 + jnp.cos(4 * jnp.pi * phase))) * (
      1.0 - 0.15 * jnp.cos(2 * jnp.pi * phase) * jax.random.uniform(k_r))
  # The out-of-eclipse level is the sampled magnitude.
  return mean_mag + jnp.where(is_contact, amp - contact, detached)


def sample_magnitudes(key, class_id, t_days, num_epochs, model: LightCurveModel,
                      classes=None):
  """One object's g magnitudes at epochs t_days [E] (+inf: no point source), and its reference.

  The reference magnitude is the sampled mean (variables), constant (non-variables), epoch
  magnitude (asteroids) or peak (supernovae); +inf for galaxies. Padded epochs (index >=
  num_epochs) are undefined and must be masked by the caller.
  """
  classes = tuple(range(7)) if classes is None else tuple(classes)
  k_mag, k_sn, k_rr, k_ce, k_eb, k_ast = jax.random.split(key, 6)
  u = jax.random.uniform(k_mag)
  mean = _from_icdf(u, model.mag_icdf[0])
  mean_rr = _from_icdf(u, model.mag_icdf[1])
  e = t_days.shape[0]
  none = jnp.full((e,), NO_SOURCE)
  curves, refs = [none] * 7, [jnp.float32(NO_SOURCE)] * 7
  if SUPERNOVA in classes:
    curves[SUPERNOVA], refs[SUPERNOVA] = _supernova(k_sn, t_days, model)
  if RRLYRAE in classes:
    curves[RRLYRAE], refs[RRLYRAE] = _rr_lyrae(k_rr, t_days, mean_rr, model), mean_rr
  if CEPHEID in classes:
    curves[CEPHEID], refs[CEPHEID] = _cepheid(k_ce, t_days, mean), mean
  if ECLIPSING_BINARY in classes:
    curves[ECLIPSING_BINARY] = _eclipsing_binary(k_eb, t_days, mean, model)
    refs[ECLIPSING_BINARY] = mean
  if NON_VARIABLE in classes:
    curves[NON_VARIABLE], refs[NON_VARIABLE] = jnp.full((e,), 1.0) * mean, mean
  if ASTEROID in classes:
    hit = jax.random.randint(k_ast, (), 0, jnp.maximum(num_epochs, 1))
    curves[ASTEROID], refs[ASTEROID] = jnp.where(jnp.arange(e) == hit, mean, NO_SOURCE), mean
  return jnp.stack(curves)[class_id], jnp.stack(refs)[class_id]
