"""Simulated variables that pass the variability selection, at the simulated epochs (issue 31).

    python experiments/realism/eb_stats.py [--num 2000] [--config configs/hits.py:long] \
        [--json experiments/realism/eb_stats.json]

For each variable class (and for binaries, contact and detached apart): ``--num`` attempts
drawn exactly as the simulator draws them (``simulator._attempt_parts``: field, transient
ghost's window, the object's own curve), the ones with a valid window that the variability
selection keeps, and on their noise-free magnitudes at the window's valid epochs the two
statistics of issue 31: the 5-95 % amplitude and the fraction of epochs more than 0.1 mag
fainter than the object's median magnitude. Also the fraction kept by the selection.

For reference only (reported, never fitted): the same two statistics on the 10 real
EclipsingBinary and 10 RRLyrae development files, from plain aperture photometry (radius 5 px,
the table's sky and zero point, epochs of seeing <= 2 arcsec), noise included; the issue's
held-out numbers (Kron magnitudes, several hundred objects) are the ones that count.
"""
import argparse
import glob
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..'))
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from ml_collections import config_flags  # noqa: E402,F401

from rcnn_jax.sim import lightcurves  # noqa: E402
from rcnn_jax.sim import photometry
from rcnn_jax.sim import sequences
from rcnn_jax.sim import simulator

HERE = os.path.dirname(os.path.abspath(__file__))
REAL = os.path.join(HERE, '..', '..', '..', 'shared', 'data', 'hits2015', 'real_labelled_dev')
FAINT_MAG = 0.1


def curve_stats(mag):
  """(5-95 % amplitude, fraction of epochs > 0.1 mag fainter than the median) of one curve."""
  mag = np.asarray(mag, np.float64)
  mag = mag[np.isfinite(mag)]
  lo, hi = np.percentile(mag, [5, 95])
  return float(hi - lo), float(np.mean(mag - np.median(mag) > FAINT_MAG))


def simulated(config, class_name, num, seed=0):
  """Stats [K, 2] of the kept attempts of one class, and the fraction kept."""
  sim = simulator.build_simulator(config)
  c = sim.class_names.index(class_name)
  surv, lcm = sim.survey, sim.lightcurves

  def one(k):
    ok, var_ok, (field, _, klc, start) = simulator._attempt_parts(k, c, sim)  # pylint: disable=protected-access
    idx, valid, _ = sequences.window(start, surv.num_epochs[field], sim.max_steps, sim.n_w)
    mag, _, _ = lightcurves.sample_magnitudes(jax.random.wrap_key_data(klc), c,
                                              surv.t_days[field][idx], surv.num_epochs[field],
                                              lcm, (c,))
    return ok, var_ok, jnp.where(valid, mag, jnp.nan)

  keys = jax.random.split(jax.random.fold_in(jax.random.key(seed), c), num)
  ok, var_ok, mags = (np.asarray(x) for x in jax.jit(jax.vmap(one))(keys))
  kept = ok & var_ok
  stats = np.array([curve_stats(m) for m in mags[kept]])
  return stats, float(kept.sum() / max(ok.sum(), 1))


def real(class_name):
  out = {}
  for f in sorted(glob.glob(os.path.join(REAL, class_name, '*.npz'))):
    d = np.load(f)
    good = np.isfinite(d['seeing_arcsec']) & (d['seeing_arcsec'] <= 2.0)
    img = d['stamps'][good] - d['sky_adu'][good, None, None]
    flux = photometry.aperture_flux(img, radius=5.0)
    with np.errstate(invalid='ignore', divide='ignore'):
      mag = d['zero_point'][good] - 2.5 * np.log10(flux / d['exp_time_s'][good])
    out[os.path.basename(f)] = curve_stats(mag)
  return out


def summary(stats):
  stats = np.asarray(stats)
  return {'n': int(len(stats)),
          'amplitude_5_95_mag_16_50_84': np.percentile(stats[:, 0], [16, 50, 84]).round(3).tolist(),
          'faint_fraction_16_50_84': np.percentile(stats[:, 1], [16, 50, 84]).round(3).tolist()}


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--config', default='configs/hits.py:long')
  ap.add_argument('--num', type=int, default=2000)
  ap.add_argument('--json', default='')
  ap.add_argument('--set', action='append', default=[],
                  help='sim.lightcurves field=python literal (e.g. contact_fraction=1.0)')
  args = ap.parse_args()
  import ast  # pylint: disable=g-import-not-at-top
  import importlib.util  # pylint: disable=g-import-not-at-top
  path, _, arg = args.config.partition(':')
  spec = importlib.util.spec_from_file_location('cfg', path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  config = mod.get_config(arg or None)
  for s in args.set:
    k, v = s.split('=', 1)
    config.sim.lightcurves[k] = ast.literal_eval(v)
  out = {'config': args.config, 'set': args.set, 'num_attempts': args.num, 'simulated': {},
         'real_dev_reference_only': {}}
  runs = [('EclipsingBinary', None), ('EclipsingBinary', 1.0), ('EclipsingBinary', 0.0),
          ('RRLyrae', None), ('Cepheid', None)]
  base_cf = config.sim.lightcurves.contact_fraction
  for cls, cf in runs:
    config.sim.lightcurves.contact_fraction = base_cf if cf is None else cf
    name = cls if cf is None else f'{cls} ({"contact" if cf == 1.0 else "detached"} only)'
    stats, kept = simulated(config, cls, args.num)
    out['simulated'][name] = dict(summary(stats), selection_kept_fraction=round(kept, 3))
    print(name, out['simulated'][name], flush=True)
  config.sim.lightcurves.contact_fraction = base_cf
  for cls in ('EclipsingBinary', 'RRLyrae'):
    r = real(cls)
    if r:
      out['real_dev_reference_only'][cls] = dict(summary(list(r.values())), files=r)
      print('real dev', cls, summary(list(r.values())), flush=True)
  if args.json:
    with open(args.json, 'w') as fh:
      json.dump(out, fh, indent=1)


if __name__ == '__main__':
  main()
