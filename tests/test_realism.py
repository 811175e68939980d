"""Realism check (Appendix A): measurement functions on known inputs, and a run on real files."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rcnn_jax.realism import psf_calibration
from rcnn_jax.realism import report
from rcnn_jax.realism import stars
from rcnn_jax.realism import twins
from rcnn_jax.sim import photometry
from rcnn_jax.sim import render


def _gaussian_star(fwhm_px, flux, dx=0.0, dy=0.0, size=21):
  return flux * np.asarray(render.psf_stamp(fwhm_px, dx, dy, size, 'gaussian'), np.float64)


@pytest.mark.parametrize('fwhm_px', [3.0, 5.0, 8.0])
def test_fwhm_fit_recovers_gaussian(fwhm_px):
  rng = np.random.default_rng(int(fwhm_px))
  dx, dy = 0.3, -0.2
  img = _gaussian_star(fwhm_px, 5e4, dx, dy) + rng.normal(0.0, 6.0, (21, 21))
  fwhm, x, y, flux, ok = stars.fit_gaussian(img)
  assert ok
  assert abs(fwhm / fwhm_px - 1.0) < 0.05
  assert abs(x - dx) < 0.05 and abs(y - dy) < 0.05
  if fwhm_px <= 5.0:  # most of the flux inside the 9 x 9 box
    assert abs(flux / 5e4 - 1.0) < 0.05


def test_fwhm_fit_fails_cleanly_on_empty_stamp():
  fwhm, _, _, _, ok = stars.fit_gaussian(-np.ones((21, 21)))
  assert not ok and np.isnan(fwhm)


def test_background_noise_recovers_sigma():
  rng = np.random.default_rng(0)
  sigma = 7.0
  noise = rng.normal(100.0, sigma, (400, 21, 21))
  est = stars.background_noise(noise)
  assert est.shape == (400,)
  # One estimate has ~8 % scatter (216 ring pixels, MAD); the mean of 400 is good to ~0.5 %.
  assert abs(est.mean() / sigma - 1.0) < 0.02
  assert 0.04 < est.std() / sigma < 0.12


def test_background_noise_ignores_star_wings_and_a_cosmic_ray():
  rng = np.random.default_rng(1)
  sigma, dx, dy = 6.0, 0.15, -0.1
  psf = np.asarray(render.psf_stamp(7.0, dx, dy, 21, 'moffat', 3.0), np.float64)
  star = 3000.0 / psf.max() * psf  # a bright HiTS star at 1.8" seeing: wings ~50 ADU at r = 8
  imgs = star + rng.normal(0.0, sigma, (100, 21, 21))
  imgs[:, 1, 3] += 500.0
  plain = np.array([1.4826 * np.median(np.abs(v - np.median(v)))
                    for v in imgs[:, stars.ring_mask(21)]])
  est = stars.background_noise(imgs, dx, dy)
  assert abs(est.mean() / sigma - 1.0) < 0.03
  assert plain.mean() > 1.2 * sigma  # a plain ring MAD is inflated by the wings


def test_aperture_flux_and_peak():
  img = _gaussian_star(3.0, 1000.0, 0.4, 0.0)
  assert abs(photometry.aperture_flux(img, 0.4, 0.0) / 1000.0 - 1.0) < 1e-3
  assert stars.central_peak(img) == img.max()
  stack = np.stack([img, 2 * img])
  np.testing.assert_allclose(photometry.aperture_flux(stack, [0.4, 0.4], [0.0, 0.0]),
                             [1000.0, 2000.0], rtol=1e-3)


def test_render_star_matches_conditions():
  e = 32  # the padded epoch count of the real-file test below: one compilation for both
  zp = jnp.full(e, 25.0)
  t = jnp.full(e, 86.0)
  fwhm = jnp.linspace(4.0, 7.0, e)
  zero = jnp.zeros(e)
  sky = jnp.full(e, 120.0)
  raw, clean = twins.render_star(jax.random.key(0), jnp.float32(18.0), zp, t, fwhm, zero, zero,
                                   sky, jnp.float32(4.0), jnp.float32(6.0),
                                   jnp.float32(45000.0), size=21)
  assert raw.shape == clean.shape == (e, 21, 21)
  flux = float(render.mag_to_adu(18.0, 25.0, 86.0))
  np.testing.assert_allclose(np.asarray(clean - 120.0).sum((1, 2)) / flux, 1.0, atol=0.1)
  # Wider seeing -> lower peak; noise as expected from sky, gain and read noise.
  peaks = np.asarray(clean).max((1, 2))
  assert np.all(np.diff(peaks) < 0)
  noise = stars.background_noise(np.asarray(raw) - 120.0)
  exp = stars.expected_noise(120.0, 4.0, 6.0)
  assert abs(np.median(noise) / exp - 1.0) < 0.15



def test_moffat_pixels_matches_the_renderer():
  for fwhm, beta in ((3.0, 3.75), (5.5, 3.0)):
    ref = np.asarray(render.psf_stamp(fwhm, 0.3, -0.2, 21, 'moffat', beta), np.float64)
    mine = psf_calibration.moffat_pixels(fwhm, beta, 0.3, -0.2, 21)
    assert np.abs(mine - ref).max() < 3e-3 * ref.max()
    assert abs(mine.sum() - ref.sum()) < 1e-3


@pytest.mark.parametrize('fwhm_px,beta', [(3.2, 3.75), (5.0, 3.0)])
def test_moffat_fit_recovers_beta_and_fwhm(fwhm_px, beta):
  """Stars rendered by the renderer (its Gaussian-mixture Moffat), noiseless and with CCD noise
  at a bright HiTS star's signal to noise (peak ~300 sigma), fitted with free beta, FWHM and
  background."""
  e = 16
  noise_var = float(stars.expected_noise(120.0, 4.0, 6.0))**2
  dx = jnp.linspace(-0.45, 0.45, e)
  raw, clean = twins.render_star(
      jax.random.key(int(fwhm_px * 10)), jnp.float32(17.5), jnp.full(e, 25.0),
      jnp.full(e, 86.0), jnp.full(e, fwhm_px), dx, -0.5 * dx, jnp.full(e, 120.0),
      jnp.float32(4.0), jnp.float32(6.0), jnp.float32(45000.0), size=21, beta=beta)
  flux = float(render.mag_to_adu(17.5, 25.0, 86.0))
  fit = psf_calibration.fit_moffat(np.asarray(clean[3], np.float64) - 120.0, noise_var, 4.0)
  assert fit['ok']
  assert abs(fit['beta'] / beta - 1.0) < 0.01 and abs(fit['fwhm_px'] / fwhm_px - 1.0) < 0.005
  assert abs(fit['flux'] / flux - 1.0) < 0.005 and abs(fit['background']) < 0.5  # sigma ~6 ADU
  assert abs(fit['dx'] - float(dx[3])) < 0.01
  fits = [psf_calibration.fit_moffat(x, noise_var, 4.0)
          for x in np.asarray(raw, np.float64) - 120.0]
  assert all(f['ok'] for f in fits)
  assert abs(np.median([f['beta'] for f in fits]) / beta - 1.0) < 0.05
  assert abs(np.median([f['fwhm_px'] for f in fits]) / fwhm_px - 1.0) < 0.02
  # With beta known, one noisy epoch gives the FWHM to ~1 %.
  fixed = [psf_calibration.fit_moffat(x, noise_var, 4.0, beta=beta)['fwhm_px']
           for x in np.asarray(raw, np.float64)[:4] - 120.0]
  np.testing.assert_allclose(fixed, fwhm_px, rtol=0.03)


def test_seeing_relation_fit_recovers_affine_law():
  rng = np.random.default_rng(0)
  seeing = rng.uniform(0.9, 2.2, 500)
  fwhm = (-0.2 + 0.92 * seeing) * (1.0 + 0.04 * rng.standard_normal(500))
  fwhm[:10] *= 1.5  # outliers
  rel = psf_calibration.fit_seeing_relation(seeing, fwhm)
  a, b = rel['affine']
  assert abs(a + 0.2) < 0.03 and abs(b - 0.92) < 0.02
  assert rel['affine_rel_scatter'] < rel['scale_rel_scatter']
  assert 0.03 < rel['affine_rel_scatter'] < 0.05


def test_seeing_to_fwhm_default_is_identity_and_relation_applies():
  seeing = np.array([0.9, 1.3, 2.0])
  np.testing.assert_array_equal(render.seeing_to_fwhm_px(seeing, 0.263), seeing / 0.263)
  np.testing.assert_allclose(render.seeing_to_fwhm_px(seeing, 0.263, 0.92, -0.209),
                             (0.92 * seeing - 0.209) / 0.263, rtol=1e-6)
  assert float(render.seeing_to_fwhm_px(0.1, 0.263, 0.92, -0.209)) == 0.5  # floor


def test_psf_calibration_on_real_files(hits_data):
  from configs import hits  # pylint: disable=g-import-not-at-top
  files = sorted((hits_data / 'real_nonvariable_dev').glob('*.npz'))[:2]
  if not files:
    pytest.skip('no real sequences in the shared data')
  cal = psf_calibration.calibrate_psf([str(f) for f in files], hits.get_config('smoke'),
                              progress=False, num_bootstrap=10)
  json.dumps(cal, allow_nan=True)
  assert cal['num_objects'] == 2 and cal['num_epochs'] >= 20
  assert 2.0 < cal['beta']['median'] < 6.0
  assert 0.6 < cal['fwhm']['scale'] < 1.0
  assert cal['units']['table_seeing_on_0.27_arcsec_per_px_grid'] > 0.9
  assert set(cal['recommended']) == {'moffat_beta', 'seeing_scale', 'seeing_offset_arcsec'}
  assert 'beta' in psf_calibration.format_calibration(cal)


# The report's figure without variable files: empty panels, no legend warning.
@pytest.mark.filterwarnings('error::UserWarning')
def test_realism_on_real_files(hits_data, tmp_path):
  from configs import hits  # pylint: disable=g-import-not-at-top
  files = sorted((hits_data / 'real_nonvariable_dev').glob('*.npz'))[:2]
  if not files:
    pytest.skip('no real sequences in the shared data')
  config = hits.get_config('smoke')
  summary, records = report.run([str(f) for f in files], str(tmp_path), config,
                                 camera_path=str(hits_data / 'camera.csv'), progress=False)
  data = json.loads((tmp_path / 'realism.json').read_text())
  assert set(twins.SUMMARY_KEYS) <= set(data)
  assert (tmp_path / 'realism.png').stat().st_size > 10_000
  assert data['num_objects'] == 2 == len(records)
  assert data['num_epochs'] == sum(r['sky'].size for r in records)
  ratio = data['background_noise']['ratio_real_sim']
  assert np.isfinite(ratio) and ratio > 0
  for k in ('ratio_real_sim', 'real_over_seeing', 'sim_over_seeing'):
    assert np.isfinite(data['fwhm'][k]) and data['fwhm'][k] > 0
  assert 14.0 < data['magnitude']['median'] < 24.0
  assert 'median of' in data['settings']['camera_source']
  assert 'FWHM' in twins.format_table(summary)
  # The comparison renders the config's PSF: its seeing relation is recorded.
  assert data['settings']['seeing_scale'] == config.sim.psf.seeing_scale
  assert data['settings']['moffat_beta'] == config.sim.psf.moffat_beta
  # Constant-star scatter: real, noise-only twin and twin with the configured errors.
  j = data['jitter_calibration']
  assert j['num_stars'] == 2 and (tmp_path / 'scatter.png').stat().st_size > 10_000
  m = j['median_centroid_scatter_px']
  assert m['noise'] < 0.05 < m['real'] < 0.6 and m['noise'] < m['model']
  f = j['median_flux_scatter']
  assert 0 < f['noise'] < f['real'] < 0.05


def test_curve_stats_amplitude_skewness_and_faint_fraction():
  from rcnn_jax.realism import lcstats  # pylint: disable=g-import-not-at-top
  err = np.full(400, 0.01)
  assert lcstats.curve_stats(np.full(400, 18.0), err) == (0.0, 0.0, 0.0)
  phase = np.linspace(0, 1, 400, endpoint=False)
  amp, skew, faint = lcstats.curve_stats(18.0 + 0.3 * np.sin(2 * np.pi * phase), err)
  np.testing.assert_allclose(amp, 0.6 * np.sin(0.45 * np.pi), rtol=0.01)
  assert abs(skew) < 0.01 and 0.25 < faint < 0.40  # sin > 1/3 on 39 % of the cycle
  eclipse = 18.0 + 0.5 * (phase < 0.2)  # 20 % of epochs 0.5 mag fainter
  amp, skew, faint = lcstats.curve_stats(eclipse, err)
  assert amp == 0.5 and skew > 1.0 and faint == 0.2
  # Noise-level dips are not faint epochs: the threshold is max(0.1 mag, 3 sigma).
  assert lcstats.curve_stats(eclipse, np.full(400, 0.3))[2] == 0.0


def test_calibrate_jitter_recovers_quadrature_and_per_epoch_jitter():
  from rcnn_jax.realism import lcstats  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  rows = []
  for _ in range(40):
    noise = (0.01, 0.004)
    off = rng.uniform(-0.5, 0.5, 200) + 0.1 * rng.normal(size=200)
    rows.append({'real': (np.hypot(0.3, noise[0]), np.hypot(0.012, noise[1])), 'noise': noise,
                 'model': noise, 'real_offsets': off.tolist(), 'noise_offsets': [0.0, 0.1],
                 'model_offsets': [0.0, 0.1]})
  cal = lcstats.calibrate_jitter(rows, num_bootstrap=20)
  np.testing.assert_allclose(cal['centroid_jitter_px'], 0.3, rtol=1e-6)
  np.testing.assert_allclose(cal['zero_point_rms'], 0.012, rtol=1e-6)
  np.testing.assert_allclose(cal['centroid_jitter_px_per_epoch_subpixel'], 0.1, atol=0.02)
  assert cal['centre_offset_kurtosis']['real'] < -0.8


def test_realism_variables_pass_the_simulators_selection():
  """lcstats compares real variables with simulated ones that training would keep: a constant
  curve fails the selection, a 0.5 mag one passes; unknown-seeing epochs are not used."""
  from configs import hits  # pylint: disable=g-import-not-at-top
  from rcnn_jax.realism import lcstats  # pylint: disable=g-import-not-at-top
  config = hits.get_config('smoke')
  e = 12
  rec = {'seeing': np.full(e, 1.2), 'seeing_known': np.ones(e, bool), 'sigma': np.full(e, 5.5),
         'zero_point': np.full(e, 25.0), 'exp_time_s': np.full(e, 86.0)}
  lim = lcstats.limiting_magnitude(rec, config)
  # 5 sigma of an aperture of 3.7 FWHM^2 pixels of noise 5.5 ADU, in 86 s at zero point 25.
  fwhm = 1.2 / config.survey.pixel_scale_arcsec
  np.testing.assert_allclose(lim, 25.0 - 2.5 * np.log10(5 * np.sqrt(3.7) * fwhm * 5.5 / 86.0))
  t = np.arange(e)
  curves = np.stack([np.full(e, 19.0), 19.0 + 0.5 * (t % 2 == 0)])  # 3 of the 6 window epochs
  use = np.ones(e, bool)
  assert lcstats.select_detectable(curves, lim, use, config).tolist() == [False, True]
  rec['seeing_known'][:4] = False
  assert lcstats.usable_epochs(rec, config).tolist() == [False] * 4 + [True] * 8
