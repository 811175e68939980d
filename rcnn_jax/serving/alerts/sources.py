"""Where alerts come from: Avro files (``FileSource``) or a Kafka topic (``KafkaSource``).

A source yields ``Item``s (one alert packet each, or one that cannot be read) and the
``IDLE`` marker when nothing came for a while (the pipeline then processes the chunk it holds
instead of waiting for a full one); after the pipeline has written a chunk's state transaction
and its outputs it calls ``commit()``, which for Kafka commits the consumer's offsets of every
message yielded so far. The order is what makes a crash harmless: the state transaction holds
the alerts' rows, then the outputs are flushed, then the offsets are committed, so a process
killed anywhere replays at most the messages after its last commit, and the state's alert-id
idempotence makes the replay of the ones already in the state a no-op.

Kafka message values come in the two forms brokers meet (``decode_message``):

* an Avro container file per message (``Obj\\x01`` magic, the writer schema inside): the
  streams of Fink, Lasair and ANTARES;
* the Confluent wire format (``\\x00``, a 4-byte big-endian schema id, then one schemaless
  Avro record): Rubin's own stream. The schema is not in the message: it is looked up by id in
  the schemas given (``--schema ID=FILE.avsc``, the pinned schemas), never fetched.

Undecodable bytes (a poison message) become one ``Item`` with ``bad`` set, naming the topic,
partition and offset; the pipeline writes it to the dead-letter topic and goes on.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import struct
import sys
import time
import zlib

import fastavro

from rcnn_jax.core.errors import UserError
from rcnn_jax.serving.alerts import reader

AVRO_MAGIC = b'Obj\x01'
WIRE_MAGIC = 0
IDLE = object()  # yielded when no message came within the poll timeout
# Environment override of the consumer's session timeout (tests: short, so that a group
# rebalances within seconds of a member's kill -9).
SESSION_TIMEOUT_ENV = 'RCNN_JAX_KAFKA_SESSION_TIMEOUT_MS'


@dataclasses.dataclass
class Item:
  """One alert packet (``rec`` with its writer ``schema``) or one that cannot be read
  (``bad``); ``label`` names it in messages (``file#record`` or ``topic[partition]@offset``),
  ``raw``/``key`` are a Kafka message's bytes (for the dead-letter topic)."""
  label: str
  rec: dict | None = None
  schema: dict | None = None
  bad: reader.BadPacket | None = None
  raw: bytes | None = None
  key: bytes | None = None
  where: tuple | None = None  # (topic, partition, offset) of a Kafka message
  last: bool = True  # the last record of its message (its offset can be committed past)
  needs_decoding: bool = False  # a Kafka message not decoded yet (``KafkaSource.records``)


# ----------------------------------------------------------------------------------------------
# Files


class FileSource:
  """The records of Avro container files, in order (``reader.read_records``); nothing to
  commit (a rerun on the same files is a no-op for the alerts already in the state)."""

  def __init__(self, files):
    self.files = list(files)
    self.on_file_done = None  # called after each file (the progress bar)

  def __iter__(self):
    for path in self.files:
      for i, rec, schema in reader.read_records(path):
        if isinstance(rec, reader.BadPacket):
          yield Item(label=path, bad=rec)
        else:
          yield Item(label=f'{path}#{i}', rec=rec, schema=schema)
      if self.on_file_done is not None:
        self.on_file_done()

  def commit(self, marks):
    del marks

  def lag(self):
    return None

  def close(self):
    pass


# ----------------------------------------------------------------------------------------------
# Message bytes -> records (until reader.py has its own decoder of one message)


class Schemas:
  """The pinned writer schemas of the Confluent wire format (id -> schema), and a cache of
  the projections (``reader.projection``) of every writer schema met, keyed by its text."""

  def __init__(self, by_id=None):
    self._by_id = {}
    self._parsed = {}
    self._missing = set()
    for sid, schema in (by_id or {}).items():
      self.add(sid, schema)

  def add(self, schema_id, schema):
    if isinstance(schema, (str, os.PathLike)):
      try:
        with open(schema) as f:
          schema = json.load(f)
      except (OSError, ValueError) as e:
        raise UserError(f'--schema {schema_id}={schema}: {type(e).__name__}: {e}') from None
    self._by_id[int(schema_id)] = self._resolve(schema)

  def ids(self):
    return sorted(self._by_id)

  def _resolve(self, schema):
    key = json.dumps(schema, sort_keys=True) if not isinstance(schema, str) else schema
    got = self._parsed.get(key)
    if got is None:
      raw = json.loads(key) if isinstance(schema, str) else schema
      try:
        writer = fastavro.parse_schema(raw)
      except (fastavro.schema.SchemaParseException, fastavro.schema.UnknownType, KeyError,
              ValueError, TypeError) as e:
        raise reader.BadPacket(f'an unreadable writer schema ({type(e).__name__}: {e})') \
            from None
      got = (raw, writer, reader.projection(raw))
      self._parsed[key] = got
    return got

  def by_id(self, schema_id):
    """The schema given for ``schema_id`` (``--schema``), else Rubin's of that id from the
    pinned lsst-alert-packet (``reader.rubin_schema``: 100 major + minor), else None."""
    got = self._by_id.get(schema_id)
    if got is None and schema_id not in self._missing:
      try:
        got = self._by_id[schema_id] = self._resolve(reader.rubin_schema(schema_id))
      except KeyError:
        self._missing.add(schema_id)
    return got

  def container(self, header_schema_text):
    return self._resolve(header_schema_text)


def parse_schema_flags(values) -> Schemas:
  """``--schema ID=FILE.avsc`` (repeatable) -> ``Schemas``."""
  out = Schemas()
  for v in values or ():
    sid, sep, path = str(v).partition('=')
    if not sep or not sid.strip().isdigit():
      raise UserError(f'--schema {v!r}: give ID=FILE.avsc (the Confluent schema id)')
    out.add(int(sid), path)
  return out


def _read_long(buf, pos):
  """An Avro zig-zag varint at ``pos`` -> (value, next pos)."""
  shift = result = 0
  while True:
    if pos >= len(buf):
      raise EOFError('truncated varint')
    b = buf[pos]
    pos += 1
    result |= (b & 0x7F) << shift
    if not b & 0x80:
      return (result >> 1) ^ -(result & 1), pos
    shift += 7
    if shift > 63:
      raise ValueError('varint too long')


def _container_header(data):
  """(``avro.schema`` text, ``avro.codec``, position of the first block) of an Avro container's
  header (Avro 1.11 spec, Object Container Files: magic, a metadata map, a 16-byte sync)."""
  pos, meta = len(AVRO_MAGIC), {}
  while True:
    n, pos = _read_long(data, pos)
    if n == 0:
      break
    if n < 0:
      n = -n
      _, pos = _read_long(data, pos)
    for _ in range(n):
      klen, pos = _read_long(data, pos)
      key = bytes(data[pos:pos + klen])
      pos += klen
      vlen, pos = _read_long(data, pos)
      meta[key] = bytes(data[pos:pos + vlen])
      pos += vlen
  if b'avro.schema' not in meta:
    raise ValueError('no avro.schema in the container header')
  return meta[b'avro.schema'].decode(), meta.get(b'avro.codec', b'null').decode(), pos + 16


def _container_records(value, writer, proj):
  """The records of an Avro container message, its blocks decoded with the writer schema
  parsed once per distinct schema (``Schemas``) instead of once per message: the null and
  deflate codecs (what brokers use); None for another codec (then ``fastavro.reader``)."""
  _, codec, pos = _container_header(value)
  if codec not in ('null', 'deflate'):
    return None
  sync = bytes(value[pos - 16:pos])
  out, n = [], len(value)
  while pos < n:
    count, pos = _read_long(value, pos)
    size, pos = _read_long(value, pos)
    block = value[pos:pos + size]
    if len(block) != size:
      raise EOFError('truncated block')
    pos += size
    if value[pos:pos + 16] != sync:
      raise ValueError('sync marker mismatch')
    pos += 16
    if codec == 'deflate':
      block = zlib.decompress(block, -15)
    buf = io.BytesIO(block)
    for _ in range(count):
      out.append(fastavro.schemaless_reader(buf, writer, proj) if proj is not None else
                 fastavro.schemaless_reader(buf, writer))
  return out


def decode_message(value, schemas: Schemas, label) -> list[tuple[dict, dict]]:
  """One Kafka message's bytes -> [(record, writer schema)] (an Avro container may hold
  several records); ``reader.BadPacket`` naming ``label`` for anything else."""
  if value is None or len(value) == 0:
    raise reader.BadPacket(f'{label}: an empty message')
  try:
    if value[:4] == AVRO_MAGIC:
      raw, writer, proj = schemas.container(_container_header(value)[0])
      recs = _container_records(value, writer, proj)
      if recs is None:
        recs = list(fastavro.reader(io.BytesIO(value), reader_schema=proj) if proj is not None
                    else fastavro.reader(io.BytesIO(value)))
      return [(rec, raw) for rec in recs]
    if value[0] == WIRE_MAGIC and len(value) >= 5:
      (sid,) = struct.unpack('>I', value[1:5])
      got = schemas.by_id(sid)
      if got is None:
        raise reader.BadPacket(f'{label}: Confluent wire format with schema id {sid}: neither a '
                               'schema given (--schema ID=FILE.avsc) nor one of Rubin\'s pinned '
                               'ones (lsst-alert-packet)')
      raw, writer, proj = got
      buf = io.BytesIO(value)
      buf.seek(5)
      rec = fastavro.schemaless_reader(buf, writer, proj) if proj is not None else \
          fastavro.schemaless_reader(buf, writer)
      if buf.tell() != len(value):
        raise ValueError(f'{len(value) - buf.tell()} bytes after the record')
      return [(rec, raw)]
  except reader.BadPacket:
    raise
  except (OSError, EOFError, ValueError, TypeError, KeyError, IndexError, UnicodeDecodeError,
          struct.error, zlib.error, fastavro.read.SchemaResolutionError) as e:
    raise reader.BadPacket(f'{label}: undecodable message ({type(e).__name__}: '
                           f'{str(e)[:120]})') from None
  raise reader.BadPacket(f'{label}: neither an Avro container (Obj\\x01) nor the Confluent '
                         f'wire format (\\x00 + schema id): first bytes {bytes(value[:8])!r}')


# ----------------------------------------------------------------------------------------------
# Kafka


def kafka_config(bootstrap, extra=()) -> dict:
  """librdkafka settings: bootstrap.servers plus ``--kafka_config KEY=VALUE`` (security,
  SASL, timeouts of a real cluster)."""
  conf = {'bootstrap.servers': bootstrap}
  for kv in extra or ():
    k, sep, v = str(kv).partition('=')
    if not sep or not k.strip():
      raise UserError(f'--kafka_config {kv!r}: give KEY=VALUE (a librdkafka setting)')
    conf[k.strip()] = v
  return conf


def check_reachable(conf, topic, timeout_s, what='--kafka'):
  """A one-line UserError unless the cluster answers within ``timeout_s`` (and, with a
  ``topic``, knows it): checked before the model is loaded."""
  try:
    import confluent_kafka  # lazy: only the Kafka source needs librdkafka
    from confluent_kafka import admin as kafka_admin  # lazy: only the Kafka source needs it
  except ImportError:
    raise UserError(f'{what} needs confluent-kafka: pip install -e \'.[kafka]\'') from None
  probe = dict(conf, **{'socket.connection.setup.timeout.ms': int(1000 * timeout_s)})
  probe.setdefault('client.id', 'rcnn_jax-probe')
  probe['log_level'] = 0  # its connection failures are the one line below
  admin = kafka_admin.AdminClient(probe)
  try:
    md = admin.list_topics(timeout=timeout_s)
  except confluent_kafka.KafkaException as e:
    raise UserError(f'{what} {conf["bootstrap.servers"]}: no Kafka broker answered within '
                    f'{timeout_s:g} s ({e.args[0].str() if e.args else e})') from None
  if topic is not None and topic not in md.topics:
    raise UserError(f'--topic {topic}: no such topic on {conf["bootstrap.servers"]} '
                    f'({len(md.topics)} topics there)')
  return md


class KafkaSource:
  """Messages of ``topic`` consumed in the consumer group ``group`` (confluent-kafka).

  Offsets are never committed automatically: ``commit()`` (called by the pipeline after a
  chunk's state transaction and outputs) commits the next offset of every partition consumed.
  Before partitions are taken away in a rebalance, ``before_revoke`` (the pipeline's
  flush) processes and commits what this member holds of them, so that the member that gets
  them starts where this one stopped. ``stop()`` (SIGTERM/SIGINT) ends the iteration after the
  message being handled; ``idle_exit_s`` ends it after that long without a message.
  """

  def __init__(self, conf, topic, group, schemas: Schemas, session_timeout_ms=None,
               offset_reset='earliest', poll_s=0.2, idle_exit_s=0.0, batch=64, stderr=None):
    import confluent_kafka  # lazy: only the Kafka source needs librdkafka
    self._ck = confluent_kafka
    self.topic, self.group, self.schemas = topic, group, schemas
    self.poll_s, self.idle_exit_s, self.batch = poll_s, idle_exit_s, batch
    self.stderr = stderr or sys.stderr
    st = session_timeout_ms or int(os.environ.get(SESSION_TIMEOUT_ENV, '0') or 0) or 45000
    c = {'group.id': group, 'enable.auto.commit': False,
              'enable.auto.offset.store': False, 'auto.offset.reset': offset_reset,
              'session.timeout.ms': int(st),
              'heartbeat.interval.ms': max(100, int(st) // 4),
              'partition.assignment.strategy': 'cooperative-sticky',
              'enable.partition.eof': False, 'log.connection.close': False}
    c.update(conf)  # bootstrap.servers and --kafka_config (which may override the above)
    self.consumer = confluent_kafka.Consumer(c)
    self._stop = False
    self.before_revoke = None  # the pipeline's flush, before partitions are taken away
    self.on_lost = None  # the pipeline's: drop what it holds of lost partitions
    self.assigned = set()
    self.consumer.subscribe([topic], on_assign=self._on_assign, on_revoke=self._on_revoke,
                            on_lost=self._on_lost)

  def stop(self):
    self._stop = True

  def _on_assign(self, consumer, partitions):
    del consumer
    self.assigned |= {(p.topic, p.partition) for p in partitions}

  def _on_revoke(self, consumer, partitions):
    del consumer
    if self.before_revoke is not None:
      self.before_revoke()  # processes the chunk held, writes its outputs, commit()
    self._forget({(p.topic, p.partition) for p in partitions})

  def _on_lost(self, consumer, partitions):
    # The group went on without this member (a session timeout): another member owns these
    # partitions now and replays them from their last commit; what this one holds of them is
    # dropped unprocessed (``on_lost``: the pipeline's), so that nothing is written twice.
    del consumer
    gone = {(p.topic, p.partition) for p in partitions}
    if self.on_lost is not None:
      self.on_lost(gone)
    self._forget(gone)

  def _forget(self, gone):
    self.assigned -= gone

  def __iter__(self):
    """Messages (``Item``s to decode with ``records``) and ``IDLE`` after an empty poll."""
    idle = 0.0  # seconds of empty polls with partitions, since the last message
    while not self._stop:
      t0 = time.monotonic()
      msgs = self.consumer.consume(num_messages=self.batch, timeout=self.poll_s)
      if not msgs:
        if self.assigned:  # joining the group (no partitions yet) is not idle
          idle += time.monotonic() - t0
        if self.idle_exit_s and idle > self.idle_exit_s:
          return
        yield IDLE
        continue
      idle = 0.0
      for m in msgs:
        if self._stop:
          break  # not yielded: not committed, a restart reads it
        err = m.error()
        if err is not None:
          if err.code() == self._ck.KafkaError._PARTITION_EOF:  # pylint: disable=protected-access
            continue
          if err.fatal() or err.code() in (self._ck.KafkaError.UNKNOWN_TOPIC_OR_PART,
                                           self._ck.KafkaError.TOPIC_AUTHORIZATION_FAILED):
            raise UserError(f'--topic {self.topic}: {err.str()}')
          print(f'warning: Kafka: {err.str()}', file=self.stderr)
          continue
        yield Item(label=f'{m.topic()}[{m.partition()}]@{m.offset()}', raw=m.value(),
                   key=m.key(), where=(m.topic(), m.partition(), m.offset()),
                   needs_decoding=True)

  def records(self, item) -> list[Item]:
    """A message's records (one ``Item`` each, the last one ``last``), or one ``Item`` with
    ``bad`` set for undecodable bytes."""
    try:
      recs = decode_message(item.raw, self.schemas, item.label)
    except reader.BadPacket as e:
      return [dataclasses.replace(item, bad=e, needs_decoding=False)]
    n = len(recs)
    if n == 0:
      return [dataclasses.replace(item, bad=reader.BadPacket(f'{item.label}: no record'),
                                  needs_decoding=False)]
    return [dataclasses.replace(item, label=item.label if n == 1 else f'{item.label}#{j}',
                                rec=rec, schema=schema, last=j == n - 1, needs_decoding=False)
            for j, (rec, schema) in enumerate(recs)]

  def commit(self, marks):
    """Commits ``marks`` ((topic, partition) -> the offset to start from after a restart) of
    the partitions still assigned, synchronously: when it returns, a restart (or the member
    that gets these partitions) starts after the messages handled."""
    offsets = [self._ck.TopicPartition(t, p, o) for (t, p), o in sorted(marks.items())
               if (t, p) in self.assigned]
    if not offsets:
      return
    try:
      self.consumer.commit(offsets=offsets, asynchronous=False)
    except self._ck.KafkaException as e:
      # Partitions just lost to a rebalance: their new owner replays from the last commit,
      # a no-op for the alerts already in the state.
      print(f'warning: Kafka offset commit failed ({e.args[0].str() if e.args else e}); '
            'the next owner of those partitions replays them', file=self.stderr)

  def lag(self) -> int | None:
    """Messages behind the end of the partitions assigned (high watermark - position)."""
    try:
      parts = self.consumer.assignment()
      if not parts:
        return 0
      pos = {(p.topic, p.partition): p.offset for p in self.consumer.position(parts)}
      total = 0
      for p in parts:
        lo, hi = self.consumer.get_watermark_offsets(p, cached=True)
        if hi is None or hi < 0:
          lo, hi = self.consumer.get_watermark_offsets(p, timeout=1.0)
        o = pos.get((p.topic, p.partition), -1)
        total += max(0, hi - (o if o >= 0 else lo))
      return total
    except self._ck.KafkaException:
      return None

  def close(self):
    try:
      self.consumer.close()  # leaves the group: its partitions move at once
    except RuntimeError:
      pass
