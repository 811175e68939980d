"""The composed simulator: shapes, masks, balance, determinism, jit/vmap and the physics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from configs import hits
from rcnn_jax.sim import lightcurves
from rcnn_jax.sim import simulator as sim_lib

B = 70


@pytest.fixture(scope='module')
def sim_and_batch():
  config = hits.get_config('paper')
  config.sim.psf.kind = 'gaussian'
  sim = sim_lib.build_simulator(config)
  fn = jax.jit(lambda k: sim_lib.simulate_batch(k, sim, B))
  batch = jax.device_get(fn(jax.random.key(3)))
  return sim, fn, batch


def test_shapes_and_masks(sim_and_batch):
  sim, _, b = sim_and_batch
  t, e, n_w = sim.max_steps, sim.num_images, sim.n_w
  assert b['images'].shape == (B, t, 21, 21, n_w) and b['images'].dtype == np.float32
  assert b['time_gaps'].shape == (B, t, n_w)
  assert b['mask'].shape == (B, t) and b['mask'].dtype == bool
  assert b['raw_adu'].shape == (B, e, 21, 21)
  for k in ('t_days', 'zero_point', 'sky_adu', 'seeing_arcsec', 'exp_time_s',
            'source_flux_adu', 'host_flux_adu'):
    assert b[k].shape == (B, e), k
  for k in ('label', 'gain', 'magnitude', 'has_host'):
    assert b[k].shape == (B,), k
  steps = b['mask'].sum(1)
  assert steps.min() >= 1 and steps.max() <= t
  # masks are a prefix, and an epoch is valid iff some valid step uses it
  assert np.all(np.diff(b['mask'].astype(int), axis=1) <= 0)
  np.testing.assert_array_equal(b['epoch_valid'].sum(1), steps + n_w - 1)
  assert np.all(b['seeing_arcsec'][b['epoch_valid']] <= 2.0)
  # padded steps carry nothing
  assert np.all(b['images'][~b['mask']] == 0)


def test_exact_class_balance(sim_and_batch):
  _, _, b = sim_and_batch
  np.testing.assert_array_equal(np.bincount(b['label'], minlength=7), [B // 7] * 7)


def test_determinism_and_key_dependence(sim_and_batch):
  _, fn, b = sim_and_batch
  again = jax.device_get(fn(jax.random.key(3)))
  for k in b:
    np.testing.assert_array_equal(b[k], again[k], err_msg=k)
  other = jax.device_get(fn(jax.random.key(4)))
  assert not np.array_equal(b['raw_adu'], other['raw_adu'])


def test_vmap_over_keys_equals_separate_calls(sim_and_batch):
  sim, fn, _ = sim_and_batch
  keys = jax.random.split(jax.random.key(11), 2)
  both = jax.jit(jax.vmap(lambda k: sim_lib.simulate_batch(k, sim, B)['images']))(keys)
  np.testing.assert_allclose(np.asarray(both[1]), np.asarray(fn(keys[1])['images']),
                             rtol=1e-5, atol=0.02)  # float32 rounding of ~1e4 ADU


def test_offset_batches_are_slices_of_the_global_batch(sim_and_batch):
  sim, _, b = sim_and_batch
  # An offset that is not a multiple of the classes: the per-class schedule groups start at
  # another class than the global batch's.
  part = jax.device_get(jax.jit(lambda k: sim_lib.simulate_batch(k, sim, 14, offset=31))(
      jax.random.key(3)))
  np.testing.assert_array_equal(part['label'], b['label'][31:45])
  # Same draws; XLA may fuse a differently sized batch differently (float32 rounding only).
  np.testing.assert_allclose(part['raw_adu'], b['raw_adu'][31:45], rtol=1e-4)


def test_by_class_runs_each_class_on_its_objects_in_batch_order():
  seen = []

  def fn(c, x):
    seen.append(c)
    return x * 10 + c

  x = jnp.arange(100, 123)  # 23 objects, 7 classes: groups of 4, the last rows padding
  out = jax.jit(lambda f: sim_lib.by_class(fn, f, 7, x))(jnp.int32(5))
  np.testing.assert_array_equal(out, np.arange(100, 123) * 10 + (5 + np.arange(23)) % 7)
  assert seen == list(range(7))  # each class traced once, as a Python int


def test_eq4_preprocessing_of_outputs(sim_and_batch):
  _, _, b = sim_and_batch
  scale = 10**((b['zero_point_ref'][:, None] - b['zero_point']) / 2.5)
  proc = (b['raw_adu'] - b['sky_adu'][..., None, None]) * scale[..., None, None]
  np.testing.assert_allclose(b['images'][:, :, :, :, 0][b['mask']], proc[:, :-2][b['mask']],
                             rtol=1e-5, atol=1e-3)
  np.testing.assert_allclose(b['images'][:, :, :, :, 2][b['mask']], proc[:, 2:][b['mask']],
                             rtol=1e-5, atol=1e-3)


def test_time_gaps_are_from_the_first_image(sim_and_batch):
  _, _, b = sim_and_batch
  np.testing.assert_allclose(b['time_gaps'][:, 0, 0], 0.0)
  expect = b['t_days'][:, 1] - b['t_days'][:, 0]
  np.testing.assert_allclose(b['time_gaps'][:, 0, 1], expect, rtol=1e-5, atol=1e-5)
  g = b['time_gaps'][..., 0]
  assert np.all(np.diff(g, axis=1)[b['mask'][:, 1:]] >= 0)


def test_transients_detected_after_five_images(sim_and_batch):
  """Detected pre_detection images after the start, or earlier when the window starts at the
  field's first image (sim.clip_early_start, as preprocess.detection_start clips a real one);
  detected on the difference against the field's first epochs (sim.detection 'difference'):
  checked in full where the window holds them (it starts at the field's first image), and
  where it does not, the detection epoch must at least be above its 5-sigma limit."""
  sim, _, b = sim_and_batch
  assert sim.clip_early_start and sim.detection_baseline == 3
  nb, early, full = sim.detection_baseline, 0, 0
  for i in np.flatnonzero(np.isin(b['label'], sim.transient_ids)):
    flux = b['source_flux_adu'][i] / b['flux_factor'][i]  # detection uses the true flux
    with np.errstate(divide='ignore'):
      mag = b['zero_point'][i] - 2.5 * np.log10(flux / b['exp_time_s'][i])
    lim = b['limmag5'][i]
    first_image = b['t_days'][i, 0] == sim.survey.t_days[b['field'][i], 0]
    if first_image:
      f, fl = 10**(-0.4 * mag), 10**(-0.4 * lim)
      sigma = np.sqrt((fl / 5)**2 + 0.5 * np.pi * np.mean((fl[:nb] / 5)**2) / nb)
      detected = (f - np.median(f[:nb]) > 5 * sigma) & b['epoch_valid'][i]
      assert detected.any(), i
      det = int(np.argmax(detected))
      assert det <= sim.pre_detection, i
      early += det < sim.pre_detection
      full += 1
    else:
      assert mag[sim.pre_detection] < lim[sim.pre_detection], i
  assert early > 0  # the clipped population exists


def test_supernova_windows_start_at_their_difference_detection(sim_and_batch):
  """Each accepted supernova attempt starts pre_detection epochs (floored at 0) before the
  first epoch whose flux minus the median of the field's first 3 epochs' exceeds 5 sigma of
  the difference (by hand, on its curve at all of its field's epochs); among the attempts
  the flux rule would detect, the difference rule rejects those bright from the start."""
  sim, _, _ = sim_and_batch
  sn = sim.class_names.index('Supernova')
  keys = jax.random.split(jax.random.key(11), 240)  # ~4 % accepted (2 detections needed)
  ok, _, (field, _, klc, start) = jax.device_get(jax.jit(jax.vmap(
      lambda k: sim_lib._attempt_parts(k, jnp.int32(sn), sim)))(keys))
  surv, nb = sim.survey, sim.detection_baseline
  checked = missed = 0
  for i in range(len(keys)):
    f = int(field[i])
    n = int(surv.num_epochs[f])
    mag, _, _ = lightcurves.sample_magnitudes(
        jax.random.wrap_key_data(klc[i]), jnp.int32(sn), surv.t_days[f], n, sim.lightcurves,
        sim.transient_ids)
    mag, lim = np.asarray(mag, np.float64)[:n], np.asarray(surv.limmag5[f], np.float64)[:n]
    fl, fx = 10**(-0.4 * lim), 10**(-0.4 * mag)
    sigma = np.sqrt((fl / 5)**2 + 0.5 * np.pi * np.mean((fl[:nb] / 5)**2) / nb)
    detected = fx - np.median(fx[:nb]) > 5 * sigma
    if ok[i]:
      assert detected.any(), i
      assert int(start[i]) == max(int(np.argmax(detected)) - sim.pre_detection, 0), i
      checked += 1
    elif (mag < lim).any() and not detected.any():
      missed += 1
  assert checked >= 5 and missed >= 5, (checked, missed)


def test_class_specific_sources(sim_and_batch):
  sim, _, b = sim_and_batch
  names = list(sim.class_names)
  ev = b['epoch_valid']
  gal = b['label'] == names.index('Galaxy')
  assert np.all(b['source_flux_adu'][gal] == 0) and np.all(b['has_host'][gal])
  assert np.all(b['host_flux_adu'][gal][ev[gal]] > 0)
  ast = b['label'] == names.index('Asteroid')
  assert np.all(((b['source_flux_adu'][ast] > 0) & ev[ast]).sum(1) == 1)
  nv = b['label'] == names.index('NonVariable')
  # Constant once each epoch's calibration error (flux_factor) is divided out.
  f = np.where(ev[nv], b['source_flux_adu'][nv] / b['exp_time_s'][nv] / b['flux_factor'][nv]
               / 10**(0.4 * b['zero_point'][nv]), np.nan)
  np.testing.assert_allclose(np.nanmax(f, 1), np.nanmin(f, 1), rtol=1e-4)
  assert np.all(b['host_flux_adu'][~b['has_host']] == 0)


def test_flux_in_stamp_and_saturation(sim_and_batch):
  _, _, b = sim_and_batch
  ev = b['epoch_valid']
  net = (b['raw_adu'] - b['sky_adu'][..., None, None]).sum((-2, -1))
  true = b['source_flux_adu'] + b['host_flux_adu']
  sat = b['raw_adu'].max((-2, -1)) >= 0.999 * np.asarray(b['raw_adu'].max())
  noise = np.sqrt(441 * (b['sky_adu'] / 3.7 + 10) + true / 3.7) * 5  # 5 sigma over 1,540 sums
  bright = ev & (true > 20 * noise) & ~sat
  # Gaussian PSF of FWHM <= 2" loses < 1.5 % outside 21x21; point sources are central.
  ratio = net[bright] / true[bright]
  assert bright.sum() > 20
  assert 0.96 < np.median(ratio) < 1.01
  assert np.all(np.abs(net - true)[ev & ~sat] < np.maximum(noise, 0.06 * true)[ev & ~sat])


def test_saturation_cap(sim_and_batch):
  """No pixel above its CCD's saturation level (the cap itself: test_render)."""
  sim, _, b = sim_and_batch
  sat = np.asarray(sim.survey.saturation_adu)[b['ccd']]
  assert np.all(b['raw_adu'] <= sat[:, None, None, None] + 1e-3)


def test_host_fractions_and_shared_nd_distribution():
  config = hits.get_config('paper')
  sim = sim_lib.build_simulator(config)
  n = 7 * 200
  b = jax.device_get(jax.jit(lambda k: sim_lib.simulate_batch(k, sim, n)['has_host'])(
      jax.random.key(5)))
  labels = np.arange(n) % 7
  sn = b[labels == 0].mean()
  other = b[np.isin(labels, [1, 2, 3, 4, 6])].mean()
  assert abs(sn - 0.5) < 4 * np.sqrt(0.25 / 200)
  assert abs(other - 0.05) < 4 * np.sqrt(0.05 * 0.95 / 1000)


def test_redraws_take_the_first_accepted_attempt_in_key_order():
  """_draw_schedules against a one-object-at-a-time reference of its documented order: a first
  round of redraw_batch attempts, then rounds of 2 redraw_batch from a split chain, the first
  accepted attempt winning (the last round's first when max_redraws runs out)."""
  config = hits.get_config('paper')
  config.sim.redraw_batch, config.sim.max_redraws = 2, 12  # several rounds, and some give up
  config.sim.clip_early_start = False  # more rejections, so that later rounds and the cap occur
  sim = sim_lib.build_simulator(config)
  b = 21
  keys = jax.random.split(jax.random.key(7), b)
  labels = jnp.arange(b, dtype=jnp.int32) % 7
  field, ccd, mag, ref, start, z = jax.device_get(
      jax.jit(lambda k, l: sim_lib._draw_schedules(k, l, sim))(keys, labels))
  # Per class (each object's own class's curves only; labels from class 0): the same objects.
  grouped = jax.device_get(
      jax.jit(lambda k, l: sim_lib._draw_schedules(k, l, sim, 0))(keys, labels))
  for a, g in zip((field, ccd, mag, ref, start, z), grouped):
    np.testing.assert_array_equal(a, g)
  # One compile for both round sizes: each round's keys padded to 4 (vmap keeps the lanes
  # independent, so the first ``num`` results are those of the ``num`` keys alone).
  vmapped = jax.jit(jax.vmap(lambda k, l: sim_lib._attempt(k, l, sim), (0, None)))

  def attempts(round_keys, label):
    num = round_keys.shape[0]
    padded = jnp.concatenate([round_keys, round_keys[:4 - num]])
    return jax.tree.map(lambda x: x[:num], vmapped(padded, label))

  gave_up = rounds_seen = 0
  for i in range(b):
    first, chain = jax.random.split(keys[i])
    sub, num, count, rounds = first, 2, 2, 1
    while True:
      oks, (f, c, _, s) = jax.device_get(attempts(jax.random.split(sub, num), labels[i]))
      assert oks.shape == (num,)
      j = int(np.argmax(oks))
      if oks.any() or count >= 12:
        break
      chain, sub = jax.random.split(chain)
      num, count, rounds = 4, count + 4, rounds + 1
    gave_up += not oks.any()
    rounds_seen = max(rounds_seen, rounds)
    assert (field[i], ccd[i], start[i]) == (f[j], c[j], s[j]), i
  assert rounds_seen >= 3 and gave_up >= 1  # the test exercised later rounds and the cap


def test_variable_classes_vary_detectably_in_their_window(sim_and_batch):
  """Every RR Lyrae, Cepheid and binary of a batch passes the variability selection at the
  epochs of its own sequence (recomputed from the fluxes it was rendered with)."""
  sim, _, b = sim_and_batch
  assert sim.variable_ids == tuple(sim.class_names.index(c) for c in
                                   ('RRLyrae', 'Cepheid', 'EclipsingBinary'))
  sel = np.isin(b['label'], sim.variable_ids)
  assert sel.sum() == 3 * B // 7
  with np.errstate(divide='ignore'):
    # The selection sees the true curve: each epoch's calibration error divided out.
    mag = b['zero_point'] - 2.5 * np.log10(
        b['source_flux_adu'] / b['flux_factor'] / b['exp_time_s'])
  for i in np.flatnonzero(sel):
    ok = lightcurves.detectable_variability(
        jnp.asarray(mag[i]), jnp.asarray(b['limmag5'][i]), jnp.asarray(b['epoch_valid'][i]),
        sim.var_min_epochs, sim.var_k_sigma, sim.var_floor)
    assert bool(ok), i
  # and a non-variable star would not pass
  nv = np.flatnonzero(b['label'] == sim.class_names.index('NonVariable'))[0]
  assert not bool(lightcurves.detectable_variability(
      jnp.asarray(mag[nv]), jnp.asarray(b['limmag5'][nv]), jnp.asarray(b['epoch_valid'][nv]),
      sim.var_min_epochs, sim.var_k_sigma, sim.var_floor))


def _selected_amplitudes(sim, name, num=800):
  """5-95 % amplitudes of the noise-free magnitudes, at their window's epochs, of the attempts
  of class ``name`` that the simulator keeps (valid window and the variability selection)."""
  from rcnn_jax.sim import sequences  # pylint: disable=g-import-not-at-top
  c = sim.class_names.index(name)
  surv = sim.survey

  def one(k):
    ok, var_ok, (field, _, klc, start) = sim_lib._attempt_parts(k, c, sim)  # pylint: disable=protected-access
    idx, valid, _ = sequences.window(start, surv.num_epochs[field], sim.max_steps, sim.n_w)
    mag, _, _ = lightcurves.sample_magnitudes(jax.random.wrap_key_data(klc), c,
                                              surv.t_days[field][idx], surv.num_epochs[field],
                                              sim.lightcurves, (c,))
    return ok & var_ok, jnp.where(valid, mag, jnp.nan)

  kept, mag = jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(5), num))
  mag = np.asarray(mag)[np.asarray(kept)]
  return np.array([np.ptp(np.nanpercentile(m, [5, 95])) for m in mag])


def test_selected_binaries_are_shallower_than_selected_rr_lyrae(sim_and_batch):
  """Issue 31: the binaries that pass the selection had a median 5-95 % amplitude of 0.47 mag
  (uniform W UMa amplitudes; 0.36 in a large real HiTS sample) and overlapped the RR Lyrae's;
  with Rucinski's (2001) amplitude distribution they are below 0.41 and clearly below the RR
  Lyrae's (0.79)."""
  sim, _, _ = sim_and_batch
  eb = _selected_amplitudes(sim, 'EclipsingBinary', num=2000)
  rr = _selected_amplitudes(sim, 'RRLyrae', num=300)
  assert len(eb) > 250 and len(rr) > 100
  assert np.median(eb) < 0.41, np.median(eb)
  assert np.median(rr) - np.median(eb) > 0.3, (np.median(rr), np.median(eb))


def test_redshift_for_supernovae_only(sim_and_batch):
  sim, _, b = sim_and_batch
  assert b['redshift'].shape == (B,) and b['redshift'].dtype == np.float32
  sn = b['label'] == sim.class_names.index('Supernova')
  assert np.all((b['redshift'][sn] > 0) & (b['redshift'][sn] <= 0.8))
  assert np.all(np.isnan(b['redshift'][~sn]))


def test_galaxy_class_magnitude_is_its_galaxy(sim_and_batch):
  sim, _, b = sim_and_batch
  gal = b['label'] == list(sim.class_names).index('Galaxy')
  total = (b['exp_time_s'] * 10**(0.4 * (b['zero_point'] - b['magnitude'][:, None])))[gal]
  ev = b['epoch_valid'][gal]
  assert np.all(np.isfinite(b['magnitude'][gal]))
  # The stamp's galaxy flux includes each epoch's calibration error (flux_factor).
  ratio = (b['host_flux_adu'] / b['flux_factor'])[gal][ev] / total[ev]
  assert np.all((ratio > 0.2) & (ratio <= 1.0 + 1e-5))  # the stamp holds part of the galaxy
  assert np.median(ratio) > 0.6


def test_psf_bank_batches_are_rotated_and_mirrored(tmp_path):
  """With a PSF bank (here elongated along x: no symmetry of its own), stamps get a random
  symmetry of the square, so point sources come out elongated along x or along y."""
  yy, xx = np.mgrid[:31, :31] - 15.0
  fwhm = np.array([0.8, 1.1, 1.4, 1.8])
  sig = fwhm / 0.263 / 2.3548
  psf = np.exp(-0.5 * ((xx / (1.6 * sig[:, None, None]))**2 + (yy / sig[:, None, None])**2))
  path = tmp_path / 'bank.npz'
  np.savez(path, psf=psf, fwhm_arcsec=fwhm)
  config = hits.get_config('paper')
  config.sim.psf.kind, config.sim.psf.bank_path = 'bank', str(path)
  config.sim.host_fraction_supernova = config.sim.host_fraction_other = 0.0
  sim = sim_lib.build_simulator(config)
  b = jax.device_get(jax.jit(lambda k: sim_lib.simulate_batch(k, sim, 56))(jax.random.key(2)))
  assert np.all(np.isfinite(b['raw_adu']))
  net = b['raw_adu'] - b['sky_adu'][..., None, None]
  bright = b['epoch_valid'] & (b['source_flux_adu'] > 3e4) & (b['raw_adu'].max((-2, -1)) <
                                                              0.99 * b['saturation_adu'][:, None])
  c = np.arange(21) - 10.0
  wide_x = []
  for i, e in zip(*np.nonzero(bright)):
    img = np.clip(net[i, e], 0, None)
    vx = (img.sum(0) * c**2).sum() / img.sum() - ((img.sum(0) * c).sum() / img.sum())**2
    vy = (img.sum(1) * c**2).sum() / img.sum() - ((img.sum(1) * c).sum() / img.sum())**2
    wide_x.append(vx > vy)
  assert len(wide_x) > 20 and 0.2 < np.mean(wide_x) < 0.8


# --------------------------------------------------------------------------- observational errors

JITTER, ZP_RMS, NB = 0.3, 0.05, 140


def _objects(sim, key, n):
  """simulate_indices up to the per-object sources (no hosts, no noise)."""
  index = jnp.arange(n, dtype=jnp.int32)
  keys = jax.vmap(lambda i: jax.random.split(jax.random.fold_in(key, i), 6))(index)
  labels = (index % sim.num_classes).astype(jnp.int32)
  hosts = sim_lib.assign_hosts(key, index, sim)
  schedule = sim_lib._draw_schedules(keys[:, 0], labels, sim)[:5]  # without the redshift
  return jax.vmap(sim_lib.simulate_object, in_axes=(0, 0, 0, 0, None))(keys, labels, hosts,
                                                                      schedule, sim)


@pytest.fixture(scope='module')
def jitter_sim_and_objects():
  config = hits.get_config('paper')
  config.sim.psf.kind = 'gaussian'
  config.sim.astrometry.subpixel_per_epoch = False
  config.sim.astrometry.centroid_jitter_px = JITTER
  config.sim.calibration.zero_point_rms = ZP_RMS
  config.sim.calibration.night_rms = 0.0
  config.sim.calibration.sky_rms_adu = 0.0
  config.sim.calibration.sky_rms_fraction = 0.0
  sim = sim_lib.build_simulator(config)
  objects = jax.jit(lambda k: _objects(sim, k, NB))(jax.random.key(7))
  return sim, objects


@pytest.fixture(scope='module')
def calibration_sim_and_fn():
  """One simulator (one compile) for the sky-error and the night-offset tests: sky errors
  (a = 2 ADU, f = 1 %) and calibration errors (per-epoch 0.1 %, per-night 5 %) together. Each
  test's property is untouched by the other's errors: the sky error is added to the sky
  alone (not scaled by flux_factor, an independent draw), and flux_factor, all the night test
  reads, does not depend on the sky; the sky test reads Galaxy objects, whose point-source
  flux (what flux_factor scales) is 0."""
  config = hits.get_config('paper')
  config.sim.calibration.sky_rms_adu = 2.0
  config.sim.calibration.sky_rms_fraction = 0.01
  config.sim.calibration.zero_point_rms = 0.001
  config.sim.calibration.night_rms = 0.05
  sim = sim_lib.build_simulator(config)
  return sim, jax.jit(lambda k: _objects(sim, k, NB))


def test_sky_errors_match_their_model_and_leave_the_table_sky(calibration_sim_and_fn):
  """The image's sky is the table's plus N(0, a^2 + (f sky)^2) per epoch (off by default; the
  0.7 % of experiments/realism/sky_error.json is the measured f; both terms tested here);
  sky_adu, what preprocessing
  subtracts, is the table's. Objects without a point source (Galaxy, before its host) show
  the error as a flat pedestal."""
  config = hits.get_config('paper')
  assert (config.sim.calibration.sky_rms_adu, config.sim.calibration.sky_rms_fraction) == (
      0.0, 0.0)  # off by default (configs/hits.py); switched on in the fixture
  sim, fn = calibration_sim_and_fn
  assert (sim.sky_rms_adu, sim.sky_rms_fraction) == (2.0, 0.01)
  o = jax.device_get(fn(jax.random.key(5)))
  gal = o['label'] == list(sim.class_names).index('Galaxy')
  ev = o['epoch_valid'][gal]
  ped = o['noiseless'][gal] - o['sky_adu'][gal][..., None, None]
  np.testing.assert_allclose(ped, ped[..., :1, :1] * np.ones_like(ped), atol=1e-3)  # flat
  ped = ped[..., 0, 0][ev]
  sky = o['sky_adu'][gal][ev]
  assert np.all(np.isin(sky, np.asarray(sim.survey.sky_adu)))  # the table's own values
  z = ped / np.sqrt(2.0**2 + (0.01 * sky)**2)
  assert len(z) > 200
  np.testing.assert_allclose(np.std(z), 1.0, rtol=0.12)
  assert abs(np.mean(z)) < 0.2
  assert np.std(ped[sky > 300]) > 2 * np.std(ped[sky < 300])  # grows with the sky level


def test_centroid_jitter_matches_configured_rms(jitter_sim_and_objects):
  sim, o = jitter_sim_and_objects
  ev = np.asarray(o['epoch_valid'])
  centre = np.asarray(o['center'])  # [B, E, 2]
  dev = centre - np.nanmean(np.where(ev[..., None], centre, np.nan), 1, keepdims=True)
  n = ev.sum(1, keepdims=True)
  # Unbiased per-object variance, pooled over objects; sampling error ~ 1 / sqrt(2 N) ~ 1.5 %.
  var = (np.where(ev[..., None], dev, 0.0)**2).sum((0, 1)) / (n - 1).sum()
  np.testing.assert_allclose(np.sqrt(var), JITTER, rtol=0.06)
  # The rendered point source sits at each epoch's centre: first moment of the noiseless stamp.
  nv = np.asarray(o['label']) == list(sim.class_names).index('NonVariable')
  img = np.asarray(o['noiseless'])[nv] - np.asarray(o['sky_adu'])[nv][..., None, None]
  grid = np.arange(21) - 10.0
  tot = img.sum((-2, -1))
  with np.errstate(invalid='ignore'):  # padding epochs hold no flux (0 / 0), left out by `ok`
    mx = (img.sum(-2) * grid).sum(-1) / tot
    my = (img.sum(-1) * grid).sum(-1) / tot
  ok = ev[nv]
  # A Gaussian of FWHM <= 7.6 px cut at 10.5 px pulls the first moment in by a few %.
  for m, c in ((mx[ok], centre[nv][..., 0][ok]), (my[ok], centre[nv][..., 1][ok])):
    assert np.all(np.abs(m - c) <= 0.02 + 0.05 * np.abs(c)), np.max(np.abs(m - c))
  assert np.std(mx[ok] - np.round(mx[ok])) > 0.5 * JITTER  # not one centre for all epochs


def test_zero_point_errors_match_configured_rms_and_keep_the_table_zero_point(
    jitter_sim_and_objects):
  sim, o = jitter_sim_and_objects
  ev = np.asarray(o['epoch_valid'])
  nv = np.asarray(o['label']) == list(sim.class_names).index('NonVariable')
  expected = (np.asarray(o['exp_time_s']) * 10**(0.4 * (np.asarray(o['zero_point'])
                                                      - np.asarray(o['magnitude'])[:, None])))
  with np.errstate(divide='ignore'):  # padding epochs hold no flux (log 0), left out by ev
    ln = np.log(np.asarray(o['source_flux_adu'])[nv] / expected[nv])[ev[nv]]
  np.testing.assert_allclose(np.std(ln), ZP_RMS, rtol=0.12)  # ~ 440 epochs: 3.4 % error
  np.testing.assert_allclose(ln, np.log(np.asarray(o['flux_factor'])[nv][ev[nv]]), atol=1e-5)
  # The stamp carries the scaled flux (a Gaussian <= 2" loses < 1.5 % outside 21 x 21).
  img = np.asarray(o['noiseless'])[nv] - np.asarray(o['sky_adu'])[nv][..., None, None]
  ratio = img.sum((-2, -1))[ev[nv]] / np.asarray(o['source_flux_adu'])[nv][ev[nv]]
  assert 0.98 < ratio.min() and ratio.max() < 1.0001
  # eq. 4 and the observer use the table zero point: the survey's, untouched.
  field = np.asarray(o['field'])
  np.testing.assert_array_equal(np.asarray(o['zero_point_ref']),
                                np.asarray(sim.survey.zero_point)[field, 0])


def test_psf_width_scatter_matches_configured_rms(jitter_sim_and_objects):
  """Each epoch's PSF FWHM is the seeing relation times exp(N(0, fwhm_scatter^2)), drawn per
  epoch (the 4.2 % of psf_calibration.json by default); the table seeing is untouched."""
  sim, o = jitter_sim_and_objects
  assert sim.fwhm_scatter == pytest.approx(0.042)
  ev = np.asarray(o['epoch_valid'])
  rel = np.asarray(sim_lib.psf_fwhm_px(jnp.asarray(o['seeing_arcsec']), sim))
  ln = np.log(np.asarray(o['fwhm_px']) / rel)[ev]
  # ~ 3,000 epochs: the std's sampling error is ~ 1.3 %.
  np.testing.assert_allclose(np.std(ln), sim.fwhm_scatter, rtol=0.06)
  assert abs(np.mean(ln)) < 0.005
  # Independent between the epochs of one object (not one width error per sequence).
  per_obj = [np.std(np.log(np.asarray(o['fwhm_px'])[i] / rel[i])[ev[i]]) for i in range(8)]
  assert min(per_obj) > 0.4 * sim.fwhm_scatter


def test_night_offsets_are_shared_within_a_night_and_match_their_rms(calibration_sim_and_fn):
  """The calibration factor = a per-night offset (one per night, rms sim.calibration.night_rms)
  times a per-epoch error: within a night the factors scatter by the per-epoch rms only, and
  the nightly means scatter by the night rms (the 3.2 % of night_offsets.json by default)."""
  sim, fn = calibration_sim_and_fn
  assert (sim.zero_point_rms, sim.night_rms) == (0.001, 0.05)
  o = jax.device_get(fn(jax.random.key(11)))
  ev, t, ln = o['epoch_valid'], o['t_days'], np.log(o['flux_factor'])
  night = np.floor(t + sim.survey.mjd0 - sim.night_boundary_mjd_frac)
  within, means = [], []
  for i in range(NB):
    for n in np.unique(night[i][ev[i]]):
      sel = ev[i] & (night[i] == n)
      means.append(ln[i][sel].mean())
      if sel.sum() > 1:
        within.append(ln[i][sel] - ln[i][sel].mean())
  within = np.concatenate(within)
  assert np.std(within) < 0.002  # the per-epoch 0.1 %, not the night's 5 %
  np.testing.assert_allclose(np.std(means), 0.05, rtol=0.1)  # ~ 900 object-nights


def test_no_errors_when_configured_zero_and_per_epoch_subpixel_centres(calibration_sim_and_fn):
  """All errors zero: flux factors 1, the seeing relation's widths, one centre per object. Per
  epoch sub-pixel centres (the default, jitter 0.09 px): read on the calibration fixture's
  objects (its sky and calibration errors do not move the centres, an independent draw), which
  saves a compile; 140 objects give ~ 5,000 values (the std's sampling error < 1 %, the
  kurtosis's ~ 0.03)."""
  config = hits.get_config('smoke')
  config.sim.astrometry.subpixel_per_epoch = False
  config.sim.astrometry.centroid_jitter_px = 0.0
  config.sim.calibration.zero_point_rms = 0.0
  config.sim.calibration.night_rms = 0.0
  config.sim.psf.fwhm_scatter = 0.0
  sim = sim_lib.build_simulator(config)
  o = jax.jit(lambda k: _objects(sim, k, 14))(jax.random.key(1))
  np.testing.assert_array_equal(np.asarray(o['flux_factor']), 1.0)
  np.testing.assert_allclose(np.asarray(o['fwhm_px']),
                             np.asarray(sim_lib.psf_fwhm_px(jnp.asarray(o['seeing_arcsec']), sim)),
                             rtol=1e-6)
  c = np.asarray(o['center'])
  np.testing.assert_array_equal(c, np.broadcast_to(c[:, :1], c.shape))
  # Per-epoch sub-pixel centres (the default): uniform in the pixel, plus the jitter.
  default = hits.get_config('paper').sim.astrometry
  assert default.subpixel_per_epoch and default.centroid_jitter_px == 0.09
  csim, fn = calibration_sim_and_fn
  assert csim.subpixel_per_epoch and csim.centroid_jitter_px == 0.09
  o = fn(jax.random.key(1))
  c = np.asarray(o['center'])[np.asarray(o['epoch_valid'])].ravel()
  assert len(c) > 2000
  np.testing.assert_allclose(np.std(c), np.sqrt(1 / 12 + 0.09**2), rtol=0.06)
  assert -1.4 < stats.kurtosis(c) < -0.7  # uniform -1.2, this convolution -1.00, Gaussian 0
  config.sim.calibration.zero_point_rms = -0.1
  with pytest.raises(ValueError, match='zero_point_rms'):
    sim_lib.build_simulator(config)


def test_supernova_hosts_follow_redshift(jitter_sim_and_objects):
  sim, o = jitter_sim_and_objects
  label = np.asarray(o['label'])
  sn = label == list(sim.class_names).index('Supernova')
  add = jax.jit(lambda obj: sim_lib._add_hosts(obj, sim))
  base = jax.device_get(add(o))
  out = {}
  for z in (0.05, 0.6):
    obj = dict(o)
    obj['redshift'] = jnp.where(jnp.asarray(sn), z, jnp.nan).astype(jnp.float32)
    out[z] = jax.device_get(add(obj))
  host = np.asarray(base['has_host'])
  assert (host & sn).sum() >= 5 and (host & ~sn).sum() >= 5
  near, far = (out[z]['host_r_disk_arcsec'][host & sn] for z in (0.05, 0.6))
  assert np.median(far) < 0.5 * np.median(near)
  hf = lambda b: b['host_flux_adu'][host & sn].sum(1) / b['epoch_valid'][host & sn].sum(1)
  assert np.median(hf(out[0.6])) < 0.1 * np.median(hf(out[0.05]))  # fainter too
  # Other hosts (NaN redshift) are drawn from galaxy counts exactly as without a redshift.
  for k in ('host_r_disk_arcsec', 'host_flux_adu', 'noiseless', 'magnitude'):
    np.testing.assert_allclose(out[0.6][k][~sn], base[k][~sn], rtol=1e-6, err_msg=k)
