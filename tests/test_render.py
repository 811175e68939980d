"""Sec. 2.3 rendering: eq. 1, flux conservation of PSFs and galaxies, CCD noise statistics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from configs import hits
from rcnn_jax.sim import render
from rcnn_jax.sim import simulator as sim_lib


def _coords(size):
  """Pixel-centre coordinates relative to the stamp centre (render's convention)."""
  return np.arange(size) - (size - 1) / 2.0


def _aperture(img, r, cx=0.0, cy=0.0, sub=10):
  """Flux within radius r of (cx, cy): each pixel weighted by its area inside the circle."""
  c = _coords(img.shape[0])
  o = (np.arange(sub) + 0.5) / sub - 0.5
  xs = c[None, :, None, None] + o[None, None, None, :] - cx
  ys = c[:, None, None, None] + o[None, None, :, None] - cy
  frac = (xs**2 + ys**2 < r * r).mean((2, 3))
  return float((img * frac).sum())


def _moffat_enclosed(r, fwhm, beta):
  alpha = fwhm / (2.0 * np.sqrt(2.0**(1.0 / beta) - 1.0))
  return 1.0 - (1.0 + (r / alpha)**2)**(1.0 - beta)


def _sersic_enclosed(r, n, r_max=None):
  """Analytic enclosed flux of a Sersic(n), r_e = 1; normalised within r_max if truncated."""
  b = render.sersic_b(n)
  enc = special.gammainc(2 * n, b * np.asarray(r)**(1.0 / n))
  if r_max is not None:
    enc = np.minimum(enc, special.gammainc(2 * n, b * r_max**(1.0 / n)))
    enc = enc / special.gammainc(2 * n, b * r_max**(1.0 / n))
  return enc


def _mixture_enclosed(weights, sigmas, r):
  """Enclosed flux of a circular Gaussian mixture within radius r (closed form)."""
  r = np.asarray(r, np.float64)[:, None]
  return (weights[None] * (1.0 - np.exp(-0.5 * (r / sigmas[None])**2))).sum(1)


# --------------------------------------------------------------------------- eq. 1


def test_eq1_known_value_round_trip_and_infinite_magnitude():
  # zp = 25, T = 86 s, m = 20: ADU = 86 * 10^((25 - 20) / 2.5) = 86 * 100.
  np.testing.assert_allclose(float(render.mag_to_adu(20.0, 25.0, 86.0)), 8600.0, rtol=1e-6)
  # One magnitude fainter is 10^-0.4 times the counts.
  np.testing.assert_allclose(float(render.mag_to_adu(21.0, 25.0, 86.0)), 8600.0 * 10**-0.4,
                             rtol=1e-6)
  np.testing.assert_allclose(float(render.adu_to_mag(8600.0, 25.0, 86.0)), 20.0, atol=1e-5)
  mags = jnp.linspace(14.0, 26.0, 25)
  zp = jnp.linspace(24.9, 25.1, 25)
  adu = render.mag_to_adu(mags, zp, 86.0)
  np.testing.assert_allclose(np.asarray(render.adu_to_mag(adu, zp, 86.0)), np.asarray(mags),
                             atol=1e-4)
  # A longer exposure collects proportionally more counts.
  np.testing.assert_allclose(np.asarray(render.mag_to_adu(mags, zp, 172.0)),
                             2 * np.asarray(adu), rtol=1e-6)
  assert float(render.mag_to_adu(jnp.inf, 25.0, 86.0)) == 0.0
  out = np.asarray(render.mag_to_adu(jnp.array([jnp.inf, 20.0]), 25.0, 86.0))
  assert out[0] == 0.0 and np.isfinite(out).all()


# --------------------------------------------------------------------------- PSF stamps


@pytest.mark.parametrize('kind', ['gaussian', 'moffat'])
@pytest.mark.parametrize('fwhm', [2.0, 4.0, 7.6])
def test_psf_conserves_flux_and_centroid_is_subpixel_offset(kind, fwhm):
  dx, dy = 0.31, -0.27
  img = np.asarray(render.psf_stamp(fwhm, dx, dy, 101, kind, 3.0), np.float64)
  assert img.min() >= -1e-7  # float32 rounding of erf differences in the far wings
  np.testing.assert_allclose(img.sum(), 1.0, atol=0.01)
  c = _coords(101)
  np.testing.assert_allclose((img.sum(0) * c).sum() / img.sum(), dx, atol=2e-3)
  np.testing.assert_allclose((img.sum(1) * c).sum() / img.sum(), dy, atol=2e-3)
  # The brightest pixel is the one holding the centre.
  iy, ix = np.unravel_index(np.argmax(img), img.shape)
  assert (c[ix], c[iy]) == (0.0, 0.0)


def test_psf_pixel_integration_on_small_stamp():
  """On a 21 px stamp flux beyond the stamp is lost, never gained; pixels sum the profile."""
  for fwhm in (4.0, 7.6):
    small = np.asarray(render.psf_stamp(fwhm, 0.2, 0.4, 21, 'moffat', 3.0), np.float64)
    big = np.asarray(render.psf_stamp(fwhm, 0.2, 0.4, 101, 'moffat', 3.0), np.float64)
    np.testing.assert_allclose(small, big[40:61, 40:61], atol=1e-7)
    assert small.sum() < 1.0
    # The Moffat's flux outside the 21 px square is at least that outside the inscribed circle
    # and at most that outside the circumscribed one.
    out_lo = 1.0 - _moffat_enclosed(10.5 * np.sqrt(2), fwhm, 3.0)
    out_hi = 1.0 - _moffat_enclosed(10.5, fwhm, 3.0)
    assert out_lo - 1e-3 < 1.0 - small.sum() < out_hi + 1e-3


@pytest.mark.parametrize('fwhm', [2.0, 4.0, 7.6])
def test_gaussian_psf_fwhm(fwhm):
  dx, dy = 0.12, -0.4
  img = np.asarray(render.psf_stamp(fwhm, dx, dy, 61, 'gaussian'), np.float64)
  c = _coords(61)
  # Pixel integration adds the box's variance, 1/12 px^2, per axis.
  var_x = (img.sum(0) * (c - dx)**2).sum() / img.sum() - 1.0 / 12.0
  var_y = (img.sum(1) * (c - dy)**2).sum() / img.sum() - 1.0 / 12.0
  np.testing.assert_allclose(render.FWHM_PER_SIGMA * np.sqrt(var_x), fwhm, rtol=1e-3)
  np.testing.assert_allclose(render.FWHM_PER_SIGMA * np.sqrt(var_y), fwhm, rtol=1e-3)


def test_moffat_enclosed_flux_and_fwhm():
  beta = 3.0
  # The mixture itself, in FWHM units, at every radius (closed form, no pixels).
  w, s = render.moffat_mixture(beta)
  r = np.geomspace(0.05, 30.0, 300)
  np.testing.assert_allclose(_mixture_enclosed(w, s, r), _moffat_enclosed(r, 1.0, beta),
                             atol=2e-3)
  # The rendered stamp: a wide PSF so that pixels resolve it, apertures at 0.5..4 FWHM.
  fwhm = 30.0
  img = np.asarray(render.psf_stamp(fwhm, 0.0, 0.0, 301, 'moffat', beta), np.float64)
  np.testing.assert_allclose(img.sum(), 1.0, atol=0.01)
  for rr in (0.5, 1.0, 2.0, 4.0):
    np.testing.assert_allclose(_aperture(img, rr * fwhm), _moffat_enclosed(rr * fwhm, fwhm, beta),
                               rtol=0.01, err_msg=f'r = {rr} FWHM')
  # FWHM from the half-maximum crossing of the central row.
  row = img[150]
  half = row[150] / 2.0
  i = 150 + np.flatnonzero(row[150:] < half)[0]
  x0 = (i - 1 - 150) + (half - row[i - 1]) / (row[i] - row[i - 1])
  np.testing.assert_allclose(2 * x0, fwhm, rtol=0.01)
  # A Moffat has wider wings than a Gaussian of the same FWHM.
  gauss = np.asarray(render.psf_stamp(fwhm, 0.0, 0.0, 301, 'gaussian'), np.float64)
  assert _aperture(img, 2 * fwhm) < _aperture(gauss, 2 * fwhm) - 0.02


# --------------------------------------------------------------------------- galaxies


_stamp301 = jax.jit(lambda g, f, x, y: render.galaxy_stamp(g, f, x, y, 301))


def test_sampled_galaxies_conserve_flux():
  gc = hits.get_config().sim.galaxy.to_dict()
  gals = jax.vmap(lambda k: render.sample_galaxy(k, gc, 0.263))(
      jax.random.split(jax.random.key(7), 6))
  lo, hi = gc['mag_range']
  assert np.all((np.asarray(gals.mag) >= lo) & (np.asarray(gals.mag) <= hi))
  assert np.all(np.asarray(gals.r_disk_px) <= gc['r_disk_clip_arcsec'][1] / 0.263 + 1e-3)
  # The largest disk of the draw too, to test wide profiles, plus a big bulge-dominated one.
  big = render.GalaxyParams(*(jnp.float32(v) for v in (18.0, 25.0, 10.0, 0.3, 0.7, 1.1, 0.6)))
  for i in range(7):
    g = big if i == 6 else jax.tree.map(lambda x: x[i], gals)
    img = np.asarray(_stamp301(g, 4.0, 0.3, -0.2), np.float64)
    np.testing.assert_allclose(img.sum(), 1.0, atol=0.01, err_msg=str(g))
    assert img.min() >= -1e-7  # float32 rounding of erf differences in the far wings
    c = _coords(301)
    np.testing.assert_allclose((img.sum(0) * c).sum() / img.sum(), 0.3, atol=0.02)
    np.testing.assert_allclose((img.sum(1) * c).sum() / img.sum(), -0.2, atol=0.02)


def test_bulge_fraction_and_host_offset_distributions():
  """B/T ~ Beta(bulge_frac_beta) (inverse-CDF table) and a host offset's radius in the disk's
  frame ~ Gamma(2) scale lengths (the exponential disk's flux per unit radius), by KS tests."""
  from scipy import stats  # pylint: disable=g-import-not-at-top
  gc = hits.get_config().sim.galaxy.to_dict()
  keys = jax.random.split(jax.random.key(9), 4000)
  gals = jax.jit(jax.vmap(lambda k: render.sample_galaxy(k, gc, 0.263)))(keys)
  assert stats.kstest(np.asarray(gals.bulge_frac), stats.beta(*gc['bulge_frac_beta']).cdf
                      ).pvalue > 1e-3
  ox, oy = jax.jit(jax.vmap(lambda k, g: render.sample_host_offset(k, g, 0.263)))(
      jax.random.split(jax.random.key(10), 4000), gals)
  ca, sa = np.cos(np.asarray(gals.angle)), np.sin(np.asarray(gals.angle))
  x = ca * np.asarray(ox) + sa * np.asarray(oy)  # back into the disk's frame
  y = (-sa * np.asarray(ox) + ca * np.asarray(oy)) / np.asarray(gals.q_disk)
  h = np.asarray(gals.r_disk_px) / render.sersic_b(1.0)
  assert stats.kstest(np.hypot(x, y) / h, stats.gamma(2.0).cdf).pvalue > 1e-3
  assert stats.kstest(np.asarray(gals.bulge_frac), stats.beta(2.0, 3.0).cdf).pvalue < 1e-6


@pytest.mark.parametrize('n', [1.0, 4.0])
def test_sersic_mixture_enclosed_flux(n):
  """The mixtures follow the Sersic profile they model: Sersic(n), r_e = 1, cut at 8 r_e.

  For n = 1 the cut is immaterial (2e-5 of the flux lies beyond 8 r_e) and the mixture matches
  the untruncated profile; a de Vaucouleurs profile holds 5.7 % of its flux beyond 8 r_e, which the
  truncated (SDSS-style) model leaves out, so n = 4 is compared with the truncated profile.
  """
  w, s = render.sersic_mixture(n)
  r = np.array([0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 6.0])
  np.testing.assert_allclose(w.sum(), 1.0, rtol=1e-5)
  np.testing.assert_allclose(_mixture_enclosed(w, s, r), _sersic_enclosed(r, n, 8.0), atol=0.01)
  if n == 1.0:
    np.testing.assert_allclose(_mixture_enclosed(w, s, r), _sersic_enclosed(r, n), atol=0.01)
  # Half the (modelled) light lies within r_e.
  np.testing.assert_allclose(_mixture_enclosed(w, s, [1.0])[0],
                             _sersic_enclosed(1.0, n, 8.0), atol=0.005)


@pytest.mark.parametrize('n', [1.0, 4.0])
def test_rendered_circular_galaxy_follows_sersic(n):
  """A round pure disk (n = 1) or pure bulge (n = 4), 15 px r_e, under a narrow PSF."""
  re = 15.0
  g = render.GalaxyParams(mag=jnp.float32(20.0), r_disk_px=jnp.float32(re),
                          r_bulge_px=jnp.float32(re), q_disk=jnp.float32(1.0),
                          q_bulge=jnp.float32(1.0), angle=jnp.float32(0.3),
                          bulge_frac=jnp.float32(n == 4.0))
  img = np.asarray(render.galaxy_stamp(g, 0.5, 0.0, 0.0, 301, kind='gaussian'), np.float64)
  for rr in (0.25, 0.5, 1.0, 2.0, 4.0):
    np.testing.assert_allclose(_aperture(img, rr * re), _sersic_enclosed(rr, n, 8.0), atol=0.01,
                               err_msg=f'r = {rr} r_e')


def test_galaxy_axis_ratio_and_position_angle():
  q, angle, re = 0.5, 0.6, 8.0
  g = render.GalaxyParams(mag=jnp.float32(20.0), r_disk_px=jnp.float32(re),
                          r_bulge_px=jnp.float32(3.0), q_disk=jnp.float32(q),
                          q_bulge=jnp.float32(1.0), angle=jnp.float32(angle),
                          bulge_frac=jnp.float32(0.0))
  img = np.asarray(render.galaxy_stamp(g, 0.5, 0.0, 0.0, 201, kind='gaussian'), np.float64)
  c = _coords(201)
  x, y = np.meshgrid(c, c)
  cov = np.array([[(img * x * x).sum(), (img * x * y).sum()],
                  [(img * x * y).sum(), (img * y * y).sum()]]) / img.sum()
  evals, evecs = np.linalg.eigh(cov)
  major = evecs[:, 1]
  pa = np.arctan2(major[1], major[0]) % np.pi
  np.testing.assert_allclose(pa, angle, atol=np.radians(1.0))
  # Axis ratio of the second moments, after removing the (round) PSF and pixel variance.
  extra = (0.5 / render.FWHM_PER_SIGMA)**2 + 1.0 / 12.0
  np.testing.assert_allclose(np.sqrt((evals[0] - extra) / (evals[1] - extra)), q, rtol=0.02)


# --------------------------------------------------------------------------- noise


_noise = jax.jit(render.add_noise_batch, static_argnames=('poisson',))
GAIN, READ_NOISE = 4.0, 6.0


def _flat_noise(seed, level_adu, poisson=True, read_noise=READ_NOISE, sat=1e9):
  """64 x 128 x 128 pixels (one shape, so one compilation) at ``level_adu`` [64] or a scalar."""
  keys = jax.random.split(jax.random.key(seed), 64)
  img = jnp.broadcast_to(jnp.asarray(level_adu, jnp.float32).reshape(-1, 1, 1), (64, 128, 128))
  return np.asarray(_noise(keys, img, GAIN, read_noise, sat, poisson=poisson), np.float64)


@pytest.mark.parametrize('level', [5.0, 20.0, 150.0, 5000.0])  # 20, 80, 600, 20,000 e-
def test_noise_mean_and_variance(level):
  out = _flat_noise(int(level), level)
  n = out.size
  d = out - out.mean()
  m2, m4 = (d**2).mean(), (d**4).mean()
  np.testing.assert_allclose(out.mean(), level, atol=4 * np.sqrt(m2 / n))
  expect = level / GAIN + (READ_NOISE / GAIN)**2
  sd_var = np.sqrt((m4 - m2**2) / n)  # standard error of the variance estimator
  assert abs(m2 - expect) < 4 * sd_var, (m2, expect, sd_var)
  # The same with the Gaussian approximation (poisson=False).
  out = _flat_noise(int(level) + 1, level, poisson=False)
  assert abs(out.var() - expect) < 4 * sd_var
  assert abs(out.mean() - level) < 4 * np.sqrt(m2 / n)


@pytest.mark.parametrize('lam_e', [50.0, 200.0])  # exact Poisson branch, Cornish-Fisher branch
def test_noise_third_moment_is_poisson(lam_e):
  read_noise = 3.0
  e = _flat_noise(11, lam_e / GAIN, read_noise=read_noise) * GAIN
  d = e - e.mean()
  m3 = (d**3).mean()
  sd_m3 = np.sqrt(((d**3 - m3)**2).mean() / e.size)
  # Poisson's third cumulant is lambda; Gaussian read noise adds none.
  assert abs(m3 - lam_e) < 4 * sd_m3, (m3, lam_e, sd_m3)
  assert lam_e > 8 * sd_m3  # the test can tell Poisson from Gaussian noise
  g = _flat_noise(12, lam_e / GAIN, poisson=False, read_noise=read_noise) * GAIN
  assert abs(((g - g.mean())**3).mean()) < 4 * sd_m3


def test_exact_poisson_branch_gives_integer_electrons():
  """Below 100 e- the counts are exact Poisson: with no read noise, whole electrons."""
  e = _flat_noise(3, 2.0, read_noise=0.0) * GAIN  # lambda = 8 e-
  np.testing.assert_allclose(e, np.round(e), atol=1e-3)
  assert e.min() >= 0.0
  # The histogram is Poisson(8): P(k) = exp(-8) 8^k / k! at the mode and in both tails.
  k = np.round(e).astype(int)
  for j in (3, 8, 13):
    np.testing.assert_allclose((k == j).mean(), np.exp(-8.0) * 8.0**j / special.factorial(j),
                               rtol=0.15, err_msg=f'P({j})')


def test_saturation_caps_values():
  sat = 45_000.0
  levels = np.repeat([60_000.0, 44_990.0, 1_000.0, 45_000.0], 16)
  out = _flat_noise(5, levels, sat=sat).reshape(4, -1)
  assert np.all(out <= sat)
  np.testing.assert_array_equal(out[0], sat)  # far above: every pixel at the cap
  assert 0.0 < (out[1] == sat).mean() < 0.5  # just below: only upward fluctuations capped
  assert np.all(out[2] < sat) and abs(out[2].mean() - 1000.0) < 0.1  # far below: untouched
  np.testing.assert_allclose((out[3] == sat).mean(), 0.5, atol=0.01)  # at it: half capped


# --------------------------------------------------------------------------- dihedral


def test_dihedral_symmetries_are_flux_preserving_permutations():
  rng = np.random.default_rng(0)
  img = rng.random((2, 21, 21)).astype(np.float32)
  tables = sim_lib._dihedral_tables(21)
  assert tables.shape == (8, 441)
  for t in tables:
    np.testing.assert_array_equal(np.sort(t), np.arange(441))
  outs = [np.asarray(sim_lib._dihedral(jnp.asarray(img), k)) for k in range(8)]
  np.testing.assert_array_equal(outs[0], img)
  expect = [np.rot90(np.flip(img, -1) if m else img, r, axes=(-2, -1))
            for m in (False, True) for r in range(4)]
  for out in outs:
    np.testing.assert_array_equal(np.sort(out.reshape(2, -1), -1),
                                  np.sort(img.reshape(2, -1), -1))
    np.testing.assert_allclose(out.sum((-2, -1)), img.sum((-2, -1)), rtol=1e-6)
    assert sum(np.array_equal(out, e) for e in expect) == 1
  # The eight are distinct (a generic image has no symmetry).
  assert len({o.tobytes() for o in outs}) == 8
  # Under jit with a traced symmetry index, too.
  f = jax.jit(sim_lib._dihedral)
  for k in range(8):
    np.testing.assert_array_equal(np.asarray(f(jnp.asarray(img), jnp.int32(k))), outs[k])


def test_sincos_2pi_matches_float64():
  u = np.linspace(0.0, 1.0, 200_001)
  c, s = render.sincos_2pi(jnp.asarray(u, jnp.float32))
  u32 = u.astype(np.float32).astype(np.float64)  # the angles the float32 inputs stand for
  np.testing.assert_allclose(c, np.cos(2 * np.pi * u32), rtol=0, atol=1e-6)
  np.testing.assert_allclose(s, np.sin(2 * np.pi * u32), rtol=0, atol=1e-6)


def test_host_size_shrinks_and_magnitude_grows_with_redshift():
  from configs import hits  # pylint: disable=g-import-not-at-top
  c = hits.get_config('smoke').sim.galaxy.to_dict()
  tables = render.build_host_tables(c)
  keys = jax.random.split(jax.random.key(0), 4000)
  draw = jax.jit(jax.vmap(lambda k, z: render.sample_host_at_redshift(k, z, c, tables, 0.263),
                          in_axes=(0, None)))
  r, m = [], []
  for z in (0.03, 0.1, 0.3, 0.8):
    g = draw(keys, z)
    r.append(float(np.median(g.r_disk_px)) * 0.263)
    m.append(float(np.median(g.mag)))
  assert all(a > 1.2 * b for a, b in zip(r, r[1:])), r
  assert all(a < b - 0.5 for a, b in zip(m, m[1:])), m
  # Same luminosity draw (same key): the magnitude difference is the distance modulus plus K.
  from astropy.cosmology import Planck18  # pylint: disable=g-import-not-at-top
  g1, g2 = draw(keys[:1], 0.1), draw(keys[:1], 0.3)
  dmu = Planck18.distmod(0.3).value - Planck18.distmod(0.1).value
  np.testing.assert_allclose(float(g2.mag[0] - g1.mag[0]), dmu + 0.2 * c['host_kcorr_per_z'],
                             atol=0.02)
  # Shen et al. (2003) at M_r = M0: log R = -0.4 a M0 + (b - a) log 2 + g.
  r0, _ = render.host_half_light_kpc(c['host_size_m0'] + c['host_g_minus_r'], c)
  expect = 10**(-0.4 * 0.21 * -20.52 + (0.53 - 0.21) * np.log10(2.0) - 1.31)
  np.testing.assert_allclose(float(r0), expect, rtol=1e-5)
