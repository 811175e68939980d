"""Sec. 3.1 on hand-made light curves: detection, windows, eq. 4, stacks."""

import jax
import jax.numpy as jnp
import numpy as np

from rcnn_jax.sim import sequences


def test_first_detection_on_hand_made_curve():
  mag = jnp.array([25., 24.9, 24., 23.5, 22., 21., 23., 26.])
  lim = jnp.full(8, 23.6)
  assert int(sequences.first_detection(mag, lim, 8)) == 3
  # a detection beyond the field's real epochs does not count
  assert int(sequences.first_detection(mag, lim, 3)) == 8
  assert int(sequences.first_detection(jnp.full(8, 30.), lim, 8)) == 8
  # per-epoch limits matter
  lim2 = lim.at[2].set(24.5)
  assert int(sequences.first_detection(mag, lim2, 8)) == 2


def test_first_detection_on_the_difference_against_the_first_epochs():
  """baseline_epochs n: flux minus the median of the first n epochs' above 5 sigma of the
  difference, sigma^2 = s_e^2 + pi/2 mean(s_b^2) / n (s = limiting flux / 5), by hand."""
  lim = jnp.full(8, 22.5)
  f_lim = 10**(-0.4 * 22.5)
  thresh = 5 * np.sqrt((f_lim / 5)**2 * (1 + 0.5 * np.pi / 3))  # 1.23 limiting fluxes
  to_mag = lambda f: jnp.asarray(-2.5 * np.log10(np.asarray(f, np.float64)), jnp.float32)
  # Bright from the first epoch and fading: the flux rule detects it at once, the difference
  # against the first epochs never (what a difference-imaging survey misses).
  fading = to_mag(f_lim * np.linspace(4.0, 1.0, 8))
  assert int(sequences.first_detection(fading, lim, 8)) == 0
  assert int(sequences.first_detection(fading, lim, 8, baseline_epochs=3)) == 8
  # Bright from the start, then brightening: detected where the rise passes the threshold.
  base = 2.0 * f_lim
  rising = np.array([base, base, base, base + 0.9 * thresh, base + 1.1 * thresh,
                     base + 3 * thresh, base, base])
  assert int(sequences.first_detection(to_mag(rising), lim, 8, baseline_epochs=3)) == 4
  assert int(sequences.first_detection(to_mag(rising), lim, 8)) == 0
  # A transient absent from the baseline (m = inf): detected above 1.23 limiting fluxes.
  new = np.array([0, 0, 0, 0, 1.1 * f_lim, 1.3 * f_lim, 0, 0])
  with np.errstate(divide='ignore'):
    assert int(sequences.first_detection(to_mag(new), lim, 8, baseline_epochs=3)) == 5
    assert int(sequences.first_detection(to_mag(new), lim, 8)) == 4
    # One bright epoch inside the baseline (an asteroid) leaves its median at 0: detected.
    spike = np.array([0, 2 * f_lim, 0, 0, 0, 0, 0, 0])
    assert int(sequences.first_detection(to_mag(spike), lim, 8, baseline_epochs=3)) == 1
    # Epochs beyond the field's real ones do not count.
    assert int(sequences.first_detection(to_mag(new), lim, 5, baseline_epochs=3)) == 8


def test_first_detection_on_the_difference_per_band():
  """Several bands: each epoch against the first n epochs of its own band (per-band templates);
  one band only: the same as no band."""
  lim = jnp.full(10, 22.5)
  f_lim = 10**(-0.4 * 22.5)
  thresh = 5 * np.sqrt((f_lim / 5)**2 * (1 + 0.5 * np.pi / 3))
  to_mag = lambda f: jnp.asarray(-2.5 * np.log10(np.asarray(f, np.float64)), jnp.float32)
  band = jnp.array([0, 1] * 5, jnp.int32)
  # A red constant star (band 1 three times band 0) that brightens in band 1 at epoch 9.
  flux = np.where(np.arange(10) % 2, 3.0, 1.0) * 4 * f_lim
  flux[9] += 1.5 * thresh
  mag = to_mag(flux)
  det = lambda **kw: int(sequences.first_detection(mag, lim, 10, baseline_epochs=3, **kw))
  assert det(band=band, num_bands=2) == 9
  assert det() == 1  # one template for both bands: its colour reads as a detection
  # Band 1's baseline is its epochs 1, 3 and 5: a rise at epoch 7 is measured against them.
  early = np.where(np.arange(10) % 2, 3.0, 1.0) * 4 * f_lim
  early[7] += 1.5 * thresh
  assert int(sequences.first_detection(to_mag(early), lim, 10, 3, band=band, num_bands=2)) == 7
  # The field's real epochs only: epoch 9 beyond num_epochs = 9.
  assert int(sequences.first_detection(mag, lim, 9, 3, band=band, num_bands=2)) == 10
  rng = np.random.default_rng(0)
  for _ in range(20):
    m = jnp.asarray(rng.uniform(20.0, 24.0, 10), jnp.float32)
    one = jnp.zeros(10, jnp.int32)
    assert int(sequences.first_detection(m, lim, 8, 3, band=one, num_bands=1)) == int(
        sequences.first_detection(m, lim, 8, 3))


def test_sequence_start_requires_pre_detection_images():
  start, ok = sequences.sequence_start(jnp.int32(7), 20, 5, 3)
  assert int(start) == 2 and bool(ok)
  _, ok = sequences.sequence_start(jnp.int32(4), 20, 5, 3)  # too early
  assert not bool(ok)
  _, ok = sequences.sequence_start(jnp.int32(20), 20, 5, 3)  # never detected
  assert not bool(ok)
  _, ok = sequences.sequence_start(jnp.int32(18), 20, 5, 3)  # start 13, 7 images left
  assert bool(ok)


def test_sequence_start_clips_early_detections_like_the_real_path():
  """clip_early: a transient detected before pre_detection images exist starts at image 0,
  as preprocess.detection_start clips a real one; never-detected and too-short still fail."""
  start, ok = sequences.sequence_start(jnp.int32(2), 20, 5, 3, clip_early=True)
  assert int(start) == 0 and bool(ok)
  start, ok = sequences.sequence_start(jnp.int32(7), 20, 5, 3, clip_early=True)
  assert int(start) == 2 and bool(ok)
  _, ok = sequences.sequence_start(jnp.int32(20), 20, 5, 3, clip_early=True)
  assert not bool(ok)
  _, ok = sequences.sequence_start(jnp.int32(1), 2, 5, 3, clip_early=True)  # 2 images < n_w
  assert not bool(ok)
  for det in range(15):
    real = max(det - 5, 0)  # preprocess.detection_start's rule
    start, ok = sequences.sequence_start(jnp.int32(det), 20, 5, 3, clip_early=True)
    assert int(start) == real and bool(ok)


def test_window_masks_and_counts():
  idx, ev, sm = sequences.window(jnp.int32(10), 25, 20, 3)
  assert idx.shape == (22,) and ev.shape == (22,) and sm.shape == (20,)
  assert int(ev.sum()) == 15  # epochs 10..24
  assert int(sm.sum()) == 13 == int(sequences.num_steps(10, 25, 20, 3))
  assert int(idx.max()) == 24  # clamped to the last real epoch
  assert list(np.asarray(sm[:13])) == [True] * 13 and not bool(sm[13:].any())
  _, _, sm = sequences.window(jnp.int32(0), 29, 20, 3)
  assert int(sm.sum()) == 20  # capped at N_d = 20


def test_eq4_zero_point_invariance():
  """A source of fixed magnitude gives the same preprocessed counts at any zero point."""
  mag, t_exp, sky = 20.0, 86.0, 120.0
  zps = jnp.array([24.8, 25.0, 25.2])
  adu = t_exp * 10**(0.4 * (zps - mag))  # eq. 1
  raw = sky + adu[:, None, None] * jnp.ones((3, 2, 2)) / 4.0
  proc = sequences.preprocess(raw, jnp.full(3, sky), zps, 25.1)
  expected = t_exp * 10**(0.4 * (25.1 - mag)) / 4.0
  np.testing.assert_allclose(np.asarray(proc), expected, rtol=1e-5)


def test_stack_steps_and_time_gaps():
  x = jnp.arange(6.0)
  s = sequences.stack_steps(x, 3)
  np.testing.assert_array_equal(np.asarray(s), [[0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 5]])
  imgs = jnp.arange(6.0)[:, None, None] * jnp.ones((6, 2, 2))
  st = sequences.stack_steps(imgs, 3)
  assert st.shape == (4, 2, 2, 3)
  np.testing.assert_array_equal(np.asarray(st[2, 0, 0]), [2, 3, 4])
  g = sequences.time_gaps(jnp.array([10., 10.5, 11., 13.]), 2)
  np.testing.assert_allclose(np.asarray(g), [[0, .5], [.5, 1.], [1., 3.]])


def test_functions_work_under_vmap_and_jit():
  mags = jnp.array([[25., 22., 22.], [22., 22., 22.]])
  det = jax.jit(jax.vmap(sequences.first_detection, in_axes=(0, None, None)))(
      mags, jnp.full(3, 23.), 3)
  assert list(np.asarray(det)) == [1, 0]
