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
import os
import sys
import time


from rcnn_jax.core.errors import UserError
from rcnn_jax.serving.alerts import packets
from rcnn_jax.serving.alerts import reader

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
# Message bytes -> records: packets.py, the decoder the files share

Schemas = packets.Schemas  # the pinned writer schemas by id, and every schema met, parsed once


def parse_schema_flags(values) -> Schemas:
  """``--schema ID=FILE.avsc`` (repeatable) -> ``Schemas``."""
  out = Schemas()
  for v in values or ():
    sid, sep, path = str(v).partition('=')
    if not sep or not sid.strip().isdigit():
      raise UserError(f'--schema {v!r}: give ID=FILE.avsc (the Confluent schema id)')
    out.add(int(sid), path)
  return out


def decode_message(value, schemas: Schemas, label) -> list[tuple[dict, dict]]:
  """One Kafka message's bytes -> [(record, writer schema)] (an Avro container may hold
  several records); ``reader.BadPacket`` naming ``label`` for anything else
  (``packets.decode_message``)."""
  recs, writer = packets.decode_message(value, schemas, label)
  return [(rec, writer) for rec in recs]


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
