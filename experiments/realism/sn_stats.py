"""Supernova windows, real against simulated, measured the same way on both (issue 12).

    python experiments/realism/sn_stats.py [--num 280] [--config configs/hits.py:cpu] \
        > experiments/realism/sn_stats.json

For each supernova's model window (the epochs its steps see: real files through
``preprocess.prepare(start='detection')``, simulated ones as ``simulator.simulate_batch``
renders them), the PSF-matched difference flux of every epoch against the window's first
``config.real.baseline_epochs`` epochs (``preprocess.matched_difference_flux``, the real path's
detection measurement) in units of its error, and from it: steps (N_d), epochs above 5 sigma,
the share of epochs from the first 5-sigma one to the window's end that stay above 3 sigma
(does the supernova stay visible, or appear once as an asteroid does), the peak and the last
epoch's S/N (what the final step sees), and the host's PSF flux in the baseline. The 10 real
development supernovae are read to check, not to fit.
"""
import argparse
import glob
import importlib.util
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..'))
from rcnn_jax.inputs import preprocess  # noqa: E402
from rcnn_jax.inputs import realdata
from rcnn_jax.sim import simulator

HERE = os.path.dirname(os.path.abspath(__file__))
REAL = os.path.join(HERE, '..', '..', '..', 'shared', 'data', 'hits2015', 'real_labelled_dev',
                    'Supernova')


def window_stats(images, seeing, sky, scale, rules):
  """Stats of one window: images sky-subtracted and eq. 4-scaled [E, S, S]."""
  flux, sigma = preprocess.epoch_photometry(images, seeing, sky, rules)
  sigma = sigma * scale  # in eq. 4 units, as preprocess.detection_start
  nb = max(1, min(rules.baseline_epochs, len(images)))
  diff = preprocess.matched_difference_flux(images, preprocess._fwhm_px(seeing, rules), nb,
                                            rules)  # pylint: disable=protected-access
  err = np.sqrt(sigma**2 + 0.5 * np.pi * np.mean(sigma[:nb]**2) / nb)
  snr = diff / err
  det = np.flatnonzero(snr > 5.0)
  after = snr[det[0]:] if len(det) else np.zeros(0)
  return dict(epochs=len(images), starts_detected=bool(snr[0] > 5.0), n_det5=int(len(det)),
              stay3=float(np.mean(after > 3.0)) if len(after) else float('nan'),
              peak_snr=float(snr.max()), last_snr=float(snr[-1]),
              host_flux=float(np.median(flux[:nb])))


def real_stats(rules, n_w):
  out = {}
  for f in sorted(glob.glob(os.path.join(REAL, '*.npz'))):
    seq = realdata.load_sequence(f, n_w=n_w)
    p = preprocess.prepare(seq, rules, start='detection', warn=lambda *a: None)
    e = p['num_steps'] + n_w - 1
    scale = 10.0**((p['zero_point_ref'] - p['zero_point'][:e]) / 2.5)
    img = (p['raw_adu'][:e] - p['sky_adu'][:e, None, None]) * scale[:, None, None]
    s = window_stats(img, p['seeing_arcsec'][:e], p['sky_adu'][:e], scale, rules)
    s['steps'] = p['num_steps']
    out[seq.name] = s
  return out


def sim_stats(config, rules, num, seed):
  import jax  # pylint: disable=g-import-not-at-top
  sim = simulator.build_simulator(config)
  k = sim.num_classes
  out, key, chunk = [], jax.random.key(seed), 8 * k
  for off in range(0, num * k, chunk):
    b = jax.device_get(simulator.simulate_batch(key, sim, chunk, offset=off))
    for i in np.flatnonzero(np.asarray(b['label']) == 0):
      steps = int(np.sum(b['mask'][i]))
      e = steps + sim.n_w - 1
      scale = 10.0**((b['zero_point_ref'][i] - b['zero_point'][i, :e]) / 2.5)
      img = (b['raw_adu'][i, :e] - b['sky_adu'][i, :e, None, None]) * scale[:, None, None]
      s = window_stats(img, b['seeing_arcsec'][i, :e], b['sky_adu'][i, :e], scale, rules)
      s['steps'] = steps
      s['host'] = bool(b['has_host'][i])
      out.append(s)
    print(f'simulated {len(out)} supernovae', file=sys.stderr)
  return out


def start_shares(config, num, seed):
  """Per transient class, from ``num`` attempts: the share accepted (detected, with a full
  step) and, of those, the share starting at the field's first image."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  sim = simulator.build_simulator(config)
  out = {}
  for c in sim.transient_ids:
    keys = jax.random.split(jax.random.fold_in(jax.random.key(seed), c), num)
    ok, _, parts = jax.jit(jax.vmap(
        lambda k: simulator._attempt_parts(k, jnp.int32(c), sim)))(keys)  # pylint: disable=protected-access
    ok, start = np.asarray(ok), np.asarray(parts[3])
    out[sim.class_names[c]] = dict(accepted=float(ok.mean()),
                                   start_at_first_image=float((start[ok] == 0).mean()))
  return out


def summary(rows):
  keys = ('steps', 'n_det5', 'stay3', 'peak_snr', 'last_snr', 'host_flux')
  q = lambda k: [float(np.nanpercentile([r[k] for r in rows], p)) for p in (16, 50, 84)]
  s = {k: q(k) for k in keys}
  s['share_last_below_3'] = float(np.mean([r['last_snr'] < 3.0 for r in rows]))
  s['share_steps_le_7'] = float(np.mean([r['steps'] <= 7 for r in rows]))
  s['share_first_epoch_above_5'] = float(np.mean([r['starts_detected'] for r in rows]))
  s['n'] = len(rows)
  return s


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--config', default='configs/hits.py:cpu')
  ap.add_argument('--num', type=int, default=280, help='simulated supernovae')
  ap.add_argument('--seed', type=int, default=0)
  ap.add_argument('--attempts', type=int, default=2000,
                  help='attempts per transient class for the start shares')
  ap.add_argument('--detection', default=None, choices=('difference', 'flux'),
                  help="the simulator's transient detection (default: the config's)")
  a = ap.parse_args()
  path, _, arg = a.config.partition(':')
  spec = importlib.util.spec_from_file_location('cfg', path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  config = mod.get_config(arg or None)
  chosen = str(config.sim.get('detection', 'flux'))
  if a.detection:
    config.sim.detection = a.detection
  rules = preprocess.Rules.from_config(config)
  real = real_stats(rules, int(config.sim.n_w))
  shares = {}
  for det in ('flux', 'difference'):
    config.sim.detection = det
    shares[det] = start_shares(config, a.attempts, a.seed)
  config.sim.detection = a.detection or chosen
  sim = sim_stats(config, rules, a.num, a.seed)
  json.dump(dict(config=a.config, seed=a.seed, detection=str(config.sim.get('detection', 'flux')),
                 start_shares=shares, real=real, real_summary=summary(list(
      real.values())), sim_summary=summary(sim)), sys.stdout, indent=1)
  print()


if __name__ == '__main__':
  main()
