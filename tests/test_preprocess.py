"""One preparation for simulated and real stamps: identical inputs, seeing cut, zp_ref,
detection."""

from __future__ import annotations

import dataclasses
import io

import jax
import numpy as np
import pytest

from configs import hits
from rcnn_jax.inputs import preprocess
from rcnn_jax.inputs import realdata
from rcnn_jax.sim import render
from rcnn_jax.sim import simulator


def _rules(**changes):
  """The rules of the HiTS config, with some fields changed."""
  return dataclasses.replace(preprocess.Rules.from_config(hits.get_config()), **changes)


def _seq(stamps, mjd, sky, zp=None, seeing=None, name='x'):
  return realdata.RealSequence(name=name, stamps=np.asarray(stamps, np.float32),
                               mjd=np.asarray(mjd, np.float64), sky_adu=np.asarray(sky),
                               zero_point=None if zp is None else np.asarray(zp, np.float64),
                               sky_estimated=False,
                               seeing_arcsec=None if seeing is None else np.asarray(seeing))


@pytest.fixture(scope='module')
def sim_batch():
  config = hits.get_config('smoke')
  sim = simulator.build_simulator(config)
  batch = jax.jit(lambda k: simulator.simulate_batch(k, sim, 14))(jax.random.key(3))
  return config, sim, jax.device_get(batch)


def test_real_file_and_simulated_object_give_identical_inputs(sim_batch):
  """A real file holding a simulated object's raw stamps and conditions (its field from the
  first epoch, with bad-seeing epochs inserted that the cut must drop) gives the simulator's
  model input bit for bit: same seeing cut, zp_ref, window, eq. 4, stacks and time gaps."""
  config, sim, b = sim_batch
  rules = preprocess.Rules.from_config(config)
  surv = jax.device_get(sim.survey)
  checked_late_start = False
  for i in range(14):
    f = int(b['field'][i])
    n = int(surv.num_epochs[f])
    t_field = surv.t_days[f, :n]
    start = int(np.flatnonzero(t_field == b['t_days'][i][0])[0])
    valid = b['epoch_valid'][i]
    e = int(valid.sum())
    checked_late_start |= start > 0
    # Epochs before the window: sky only (they only set zp_ref); then the window's raw stamps.
    stamps = np.concatenate([np.broadcast_to(surv.sky_adu[f, :start, None, None],
                                             (start, 21, 21)), b['raw_adu'][i][:e]])
    cond = lambda name: np.asarray(getattr(surv, name)[f, :start + e], np.float64)
    mjd = 57000.0 + cond('t_days')
    zp, sky, seeing = cond('zero_point'), cond('sky_adu'), cond('seeing_arcsec')
    # Insert two bad-seeing epochs (one before the window) that training never contains.
    for pos in (max(start - 1, 0), start + 2):
      stamps = np.insert(stamps, pos, stamps[pos] * 3.0, axis=0)
      mjd = np.insert(mjd, pos, mjd[pos] - 1e-3)
      zp, sky = np.insert(zp, pos, zp[pos] - 0.7), np.insert(sky, pos, sky[pos] * 2)
      seeing = np.insert(seeing, pos, config.survey.max_seeing_arcsec + 0.5)
    seq = _seq(stamps, mjd, sky, zp, seeing)
    d = preprocess.prepare(seq, rules, start=start)
    np.testing.assert_array_equal(d['mask'], b['mask'][i])
    np.testing.assert_array_equal(d['images'], b['images'][i])
    np.testing.assert_array_equal(d['time_gaps'], b['time_gaps'][i])
    assert d['zero_point_ref'] == np.float32(b['zero_point_ref'][i])
    assert not np.isin(d['epochs'], np.flatnonzero(seeing > 2.0)).any()
  assert checked_late_start


def test_seeing_cut_and_reference_zero_point():
  """A bad-seeing first epoch is dropped, and eq. 4 scales to the first kept epoch's zp."""
  rules = _rules(n_w=1, max_steps=10, max_seeing_arcsec=2.0)
  stamps = np.ones((5, 21, 21), np.float32) * 100.0
  sky = np.full(5, 90.0)
  zp = np.array([24.0, 25.0, 25.5, 25.0, 26.0])
  seeing = np.array([2.5, 1.0, 2.01, 1.5, np.nan])  # NaN: not measured, dropped
  err = io.StringIO()
  seq = _seq(stamps, np.arange(5.0), sky, zp, seeing)
  d = preprocess.prepare(seq, rules, warn=preprocess.Warnings(err))
  np.testing.assert_array_equal(d['epochs'], [1, 3])
  assert d['num_steps'] == 2 and d['mask'].sum() == 2 and len(d['mask']) == 10
  scale = 10.0**((25.0 - zp[[1, 3]]) / 2.5)
  np.testing.assert_allclose(d['images'][:2, 10, 10, 0], 10.0 * scale, rtol=1e-6)
  np.testing.assert_allclose(d['time_gaps'][:2, 0], [0.0, 2.0])
  assert 'unknown (NaN) seeing dropped' in err.getvalue()
  # config.real.drop_unknown_seeing = False keeps it (the earlier rule).
  keep = dataclasses.replace(rules, drop_unknown_seeing=False)
  err = io.StringIO()
  d = preprocess.prepare(seq, keep, warn=preprocess.Warnings(err))
  np.testing.assert_array_equal(d['epochs'], [1, 3, 4])
  assert 'unknown (NaN) seeing kept' in err.getvalue()


def test_unknown_seeing_rule_from_config():
  """The rule comes from config.real, and a saved config without the field drops (default)."""
  config = hits.get_config('smoke')
  assert preprocess.Rules.from_config(config).drop_unknown_seeing
  config.real.drop_unknown_seeing = False
  assert not preprocess.Rules.from_config(config).drop_unknown_seeing
  del config.real['drop_unknown_seeing']
  assert preprocess.Rules.from_config(config).drop_unknown_seeing


def test_fallbacks_warn_once():
  """No seeing: all epochs kept; no zero point: no scaling; each said once for many files."""
  rules = _rules(n_w=3, max_steps=4)
  err = io.StringIO()
  warn = preprocess.Warnings(err)
  stamps = np.random.default_rng(0).normal(100.0, 5.0, (7, 21, 21))
  for name in ('a', 'b', 'c'):
    d = preprocess.prepare(_seq(stamps, np.arange(7.0), np.full(7, 100.0), name=name), rules,
                           warn=warn)
    assert d['num_steps'] == 4 and len(d['epochs']) == 6
    np.testing.assert_allclose(d['images'][0, ..., 0], stamps[0] - 100.0, atol=1e-4)
  lines = err.getvalue().strip().splitlines()
  assert len(lines) == 2, lines
  assert 'no seeing' in lines[0] and 'no zero points' in lines[1]


def test_truncation_and_full_length():
  rules = _rules(n_w=3, max_steps=4)
  # Raw stamps hold the sky: 100 ADU of sky on 100 ADU stamps (a sky of 0 is implausible).
  seq = _seq(np.full((10, 21, 21), 100.0), np.arange(10.0), np.full(10, 100.0),
             np.full(10, 25.0), np.ones(10))
  assert preprocess.prepare(seq, rules)['num_steps'] == 4
  full = preprocess.prepare(seq, rules, max_steps=None)
  assert full['num_steps'] == 8 and full['images'].shape[0] == 8
  with pytest.raises(ValueError, match='fewer than n_w'):
    preprocess.prepare(seq, rules, start=8)


def _rendered_curve(flux, seed, host=0.0, sky=120.0, gain=4.0, rn=6.0, seeing=1.2):
  """Raw stamps of a centred point source with flux [E] (ADU) on sky (+ a constant host),
  Moffat PSF and Poisson + read noise (render.py)."""
  rules = _rules()
  fwhm = render.seeing_to_fwhm_px(seeing, rules.pixel_scale, rules.seeing_scale,
                                  rules.seeing_offset_arcsec)
  psf = np.asarray(render.psf_stamp(fwhm, 0.0, 0.0, 21, 'moffat', rules.moffat_beta))
  rng = np.random.default_rng(seed)
  mean = sky + (np.asarray(flux)[:, None, None] + host) * psf
  e = rng.poisson(mean * gain) + rng.normal(0.0, rn, mean.shape)
  return e / gain


def _sigma(sky=120.0, gain=4.0, rn=6.0, seeing=1.2):
  rules = _rules(gain=gain, read_noise_e=rn)
  _, s = preprocess.epoch_photometry(np.zeros((1, 21, 21)), [seeing], [sky], rules)
  return float(s[0])


@pytest.mark.parametrize('host', [0.0, 3000.0])
def test_detection_rule_on_rendered_light_curves(host):
  """First epoch 5 sigma above the early baseline; a constant host/star does not count, a
  2-sigma bump is not a detection; the sequence starts pre_detection epochs before.
  (sigma here: the sky-only error, as a survey's limiting magnitude defines it.)"""
  sig = _sigma()
  e = 16
  flux = np.zeros(e)
  flux[6] = 2.0 * sig  # a 2-sigma bump (3 sigma below the threshold): not a detection
  flux[10:] = 12.0 * sig * np.arange(1, e - 9)  # the transient: detected at epoch 10
  rules = _rules(pre_detection=5, max_steps=6)
  stamps = _rendered_curve(flux, seed=1, host=host)
  seq = _seq(stamps, np.arange(e) * 0.1, np.full(e, 120.0), np.full(e, 25.0), np.full(e, 1.2))
  f, s = preprocess.epoch_photometry(stamps - 120.0, np.full(e, 1.2), np.full(e, 120.0), rules)
  # The photometry's flux (unbiased over sub-pixel positions; a few % high for an exactly
  # centred source) above the baseline, within 3 sigma.
  np.testing.assert_allclose(f[10:] - np.median(f[:3]), flux[10:], rtol=0.1, atol=3 * sig)
  assert preprocess.first_detection(f, s, rules.baseline_epochs) == 10
  d = preprocess.prepare(seq, rules, start='detection')
  assert d['start'] == 5
  # Never detected: starts at the first epoch, with a warning.
  err = io.StringIO()
  quiet = _seq(_rendered_curve(np.zeros(e), 2, host=host), np.arange(e) * 0.1,
               np.full(e, 120.0), np.full(e, 25.0), np.full(e, 1.2), name='quiet')
  assert preprocess.prepare(quiet, rules, start='detection',
                            warn=preprocess.Warnings(err))['start'] == 0
  assert 'never 5 sigma' in err.getvalue()


def test_first_detection_by_hand():
  assert preprocess.first_detection([0.0, 7.0], [1.0, 1.0], 0, 5.0) == 1  # no baseline: 7 > 5
  flux = np.array([1.0, -1.0, 0.0, 4.0, 6.0, 20.0])
  sigma = np.ones(6)
  assert preprocess.first_detection(flux, sigma, 3, 5.0) == 4  # 6 - 0 > 5
  assert preprocess.first_detection(flux, sigma * 10, 3, 5.0) == 6  # none
  assert preprocess.start_for_class('Supernova', _rules()) == 'detection'
  assert preprocess.start_for_class('RRLyrae', _rules()) == 'first'


def _host_and_source(flux, seeing, host_flux, host_sigma_px, seed, sky=120.0, gain=4.0, rn=6.0):
  """Raw stamps [E, 21, 21]: a centred point source of flux [E] on a centred Gaussian host
  (sigma ``host_sigma_px``) seen through the Moffat PSF of each epoch's seeing [E]."""
  rules = _rules()
  w, s = render.psf_mixture('moffat', rules.moffat_beta)
  rng = np.random.default_rng(seed)
  out = []
  for f, see in zip(flux, seeing):
    fwhm = float(render.seeing_to_fwhm_px(see, rules.pixel_scale, rules.seeing_scale,
                                          rules.seeing_offset_arcsec))
    psf = render.gaussian_mixture_stamp(w, s * fwhm, 0.0, 0.0, 21)
    host = render.gaussian_mixture_stamp(w, np.sqrt((s * fwhm)**2 + host_sigma_px**2), 0.0, 0.0,
                                         21)
    mean = sky + f * np.asarray(psf) + host_flux * np.asarray(host)
    out.append((rng.poisson(mean * gain) + rng.normal(0.0, rn, mean.shape)) / gain)
  return np.asarray(out)


def _start(stamps, seeing, rules):
  e = len(stamps)
  seq = _seq(stamps, np.arange(e) * 0.1, np.full(e, 120.0), np.full(e, 25.0), seeing)
  return preprocess.detection_start(seq, np.arange(e), 25.0, rules,
                                    warn=lambda *a: None)


@pytest.mark.parametrize('baseline_seeing', [0.9, 1.8])
def test_difference_detection_ignores_a_host_under_changing_seeing(baseline_seeing):
  """A static extended host seen at ``baseline_seeing`` on the baseline epochs, then
  alternately at 0.9" and 1.8" (as one HiTS night can give), is no detection for the
  PSF-matched difference (Alard & Lupton 1998): its residual stays near the noise both ways
  (a kernel matching the FWHM alone leaves a bias of -3 sigma from a 1.8" baseline). Plain
  PSF photometry of the host grows with the seeing: from a 0.9" baseline it fires. A
  transient on the same host is detected at its first 5-sigma epoch."""
  e = 16
  other = 1.8 if baseline_seeing == 0.9 else 0.9
  seeing = np.where((np.arange(e) % 2 == 1) & (np.arange(e) > 2), other, baseline_seeing)
  sig = _sigma(seeing=1.8)
  rules = _rules(pre_detection=2)
  quiet = _host_and_source(np.zeros(e), seeing, 6000.0, 2.0, seed=4)
  if baseline_seeing == 0.9:
    assert _start(quiet, seeing, dataclasses.replace(rules, detection_method='photometry')) > 0
  assert _start(quiet, seeing, rules) == 0  # never detected: the first epoch
  f, s = preprocess.epoch_photometry(quiet - 120.0, seeing, np.full(e, 120.0), rules)
  d = preprocess.matched_difference_flux(quiet - 120.0, preprocess._fwhm_px(seeing, rules), 3,
                                         rules)
  assert np.ptp(f) > 10 * sig  # the host's photometry swings with the seeing
  assert np.abs(d).max() < 4 * sig * np.sqrt(1.5)  # its matched difference does not
  # Nor is it biased by more than 2 sigma (measured -1.7 from a 0.9" baseline, +0.1 from 1.8";
  # a FWHM-only kernel: -2.9 from 1.8"). The noise of this mean: ~0.5 sigma.
  assert abs(np.mean(d[seeing == other])) < 2.0 * sig
  flux = np.zeros(e)
  flux[9:] = 15.0 * sig  # the transient: 15 sigma from epoch 9 on
  loud = _host_and_source(flux, seeing, 6000.0, 2.0, seed=5)
  assert _start(loud, seeing, rules) == 9 - 2


def test_matched_difference_of_a_constant_star_is_unbiased():
  """A bright constant point star at seeing from 0.8" to 2" : each image's flux is measured with
  its own PSF convolved like the image, so the differences scatter as the noise, unbiased
  (a template left unconvolved would bias them by ~10 %)."""
  e = 12
  seeing = np.linspace(0.8, 2.0, e)[np.random.default_rng(0).permutation(e)]
  star = 20000.0
  stamps = _host_and_source(np.full(e, star), seeing, 0.0, 1.0, seed=6)
  rules = _rules()
  d = preprocess.matched_difference_flux(stamps - 120.0, preprocess._fwhm_px(seeing, rules), 3,
                                         rules)
  _, s = preprocess.epoch_photometry(stamps - 120.0, seeing, np.full(e, 120.0), rules)
  assert np.abs(d).max() < 5 * np.sqrt(np.max(s)**2 * 1.5)
  assert abs(np.mean(d)) < 0.01 * star
