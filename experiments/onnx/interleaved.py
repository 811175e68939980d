"""JAX stream against the ONNX export, interleaved call by call on the same machine and stream.

    .venv/bin/python experiments/onnx/interleaved.py [--workdir pretrained/hits2015_rcnn]
        [--objects 1024] [--rounds 40]

``bench inference --backend jax,onnx`` times one backend after the other (3 s each); on a
shared machine the load changes between them. Here each round makes one ``Classifier.update``
(JAX, float32) and one ``OnnxClassifier.update`` (onnxruntime) call of --objects new images,
alternating, so both see the same load; also the ONNX graph alone (``OnnxClassifier.run`` on
the prepared rows) and with its onnxruntime intra-op pool of 2 threads instead of one call per
core. Prints images/s (median and best of the rounds, wall clock) and images per CPU second
(the process's CPU time: what the calls cost whatever else runs).
"""

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from rcnn_jax.bench import alert_stream  # noqa: E402
from rcnn_jax.serving import export_onnx  # noqa: E402
from rcnn_jax.serving import onnx_stream  # noqa: E402
from rcnn_jax.serving.classifier import Classifier  # noqa: E402


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--workdir', default='pretrained/hits2015_rcnn')
  ap.add_argument('--objects', type=int, default=1024)
  ap.add_argument('--rounds', type=int, default=40)
  a = ap.parse_args()
  clf = Classifier.from_workdir(a.workdir)
  tmp = tempfile.mkdtemp(prefix='onnx_interleaved_')
  export_onnx.export_onnx(clf, tmp, float(clf.config.survey.max_seeing_arcsec))
  onnx_clf = onnx_stream.load(tmp)
  import onnxruntime as ort
  intra = onnx_stream.OnnxClassifier(tmp, onnx_clf.manifest, ort.InferenceSession(
      os.path.join(tmp, export_onnx.ARTIFACT), onnx_stream.session_options(2),
      providers=['CPUExecutionProvider']), batch=a.objects, workers=1)
  n = a.objects
  pool, images, jitter, zp, sky = alert_stream(n, clf.stamp_size)
  states = {'jax': clf.new_state(n), 'onnx': onnx_clf.new_state(n)}
  update = {'jax': clf.update, 'onnx': onnx_clf.update}
  rng = np.random.default_rng(0)
  h = int(onnx_clf.lstm_size)
  feed = {'images': images[0][:, None].repeat(clf.n_w, axis=1) - 120.0,
          'time_gaps': rng.uniform(0, 3, (n, clf.n_w)).astype(np.float32),
          'mask': np.ones(n, bool), 'c': np.zeros((n, h), np.float32),
          'h': np.zeros((n, h), np.float32)}
  graph = {'onnx_graph_only': lambda: onnx_clf.run(feed),
           'onnx_graph_intra_op_2': lambda: intra.run(feed)}
  times = {k: [] for k in list(update) + list(graph)}
  cpu = {k: [] for k in times}
  i = 0
  for r in range(a.rounds + 5):
    j = i % pool
    for k in update:
      t0, c0 = time.perf_counter(), time.process_time()
      _, states[k] = update[k](states[k], images[j], 57070.0 + i + jitter[j], zp[j], sky)
      if r >= 5:  # the first rounds compile and warm up
        times[k].append(time.perf_counter() - t0)
        cpu[k].append(time.process_time() - c0)
    for k, fn in graph.items():
      t0, c0 = time.perf_counter(), time.process_time()
      fn()
      if r >= 5:
        times[k].append(time.perf_counter() - t0)
        cpu[k].append(time.process_time() - c0)
    i += 1
  with open('/proc/loadavg') as f:
    load = f.read().split()[:3]
  out = {'objects': n, 'rounds': a.rounds, 'load_average_after': load}
  for k in times:
    out[k] = {'images_per_s_median': round(n / float(np.median(times[k]))),
              'images_per_s_best': round(n / min(times[k])),
              'images_per_cpu_s': round(n / float(np.median(cpu[k])))}
  print(json.dumps(out, indent=1))


if __name__ == '__main__':
  main()
