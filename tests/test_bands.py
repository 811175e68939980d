"""Several bands (issue 15): cadence, per-band conditions, colours, filters, model input, stream.

Also the guard of the single-band case: HiTS's simulated batches are those of the code before
bands existed (integer arrays bit for bit, float arrays to 1e-5; recorded on the CPU).
"""

import hashlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import hits
from configs import lsst
from configs import ztf
from rcnn_jax import models
from rcnn_jax.core import utils
from rcnn_jax.core.errors import UserError
from rcnn_jax.sim import bands
from rcnn_jax.sim import cadence
from rcnn_jax.sim import lightcurves
from rcnn_jax.sim import render
from rcnn_jax.sim import simulator as sim_lib
from rcnn_jax.sim import survey as survey_lib
from rcnn_jax.training import config_check

# The arrays of batches.simulate_to_host(hits smoke, 28, chunk=14) as the code before any band
# code existed (commit 27eda9b) wrote them: integer and boolean arrays by sha256[:16]; float
# arrays by (sum, sum of |x|, projection on a seeded Gaussian vector), NaNs left out, since
# another CPU or XLA optimisation level moves float32 results by an ulp (measured: 1e-7
# relative), which changes a hash but no physics.
HITS_SMOKE_HASHES = {
    'ccd': 'd79053ea7b7b089c', 'epoch_valid': '2ffef79e7f249004', 'field': '34701365d55872d6',
    'has_host': 'ae7754f1e4adb0e1', 'label': '5e094790b8773aab', 'mask': '16b1a7777a558ba9',
}
HITS_SMOKE_FLOATS = {
    'exp_time_s': (19264.0, 19264.0, 273.6013384687965),
    'flux_factor': (223.6308906674385, 223.6308906674385, 3.5636898394127154),
    'gain': (110.2364227771759, 110.2364227771759, -13.417434302952095),
    'host_flux_adu': (214831.46952819824, 214831.46952819824, 127340.73661103206),
    'host_r_disk_arcsec': (9.030455648899078, 9.030455648899078, -1.4554350389199495),
    'images': (36806150.02757947, 37402796.11412133, 562712.8375714198),
    'limmag5': (5288.813629150391, 5288.813629150391, 85.09396004765881),
    'magnitude': (554.292483329773, 554.292483329773, -77.079361683114),
    'mjd': (12785039.489400985, 12785039.489400985, 181490.2224997934),
    'raw_adu': (38327479.25022125, 38327479.25022125, 80442.8062418208),
    'read_noise_e': (175.85963344573975, 175.85963344573975, -21.210930227868175),
    'redshift': (2.1398183703422546, 2.1398183703422546, 0.6821939762507325),
    'saturation_adu': (1166415.390625, 1166415.390625, -122527.00959593963),
    'seeing_arcsec': (309.1617865562439, 309.1617865562439, -0.6076536810626862),
    'sky_adu': (48550.64418029785, 48550.64418029785, -1648.2508179585493),
    'source_flux_adu': (16796641.200668335, 16796641.200668335, -1870760.8164851419),
    'time_gaps': (887.5058491975069, 887.5058491975069, -37.19703136695034),
    'zero_point': (5607.4459400177, 5607.4459400177, 79.52092855825595),
    'zero_point_ref': (700.8954582214355, 700.8954582214355, -85.5665697449173),
}


def _float_fingerprint(a):
  x = np.asarray(a, np.float64).ravel()
  w = np.random.default_rng(0).standard_normal(x.size)
  ok = np.isfinite(x)
  x, w = np.where(ok, x, 0.0), np.where(ok, w, 0.0)
  return x.sum(), np.abs(x).sum(), x @ w


@pytest.mark.skipif(jax.default_backend() != 'cpu', reason='recorded on the CPU')
def test_hits_outputs_unchanged_by_the_band_code():
  from rcnn_jax.sim import batches  # pylint: disable=g-import-not-at-top
  config = hits.get_config('smoke')
  # The physics added since (issue 12: RRab broad minimum, sky errors, supernovae detected on
  # the difference) switched off, so that the comparison is of the band code alone.
  config.sim.lightcurves.rrab_q = (0.85, 0.93)
  config.sim.lightcurves.rrab_minimum = (0.5, 0.1, 0.0)
  config.sim.calibration.sky_rms_adu = 0.0
  config.sim.calibration.sky_rms_fraction = 0.0
  config.sim.calibration.zero_point_rms = 0.0093
  config.sim.clip_early_start = False
  config.sim.detection = 'flux'
  del config.sim.lightcurves['contact_amp_flat_to']  # issue 31's W UMa amplitudes: absent = old
  config.sim.supernova_min_detections = 1  # issue 42's repeated detection: 1 = the paper's
  data = batches.simulate_to_host(config, 28, chunk=14, progress=False)
  assert 'band' not in data and data['time_gaps'].shape[-1] == 3
  got = {k: hashlib.sha256(np.asarray(data[k]).tobytes()).hexdigest()[:16]
         for k in HITS_SMOKE_HASHES}
  assert got == HITS_SMOKE_HASHES
  for k, want in HITS_SMOKE_FLOATS.items():
    fp = _float_fingerprint(data[k])
    np.testing.assert_allclose(fp, want, rtol=0, atol=1e-5 * (abs(want[1]) + 1e-30), err_msg=k)
  # The objects without a redshift (the non-extragalactic ones: NaN), bit for bit.
  assert hashlib.sha256(np.isnan(data['redshift']).tobytes()).hexdigest()[:16] == '243d800e752b9255'
  # Table 3's count (the paper's model, and the checkpoints of workdirs/cpu_rcnn) unchanged.
  assert models.table3_param_count() == 5705037
  assert bands.side_width(3, 1) == 3


def test_hits_survey_is_one_band():
  surv = survey_lib.build_survey(hits.get_config('smoke').survey)
  assert surv.bands == ('g',) and surv.num_bands == 1
  assert not np.asarray(surv.band_index).any()


# ------------------------------------------------------------------------------------------
# Configs, cadence and per-band conditions


@pytest.mark.parametrize('mod', [ztf, lsst])
@pytest.mark.parametrize('variant', ['paper', 'cpu', 'smoke', 'smoke,lc'])
def test_configs_validate(mod, variant):
  config_check.validate(mod.get_config(variant))


def test_bad_band_config_is_one_line_user_error():
  config = ztf.get_config('smoke')
  del config.survey.band_conditions['r']
  with pytest.raises(utils.UserError, match="band_conditions: no entry for band 'r'"):
    config_check.validate(config)
  config = lsst.get_config('smoke')
  config.survey.cadence.band_pattern = 'random'
  with pytest.raises(utils.UserError, match='band_pattern'):
    config_check.validate(config)


def _valid(surv):
  n = np.asarray(surv.num_epochs)
  return np.arange(surv.max_epochs)[None] < n[:, None]


def test_ztf_cadence_g_then_r_every_few_nights():
  surv = survey_lib.build_survey(ztf.get_config('smoke').survey)
  assert surv.bands == ('g', 'r')
  t, b, n = np.asarray(surv.t_days), np.asarray(surv.band_index), np.asarray(surv.num_epochs)
  for f in range(surv.num_fields):
    tf, bf = t[f, :n[f]], b[f, :n[f]]
    night = np.round(tf - tf[0])  # a night's visits are < 0.1 d apart, its start +- 0.1 d
    nights = np.unique(night)
    both = 0
    for nn in nights:  # g then r (the seeing cut may drop one of them)
      seq = bf[night == nn].tolist()
      assert seq in ([0, 1], [0], [1])
      both += seq == [0, 1]
    assert both >= 0.8 * len(nights)
    gaps = np.diff(nights)
    assert set(np.round(gaps % 3.0, 6)) == {0.0}  # a 3-night cadence (weather drops nights)
  assert 60 < np.median(n) < 130  # ~ 180 / 3 x 0.75 x 2 = 90


def test_lsst_cadence_pairs_and_band_fractions():
  config = lsst.get_config('smoke')
  surv = survey_lib.build_survey(config.survey)
  valid = _valid(surv)
  b = np.asarray(surv.band_index)[valid]
  w = np.asarray([config.survey.cadence.band_weights[x] for x in lsst.LSST_BANDS])
  frac = np.bincount(b, minlength=6) / b.size
  np.testing.assert_allclose(frac, w / w.sum(), atol=0.03)
  t = np.asarray(surv.t_days)[0, :int(surv.num_epochs[0])]
  dt = np.diff(t)
  pair = dt[dt < 0.2]  # within a night: a pair's two visits (the seeing cut drops a few)
  assert np.all(np.abs(pair * 24 - 0.55) < 0.2) and pair.size >= 0.35 * t.size
  assert np.median(dt[dt >= 0.2]) >= 1.5  # revisits after a few nights


def test_per_band_zero_points_sky_by_eq1_and_limiting_magnitudes():
  """Zero points per band as configured; sky ADU is eq. 1 of the sky brightness; the median
  5-sigma depths match the cited ones (ZTF: Bellm et al. 2019a; LSST: Ivezic et al. 2019 at
  dark sky and median seeing; the survey medians are shallower by the moon and seeing spread)."""
  config = ztf.get_config('smoke')
  surv = survey_lib.build_survey(config.survey)
  valid = _valid(surv)
  b = np.asarray(surv.band_index)
  zp, lim = np.asarray(surv.zero_point), np.asarray(surv.limmag5)
  for i, name in enumerate(surv.bands):
    on = valid & (b == i)
    q = config.survey.band_conditions[name].zero_point_quantiles
    assert abs(np.median(zp[on]) - q[1]) < 0.02
    assert abs(np.median(lim[on]) - {'g': 20.8, 'r': 20.6}[name]) < 0.1
  assert np.median(zp[valid & (b == 0)]) - np.median(zp[valid & (b == 1)]) > 0.05
  sky = cadence.sky_adu_per_pixel(21.0, 22.5, 1.01, 30.0)
  assert sky == pytest.approx(30.0 * 1.01**2 * 10**(-0.4 * (21.0 - 22.5)))
  sc = lsst.get_config('smoke').survey
  m5 = dict(zip('ugrizy', (23.9, 25.0, 24.7, 24.0, 23.3, 22.1)))  # Ivezic et al. 2019, Table 2
  dark = dict(zip('ugrizy', (22.99, 22.26, 21.20, 20.48, 19.60, 18.61)))
  for name in 'ugrizy':
    bc = sc.band_conditions[name]
    zp_b = bc.zero_point_quantiles[1]
    sky_b = cadence.sky_adu_per_pixel(dark[name], zp_b, sc.pixel_scale_arcsec, sc.exp_time_s)
    lim_b = cadence.limiting_magnitude(zp_b, sky_b, bc.seeing_quantiles_arcsec[1],
                                       sc.pixel_scale_arcsec, np.median(sc.gain_range),
                                       sc.read_noise_median_e, sc.exp_time_s)
    assert abs(lim_b - m5[name]) < 0.4, (name, lim_b)  # r: 24.34 against 24.7


# ------------------------------------------------------------------------------------------
# Light curves: the band's filter for a SN Ia, colours for the others


@pytest.fixture(scope='module')
def lsst_lc():
  config = lsst.get_config('smoke')
  config.sim.lightcurves.ia_fraction = 1.0
  return config, lightcurves.build_lightcurve_model(config.sim, config.survey)


def test_sn_ia_through_each_bands_filter(lsst_lc):
  from astropy.cosmology import Planck18  # pylint: disable=g-import-not-at-top
  import sncosmo  # pylint: disable=g-import-not-at-top
  config, lcm = lsst_lc
  assert lcm.num_bands == 6 and lcm.ia_mag_bands.shape[0] == 6
  zi, pi = 10, int(np.argmin(np.abs(np.asarray(lcm.ia_phase))))
  z = float(lcm.ia_z[zi])
  model = sncosmo.Model('hsiao-subsampled')
  model.set(z=z, t0=0.0)
  model.set_source_peakabsmag(-19.3, 'bessellb', 'ab', cosmo=Planck18)
  f = bands.load_filter('lsst2016-i')
  direct = model.bandmag(sncosmo.Bandpass(f.wavelength, f.response), 'ab',
                         float(lcm.ia_phase[pi]) * (1 + z))
  assert float(lcm.ia_mag_bands[3, zi, pi]) == pytest.approx(direct, abs=1e-3)
  # The bands differ (a Ia at z ~ 0.25 near peak is bluest in g-r, faint in u).
  row = np.asarray(lcm.ia_mag_bands[:, zi, pi])
  assert row[0] - row[1] > 0.3 and len(set(np.round(row, 2))) == 6
  # Per epoch, a mixed-band curve takes each epoch's band's table.
  t = jnp.linspace(0.0, 60.0, 24)
  band = jnp.asarray(np.arange(24) % 6, jnp.int32)
  key = jax.random.key(3)
  sn = config.sim.class_names.index('Supernova')
  mixed, _, _ = lightcurves.sample_magnitudes(key, sn, t, 24, lcm, band=band)
  for b in range(6):
    single, _, _ = lightcurves.sample_magnitudes(key, sn, t, 24, lcm,
                                                 band=jnp.full((24,), b, jnp.int32))
    on = np.asarray(band) == b
    np.testing.assert_array_equal(np.asarray(mixed)[on], np.asarray(single)[on])


def test_variable_star_colours_and_amplitude_ratios(lsst_lc):
  config, lcm = lsst_lc
  names = config.sim.class_names
  rr = names.index('RRLyrae')
  t = jnp.linspace(0.0, 30.0, 400)
  key = jax.random.key(5)
  g, ref, _ = lightcurves.sample_magnitudes(key, rr, t, 400, lcm, band=jnp.full((400,), 1))
  i, ref_i, _ = lightcurves.sample_magnitudes(key, rr, t, 400, lcm, band=jnp.full((400,), 3))
  assert float(ref) == float(ref_i)  # the reference magnitude is the reference band's
  mean_c, sd_c, ratio = config.sim.colours.classes.RRLyrae['i']
  amp_g = float(g.max() - g.min())
  amp_i = float(i.max() - i.min())
  assert amp_i / amp_g == pytest.approx(ratio, rel=1e-3)
  # i - g about the mean: the colour mean +- a few sd (one draw per object).
  colour = float(np.mean(np.asarray(i) - ref) - ratio * np.mean(np.asarray(g) - ref))
  assert abs(colour - mean_c) < 4 * sd_c + 1e-6


# ------------------------------------------------------------------------------------------
# Simulated batches: band per epoch, eq. 1 per band, one-hots in the model input


@pytest.fixture(scope='module')
def ztf_batch():
  config = ztf.get_config('smoke')
  sim = sim_lib.build_simulator(config)
  batch = jax.jit(lambda k: sim_lib.simulate_batch(k, sim, 14))(jax.random.key(0))
  return config, sim, jax.device_get(batch)


def test_batch_bands_follow_the_survey_and_eq1_per_band(ztf_batch):
  config, sim, b = ztf_batch
  surv = sim.survey
  band_index = np.asarray(surv.band_index)
  t_days = np.asarray(surv.t_days)
  for j in range(14):  # each epoch's band is its field's epoch's band
    f = int(b['field'][j])
    for e in np.flatnonzero(b['epoch_valid'][j]):
      k = int(np.argmin(np.abs(t_days[f] - b['t_days'][j, e])))
      assert band_index[f, k] == b['band'][j, e]
  names = config.sim.class_names
  nv = np.flatnonzero(b['label'] == names.index('NonVariable'))
  assert nv.size
  for j in nv:  # a constant star: eq. 1 with each band's zero point gives one magnitude per band
    v = b['epoch_valid'][j]
    m = b['zero_point'][j] - 2.5 * np.log10(
        b['source_flux_adu'][j] / (b['flux_factor'][j] * b['exp_time_s'][j]))
    g, r = v & (b['band'][j] == 0), v & (b['band'][j] == 1)
    np.testing.assert_allclose(m[g], b['magnitude'][j], atol=2e-4)
    assert np.ptp(m[r]) < 4e-4
    mean_c, sd_c, _ = config.sim.colours.classes.NonVariable['r']
    assert abs(np.mean(m[r]) - b['magnitude'][j] - mean_c) < 4 * sd_c
  # render.mag_to_adu is eq. 1 inverted
  assert float(render.mag_to_adu(20.0, 22.5, 30.0)) == pytest.approx(30.0 * 10**(0.4 * 2.5))


def test_band_one_hots_in_the_model_input(ztf_batch):
  config, sim, b = ztf_batch
  n_w, nb = sim.n_w, 2
  side = b['time_gaps']
  assert side.shape == (14, sim.max_steps, bands.side_width(n_w, nb)) and side.shape[-1] == 9
  oh = side[..., n_w:].reshape(14, sim.max_steps, n_w, nb)
  for j in range(14):
    for t in range(sim.max_steps):
      if b['mask'][j, t]:
        want = np.eye(nb)[b['band'][j, t:t + n_w]]
        np.testing.assert_array_equal(oh[j, t], want)
      else:
        assert not oh[j, t].any()
  # The gaps are unchanged: days since the first image.
  np.testing.assert_allclose(side[:, 0, :n_w][b['mask'][:, 0]],
                             (b['t_days'][:, :n_w] - b['t_days'][:, :1])[b['mask'][:, 0]],
                             atol=1e-5)
  # The LSTM input grows by n_w * NB: 4 H (n_w NB) parameters more than one band.
  model = models.build_model(config.model, 7)
  x = jnp.zeros((2, sim.max_steps, 21, 21, n_w))
  mask = jnp.ones((2, sim.max_steps), bool)
  count = lambda w: models.count_params(jax.eval_shape(
      lambda: model.init(jax.random.key(0), x, jnp.zeros((2, sim.max_steps, w)), mask))['params'])
  assert count(9) - count(3) == 4 * config.model.lstm_size * n_w * nb


def test_mixed_band_stacking_by_hand():
  band = jnp.asarray([0, 1, 1, 0, 2], jnp.int32)
  mask = jnp.asarray([True, True, False])
  out = np.asarray(bands.one_hot_steps(band, mask, 3, 3)).reshape(3, 3, 3)
  np.testing.assert_array_equal(out[0], np.eye(3)[[0, 1, 1]])
  np.testing.assert_array_equal(out[1], np.eye(3)[[1, 1, 0]])
  assert not out[2].any()
  gaps = jnp.ones((3, 3))
  assert bands.side_input(gaps, band, mask, 3, 1) is gaps  # one band: the gaps alone
  assert bands.side_input(gaps, band, mask, 3, 3).shape == (3, 12)


def test_stream_takes_a_band_per_image(ztf_batch):
  """The incremental mode with a band per image equals the model on the whole sequence."""
  from rcnn_jax.serving.classifier import Classifier  # pylint: disable=g-import-not-at-top
  from rcnn_jax.sim import sequences  # pylint: disable=g-import-not-at-top
  config, sim, b = ztf_batch
  model = models.build_model(config.model, 7)
  j = int(np.argmax(b['mask'].sum(1)))
  steps = int(b['mask'][j].sum())
  e = steps + sim.n_w - 1
  raw, sky, zp = b['raw_adu'][j, :e], b['sky_adu'][j, :e], b['zero_point'][j, :e]
  t, band = b['t_days'][j, :e].astype(np.float64), b['band'][j, :e]
  mask = np.ones(steps, bool)
  x, gaps = sequences.observe_steps(raw, sky, zp, zp[0], t - t[0], mask, sim.n_w)
  side = bands.side_input(gaps, jnp.asarray(band), jnp.asarray(mask), sim.n_w, 2)
  variables = model.init(jax.random.key(1), x[None], side[None], mask[None])
  want = jax.nn.softmax(model.apply(variables, x[None], side[None], mask[None]), -1)[0]
  clf = Classifier(config, variables['params'], variables['batch_stats'])
  state = clf.new_state(1)
  got = []
  names = np.asarray(sim.survey.bands)[band]
  for i in range(e):
    probs, state = clf.update(state, raw[i][None], np.asarray([59000.0 + t[i]]),
                              zp[i:i + 1], sky[i:i + 1], band=names[i:i + 1])
    if i >= sim.n_w - 1:
      got.append(probs[0])
  np.testing.assert_allclose(np.stack(got), np.asarray(want), atol=2e-5)
  with pytest.raises(UserError, match='band is required'):
    clf.update(state, raw[:1], np.asarray([59999.0]), zp[:1], sky[:1])
