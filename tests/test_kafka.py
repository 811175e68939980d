"""The live stream (issue 41): ``python -m rcnn_jax.alerts --kafka`` as real processes against
librdkafka's MOCK cluster (``rcnn_jax.serving.alerts.mockkafka``: librdkafka's own test double,
the Kafka protocol with consumer groups, committed offsets and rebalances, served on loopback
by a process of its own), NOT a real Kafka broker: none installs here. The same commands take a
real cluster's bootstrap servers in ``--kafka`` (docs/alerts.md).

Streams: the shared real ZTF samples (16 packets of 16 objects, one alert each) and longer
streams made from their real cutouts (several alerts per object, ids and times rewritten, as
tests/test_alerts.py makes them), one Avro container per message keyed by object id; Rubin's
sample packets in the Confluent wire format. The model: random parameters of the ZTF smoke
config saved as a pretrained folder, loaded once per consumer process (the XLA cache of
tests/conftest.py is shared). Session timeouts of 4 s so that a group rebalances quickly after
a kill -9; consumers that run to the end exit after 1.5 s without a message (``--idle_exit``:
counted only while they hold partitions, and every stream is produced before they start).
The two-consumer kill -9 test runs with the state in PostgreSQL (``postgres_url``) and in one
SQLite file shared by both processes.
"""

from __future__ import annotations

import copy
import io
import math
import os
import pathlib
import signal
import sqlite3
import struct
import subprocess
import sys
import time
import uuid

import confluent_kafka
import fastavro
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import ztf
from rcnn_jax import models
from rcnn_jax.serving import shipped
from rcnn_jax.serving.alerts import pipeline
from rcnn_jax.serving.alerts import reader
from rcnn_jax.serving.alerts import sinks
from rcnn_jax.serving.alerts import sources
from rcnn_jax.serving.alerts import state as state_lib
from rcnn_jax.serving.classifier import Classifier

ROOT = pathlib.Path(__file__).resolve().parents[1]
ALERTS = ROOT.parent / 'shared' / 'data' / 'alerts'
ZTF_MULTI = ALERTS / 'ztf' / 'avro_multi_alerts.avro'
RUBIN = ALERTS / 'rubin' / 'part-2-918301.avro'
NAN_PACKET = 8  # the record of avro_multi_alerts.avro with NaN pixels in its stamp
SLOTS = 4
SESSION_MS = '4000'
IDLE_EXIT = '1.5'  # seconds without a message (partitions assigned) before a consumer exits

pytestmark = pytest.mark.skipif(not ZTF_MULTI.exists(),
                                reason=f'shared alert samples not found at {ALERTS}')


# ----------------------------------------------------------------------------------------------
# Fixtures: the mock cluster, the model, the packets


@pytest.fixture(scope='module')
def mock():
  """librdkafka's mock cluster in a process of its own: its bootstrap servers."""
  p = subprocess.Popen([sys.executable, '-m', 'rcnn_jax.serving.alerts.mockkafka'], cwd=ROOT,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
  bootstrap = p.stdout.readline().strip()
  assert bootstrap.startswith('127.0.0.1:'), p.stderr.read()
  yield bootstrap
  p.terminate()
  p.wait(timeout=30)


@pytest.fixture(scope='module')
def model(tmp_path_factory):
  """(pretrained folder, classifier) of random ZTF smoke parameters (float32)."""
  config = ztf.get_config('smoke')
  out = tmp_path_factory.mktemp('kafka') / 'ztf_model'
  m = models.build_model(config.model, len(config.sim.class_names))
  s, n_w, nb = int(config.sim.stamp_size), int(config.sim.n_w), len(config.survey.bands)
  width = n_w + (n_w * nb if nb > 1 else 0)
  v = jax.jit(lambda k: m.init(k, jnp.zeros((1, 1, s, s, n_w)), jnp.zeros((1, 1, width)),
                               jnp.ones((1, 1), bool)))(jax.random.key(3))
  shipped.save(str(out), config, v['params'], v['batch_stats'], step=0,
               source='random init (tests/test_kafka.py)', dtype='float32')
  return str(out), Classifier(config, v['params'], v['batch_stats'])


@pytest.fixture(scope='module')
def templates():
  with open(ZTF_MULTI, 'rb') as f:
    r = fastavro.reader(f)
    return r.writer_schema, list(r)


def _packet(templates, o, e):
  """A real ZTF packet (its cutouts) made into epoch e of synthetic object o."""
  good = [r for i, r in enumerate(templates[1]) if i != NAN_PACKET]
  rec = copy.deepcopy(good[(o + 3 * e) % len(good)])
  rec['objectId'] = f'ZTFk{o:03d}'
  rec['candid'] = rec['candidate']['candid'] = 2 * 10**15 + 1000 * o + e
  c = rec['candidate']
  c['jd'] = 2459000.5 + 0.7 * e + 0.01 * o
  c['fid'] = 1 + (e % 2)
  c['fwhm'] = 2.0
  c['magzpsci'] = 26.2 + 0.05 * math.sin(o + e)
  return rec


def _stream(templates, num_objects, num_epochs, seed=0):
  """Packets of ``num_objects`` objects x ``num_epochs`` alerts, objects interleaved (each
  object's alerts in time order)."""
  rng = np.random.default_rng(seed)
  queues = {o: list(range(num_epochs)) for o in range(num_objects)}
  out = []
  while queues:
    o = int(rng.choice(sorted(queues)))
    out.append(_packet(templates, o, queues[o].pop(0)))
    if not queues[o]:
      del queues[o]
  return out


def _container(schema, rec) -> bytes:
  buf = io.BytesIO()
  fastavro.writer(buf, fastavro.parse_schema(copy.deepcopy(schema)), [rec])
  return buf.getvalue()


def _samples():
  """(key, value) of every shared ZTF sample packet, one Avro container per message."""
  out = []
  for path in reader.list_inputs([ALERTS / 'ztf']):
    with open(path, 'rb') as f:
      r = fastavro.reader(f)
      schema = r.writer_schema
      out += [(rec['objectId'], _container(schema, rec)) for rec in r]
  return out


def _produce(bootstrap, topic, messages):
  p = confluent_kafka.Producer({'bootstrap.servers': bootstrap, 'linger.ms': 5})
  for key, value in messages:
    p.produce(topic, key=None if key is None else str(key).encode(), value=value)
  assert p.flush(30) == 0


def _read(bootstrap, topic, want=None, timeout=60.0, settle=0.5):
  """Every message of ``topic`` from the start (its partitions assigned, no group):
  [(key, value, headers, partition)], once ``want`` have come and none for ``settle`` s, or
  at ``timeout``."""
  c = confluent_kafka.Consumer({'bootstrap.servers': bootstrap, 'group.id': 'reader',
                                'enable.auto.commit': False})
  out, t0 = [], time.time()
  try:
    while True:
      md = c.list_topics(topic, timeout=10).topics.get(topic)
      if md is not None and md.partitions and md.error is None:
        break
      if time.time() - t0 > timeout:
        return out
      time.sleep(0.2)
    c.assign([confluent_kafka.TopicPartition(topic, p, confluent_kafka.OFFSET_BEGINNING)
              for p in md.partitions])
    last = time.time()
    while time.time() - t0 < timeout:
      m = c.poll(0.1)
      if m is None or m.error():
        if (want is None or len(out) >= want) and time.time() - last > settle:
          break
        continue
      out.append((m.key(), m.value(), dict(m.headers() or []), m.partition()))
      last = time.time()
  finally:
    c.close()
  return out


def _committed(bootstrap, topic, group):
  c = confluent_kafka.Consumer({'bootstrap.servers': bootstrap, 'group.id': group})
  md = c.list_topics(topic, timeout=10)
  parts = [confluent_kafka.TopicPartition(topic, p) for p in md.topics[topic].partitions]
  got = {p.partition: p.offset for p in c.committed(parts, timeout=10)}
  ends = {p.partition: c.get_watermark_offsets(p, timeout=10)[1] for p in parts}
  c.close()
  return got, ends


def _consumer(model_dir, bootstrap, topic, group, state, out_topic, *extra, env=None):
  args = ['--workdir', model_dir, '--state', str(state), '--kafka', bootstrap, '--topic', topic,
          '--group', group, '--out_topic', out_topic, '--batch', str(SLOTS),
          '--progress_every', '2', '--linger', '0.2'] + list(extra)
  e = dict(os.environ, PYTHONPATH=str(ROOT), RCNN_JAX_KAFKA_SESSION_TIMEOUT_MS=SESSION_MS,
           **(env or {}))
  return subprocess.Popen([sys.executable, '-m', 'rcnn_jax.alerts'] + args, cwd=ROOT, env=e,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _records(msgs):
  return [sinks.decode_record(v) for _, v, _, _ in msgs]


def _file_run(clf, tmp_path, name, packets, schema):
  """The same packets through the files command (in this process): its CSV rows by alert id."""
  path = tmp_path / f'{name}.avro'
  with open(path, 'wb') as f:
    fastavro.writer(f, fastavro.parse_schema(copy.deepcopy(schema)), packets)
  store = state_lib.Store(tmp_path / f'{name}.db')
  store.bind(state_lib.model_identity(clf))
  pipeline.classify_files(clf, store, [str(path)], str(tmp_path / f'{name}.csv'), slots=SLOTS,
                          progress=False, stderr=io.StringIO())
  store.close()
  import csv  # pylint: disable=g-import-not-at-top
  with open(tmp_path / f'{name}.csv') as f:
    return {r['alert_id']: r for r in csv.DictReader(f)}, tmp_path / f'{name}.db'


def _same_as_csv(rec, row, class_names):
  assert rec['object_id'] == row['object_id'] and rec['status'] == row['status']
  assert rec['step'] == int(row['step']) and rec['classes'] == list(class_names)
  if rec['probabilities'] is None:
    assert all(row[c] == '' for c in class_names)
  else:
    np.testing.assert_allclose(rec['probabilities'], [float(row[c]) for c in class_names],
                               rtol=1e-5, atol=1e-6)


def _alerts(store):
  return sorted((a, o, round(m, 6), b, st, status, bytes(p))
                for a, o, m, b, st, status, p in store.all_alerts())


def _count(db):
  try:
    con = sqlite3.connect(f'file:{db}?mode=ro', uri=True, timeout=1.0)
    try:
      return con.execute('SELECT COUNT(*) FROM alerts').fetchone()[0]
    finally:
      con.close()
  except sqlite3.Error:
    return 0


# ----------------------------------------------------------------------------------------------
# Message forms (in this process)


def test_decode_message_both_forms_and_poison(templates):
  """An Avro container per message (Fink / Lasair / ANTARES) and the Confluent wire format
  (Rubin's: magic byte, schema id, no schema inside) decode to the records the file reader
  reads; undecodable bytes are one BadPacket naming the message."""
  schemas = sources.Schemas()
  for path in reader.list_inputs([ALERTS / 'ztf']):
    want = [r for _, r, _ in reader.read_records(path)]
    got = [r for r, _ in sources.decode_message(pathlib.Path(path).read_bytes(), schemas, 'm')]
    assert got == want
  with open(RUBIN, 'rb') as f:
    r = fastavro.reader(f)
    writer, recs = r.writer_schema, list(r)
  want = [r for _, r, _ in reader.read_records(RUBIN)]
  schemas.add(4242, writer)
  parsed = fastavro.parse_schema(copy.deepcopy(writer))
  for rec, w in zip(recs, want):
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, parsed, rec)
    msg = b'\x00' + struct.pack('>I', 4242) + buf.getvalue()
    (got, schema), = sources.decode_message(msg, schemas, 'rubin[0]@1')
    assert got == w and schema == writer
  for poison, needle in [(b'not avro at all', 'neither an Avro container'),
                         (pathlib.Path(ZTF_MULTI).read_bytes()[:5000], 'undecodable'),
                         (b'\x00\x00\x00\x00\x07\x01\x02', 'schema id 7:'),
                         (b'\x00' + struct.pack('>I', 4242) + b'\x01', 'undecodable')]:
    with pytest.raises(reader.BadPacket, match=needle) as e:
      sources.decode_message(poison, schemas, 'alerts[3]@17')
    assert str(e.value).startswith('alerts[3]@17: ') and '\n' not in str(e.value)


# ----------------------------------------------------------------------------------------------
# One consumer (SQLite)


def test_stream_equals_the_files_run_and_poison_goes_to_the_dead_letter_topic(
    mock, model, templates, tmp_path):
  """The 16 shared packets and 6 objects x 5 alerts (so that the model classifies: n_w = 3)
  through one consumer process: the output topic holds one record per alert equal to the files
  command's row, keyed by object id; the poison message and the NaN packet are one line each
  (topic, partition, offset) and one dead-letter record each; the offsets are committed to the
  end and the process exits 0 when idle. The same group again reads nothing; a new group
  replays the topic as a no-op (every alert already in the state, nothing published)."""
  model_dir, clf = model
  topic, out_topic = f'alerts-{uuid.uuid4().hex[:8]}', f'classified-{uuid.uuid4().hex[:8]}'
  stream = _stream(templates, 6, 5, seed=1)
  messages = _samples() + [(r['objectId'], _container(templates[0], r)) for r in stream]
  messages.insert(7, ('poison', b'\x07not an alert'))
  _produce(mock, topic, messages)
  db = tmp_path / 's.db'
  p = _consumer(model_dir, mock, topic, 'g1', db, out_topic, '--idle_exit', IDLE_EXIT)
  stdout, stderr = p.communicate(timeout=240)
  assert p.returncode == 0, stderr
  errors = [l for l in stderr.splitlines() if l.startswith('error:')]
  assert len(errors) == 2, stderr
  assert sum(f'{topic}[' in l and ']@' in l and 'neither an Avro' in l for l in errors) == 1
  assert sum('candid 1034529784115010007: NaN' in l for l in errors) == 1
  assert 'alerts/s' in stdout
  good = len(messages) - 2
  out = _read(mock, out_topic, want=good)
  assert len(out) == good
  recs = _records(out)
  assert len({r['alert_id'] for r in recs}) == good
  assert all(k.decode() == r['object_id'] for (k, _, _, _), r in zip(out, recs))
  # Per object, the records come in the object's order (one partition per object).
  assert len({(k, part) for k, _, _, part in out}) == len({k for k, _, _, _ in out})
  # Equal to the files command on the same packets.
  sample_recs = [r for path in reader.list_inputs([ALERTS / 'ztf'])
                 for _, r, _ in reader.read_records(path)]
  rows, _ = _file_run(clf, tmp_path, 'files', sample_recs + stream, templates[0])
  for r in recs:
    _same_as_csv(r, rows[r['alert_id']], clf.class_names)
    assert r['source'].startswith(f'{topic}[')
  assert sum(r['status'] == 'classified' for r in recs) == 6 * (5 - clf.n_w + 1)
  dead = _read(mock, f'{out_topic}.dead_letter', want=2)
  assert len(dead) == 2
  heads = sorted(d[2]['error'].decode() for d in dead)
  assert any('neither an Avro' in h for h in heads) and any('NaN' in h for h in heads)
  poison = [d for d in dead if b'neither' in d[2]['error']][0]
  assert poison[1] == b'\x07not an alert' and poison[2]['source.topic'] == topic.encode()
  committed, ends = _committed(mock, topic, 'g1')
  assert committed == ends and sum(ends.values()) == len(messages)
  # Same group again: nothing left to read. A new group: the replay is a no-op.
  store = state_lib.Store(db)
  before = _alerts(store)
  store.close()
  p = _consumer(model_dir, mock, topic, 'g2', db, out_topic, '--idle_exit', IDLE_EXIT)
  stdout, stderr = p.communicate(timeout=240)
  assert p.returncode == 0, stderr
  assert f'{good} already in the state' in stdout, stdout
  store = state_lib.Store(db)
  assert _alerts(store) == before
  store.close()
  assert len(_read(mock, out_topic, want=good)) == good  # nothing published twice


def test_sigterm_stops_after_the_chunk_commits_and_exits_0(mock, model, templates, tmp_path):
  """SIGTERM mid-stream: the chunk in hand finishes, its offsets are committed, exit 0; what
  the state holds is exactly the messages before the committed offsets; a restart goes on from
  there and the end equals one run (every alert once in the state and in the topic)."""
  model_dir, _ = model
  topic, out_topic = f'alerts-{uuid.uuid4().hex[:8]}', f'classified-{uuid.uuid4().hex[:8]}'
  stream = _stream(templates, 10, 4, seed=2)
  _produce(mock, topic, [(r['objectId'], _container(templates[0], r)) for r in stream])
  db = tmp_path / 't.db'
  p = _consumer(model_dir, mock, topic, 'g', db, out_topic, '--idle_exit', '30',
                env={'RCNN_JAX_ALERTS_TEST_PAUSE_S': '0.3'})
  t0 = time.time()
  while _count(db) < 4 and p.poll() is None and time.time() - t0 < 240:
    time.sleep(0.05)
  p.send_signal(signal.SIGTERM)
  stdout, stderr = p.communicate(timeout=120)
  assert p.returncode == 0, stderr
  assert 'stopped by SIGTERM' in stderr
  committed, _ = _committed(mock, topic, 'g')
  done = sum(max(o, 0) for o in committed.values())
  assert 4 <= done < len(stream) and _count(db) == done
  p = _consumer(model_dir, mock, topic, 'g', db, out_topic, '--idle_exit', IDLE_EXIT)
  stdout, stderr = p.communicate(timeout=240)
  assert p.returncode == 0, stderr
  assert _count(db) == len(stream) and '0 already in the state' in stdout
  recs = _records(_read(mock, out_topic, want=len(stream)))
  assert sorted(r['alert_id'] for r in recs) == sorted(str(r['candid']) for r in stream)


# ----------------------------------------------------------------------------------------------
# Two consumers in a group, one killed with kill -9 (PostgreSQL and SQLite)


@pytest.mark.parametrize('backend', ['postgresql', 'sqlite'])
def test_two_consumers_one_killed_the_other_takes_over(mock, model, templates, tmp_path,
                                                       request, backend):
  """Two processes in one group (2 of the topic's 4 partitions each), the state in one
  PostgreSQL database (``postgres_url``) or in one SQLite file shared by both (safe on one
  host: BEGIN IMMEDIATE serialises their chunks); one is killed with kill -9 inside a chunk's
  transaction; after the session timeout the other gets its partitions and replays from its
  last commit. The output topic and the state then equal one uninterrupted run: every alert
  once, none lost."""
  if backend == 'postgresql':
    url = request.getfixturevalue('postgres_url')
  else:
    url = str(tmp_path / 'shared.db')
  model_dir, clf = model
  topic, out_topic = f'alerts-{uuid.uuid4().hex[:8]}', f'classified-{uuid.uuid4().hex[:8]}'
  stream = _stream(templates, 16, 4, seed=3)
  _produce(mock, topic, [(r['objectId'], _container(templates[0], r)) for r in stream])
  a = _consumer(model_dir, mock, topic, 'pair', url, out_topic,
                env={'RCNN_JAX_ALERTS_TEST_PAUSE_S': '0.6'})
  b = _consumer(model_dir, mock, topic, 'pair', url, out_topic,
                env={'RCNN_JAX_ALERTS_TEST_PAUSE_S': '0.1'})
  try:
    t0 = time.time()
    seen = []
    while time.time() - t0 < 240:
      seen = _read(mock, out_topic, timeout=2.0, settle=0.3)
      if len(seen) >= 12:
        break
    assert len(seen) >= 12, a.stderr.read() if a.poll() is not None else 'slow'
    assert len(seen) < len(stream), 'the stream ended before the kill'
    time.sleep(0.3)  # inside one of the next chunks' transactions (each sleeps 0.6 s)
    a.send_signal(signal.SIGKILL)
    a.wait(timeout=30)
    _read(mock, out_topic, want=len(stream), timeout=180, settle=0.3)  # b has taken over
    b.send_signal(signal.SIGTERM)
    _, err_b = b.communicate(timeout=120)
    # Read once b has exited: everything either process ever published is in the topic.
    recs = _records(_read(mock, out_topic, want=len(stream)))
  finally:
    for p in (a, b):
      if p.poll() is None:
        p.kill()
  assert a.returncode == -signal.SIGKILL
  assert b.returncode == 0, err_b
  ids = [r['alert_id'] for r in recs]
  assert sorted(ids) == sorted(str(r['candid']) for r in stream)  # none lost, none twice
  # One uninterrupted run (in this process, SQLite): the same rows and object states.
  rows, one_db = _file_run(clf, tmp_path, 'one', stream, templates[0])
  for r in recs:
    _same_as_csv(r, rows[r['alert_id']], clf.class_names)
  shared = pipeline.open_store(url)
  one = state_lib.Store(one_db)
  try:
    assert [x[:6] for x in _alerts(shared)] == [x[:6] for x in _alerts(one)]
    assert [(o, n) for o, n, _, _ in shared.all_objects()] == \
        [(o, n) for o, n, _, _ in one.all_objects()]
  finally:
    shared.close()
    one.close()


# ----------------------------------------------------------------------------------------------
# Nothing saved is overwritten; bad flags (one line, exit 2, before the model is loaded)


def _cli(*args):
  return subprocess.run([sys.executable, '-m', 'rcnn_jax.alerts'] + list(args), cwd=ROOT,
                        env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True,
                        text=True, timeout=120)


def _one_line_exit_2(r, needle):
  lines = [l for l in r.stderr.strip().splitlines() if l.strip()]
  assert r.returncode == 2 and len(lines) == 1 and needle in lines[0], r.stderr


@pytest.mark.parametrize('case', ['state', 'sqlite', 'text', 'other_csv', 'other_parquet'])
def test_an_output_path_that_holds_something_else_is_refused(model, tmp_path, case):
  """--out naming the state, a database, a file that is not an earlier CSV of the same header
  or a Parquet file of other columns: one line (exit 2 from the command), the file untouched
  byte for byte, before any alert is read."""
  model_dir, clf = model
  db = tmp_path / 's.db'
  store = state_lib.Store(db)
  store.bind(state_lib.model_identity(clf))
  store.close()
  out, needle = {
      'state': (db, 'is the state database'),
      'sqlite': (tmp_path / 'other.db', 'holds an SQLite database'),
      'text': (tmp_path / 'notes.csv', 'not an earlier output'),
      'other_csv': (tmp_path / 'old.csv', 'another model'),
      'other_parquet': (tmp_path / 'old.parquet', 'other columns'),
  }[case]
  if case == 'sqlite':
    con = sqlite3.connect(out)
    con.execute('CREATE TABLE t (x)')
    con.commit()
    con.close()
  elif case == 'text':
    out.write_text('my notes, not a table\n')
  elif case == 'other_csv':
    out.write_text(','.join(sinks.COLUMNS + ('A', 'B')) + '\nx,1,2.0,g,0,warmup,,\n')
  elif case == 'other_parquet':
    pa = pytest.importorskip('pyarrow')
    from pyarrow import parquet as pq  # pylint: disable=g-import-not-at-top
    pq.write_table(pa.table({'object_id': ['a'], 'score': [1.0]}), out)
  before = {p: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
  if case == 'state':  # the careless user's command, as a process: one line, exit 2
    _one_line_exit_2(_cli('--workdir', model_dir, '--state', str(db), '--out', str(out),
                          '--noprogress', str(ZTF_MULTI)), needle)
  else:
    with pytest.raises(state_lib.UserError, match=needle) as e:
      pipeline.run_command(model_dir, [str(ZTF_MULTI)], str(db), str(out), progress=False)
    assert '\n' not in str(e.value)
  assert {p: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before


def test_an_earlier_output_of_the_same_kind_is_rewritten(model, tmp_path):
  model_dir, _ = model
  out = tmp_path / 'a.csv'
  for _ in range(2):
    assert pipeline.run_command(model_dir, [str(ALERTS / 'ztf' / 'ZTF19acihgng.avro')],
                                str(tmp_path / 's.db'), str(out), slots=SLOTS,
                                progress=False) == 0
  assert len(out.read_text().splitlines()) == 2


@pytest.mark.parametrize('kw,needle', [
    (dict(topic='T'), '--kafka needs --group'),
    (dict(group='G'), '--kafka needs --topic'),
    (dict(topic='T', group='G'), '--kafka needs --out_topic'),
    (dict(topic='T', group='G', out_topic='T'), 'is the input topic'),
    (dict(topic='T', group='G', out_topic='O', dead_letter_topic='T'), 'is the input topic'),
    (dict(topic='T', group='G', out_topic='O', dead_letter_topic='O'), 'is the output topic'),
    (dict(topic='T', group='G', out_topic='O', schemas=['rubin.avsc']), 'give ID=FILE.avsc'),
    (dict(topic='T', group='G', out_topic='O', kafka_config=['acks']), 'give KEY=VALUE'),
])
def test_bad_kafka_flags_are_one_line_before_the_model(tmp_path, kw, needle):
  """Checked before anything is loaded (the workdir does not even exist) or created."""
  kw = dict(dict(topic=None, group=None, out_topic=None), **kw)
  with pytest.raises(state_lib.UserError, match=needle) as e:
    pipeline.run_kafka_command(str(tmp_path / 'no_model'), '127.0.0.1:1', kw.pop('topic'),
                               kw.pop('group'), str(tmp_path / 's.db'), kw.pop('out_topic'),
                               connect_timeout_s=1.0, **kw)
  assert '\n' not in str(e.value)
  assert not (tmp_path / 's.db').exists()


@pytest.mark.parametrize('args,needle', [
    (['--partition', '0/2'], '--partition is for files'),
    (['--connect_timeout', '1'], 'no Kafka broker answered within 1 s'),
])
def test_bad_kafka_command_is_one_line_exit_2(tmp_path, args, needle):
  """As a process: an unreachable broker (after --connect_timeout) and --partition with
  --kafka are one line on stderr and exit status 2, before the model is loaded."""
  r = _cli('--workdir', str(tmp_path / 'no_model'), '--state', str(tmp_path / 's.db'),
           '--kafka', '127.0.0.1:1', '--topic', 'T', '--group', 'G', '--out_topic', 'O', *args)
  _one_line_exit_2(r, needle)
  assert not (tmp_path / 's.db').exists()
