"""Classify alert files into a CSV with the state in SQLite: what ``python -m rcnn_jax.alerts``
runs (``classify_files``), also called by the tests and ``bench alerts``.

CSV columns: ``object_id``, ``alert_id``, ``mjd``, ``band``, ``step``, ``status``
(``engine.py``), then one probability per class (empty where NaN: ``warmup``). An output
path ending in ``.parquet`` gets the same table as Parquet (``to_parquet``, with pyarrow).
One row per alert of the inputs, in input order, the rows of alerts already in the state
included as they were stored, so that a rerun (after a crash, or on the same files) writes the
same CSV.
"""

from __future__ import annotations

import csv
import math
import os
import sys
import time
import zlib

from rcnn_jax.core.errors import UserError
from rcnn_jax.serving.alerts import engine as engine_lib
from rcnn_jax.serving.alerts import reader
from rcnn_jax.serving.alerts import state as state_lib
from rcnn_jax.serving.classifier import Classifier

COLUMNS = ('object_id', 'alert_id', 'mjd', 'band', 'step', 'status')
STATUSES = ('classified', 'warmup', 'dropped', 'late')


def parse_partition(text) -> tuple[int, int]:
  """'K/N' -> (K, N), 0 <= K < N."""
  try:
    k, n = (int(x) for x in str(text).split('/'))
  except ValueError:
    raise UserError(f'--partition {text!r}: give K/N, e.g. 0/4') from None
  if n < 1 or not 0 <= k < n:
    raise UserError(f'--partition {text!r}: need 0 <= K < N')
  return k, n


def owner(object_id, n) -> int:
  """The partition (of ``n``) that owns an object: CRC-32 of its id (stable across processes
  and machines, unlike Python's salted ``hash``) modulo n."""
  return zlib.crc32(str(object_id).encode()) % n


def _fmt(v):
  return '' if not math.isfinite(v) else f'{v:.7g}'


def classify_files(classifier, store, files, out, slots=64, partition=(0, 1), stderr=None,
                   progress=True, max_chunk=None):
  """Classifies the alerts of ``files`` (Avro) into the CSV ``out``; returns a summary dict
  (``exit``: 0, or 2 when a packet or a file was refused)."""
  stderr = stderr or sys.stderr
  spec = reader.StampSpec.from_config(classifier.config)
  eng = engine_lib.Engine(classifier, store, slots=slots)
  timers = eng.timers
  max_chunk = max_chunk or 4 * slots
  k_part, n_part = partition
  counts = {s: 0 for s in STATUSES}
  summary = dict(rows=0, bad=0, other_partition=0, already=0, objects=set())
  tmp = f'{out}.partial'
  t_start = time.perf_counter()
  bar = None
  if progress:
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top  (only with a progress bar)
    bar = tqdm(total=len(files), unit='file', file=stderr, dynamic_ncols=True, mininterval=1.0)

  def say(msg):
    if bar is not None:
      bar.write(msg, file=stderr)
    else:
      print(msg, file=stderr)

  with open(tmp, 'w', newline='') as f:
    w = csv.writer(f, lineterminator='\n')
    w.writerow(list(COLUMNS) + list(classifier.class_names))
    chunk, objs = [], set()

    def flush():
      if not chunk:
        return
      rows = eng.process(chunk)
      for r, known in zip(rows, eng.already):
        if known:
          summary['already'] += 1
        else:
          counts[r['status']] += 1
        w.writerow([r['object_id'], r['alert_id'], f'{r["mjd"]:.6f}', r['band'], r['step'],
                    r['status']] + [_fmt(float(p)) for p in r['probs']])
        summary['objects'].add(r['object_id'])
      summary['rows'] += len(rows)
      chunk.clear()
      objs.clear()
      if bar is not None:
        bar.set_postfix(alerts=summary['rows'], refresh=False)

    for path in files:
      it = reader.read_records(path)
      while True:
        t0 = time.perf_counter()
        try:
          i, rec, schema = next(it)
        except StopIteration:
          timers.add('read_avro', time.perf_counter() - t0)
          break
        timers.add('read_avro', time.perf_counter() - t0)
        if isinstance(rec, reader.BadPacket):
          say(f'error: {rec}')
          summary['bad'] += 1
          continue
        t0 = time.perf_counter()
        try:
          e = reader.decode(rec, schema, f'{path}#{i}', spec)
        except reader.BadPacket as err:
          timers.add('cutout', time.perf_counter() - t0)
          say(f'error: {err}')
          summary['bad'] += 1
          continue
        timers.add('cutout', time.perf_counter() - t0)
        if n_part > 1 and owner(e.object_id, n_part) != k_part:
          summary['other_partition'] += 1
          continue
        if e.object_id not in objs and len(objs) == slots:
          flush()
        chunk.append(e)
        objs.add(e.object_id)
        if len(chunk) >= max_chunk:
          flush()
      if bar is not None:
        bar.update(1)
    flush()
  if bar is not None:
    bar.close()
  if str(out).endswith('.parquet'):
    to_parquet(tmp, out, classifier.class_names)
    os.remove(tmp)
  else:
    os.replace(tmp, out)
  wall = time.perf_counter() - t_start
  summary.update(counts=counts, seconds=wall, timers=dict(timers),
                 objects=len(summary['objects']), exit=2 if summary['bad'] else 0)
  return summary


def to_parquet(csv_path, out, class_names):
  """The CSV as Parquet (``--out X.parquet``; pyarrow, an optional dependency): ids, band and
  status as strings, probabilities float32 (null where the CSV cell is empty)."""
  try:
    import pyarrow as pa  # pylint: disable=g-import-not-at-top
    from pyarrow import csv as pa_csv  # pylint: disable=g-import-not-at-top
    from pyarrow import parquet as pq  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise UserError(f'--out {out}: Parquet needs pyarrow (pip install pyarrow), or write a '
                    '.csv') from None
  types = {'object_id': pa.string(), 'alert_id': pa.string(), 'mjd': pa.float64(),
           'band': pa.string(), 'step': pa.int32(), 'status': pa.string(),
           **{c: pa.float32() for c in class_names}}
  table = pa_csv.read_csv(csv_path, convert_options=pa_csv.ConvertOptions(column_types=types))
  pq.write_table(table, f'{out}.partial.parquet')
  os.replace(f'{out}.partial.parquet', out)


def summary_line(out, s) -> str:
  c = s['counts']
  new = sum(c.values())
  t = dict(s['timers'])
  compile_s = t.pop('compile', 0.0)
  steady = s['seconds'] - compile_s
  rate = s['rows'] / steady if steady > 0 else float('nan')
  parts = [f'wrote {out}: {s["rows"]} alerts of {s["objects"]} objects',
           f'{new} new ({", ".join(f"{k} {v}" for k, v in c.items())})',
           f'{s["already"]} already in the state']
  if s['other_partition']:
    parts.append(f'{s["other_partition"]} owned by other partitions')
  if s['bad']:
    parts.append(f'{s["bad"]} refused')
  parts.append(f'{rate:.0f} alerts/s (' + ', '.join(f'{k} {v:.2f} s' for k, v in t.items())
               + (f'; compiling the update {compile_s:.1f} s not counted' if compile_s else '')
               + ')')
  return '; '.join(parts)


def run_command(workdir, inputs, state_path, out, slots=64, partition='0/1', step=None,
                progress=True, stderr=None) -> int:
  """The command: checks the paths, restores the model, classifies; returns the exit status."""
  stderr = stderr or sys.stderr
  part = parse_partition(partition)
  if slots < 1:
    raise UserError('--batch must be >= 1')
  files = reader.list_inputs(inputs)
  state_lib.check_writable(out, 'output')
  state_lib.check_writable(f'{out}.partial', 'output')
  store = state_lib.Store(state_path)  # created (or opened) before the model is restored
  try:
    classifier = Classifier.from_workdir(workdir, step)
    store.bind(state_lib.model_identity(classifier))
    s = classify_files(classifier, store, files, out, slots=slots, partition=part,
                       stderr=stderr, progress=progress)
  finally:
    store.close()
  print(summary_line(out, s))
  if s['bad']:
    print(f'{s["bad"]} packet(s) or file(s) refused (one line each above); the other rows '
          'are written', file=stderr)
  return s['exit']
