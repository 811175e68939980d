"""The alert state's two backends (issue 41), one suite run on each: SQLite (a file) and
PostgreSQL (a real server: the ``postgres_url`` fixture of tests/conftest.py, a throwaway
cluster on loopback made by ``rcnn_jax.serving.alerts.pgserver``, a new database per test).

Round trip of slots and alert rows, a state of another model refused, a transaction rolled
back on an exception, tables of another kind refused untouched; with real processes: ``kill
-9`` inside a chunk's transaction leaves the state of the chunks before it, and two processes
writing the same objects at once never lose or double an alert; the command on the shared ZTF
samples with ``--state postgresql://...`` writes the CSV of the SQLite state, and a rerun
changes nothing. Models: the shipped ``pretrained/ztf_rcnn`` (the command's), or none (the
store-level tests use a hand-made slot template).
"""

from __future__ import annotations

import copy
import io
import json
import os
import pathlib
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rcnn_jax.serving.alerts import state as state_lib  # noqa: E402

ALERTS = ROOT.parent / 'shared' / 'data' / 'alerts'
ZTF_DIR = ALERTS / 'ztf'
ZTF_MULTI = ZTF_DIR / 'avro_multi_alerts.avro'
MODEL = ROOT / 'pretrained' / 'ztf_rcnn'
NAN_PACKET = 8  # the record of avro_multi_alerts.avro whose science stamp holds NaN pixels
BACKENDS = ['sqlite', 'postgresql']
H = 8
TEMPLATE = {'carry_0': np.zeros(H, np.float32), 'carry_1': np.zeros(H, np.float32),
            'window': np.zeros((2, 21, 21), np.float32), 'window_t': np.zeros(2, np.float32),
            'window_band': np.zeros(2, np.int32), 'probs': np.full(7, np.nan, np.float32),
            'num_images': np.int64(0), 'mjd0': np.float64(np.nan), 'zp0': np.float64(np.nan),
            'last_mjd': np.float64(-np.inf)}
IDENT = {'schema_version': 1, 'class_names': list('ABCDEFG'), 'n_w': 3, 'stamp_size': 21,
         'bands': ['g', 'r'], 'weights_sha256': '0' * 64}


@pytest.fixture(params=BACKENDS)
def spec(request, tmp_path):
  """--state of each backend: an SQLite path, a new PostgreSQL database's URL."""
  if request.param == 'sqlite':
    return str(tmp_path / 'state.db')
  return request.getfixturevalue('postgres_url')


def _open(spec, ident=IDENT):
  store = state_lib.open_store(spec)
  store.bind(ident)
  return store


def _slot(rng, num_images, last_mjd):
  s = {k: np.asarray(rng.normal(size=np.shape(v)), np.asarray(v).dtype)
       for k, v in TEMPLATE.items()}
  s['window_band'] = rng.integers(0, 2, 2).astype(np.int32)
  s['probs'][0] = np.nan
  s.update(num_images=np.int64(num_images), last_mjd=np.float64(last_mjd))
  return s


def _alert(a, o, step=1, status='classified', band='g', probs=None):
  probs = np.linspace(0, 1, 7, dtype=np.float32) if probs is None else probs
  return dict(alert_id=a, object_id=o, mjd=58000.125 + step, band=band, step=step,
              status=status, probs=probs)


def _same_slot(a, b):
  assert sorted(a) == sorted(b)
  for k in a:
    assert np.asarray(a[k]).dtype == np.asarray(b[k]).dtype, k
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# ----------------------------------------------------------------------------------------------
# The interface, on each backend


def test_open_store_picks_the_backend(spec):
  store = state_lib.open_store(spec)
  try:
    want = state_lib.Store if spec.endswith('.db') else state_lib.PostgresStore
    assert type(store) is want
  finally:
    store.close()


def test_slots_and_alert_rows_round_trip(spec):
  rng = np.random.default_rng(0)
  slots = {'ZTFa': _slot(rng, 4, 58001.5), 'ZTFb': _slot(rng, 1, np.nan),
           'ZTF\u00e9': _slot(rng, 2, 58002.0)}
  rows = [_alert('1', 'ZTFa'), _alert('2', 'ZTFb', step=0, status='warmup', band=None,
                                      probs=np.full(7, np.nan, np.float32)),
          _alert('3', 'ZTFa', step=2, status='late')]
  store = _open(spec)
  with store.transaction(list(slots)):
    store.put_slots(slots, TEMPLATE)
    store.put_alerts(rows[:2])
  with store.transaction(['ZTFa']):
    store.put_alerts(rows[2:])
  store.close()
  store = _open(spec)  # another connection: what was committed
  try:
    got = store.slots(['ZTFa', 'nothing', 'ZTFb', 'ZTF\u00e9', 'ZTFa'], TEMPLATE)
    assert sorted(got) == sorted(slots)
    for o in slots:
      _same_slot(got[o], slots[o])
    objects = store.all_objects()
    assert [(o, n, m) for o, n, m, _ in objects] == [('ZTFa', 4, 58001.5), ('ZTFb', 1, None),
                                                    ('ZTF\u00e9', 2, 58002.0)]  # byte order
    assert [bytes(b) for *_, b in objects] == [state_lib.pack_slot(slots[o], TEMPLATE)
                                               for o in ('ZTFa', 'ZTFb', 'ZTF\u00e9')]
    done = store.alert_rows(['3', '9', '1', '2'])
    assert sorted(done) == ['1', '2', '3']
    for r in rows:
      d = done[r['alert_id']]
      assert {k: d[k] for k in r if k != 'probs'} == {k: r[k] for k in r if k != 'probs'}
      np.testing.assert_array_equal(d['probs'], r['probs'])
      assert d['probs'].dtype == np.float32
    assert [a[0] for a in store.all_alerts()] == ['1', '2', '3']  # in processing order
    # A slot written again replaces the old one.
    new = _slot(rng, 5, 58003.0)
    with store.transaction(['ZTFa']):
      store.put_slots({'ZTFa': new}, TEMPLATE)
    _same_slot(store.slots(['ZTFa'], TEMPLATE)['ZTFa'], new)
    assert len(store.all_objects()) == 3
  finally:
    store.close()


def test_a_state_of_another_model_is_refused(spec):
  _open(spec).close()
  _open(spec).close()  # the same model again: fine
  other = dict(IDENT, n_w=4, weights_sha256='1' * 64)
  store = state_lib.open_store(spec)
  try:
    with pytest.raises(state_lib.UserError) as e:
      store.bind(other)
    assert '\n' not in str(e.value)
    assert 'made with another model (n_w, weights_sha256 differ)' in str(e.value)
  finally:
    store.close()


@pytest.mark.parametrize('error', [RuntimeError, KeyboardInterrupt])
def test_a_transaction_is_all_or_nothing(spec, error):
  rng = np.random.default_rng(1)
  store = _open(spec)
  try:
    with store.transaction(['A']):
      store.put_slots({'A': _slot(rng, 1, 1.0)}, TEMPLATE)
      store.put_alerts([_alert('a1', 'A')])
    before = (store.all_alerts(), store.all_objects())
    with pytest.raises(error):
      with store.transaction(['A', 'B']):
        store.put_slots({'A': _slot(rng, 2, 2.0), 'B': _slot(rng, 1, 2.0)}, TEMPLATE)
        store.put_alerts([_alert('a2', 'A'), _alert('b1', 'B')])
        assert sorted(store.alert_rows(['a2', 'b1'])) == ['a2', 'b1']  # seen inside
        raise error('mid-chunk')
    assert (store.all_alerts(), store.all_objects()) == before
    with store.transaction(['B']):  # the store goes on
      store.put_alerts([_alert('b1', 'B')])
    assert [a[0] for a in store.all_alerts()] == ['a1', 'b1']
  finally:
    store.close()


def _foreign(spec, statements):
  if spec.endswith('.db'):
    con = sqlite3.connect(spec)
    for s in statements:
      con.execute(s)
    con.commit()
    q = "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
    dump = lambda: (con.execute(q).fetchall(), con.execute('SELECT * FROM objects').fetchall()
                    if ('objects',) in con.execute(q).fetchall() else None)
    return con, dump
  import psycopg  # the postgres extra (tests: installed)
  con = psycopg.connect(spec, autocommit=True)
  for s in statements:
    con.execute(s)
  q = ("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' "
       'ORDER BY table_name')
  dump = lambda: (con.execute(q).fetchall(), con.execute('SELECT * FROM objects').fetchall()
                  if ('objects',) in con.execute(q).fetchall() else None)
  return con, dump


@pytest.mark.parametrize('case', ['other_columns', 'some_tables', 'other_tables'])
def test_tables_of_another_kind_are_refused_untouched(spec, case):
  statements, needle = {
      'other_columns': (['CREATE TABLE objects (id integer, name text)',
                         "INSERT INTO objects VALUES (1, 'kept')"],
                        'holds a table objects (id integer, name text) that is not an rcnn_jax'),
      'some_tables': (['CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)'],
                      'holds tables meta but not alerts, objects'),
      'other_tables': (['CREATE TABLE users (id integer, name text)'], 'holds other tables'),
  }[case]
  con, dump = _foreign(spec, statements)
  try:
    before = dump()
    if case == 'other_tables' and not spec.endswith('.db'):
      # A PostgreSQL database is shared: the state's tables go beside the others.
      _open(spec).close()
      assert [t for t, in dump()[0]] == ['alerts', 'meta', 'objects', 'users']
      return
    with pytest.raises(state_lib.UserError) as e:
      state_lib.open_store(spec)
    assert needle.lower() in str(e.value).lower() and '\n' not in str(e.value)
    assert 'nothing was changed' in str(e.value)
    assert dump() == before  # no table added, dropped or altered; the rows kept
  finally:
    con.close()


# ----------------------------------------------------------------------------------------------
# PostgreSQL URLs: refused in one line (the password never shown); schemas


def test_bad_postgres_urls_are_one_line(postgres_server, postgres_url):
  base = postgres_server.url('')[:-1]  # postgresql://rcnn@127.0.0.1:PORT
  cases = [
      (f'postgresql://rcnn:s3cret@127.0.0.1:{_closed_port()}/x', 'Connection refused'),
      (postgres_url.replace('rcnn@', 'nobody_here:s3cret@'), 'role "nobody_here" does not exist'),
      (f'{base}/no_such_db', 'database "no_such_db" does not exist'),
      ('postgresql://127.0.0.1:notaport/x', 'invalid integer value "notaport"'),
      ('postgres://rcnn@127.0.0.1:1/x?sslmode=bogus', 'sslmode'),
      (f'{postgres_url}?options=-csearch_path%3Dno_such_schema', 'names no existing schema'),
      ('mysql://h/db', 'give an SQLite file path or a postgresql:// URL'),
  ]
  for url, needle in cases:
    with pytest.raises(state_lib.UserError) as e:
      state_lib.open_store(url)
    msg = str(e.value)
    assert needle in msg and '\n' not in msg and 's3cret' not in msg, (url, msg)


def test_the_server_command_refuses_unknown_flags_and_cleans_up_on_sigterm(postgres_server):
  """``python -m rcnn_jax.serving.alerts.pgserver``: an unknown flag (``--help`` included) is
  its usage line, exit 2, no cluster started; SIGTERM once serving stops the server and removes
  its cluster directory."""
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  cmd = [sys.executable, '-m', 'rcnn_jax.serving.alerts.pgserver']
  r = subprocess.run(cmd + ['--help'], env=env, capture_output=True, text=True, timeout=60)
  assert r.returncode == 2 and r.stdout == '' and r.stderr.startswith('usage:'), r
  p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    url = p.stdout.readline().strip()
    assert url.startswith('postgresql://rcnn@127.0.0.1:'), p.stderr.read()
    store = state_lib.open_store(url)  # a real server: the state opens
    store.close()
    procs = subprocess.run(['ps', '-eo', 'args'], capture_output=True, text=True).stdout
    data = [l.split(' -D ')[1].split()[0] for l in procs.splitlines()
            if ' -D ' in l and f'-p {url.rsplit(":", 1)[1].split("/")[0]} ' in l + ' ']
    assert len(data) == 1, procs
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=60) == 0
  finally:
    if p.poll() is None:
      p.kill()
  assert not os.path.exists(data[0])


def _closed_port():
  import socket
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def test_the_state_is_checked_before_the_model_loads(tmp_path):
  """The command on an unreachable server: the state's one line (exit 2), not the missing
  model's."""
  r = subprocess.run([sys.executable, '-m', 'rcnn_jax.alerts', '--workdir',
                      str(tmp_path / 'no_model'), '--state',
                      f'postgresql://rcnn@127.0.0.1:{_closed_port()}/x', '--out',
                      str(tmp_path / 'o.csv'), '--noprogress', str(ZTF_MULTI)], cwd=ROOT,
                     env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True,
                     timeout=120)
  lines = [l for l in r.stderr.splitlines() if l.strip()]
  assert r.returncode == 2 and len(lines) == 1, r.stderr
  assert 'state database postgresql://' in lines[0] and 'Connection refused' in lines[0]


def test_schemas_hold_separate_states(postgres_url):
  a = _open(f'{postgres_url}?schema=night_a')
  b = _open(f'{postgres_url}?schema=night_b', dict(IDENT, weights_sha256='2' * 64))
  try:
    with a.transaction(['X']):
      a.put_alerts([_alert('1', 'X')])
    assert b.all_alerts() == [] and len(a.all_alerts()) == 1
  finally:
    a.close()
    b.close()
  # libpq's own form names the same schema; public holds nothing.
  c = _open(f'{postgres_url}?options=-csearch_path%3Dnight_a')
  try:
    assert [x[0] for x in c.all_alerts()] == ['1']
  finally:
    c.close()
  with pytest.raises(state_lib.UserError, match='another model'):
    _open(f'{postgres_url}?schema=night_b')
  import psycopg
  with psycopg.connect(postgres_url) as con:
    assert con.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema = "
                       "'public'").fetchone()[0] == 0


# ----------------------------------------------------------------------------------------------
# Two processes on the same objects at once (a Kafka rebalance): none lost, none twice

NUM_OBJ, NUM_EP = 10, 6


def _worker(spec, chunk, ready, go, form):
  """One of two processes: the same alerts (epoch by epoch, the objects in opposite orders:
  each object's in time order) in chunks of ``chunk`` alerts, each as the engine does a chunk:
  lock, read the ids done and the slots, count each new alert into its object's slot
  (num_images), write, commit. Prints how many alerts it processed."""
  store = _open(spec)
  perm = np.random.default_rng(5).permutation(NUM_OBJ)
  perm = perm if form == 'argument' else perm[::-1]  # the two meet in the middle of each epoch
  order = [(f'obj{o:02d}', k) for k in range(NUM_EP) for o in perm]
  pathlib.Path(ready).touch()
  while not os.path.exists(go):
    time.sleep(0.01)
  new = 0
  for i in range(0, len(order), chunk):
    part = order[i:i + chunk]
    objs = list(dict.fromkeys(o for o, _ in part))
    with store.transaction(objs if form == 'argument' else ()):
      if form == 'method':
        store.lock_objects(objs)
      done = store.alert_rows([f'{o}_{k}' for o, k in part])
      slots = store.slots(objs, TEMPLATE)
      rows = []
      for o, k in part:
        if f'{o}_{k}' in done:
          continue
        s = slots.setdefault(o, copy.deepcopy(TEMPLATE))
        s['num_images'] = np.int64(s['num_images'] + 1)
        s['last_mjd'] = np.float64(k)
        rows.append(_alert(f'{o}_{k}', o, step=int(s['num_images'])))
      if rows:
        store.put_slots({o: slots[o] for o in {r['object_id'] for r in rows}}, TEMPLATE)
        store.put_alerts(rows)
        new += len(rows)
      time.sleep(0.01)  # hold the locks a while: the other process waits
    time.sleep(0.005)  # between chunks (a consumer's poll): the other may take its turn
  store.close()
  print(json.dumps({'new': new}))


def test_two_processes_on_the_same_objects_never_lose_or_double_an_alert(spec, tmp_path):
  _open(spec).close()  # the tables, before the race
  go = tmp_path / 'go'
  procs, ready = [], []
  for i, (chunk, form) in enumerate([(4, 'argument'), (7, 'method')]):
    ready.append(tmp_path / f'ready{i}')
    procs.append(subprocess.Popen(
        [sys.executable, __file__, 'worker', spec, str(chunk), str(ready[-1]), str(go), form],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True))
  t0 = time.time()
  while not all(r.exists() for r in ready) and time.time() - t0 < 120:
    if any(p.poll() is not None for p in procs):
      break
    time.sleep(0.02)
  go.touch()
  out = [p.communicate(timeout=120) for p in procs]
  for p, (_, err) in zip(procs, out):
    assert p.returncode == 0, err
  new = [json.loads(o)['new'] for o, _ in out]
  total = NUM_OBJ * NUM_EP
  assert sum(new) == total, new  # every alert exactly once
  if spec.startswith('postgres'):
    # Advisory locks queue the waiting process, so both take turns. SQLite's busy handler
    # polls with a back-off and may let one process take every chunk: no fairness to assert.
    assert min(new) > 0, new
  store = _open(spec)
  try:
    alerts = store.all_alerts()
    assert sorted(a[0] for a in alerts) == sorted(f'obj{o:02d}_{k}' for o in range(NUM_OBJ)
                                                  for k in range(NUM_EP))
    # Each alert counted on top of all the earlier ones of its object (no lost update), in
    # its object's order.
    for a, _, _, _, step, _, _ in alerts:
      assert step == int(a.rsplit('_', 1)[1]) + 1, (a, step)
    by_obj = {}
    for a in alerts:
      by_obj.setdefault(a[1], []).append(int(a[0].rsplit('_', 1)[1]))
    assert all(v == sorted(v) for v in by_obj.values())
    assert [(o, n) for o, n, _, _ in store.all_objects()] == \
        [(f'obj{o:02d}', NUM_EP) for o in range(NUM_OBJ)]
  finally:
    store.close()


# ----------------------------------------------------------------------------------------------
# The command, with the shipped ZTF model

needs_samples = pytest.mark.skipif(not ZTF_MULTI.exists() or not MODEL.exists(),
                                   reason=f'shared alert samples ({ALERTS}) or {MODEL} missing')


@pytest.fixture(scope='module')
def clf():
  from rcnn_jax.serving.classifier import Classifier
  return Classifier.from_workdir(str(MODEL))


def _dump(spec):
  store = state_lib.open_store(spec)
  try:
    return ([(a, o, round(m, 9), b, st, s, bytes(p)) for a, o, m, b, st, s, p in
             store.all_alerts()],
            [(o, n, m, bytes(b)) for o, n, m, b in store.all_objects()])
  finally:
    store.close()


@needs_samples
def test_the_command_with_postgres_writes_the_csv_of_sqlite(postgres_url, tmp_path, capsys):
  from rcnn_jax.serving.alerts import pipeline
  run = lambda state, out: pipeline.run_command(str(MODEL), [str(ZTF_DIR)], state,
                                                str(tmp_path / out), progress=False,
                                                stderr=io.StringIO())
  assert run(str(tmp_path / 's.db'), 'sqlite.csv') == 2  # the NaN packet refused
  assert run(postgres_url, 'pg.csv') == 2
  first = capsys.readouterr().out
  assert run(postgres_url, 'pg_again.csv') == 2
  again = capsys.readouterr().out
  sqlite_csv = (tmp_path / 'sqlite.csv').read_text()
  assert len(sqlite_csv.splitlines()) == 16  # header + the 15 good packets
  assert (tmp_path / 'pg.csv').read_text() == sqlite_csv
  assert (tmp_path / 'pg_again.csv').read_text() == sqlite_csv
  assert '0 already in the state' in first and '15 already in the state' in again
  assert '0 new' in again
  assert _dump(postgres_url) == _dump(str(tmp_path / 's.db'))


def _stream(path, num_objects, num_epochs):
  """Real ZTF packets of the multi-alert sample made into num_epochs alerts of each of
  num_objects objects (ids, times, bands rewritten), in time order."""
  import fastavro
  with open(ZTF_MULTI, 'rb') as f:
    r = fastavro.reader(f)
    schema, recs = r.writer_schema, list(r)
  good = [x for i, x in enumerate(recs) if i != NAN_PACKET]
  out = []
  for e in range(num_epochs):
    for o in range(num_objects):
      rec = copy.deepcopy(good[(o + 3 * e) % len(good)])
      rec['objectId'] = f'ZTFpg{o:03d}'
      rec['candid'] = rec['candidate']['candid'] = 10**15 + 1000 * o + e
      c = rec['candidate']
      c['jd'], c['fid'], c['fwhm'] = 2459000.5 + 0.7 * e + 0.01 * o, 1 + e % 2, 2.0
      out.append(rec)
  with open(path, 'wb') as f:
    fastavro.writer(f, fastavro.parse_schema(schema), out)
  return schema, out


def _count(spec):
  try:
    if spec.endswith('.db'):
      con = sqlite3.connect(f'file:{spec}?mode=ro', uri=True, timeout=1.0)
      try:
        return con.execute('SELECT COUNT(*) FROM alerts').fetchone()[0]
      finally:
        con.close()
    import psycopg
    with psycopg.connect(spec, connect_timeout=5) as con:
      return con.execute('SELECT COUNT(*) FROM alerts').fetchone()[0]
  except Exception:  # pylint: disable=broad-except  (no table yet: nothing committed)
    return 0


def _reference(clf, tmp_path, name, schema, recs):
  """One uninterrupted in-process run (SQLite) over ``recs``: its dump and CSV."""
  import fastavro
  from rcnn_jax.serving.alerts import pipeline
  path = tmp_path / f'{name}.avro'
  with open(path, 'wb') as f:
    fastavro.writer(f, fastavro.parse_schema(schema), recs)
  db = str(tmp_path / f'{name}.db')
  store = _open(db, state_lib.model_identity(clf))
  try:
    pipeline.classify_files(clf, store, [str(path)], str(tmp_path / f'{name}.csv'), slots=4,
                            progress=False, stderr=io.StringIO())
  finally:
    store.close()
  return _dump(db), (tmp_path / f'{name}.csv').read_text()


@needs_samples
def test_kill_9_inside_a_transaction_leaves_the_chunks_before_it(spec, clf, tmp_path):
  """8 objects x 5 alerts in chunks of 4 (one alert of 4 objects each); the process sleeps
  0.5 s before each COMMIT and is killed there. The state then equals an uninterrupted run over
  the alerts of the committed chunks only (none of the killed chunk's writes), and a rerun
  equals an uninterrupted run over everything."""
  from rcnn_jax.serving.alerts import engine as engine_lib
  path = tmp_path / 's.avro'
  schema, recs = _stream(path, 8, 5)
  args = [sys.executable, '-m', 'rcnn_jax.alerts', '--workdir', str(MODEL), '--state', spec,
          '--out', str(tmp_path / 'k.csv'), '--batch', '4', '--noprogress', str(path)]
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  p = subprocess.Popen(args, cwd=ROOT, env=dict(env, **{engine_lib.PAUSE_ENV: '0.5'}),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  t0 = time.time()
  while _count(spec) < 8 and p.poll() is None and time.time() - t0 < 300:
    time.sleep(0.05)
  time.sleep(0.25)  # inside the next chunk's transaction (it sleeps 0.5 s before COMMIT)
  p.send_signal(signal.SIGKILL)
  p.wait()
  assert p.returncode == -signal.SIGKILL, p.stderr.read()
  done = _count(spec)
  assert 8 <= done < len(recs) and done % 4 == 0, done  # whole chunks only
  assert not (tmp_path / 'k.csv').exists()
  assert _dump(spec) == _reference(clf, tmp_path, 'prefix', schema, recs[:done])[0]
  r = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr
  assert f'{done} already in the state' in r.stdout
  want_dump, want_csv = _reference(clf, tmp_path, 'one', schema, recs)
  assert _dump(spec) == want_dump
  assert (tmp_path / 'k.csv').read_text() == want_csv


if __name__ == '__main__' and sys.argv[1:2] == ['worker']:
  _worker(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6])
