"""Where results go: a CSV or Parquet file (``FileSink``), a Kafka topic (``KafkaSink``, one
Avro record per alert, ``schemas/classification.avsc``) and the dead-letter topic of the
messages that cannot be read (``DeadLetterTopic``).

A sink gets each chunk's rows (``write``) after the chunk's state transaction; ``flush()``
returns when they are written (a file: buffered until ``close``, renamed into place; a topic:
every record acknowledged by the broker), before the source commits its offsets.

Nothing saved is overwritten (``check_output_path``, ``check_topics``): an output path that is
the state database (or its WAL), that holds a database, or that holds anything but an earlier
output of the same kind (a CSV with the same header, a Parquet file of the same columns) is
refused before any work, and so are an output topic equal to the input topic and a
dead-letter topic equal to either.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import pathlib

import fastavro

from rcnn_jax.core.errors import UserError

COLUMNS = ('object_id', 'alert_id', 'mjd', 'band', 'step', 'status')
SCHEMA_PATH = pathlib.Path(__file__).resolve().parent / 'schemas' / 'classification.avsc'
SQLITE_MAGIC = b'SQLite format 3\x00'
PARQUET_MAGIC = b'PAR1'


def output_schema() -> dict:
  """The output records' Avro schema (``schemas/classification.avsc``), parsed."""
  with open(SCHEMA_PATH) as f:
    return fastavro.parse_schema(json.load(f))


def _fmt(v):
  return '' if not math.isfinite(v) else f'{v:.7g}'


# ----------------------------------------------------------------------------------------------
# Refusals


def _same(a, b) -> bool:
  a, b = os.path.abspath(os.fspath(a)), os.path.abspath(os.fspath(b))
  if a == b:
    return True
  try:
    return os.path.samefile(a, b)
  except OSError:
    return False


def check_output_path(out, state=None, class_names=None):
  """A one-line UserError unless writing ``out`` (CSV, or Parquet for ``.parquet``) destroys
  nothing: ``out`` is not the state (a path, or its ``-wal``/``-shm``/``-journal``), not a
  database, and, if it exists, an earlier output of the same kind: a CSV whose first line is
  this command's header (``class_names`` given: exactly; else its first six columns), a
  Parquet file of the same columns. Checked before the model is loaded (without class names)
  and again after (with them), before any alert is read."""
  out = os.fspath(out)
  if state is not None and '://' not in str(state):
    for suffix in ('', '-wal', '-shm', '-journal'):
      if _same(out, f'{state}{suffix}'):
        raise UserError(f'--out {out} is the state database{" " + suffix[1:] if suffix else ""}'
                        f' (--state {state}): give another output path')
  if not os.path.exists(out) or os.path.isdir(out):
    return  # a folder: state.check_writable's message
  with open(out, 'rb') as f:
    head = f.read(64 * 1024)
  if head.startswith(SQLITE_MAGIC):
    raise UserError(f'--out {out} holds an SQLite database: refusing to overwrite it')
  if not head:
    return
  parquet = out.endswith('.parquet')
  if parquet:
    if not head.startswith(PARQUET_MAGIC):
      raise UserError(f'--out {out} exists and is not a Parquet file: refusing to overwrite it')
    try:
      from pyarrow import parquet as pq  # lazy: pyarrow is optional (Parquet outputs only)
      names = tuple(pq.read_schema(out).names)
    except ImportError:
      return  # to_parquet says pyarrow is missing
    except Exception as e:  # pylint: disable=broad-except  (pyarrow's many error types)
      raise UserError(f'--out {out} exists and is not a readable Parquet file '
                      f'({type(e).__name__}): refusing to overwrite it') from None
    want = COLUMNS + tuple(class_names) if class_names is not None else None
    if names[:len(COLUMNS)] != COLUMNS or (want is not None and names != want):
      raise UserError(f'--out {out} is a Parquet file of other columns ({", ".join(names[:8])}'
                      f'{", ..." if len(names) > 8 else ""}): refusing to overwrite it')
    return
  line = head.split(b'\n', 1)[0].rstrip(b'\r')
  try:
    cols = tuple(next(csv.reader([line.decode('utf-8')])))
  except (UnicodeDecodeError, csv.Error, StopIteration):
    cols = ()
  want = COLUMNS + tuple(class_names) if class_names is not None else None
  if cols[:len(COLUMNS)] != COLUMNS or (want is not None and cols != want):
    what = ('an output of another model (other class columns)' if cols[:len(COLUMNS)] == COLUMNS
            else 'not an earlier output of this command (its first line is not the header '
            f'{",".join(COLUMNS)},...)')
    raise UserError(f'--out {out} exists and is {what}: refusing to overwrite it')


def check_topics(topic, out_topic, dead_letter_topic, same_cluster=True):
  """One line unless the three topics differ (on one cluster): an output or dead-letter
  topic equal to the input would feed the command its own records."""
  if same_cluster and out_topic == topic:
    raise UserError(f'--out_topic {out_topic} is the input topic: give another topic')
  if dead_letter_topic in (topic, out_topic) and (same_cluster or dead_letter_topic == out_topic):
    which = 'input' if dead_letter_topic == topic else 'output'
    raise UserError(f'--dead_letter_topic {dead_letter_topic} is the {which} topic: give '
                    'another topic')


# ----------------------------------------------------------------------------------------------
# Files


class FileSink:
  """The CSV (``out``), or Parquet for an ``out`` ending in ``.parquet`` (written as the CSV
  first, then converted): rows written to ``OUT.partial`` and renamed at ``close``."""

  def __init__(self, out, class_names):
    self.out = os.fspath(out)
    self.class_names = list(class_names)
    self.tmp = f'{self.out}.partial'
    self._f = open(self.tmp, 'w', newline='')  # pylint: disable=consider-using-with
    self._w = csv.writer(self._f, lineterminator='\n')
    self._w.writerow(list(COLUMNS) + self.class_names)

  def write(self, rows, sources_=None):
    del sources_
    for r in rows:
      self._w.writerow([r['object_id'], r['alert_id'], f'{r["mjd"]:.6f}', r['band'], r['step'],
                        r['status']] + [_fmt(float(p)) for p in r['probs']])

  def flush(self):
    pass  # the file is renamed into place at the end (a rerun rewrites it whole)

  def close(self, ok=True):
    self._f.close()
    if not ok:
      return
    if self.out.endswith('.parquet'):
      to_parquet(self.tmp, self.out, self.class_names)
      os.remove(self.tmp)
    else:
      os.replace(self.tmp, self.out)


def to_parquet(csv_path, out, class_names):
  """The CSV as Parquet (``--out X.parquet``; pyarrow, an optional dependency): ids, band and
  status as strings, probabilities float32 (null where the CSV cell is empty)."""
  try:
    import pyarrow as pa  # lazy: pyarrow is optional (Parquet outputs only)
    from pyarrow import csv as pa_csv  # lazy: pyarrow is optional (Parquet outputs only)
    from pyarrow import parquet as pq  # lazy: pyarrow is optional (Parquet outputs only)
  except ImportError:
    raise UserError(f'--out {out}: Parquet needs pyarrow (pip install pyarrow), or write a '
                    '.csv') from None
  types = {'object_id': pa.string(), 'alert_id': pa.string(), 'mjd': pa.float64(),
           'band': pa.string(), 'step': pa.int32(), 'status': pa.string(),
           **{c: pa.float32() for c in class_names}}
  table = pa_csv.read_csv(csv_path, convert_options=pa_csv.ConvertOptions(column_types=types))
  pq.write_table(table, f'{out}.partial.parquet')
  os.replace(f'{out}.partial.parquet', out)


# ----------------------------------------------------------------------------------------------
# Kafka


def encode_record(row, class_names, model, source, schema) -> bytes:
  """One output record as an Avro container file holding it (the schema inside, as brokers
  publish theirs)."""
  probs = [float(p) for p in row['probs']]
  rec = {'object_id': str(row['object_id']), 'alert_id': str(row['alert_id']),
         'mjd': float(row['mjd']), 'band': None if row['band'] is None else str(row['band']),
         'step': int(row['step']), 'status': row['status'], 'classes': list(class_names),
         'probabilities': probs if all(math.isfinite(p) for p in probs) else None,
         'model': model, 'source': source}
  buf = io.BytesIO()
  fastavro.writer(buf, schema, [rec])
  return buf.getvalue()


def decode_record(value) -> dict:
  """An output message's record (``encode_record``'s inverse; for tests and consumers)."""
  return next(iter(fastavro.reader(io.BytesIO(value))))


def make_producer(conf):
  import confluent_kafka  # lazy: only the Kafka sinks need librdkafka
  c = {'linger.ms': 20, 'enable.idempotence': True, 'acks': 'all',
       'message.max.bytes': 10_000_000}
  c.update(conf)
  return confluent_kafka.Producer(c)


class _Delivery:
  """Counts the broker's acknowledgements; an undelivered record fails the flush (so the
  offsets are not committed and the chunk is replayed)."""

  def __init__(self):
    self.failed = []

  def __call__(self, err, msg):
    if err is not None:
      self.failed.append(f'{msg.topic()}: {err.str()}')


class KafkaSink:
  """One record per alert (``schemas/classification.avsc``) produced to ``topic``, keyed by
  the object id (so one partition holds all of an object's classifications)."""

  def __init__(self, producer, topic, class_names, model, flush_timeout_s=60.0):
    self.producer, self.topic = producer, topic
    self.class_names, self.model = list(class_names), model
    self.schema = output_schema()
    self.flush_timeout_s = flush_timeout_s
    self._delivery = _Delivery()

  def write(self, rows, sources_=None):
    sources_ = sources_ or [None] * len(rows)
    for r, src in zip(rows, sources_):
      value = encode_record(r, self.class_names, self.model, src, self.schema)
      self._produce(str(r['object_id']).encode(), value)

  def _produce(self, key, value, headers=None):
    while True:
      try:
        self.producer.produce(self.topic, value=value, key=key, headers=headers,
                              on_delivery=self._delivery)
        break
      except BufferError:  # the local queue is full: let the broker take some
        self.producer.poll(0.1)
    self.producer.poll(0)

  def flush(self):
    left = self.producer.flush(self.flush_timeout_s)
    if left or self._delivery.failed:
      why = self._delivery.failed[0] if self._delivery.failed else f'{left} not acknowledged'
      raise UserError(f'--out_topic {self.topic}: records not delivered within '
                      f'{self.flush_timeout_s:g} s ({why}); the offsets are not committed, a '
                      'restart replays the chunk')

  def close(self, ok=True):
    if ok:
      self.flush()


class DeadLetterTopic(KafkaSink):
  """The messages that cannot be read: their bytes and key as they came, with headers
  ``error`` (the one-line reason) and ``source.topic``, ``source.partition``,
  ``source.offset``."""

  def __init__(self, producer, topic, flush_timeout_s=60.0):  # pylint: disable=super-init-not-called
    self.producer, self.topic = producer, topic
    self.flush_timeout_s = flush_timeout_s
    self._delivery = _Delivery()

  def write_bad(self, item, error):
    t, p, o = item.where
    self._produce(item.key, item.raw, headers=[
        ('error', str(error).encode()), ('source.topic', str(t).encode()),
        ('source.partition', str(p).encode()), ('source.offset', str(o).encode())])
