"""Why the shipped RCNN loses real supernovae (issue 42): simulated supernovae that pass the
simulator's detection against the 10 real development supernovae, measured the same way on
both, and what the model answers for each, split by what the measurement shows.

    python experiments/supernovae/diagnose.py [--workdir pretrained/hits2015_rcnn] \
        [--config configs/hits.py:long] [--num 400] [--seed 0] > diagnose.json

For every supernova's model window (simulated: ``simulator.simulate_batch``; real:
``preprocess.prepare(start='detection')``), ``experiments/realism/sn_stats.window_stats``: the
PSF-matched difference S/N of each epoch against the window's first baseline epochs, the
number of epochs above 5 sigma (``n_det5``), the peak and last S/N, the host's flux. Then the
model's class at the window's last step (and step 20), tabulated by n_det5 (0-1, 2-4, 5+) and
by peak S/N. The real files are read to check, never to fit: the simulator's change is argued
from the survey's selection (see README.md beside this file).
"""
import argparse
import glob
import importlib.util
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, '..', '..'))
sys.path.insert(0, os.path.join(HERE, '..', 'realism'))
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import sn_stats  # noqa: E402

from rcnn_jax.inputs import preprocess  # noqa: E402
from rcnn_jax.inputs import realdata  # noqa: E402
from rcnn_jax.serving import loading  # noqa: E402
from rcnn_jax.sim import simulator  # noqa: E402

REAL = os.path.join(HERE, '..', '..', '..', 'shared', 'data', 'hits2015', 'real_labelled_dev',
                    'Supernova')


def load_config(spec):
  path, _, arg = spec.partition(':')
  s = importlib.util.spec_from_file_location('cfg', path)
  mod = importlib.util.module_from_spec(s)
  s.loader.exec_module(mod)
  return mod.get_config(arg or None)


def bucket(n):
  return '0-1' if n <= 1 else ('2-4' if n <= 4 else '5+')


def snr_bucket(s):
  return '<10' if s < 10 else ('10-30' if s < 30 else '30+')


def table(rows, key, names):
  out = {}
  for r in rows:
    b = out.setdefault(key(r), {'n': 0, 'answers': {}})
    b['n'] += 1
    c = names[r['pred_last']]
    b['answers'][c] = b['answers'].get(c, 0) + 1
  for b in out.values():
    b['recall'] = b['answers'].get('Supernova', 0) / b['n']
  return dict(sorted(out.items()))


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--workdir', default='pretrained/hits2015_rcnn')
  ap.add_argument('--config', default='configs/hits.py:long',
                  help='the simulator to draw supernovae from')
  ap.add_argument('--num', type=int, default=400, help='simulated supernovae (about)')
  ap.add_argument('--seed', type=int, default=0)
  a = ap.parse_args()
  mconfig, msim, model, state, _ = loading.load(a.workdir)
  names = list(msim.class_names)
  apply = jax.jit(lambda x, g, m: model.apply(
      {'params': state.params, 'batch_stats': state.batch_stats}, x, g, m, train=False))
  config = load_config(a.config)
  rules = preprocess.Rules.from_config(config)
  sim = simulator.build_simulator(config)
  k = sim.num_classes
  rows, key, chunk = [], jax.random.key(a.seed + 1000), 8 * k
  for off in range(0, a.num * k, chunk):
    b = jax.device_get(simulator.simulate_batch(key, sim, chunk, offset=off))
    sn = np.flatnonzero(np.asarray(b['label']) == 0)
    logits = np.asarray(apply(jnp.asarray(b['images'][sn]), jnp.asarray(b['time_gaps'][sn]),
                              jnp.asarray(b['mask'][sn])))
    for j, i in enumerate(sn):
      steps = int(np.sum(b['mask'][i]))
      e = steps + sim.n_w - 1
      scale = 10.0**((b['zero_point_ref'][i] - b['zero_point'][i, :e]) / 2.5)
      img = (b['raw_adu'][i, :e] - b['sky_adu'][i, :e, None, None]) * scale[:, None, None]
      s = sn_stats.window_stats(img, b['seeing_arcsec'][i, :e], b['sky_adu'][i, :e], scale,
                                rules)
      s.update(steps=steps, host=bool(b['has_host'][i]),
               pred_last=int(np.argmax(logits[j, steps - 1])),
               p_sn_by_step=[round(float(x), 3) for x in
                             jax.nn.softmax(logits[j, :steps], -1)[:, 0]])
      rows.append(s)
    print(f'simulated {len(rows)} supernovae', file=sys.stderr)
  real = []
  for f in sorted(glob.glob(os.path.join(REAL, '*.npz'))):
    seq = realdata.load_sequence(f, n_w=int(mconfig.sim.n_w))
    p = preprocess.prepare(seq, rules, start='detection', warn=lambda *a: None)
    e = p['num_steps'] + sim.n_w - 1
    scale = 10.0**((p['zero_point_ref'] - p['zero_point'][:e]) / 2.5)
    img = (p['raw_adu'][:e] - p['sky_adu'][:e, None, None]) * scale[:, None, None]
    s = sn_stats.window_stats(img, p['seeing_arcsec'][:e], p['sky_adu'][:e], scale, rules)
    lg = np.asarray(apply(jnp.asarray(p['images'][None]), jnp.asarray(p['time_gaps'][None]),
                          jnp.asarray(p['mask'][None])))[0]
    steps = int(p['num_steps'])
    s.update(name=seq.name, steps=steps, pred_last=int(np.argmax(lg[steps - 1])),
             p_sn_by_step=[round(float(x), 3) for x in jax.nn.softmax(lg[:steps], -1)[:, 0]])
    real.append(s)
  out = dict(workdir=a.workdir, config=a.config, seed=a.seed,
             sim_summary=sn_stats.summary(rows), real_summary=sn_stats.summary(real),
             sim_by_n_det5=table(rows, lambda r: bucket(r['n_det5']), names),
             sim_by_peak_snr=table(rows, lambda r: snr_bucket(r['peak_snr']), names),
             real_by_n_det5=table(real, lambda r: bucket(r['n_det5']), names),
             real=[{k: v for k, v in r.items()} | {'pred_last': names[r['pred_last']]}
                   for r in real])
  json.dump(out, sys.stdout, indent=1, default=float)
  print()


if __name__ == '__main__':
  main()
