"""Where the ONNX step's time goes: onnxruntime's own profiler, per node, summed over calls.

    .venv/bin/python experiments/onnx/profile_graph.py DIR/step.onnx [--rows 512] [--calls 20]

One session on one thread (as each of ``onnx_stream``'s workers), --rows objects a call, after
the graph optimisations (the node names are the optimised graph's: ``*_nchwc`` run in
onnxruntime's blocked NCHWc layout). Prints milliseconds per call and per image of each node
and the share of the call.
"""

import argparse
import collections
import json
import os
import sys

import numpy as np
import onnxruntime as ort

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from rcnn_jax.serving import onnx_stream  # noqa: E402


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('model')
  ap.add_argument('--rows', type=int, default=512)
  ap.add_argument('--calls', type=int, default=20)
  a = ap.parse_args()
  opts = onnx_stream.session_options(1)
  opts.enable_profiling = True
  s = ort.InferenceSession(a.model, opts, providers=['CPUExecutionProvider'])
  rng = np.random.default_rng(0)
  n = a.rows
  shapes = {i.name: [n if isinstance(d, str) else d for d in i.shape] for i in s.get_inputs()}
  feed = {'images': rng.normal(0, 30, shapes['images']).astype(np.float32),
          'time_gaps': rng.uniform(0, 3, shapes['time_gaps']).astype(np.float32),
          'bands': np.zeros(shapes.get('bands', [n, 1]), np.int32),
          'mask': np.ones(n, bool), 'c': np.zeros(shapes['c'], np.float32),
          'h': np.zeros(shapes['h'], np.float32)}
  feed = {k: feed[k] for k in shapes}
  s.run(None, feed)
  for _ in range(a.calls):
    s.run(None, feed)
  with open(s.end_profiling()) as f:
    events = json.load(f)
  os.remove(f.name)
  per = collections.defaultdict(float)
  runs, total = 0, 0.0
  for e in events:
    if e.get('cat') == 'Node' and e['name'].endswith('_kernel_time'):
      per[f'{e["args"].get("op_name", "")} {e["name"][:-len("_kernel_time")]}'] += e['dur']
    if e.get('cat') == 'Session' and e['name'] == 'model_run':
      runs, total = runs + 1, total + e['dur']
  total /= runs
  print(f'{total / 1e3:.1f} ms a call of {n} rows on one thread ({n / total * 1e6:.0f} images/s '
        f'per core), {runs} calls incl. the first')
  for k, v in sorted(per.items(), key=lambda kv: -kv[1])[:16]:
    v /= runs
    print(f'{v / 1e3:8.2f} ms  {v / n:7.2f} us/image  {100 * v / total:5.1f} %  {k}')


if __name__ == '__main__':
  main()
