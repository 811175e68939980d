"""Classify alerts from a source into sinks with the per-object state: what
``python -m rcnn_jax.alerts`` runs (files: ``run_command`` / ``classify_files``; a Kafka topic:
``run_kafka_command``), also called by the tests and ``bench alerts``. One loop (``classify``)
and one engine for every source (``sources.py``: files, Kafka) and sink (``sinks.py``:
CSV/Parquet, Kafka topics).

CSV columns: ``object_id``, ``alert_id``, ``mjd``, ``band``, ``step``, ``status``
(``engine.py``), then one probability per class (empty where NaN: ``warmup``). An output
path ending in ``.parquet`` gets the same table as Parquet (``to_parquet``, with pyarrow).
One row per alert of the inputs, in input order, the rows of alerts already in the state
included as they were stored, so that a rerun (after a crash, or on the same files) writes the
same CSV.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import time
import zlib

from rcnn_jax.core.errors import UserError
from rcnn_jax.serving.alerts import engine as engine_lib
from rcnn_jax.serving.alerts import reader
from rcnn_jax.serving.alerts import sinks as sinks_lib
from rcnn_jax.serving.alerts import sources as sources_lib
from rcnn_jax.serving.alerts import state as state_lib
from rcnn_jax.serving.classifier import Classifier

COLUMNS = sinks_lib.COLUMNS
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


_fmt = sinks_lib._fmt  # pylint: disable=protected-access
to_parquet = sinks_lib.to_parquet


def open_store(spec):
  """The state named by ``--state``: ``state.open_store`` (an SQLite path, or a
  ``postgresql://`` URL) where it exists, else the SQLite ``state.Store``."""
  opener = getattr(state_lib, 'open_store', None)
  if opener is not None:
    return opener(spec)
  if '://' in str(spec):
    raise UserError(f'--state {spec}: this version keeps the state in SQLite only (give a path)')
  return state_lib.Store(spec)


def classify_files(classifier, store, files, out, slots=64, partition=(0, 1), stderr=None,
                   progress=True, max_chunk=None):
  """Classifies the alerts of ``files`` (Avro) into the CSV ``out``; returns a summary dict
  (``exit``: 0, or 2 when a packet or a file was refused)."""
  stderr = stderr or sys.stderr
  source = sources_lib.FileSource(files)
  bar = None
  if progress:
    from tqdm import tqdm  # lazy: only with a progress bar
    bar = tqdm(total=len(files), unit='file', file=stderr, dynamic_ncols=True, mininterval=1.0)
    source.on_file_done = lambda: bar.update(1)
  sink = sinks_lib.FileSink(out, classifier.class_names)
  ok = False
  try:
    s = classify(classifier, store, source, [sink], slots=slots, partition=partition,
                 stderr=stderr, max_chunk=max_chunk, bar=bar)
    ok = True
  finally:
    if bar is not None:
      bar.close()
    sink.close(ok)
  s['seconds'] = time.perf_counter() - s.pop('t_start')
  return s


class _Progress:
  """The stream's progress line (Kafka): alerts/s since the last line and the consumer lag."""

  def __init__(self, every_s, stderr, source):
    self.every_s, self.stderr, self.source = every_s, stderr, source
    self.t = time.monotonic()
    self.rows = 0

  def maybe(self, rows, counts):
    now = time.monotonic()
    if not self.every_s or now - self.t < self.every_s:
      return
    lag = self.source.lag()
    rate = (rows - self.rows) / (now - self.t)
    print(f'progress: {rows} alerts ({", ".join(f"{k} {v}" for k, v in counts.items())}), '
          f'{rate:.0f} alerts/s over the last {now - self.t:.0f} s, consumer lag '
          f'{"?" if lag is None else lag} messages', file=self.stderr, flush=True)
    self.t, self.rows = now, rows


class _PublishingStore:
  """The store as the engine sees it: each chunk's new alert rows (``put_alerts``) are written
  to ``sinks`` and flushed inside the chunk's state transaction, after its writes and before
  its COMMIT. A process killed before the COMMIT has then published nothing the state does not
  hold (its replay publishes the rows once), one killed after it holds them in the state (its
  replay finds them already there and publishes nothing): the topic gets each alert once,
  except for a crash during the COMMIT itself."""

  def __init__(self, store, sinks, labels, timers):
    self._store, self._sinks, self._labels, self._timers = store, sinks, labels, timers
    self._rows = []

  def __getattr__(self, name):
    return getattr(self._store, name)

  def put_alerts(self, rows):
    self._store.put_alerts(rows)
    self._rows.extend(rows)

  @contextlib.contextmanager
  def transaction(self):
    self._rows = []
    with self._store.transaction() as t:
      yield t
      t0 = time.perf_counter()
      if self._rows:
        for sink in self._sinks:
          sink.write(self._rows, [self._labels.get(r['alert_id']) for r in self._rows])
          sink.flush()
      dt = time.perf_counter() - t0
      self._timers.add('output', dt)
      self._timers.add('state_write', -dt)  # the engine times its COMMIT from before this
    self._rows = []


def classify(classifier, store, source, sinks, slots=64, partition=(0, 1), stderr=None,
             max_chunk=None, bar=None, dead_letter=None, linger_s=None, progress_every_s=0.0,
             txn_sinks=()):
  """The loop behind every source and sink: items of ``source`` (``sources.py``) decoded into
  epochs, chunks of at most ``slots`` objects through one ``engine.Engine`` (one state
  transaction each), each chunk's rows to every sink of ``sinks``, then ``source.commit``
  with the offsets of every message handled up to the chunk (after the sinks' ``flush``).

  Refused packets are one line each on ``stderr`` and, with ``dead_letter``, a record there.
  ``linger_s``: the most a chunk waits for more alerts (a live stream); ``sources.IDLE`` (no
  message for a poll) processes it at once. ``txn_sinks`` (Kafka topics) get only the alerts
  new to the state, inside each chunk's transaction (``_PublishingStore``). Returns a summary
  dict."""
  stderr = stderr or sys.stderr
  spec = reader.StampSpec.from_config(classifier.config)
  timers = engine_lib.Timers()
  label_of = {}
  if txn_sinks:
    store = _PublishingStore(store, list(txn_sinks), label_of, timers)
  eng = engine_lib.Engine(classifier, store, slots=slots, timers=timers)
  max_chunk = max_chunk or 4 * slots
  k_part, n_part = partition
  counts = {s: 0 for s in STATUSES}
  summary = dict(rows=0, bad=0, other_partition=0, already=0, objects=set(),
                 t_start=time.perf_counter())
  chunk, labels, wheres, objs = [], [], [], set()
  marks, chunk_marks = {}, {}  # (topic, partition) -> offset to commit: committable / at flush
  t_first = [None]
  progress = _Progress(progress_every_s, stderr, source)

  def say(msg):
    if bar is not None:
      bar.write(msg, file=stderr)
    else:
      print(msg, file=stderr, flush=True)

  def mark(item):
    if item.where is not None:
      t, p, o = item.where
      chunk_marks[(t, p)] = o + 1 if item.last else o  # a message's last record: past it

  def flush():
    if chunk:
      if txn_sinks:
        label_of.clear()
        label_of.update((e.alert_id, lb) for e, lb in zip(chunk, labels))
      rows = eng.process(chunk)
      for r, known in zip(rows, eng.already):
        if known:
          summary['already'] += 1
        else:
          counts[r['status']] += 1
        summary['objects'].add(r['object_id'])
      t0 = time.perf_counter()
      for sink in sinks:
        sink.write(rows, labels)
      timers.add('output', time.perf_counter() - t0)
      summary['rows'] += len(rows)
      summary['t_last_rows'] = time.time()
      if bar is not None:
        bar.set_postfix(alerts=summary['rows'], refresh=False)
    chunk.clear()
    labels.clear()
    wheres.clear()
    objs.clear()
    t_first[0] = None
    if chunk_marks or marks:
      t0 = time.perf_counter()
      for sink in list(sinks) + ([dead_letter] if dead_letter is not None else []):
        sink.flush()  # every output acknowledged before the offsets move
      timers.add('output', time.perf_counter() - t0)
      marks.update(chunk_marks)
      chunk_marks.clear()
      t0 = time.perf_counter()
      source.commit(dict(marks))
      marks.clear()
      timers.add('commit', time.perf_counter() - t0)

  def drop(partitions):
    """Lost partitions (another member has them): what this member holds of them goes."""
    keep = [i for i, w in enumerate(wheres) if w is None or (w[0], w[1]) not in partitions]
    chunk[:] = [chunk[i] for i in keep]
    labels[:] = [labels[i] for i in keep]
    wheres[:] = [wheres[i] for i in keep]
    objs.clear()
    objs.update(e.object_id for e in chunk)
    for tp in partitions:
      chunk_marks.pop(tp, None)
      marks.pop(tp, None)

  if hasattr(source, 'before_revoke'):
    source.before_revoke, source.on_lost = flush, drop

  def refuse(item, err):
    say(f'error: {err}')
    summary['bad'] += 1
    if dead_letter is not None and item.raw is not None:
      dead_letter.write_bad(item, err)
    mark(item)

  it = iter(source)
  while True:
    t0 = time.perf_counter()
    try:
      item = next(it)
    except StopIteration:
      timers.add('read_avro', time.perf_counter() - t0)
      break
    dt = time.perf_counter() - t0
    if item is sources_lib.IDLE:
      timers.add('wait', dt)
      flush()
      progress.maybe(summary['rows'], counts)
      continue
    if item.needs_decoding:
      timers.add('consume', dt)
      t0 = time.perf_counter()
      items = source.records(item)
      timers.add('read_avro', time.perf_counter() - t0)
    else:
      timers.add('read_avro', dt)
      items = [item]
    for item in items:
      if item.bad is not None:
        refuse(item, item.bad)
        continue
      t0 = time.perf_counter()
      try:
        e = reader.decode(item.rec, item.schema, item.label, spec)
      except reader.BadPacket as err:
        timers.add('cutout', time.perf_counter() - t0)
        refuse(item, err)
        continue
      timers.add('cutout', time.perf_counter() - t0)
      if n_part > 1 and owner(e.object_id, n_part) != k_part:
        summary['other_partition'] += 1
        mark(item)
        continue
      if e.object_id not in objs and len(objs) == slots:
        flush()
      chunk.append(e)
      labels.append(item.label)
      wheres.append(item.where)
      objs.add(e.object_id)
      mark(item)
      if t_first[0] is None:
        t_first[0] = time.monotonic()
      if len(chunk) >= max_chunk:
        flush()
    if linger_s is not None and t_first[0] is not None and \
        time.monotonic() - t_first[0] > linger_s:
      flush()
    progress.maybe(summary['rows'], counts)
  flush()
  summary.update(counts=counts, timers=dict(timers), objects=len(summary['objects']),
                 exit=2 if summary['bad'] else 0)
  return summary


def summary_line(out, s) -> str:
  c = s['counts']
  new = sum(c.values())
  t = dict(s['timers'])
  compile_s = t.pop('compile', 0.0)
  steady = s['seconds'] - compile_s - t.get('wait', 0.0)  # a stream's idle polls left out
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
  sinks_lib.check_output_path(out, state_path)
  state_lib.check_writable(out, 'output')
  state_lib.check_writable(f'{out}.partial', 'output')
  store = open_store(state_path)  # created (or opened) before the model is restored
  try:
    classifier = Classifier.from_workdir(workdir, step)
    sinks_lib.check_output_path(out, state_path, classifier.class_names)
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


def run_kafka_command(workdir, bootstrap, topic, group, state, out_topic, dead_letter_topic=None,
                      out_kafka=None, schemas=(), kafka_config=(), slots=64, step=None,
                      session_timeout_ms=None, offset_reset='earliest', idle_exit_s=0.0,
                      linger_s=0.5, progress_every_s=10.0, connect_timeout_s=10.0,
                      stats_json=None, stderr=None) -> int:
  """``--kafka``: consumes ``topic`` in the consumer group ``group``, one state transaction per
  chunk, the classifications produced to ``out_topic`` (one Avro record per alert), refused
  messages to ``dead_letter_topic``; the offsets committed after each chunk's transaction and
  outputs. Runs until SIGTERM/SIGINT (then: the current chunk, its commit, exit 0) or
  ``idle_exit_s`` without a message. Every flag and the brokers are checked before the model
  is restored."""
  stderr = stderr or sys.stderr
  if not topic:
    raise UserError('--kafka needs --topic (the alert topic to consume)')
  if not group:
    raise UserError('--kafka needs --group (the consumer group: the processes sharing the '
                    "topic's partitions)")
  if not out_topic:
    raise UserError('--kafka needs --out_topic (where the classifications go)')
  if slots < 1:
    raise UserError('--batch must be >= 1')
  if offset_reset not in ('earliest', 'latest'):
    raise UserError(f'--offset_reset {offset_reset!r}: earliest or latest')
  dead_letter_topic = dead_letter_topic or f'{out_topic}.dead_letter'
  out_kafka = out_kafka or bootstrap
  sinks_lib.check_topics(topic, out_topic, dead_letter_topic, same_cluster=out_kafka == bootstrap)
  pinned = sources_lib.parse_schema_flags(schemas)
  conf = sources_lib.kafka_config(bootstrap, kafka_config)
  out_conf = conf if out_kafka == bootstrap else sources_lib.kafka_config(out_kafka, kafka_config)
  sources_lib.check_reachable(conf, topic, connect_timeout_s)
  if out_kafka != bootstrap:
    sources_lib.check_reachable(out_conf, None, connect_timeout_s, what='--out_kafka')
  store = open_store(state)  # created (or opened) before the model is restored
  source = None
  try:
    classifier = Classifier.from_workdir(workdir, step)
    ident = state_lib.model_identity(classifier)
    store.bind(ident)
    producer = sinks_lib.make_producer(out_conf)
    out = sinks_lib.KafkaSink(producer, out_topic, classifier.class_names,
                              ident['weights_sha256'])
    dlq = sinks_lib.DeadLetterTopic(producer, dead_letter_topic)
    source = sources_lib.KafkaSource(conf, topic, group, pinned,
                                     session_timeout_ms=session_timeout_ms,
                                     offset_reset=offset_reset, idle_exit_s=idle_exit_s,
                                     batch=slots, stderr=stderr)
    stopped = []

    def stop(signum, frame):
      del frame
      stopped.append(signal.Signals(signum).name)
      source.stop()
      signal.signal(signum, signal.SIG_DFL)  # a second one stops at once

    old = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    print(f'consuming {topic} on {bootstrap} in group {group}; classifications to {out_topic}, '
          f'refused messages to {dead_letter_topic}', file=stderr, flush=True)
    t0 = time.perf_counter()
    try:
      s = classify(classifier, store, source, [], slots=slots, stderr=stderr, txn_sinks=[out],
                   dead_letter=dlq, linger_s=linger_s, progress_every_s=progress_every_s)
      out.close()
    finally:
      for sig, h in old.items():
        signal.signal(sig, h)
    s['seconds'] = time.perf_counter() - s.pop('t_start')
    s['wall_start'] = time.time() - (time.perf_counter() - t0)
  finally:
    if source is not None:
      source.close()  # leaves the group: the partitions move to the others at once
    store.close()
  if stats_json:
    with open(stats_json, 'w') as f:
      json.dump({k: v for k, v in s.items()}, f)
  print(summary_line(out_topic, s))
  if stopped:
    print(f'stopped by {stopped[0]} after the current chunk; offsets committed', file=stderr)
  return 0
