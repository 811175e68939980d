"""The alert state's cost per alert on SQLite and PostgreSQL (issue 41): ``classify_files`` on
the bench's stream (``rcnn_jax.bench.alert_files``: OBJECTS x EPOCHS real ZTF packets, ids and
times rewritten) with the shipped ``pretrained/ztf_rcnn`` (LSTM 512: ~10 kB slots), the
engine's ``state_read`` (locks, alert ids already processed, slots read and unpacked) and
``state_write`` (slots packed and written, alert rows, COMMIT) timers divided by the alerts.
A warm-up run first (compiles the update); then the backends alternated, REPS runs each, each
into a new state. PostgreSQL: --postgres URL (a database), or a throwaway server started here
(``rcnn_jax.serving.alerts.pgserver``, PostgreSQL's durable defaults unless --fast).

    .venv/bin/python experiments/alerts_state/bench_state.py [--objects 1024] [--epochs 4]
        [--slots 256] [--reps 3] [--postgres URL] [--fast] [--preload N]

--preload N: N alerts (and N / 4 objects) already in each state before the timed run, as a
state some hours into a night holds.
"""

import argparse
import io
import json
import os
import platform
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from rcnn_jax import bench  # noqa: E402
from rcnn_jax.serving.alerts import pgserver  # noqa: E402
from rcnn_jax.serving.alerts import pipeline  # noqa: E402
from rcnn_jax.serving.alerts import state as state_lib  # noqa: E402
from rcnn_jax.serving.classifier import Classifier  # noqa: E402


def preload(store, clf, n):
  """n alerts of n // 4 objects written straight into the state (slots of the model's shape)."""
  from rcnn_jax.serving.alerts import engine as engine_lib
  fresh = engine_lib.Engine(clf, store, slots=1)._fresh
  probs = np.zeros(len(clf.class_names), np.float32)
  for i in range(0, n, 4096):
    with store.transaction():
      objs = {f'PRE{j // 4:08d}': fresh for j in range(i, min(n, i + 4096), 4)}
      store.put_slots(objs, fresh)
      store.put_alerts([dict(alert_id=f'pre{j}', object_id=f'PRE{j // 4:08d}', mjd=1.0,
                             band='g', step=0, status='warmup', probs=probs)
                        for j in range(i, min(n, i + 4096))])


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--objects', type=int, default=1024)
  ap.add_argument('--epochs', type=int, default=4)
  ap.add_argument('--slots', type=int, default=256)
  ap.add_argument('--reps', type=int, default=3)
  ap.add_argument('--postgres', default='')
  ap.add_argument('--fast', action='store_true', help='throwaway server without fsync')
  ap.add_argument('--preload', type=int, default=0)
  ap.add_argument('--workdir', default=os.path.join(ROOT, 'pretrained', 'ztf_rcnn'))
  a = ap.parse_args()
  clf = Classifier.from_workdir(a.workdir)
  ident = state_lib.model_identity(clf)
  server = None
  if not a.postgres:
    server = pgserver.start(durable=not a.fast)
  results = {'sqlite': [], 'postgresql': []}
  try:
    with tempfile.TemporaryDirectory(prefix='bench_state_') as tmp:
      data = os.path.join(tmp, 'stream')
      os.makedirs(data)
      files = bench.alert_files(data, a.objects, a.epochs)
      warm = os.path.join(tmp, 'warm')
      os.makedirs(warm)
      store = state_lib.open_store(os.path.join(tmp, 'warm.db'))
      store.bind(ident)
      pipeline.classify_files(clf, store, bench.alert_files(warm, min(a.objects, a.slots),
                                                            clf.n_w),
                              os.path.join(tmp, 'warm.csv'), slots=a.slots, progress=False,
                              stderr=io.StringIO())
      store.close()
      for rep in range(a.reps):
        for backend in ('sqlite', 'postgresql'):
          if backend == 'sqlite':
            spec = os.path.join(tmp, f'state_{rep}.db')
          else:
            spec = a.postgres if a.postgres else server.create_database()
            if a.postgres:  # one database given: a schema per run
              sep = '&' if '?' in spec else '?'
              spec = f'{spec}{sep}schema=bench_{os.getpid()}_{rep}'
          store = state_lib.open_store(spec)
          store.bind(ident)
          if a.preload:
            preload(store, clf, a.preload)
          s = pipeline.classify_files(clf, store, files, os.path.join(tmp, 'out.csv'),
                                      slots=a.slots, progress=False, stderr=io.StringIO())
          store.close()
          t, n = s['timers'], s['rows']
          r = {'state_read_ms': 1e3 * t['state_read'] / n,
               'state_write_ms': 1e3 * t['state_write'] / n, 'alerts': n,
               'alerts_per_s': n / s['seconds']}
          r['state_ms'] = r['state_read_ms'] + r['state_write_ms']
          results[backend].append(r)
          print(json.dumps({'backend': backend, 'rep': rep,
                            **{k: round(v, 4) for k, v in r.items()}}), flush=True)
  finally:
    if server is not None:
      server.stop()
  print(json.dumps({
      'summary': {b: {k: round(float(np.median([r[k] for r in rs])), 4)
                      for k in ('state_read_ms', 'state_write_ms', 'state_ms', 'alerts_per_s')}
                  for b, rs in results.items()},
      'objects': a.objects, 'epochs': a.epochs, 'slots': a.slots, 'preload': a.preload,
      'postgres': 'given URL' if a.postgres else ('throwaway, fsync off' if a.fast else
                                                  'throwaway, durable defaults'),
      'processor': bench._cpu_name(), 'cpus': os.cpu_count(),  # pylint: disable=protected-access
      'python': platform.python_version(), 'load_avg': os.getloadavg(),
      'time_utc': time.strftime('%Y-%m-%d %H:%M', time.gmtime())}))


if __name__ == '__main__':
  main()
