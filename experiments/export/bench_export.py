"""Exported streaming update against the in-process one (Classifier.update), images/s.

    python experiments/export/bench_export.py [--objects 1024] [--workdir W]

The paper RCNN (configs/hits.py) with random parameters unless --workdir; the same image stream
as ``python -m rcnn_jax.bench inference`` (1,024 objects, one new 21 x 21 image each per call,
host side included). Prints one JSON line per mode.
"""

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp
import numpy as np

from configs import hits  # pylint: disable=wrong-import-position
from rcnn_jax import bench  # pylint: disable=wrong-import-position
from rcnn_jax.serving import export  # pylint: disable=wrong-import-position
from rcnn_jax.serving import exported  # pylint: disable=wrong-import-position
from rcnn_jax import models  # pylint: disable=wrong-import-position
from rcnn_jax.serving.classifier import Classifier  # pylint: disable=wrong-import-position


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--objects', type=int, default=1024)
  ap.add_argument('--calls', type=int, default=12)
  ap.add_argument('--workdir', default=None)
  ap.add_argument('--conv_impl', default='xla')
  args = ap.parse_args()
  n = args.objects
  if args.workdir:
    clf = Classifier.from_workdir(args.workdir)
  else:
    config = hits.get_config()
    model = models.build_model(config.model, 7)
    v = jax.jit(lambda k: model.init(k, jnp.zeros((1, 1, 21, 21, 3)), jnp.zeros((1, 1, 3)),
                                     jnp.ones((1, 1), bool)))(jax.random.key(0))
    clf = Classifier(config, v['params'], v['batch_stats'])
  s = clf.stamp_size
  pool, images, jitter, zp, sky = bench.alert_stream(n, s)  # the same stream as bench inference
  seeing = np.full((n,), 1.3)
  with tempfile.TemporaryDirectory() as d:
    t0 = time.perf_counter()
    export.export_classifier(clf, d, 2.0, ('cpu',), args.conv_impl)
    export_s = time.perf_counter() - t0
    ex = exported.load(d)
    size_mb = os.path.getsize(os.path.join(d, exported.ARTIFACT)) / 1e6

  def stream(update, state):
    times, out = [], None
    for i in range(args.calls):
      j = i % pool
      t = time.perf_counter()
      out, state = update(state, i, j)
      times.append(time.perf_counter() - t)
    return times, out

  modes = {
      'in_process': (lambda st, i, j: clf.update(st, images[j], 57070.0 + i + jitter[j], zp[j],
                                                 sky), clf.new_state(n)),
      'exported': (lambda st, i, j: ex.update(st, images[j], 57070.0 + i + jitter[j], zp[j], sky,
                                              seeing), ex.new_state(n)),
  }
  last = {}
  for name, (fn, st) in modes.items():
    times, last[name] = stream(fn, st)
    steady = sorted(times[3:])
    print(json.dumps({'name': f'streaming_update_{name}', 'images_per_s': round(n / steady[len(steady) // 2], 1),
                      'best_images_per_s': round(n / steady[0], 1), 'first_call_s': round(times[0], 2),
                      'objects': n, 'calls': args.calls, 'conv_impl': args.conv_impl if name == 'exported' else clf.config.model.conv_impl,
                      'export_s': round(export_s, 1) if name == 'exported' else None,
                      'artifact_mb': round(size_mb, 1) if name == 'exported' else None,
                      'parameters': args.workdir or 'random', 'jax': jax.__version__}), flush=True)
  print(json.dumps({'max_abs_prob_diff': float(np.nanmax(np.abs(last['exported'] - last['in_process'])))}))


if __name__ == '__main__':
  main()
