"""Alert streams (issue 32): the ZTF / Rubin reader on the shared samples, the SQLite state
(round trip, idempotence, kill -9 resume, late alerts, interleaving), bad packets, the command.

Models: random initial parameters of the ZTF / LSST smoke configs, saved as float32 pretrained
folders (the command restores them; in-process tests build the same classifier directly); the
last tests run the shipped stream models (pretrained/ztf_rcnn, lsst_rcnn) on the samples. The
alert files are the shared samples (``../shared/data/alerts``) and streams made from their
real packets (ids, times, bands and FWHM rewritten; real cutouts).
"""

from __future__ import annotations

import copy
import csv
import gzip
import io
import math
import os
import pathlib
import signal
import sqlite3
import subprocess
import sys
import time
import warnings

from astropy.io import fits
import fastavro
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import lsst
from configs import ztf
from rcnn_jax import models
from rcnn_jax.serving import shipped
from rcnn_jax.serving.alerts import engine as engine_lib
from rcnn_jax.serving.alerts import pipeline
from rcnn_jax.serving.alerts import reader
from rcnn_jax.serving.alerts import state as state_lib
from rcnn_jax.serving.classifier import Classifier

ROOT = pathlib.Path(__file__).resolve().parents[1]
ALERTS = ROOT.parent / 'shared' / 'data' / 'alerts'
ZTF_MULTI = ALERTS / 'ztf' / 'avro_multi_alerts.avro'
RUBIN = ALERTS / 'rubin' / 'part-2-918301.avro'
SLOTS = 4  # one compiled update shape for every in-process test
NAN_PACKET = 8  # the record of avro_multi_alerts.avro whose science stamp holds NaN pixels

pytestmark = pytest.mark.skipif(not ZTF_MULTI.exists(),
                                reason=f'shared alert samples not found at {ALERTS}')


def _random_model(config, out):
  """A pretrained folder (float32: the restored weights equal these) of random parameters."""
  model = models.build_model(config.model, len(config.sim.class_names))
  s, n_w, nb = int(config.sim.stamp_size), int(config.sim.n_w), len(config.survey.bands)
  width = n_w + (n_w * nb if nb > 1 else 0)  # time gaps, then the bands' one-hots
  v = jax.jit(lambda k: model.init(k, jnp.zeros((1, 1, s, s, n_w)), jnp.zeros((1, 1, width)),
                                   jnp.ones((1, 1), bool)))(jax.random.key(3))
  shipped.save(str(out), config, v['params'], v['batch_stats'], step=0,
                  source='random init (tests/test_alerts.py)', dtype='float32')
  return Classifier(config, v['params'], v['batch_stats'])


@pytest.fixture(scope='module')
def ztf_model(tmp_path_factory):
  out = tmp_path_factory.mktemp('alerts') / 'ztf_model'
  return str(out), _random_model(ztf.get_config('smoke'), out)


@pytest.fixture(scope='module')
def clf(ztf_model):
  return ztf_model[1]


@pytest.fixture(scope='module')
def templates():
  """(writer schema, records) of the ZTF multi-alert sample."""
  with open(ZTF_MULTI, 'rb') as f:
    r = fastavro.reader(f)
    return r.writer_schema, list(r)


def _write(path, schema, records):
  with open(path, 'wb') as f:
    fastavro.writer(f, fastavro.parse_schema(copy.deepcopy(schema)), records)
  return str(path)


def _plan(num_objects, num_epochs, seed=0):
  """[(object, epoch)] in an interleaved order (each object's epochs in time order)."""
  rng = np.random.default_rng(seed)
  queues = {o: list(range(num_epochs)) for o in range(num_objects)}
  out = []
  while queues:
    o = int(rng.choice(sorted(queues)))
    out.append((o, queues[o].pop(0)))
    if not queues[o]:
      del queues[o]
  return out


def _packet(templates, o, e, jd=None, fid=None, fwhm=2.0, candid=None):
  """A real ZTF packet made into epoch e of synthetic object o."""
  good = [r for i, r in enumerate(templates[1]) if i != NAN_PACKET]
  rec = copy.deepcopy(good[(o + 3 * e) % len(good)])
  rec['objectId'] = f'ZTFsyn{o:03d}'
  rec['candid'] = candid if candid is not None else 10**15 + 1000 * o + e
  c = rec['candidate']
  c['candid'] = rec['candid']
  c['jd'] = jd if jd is not None else 2459000.5 + 0.7 * e + 0.01 * o
  c['fid'] = fid if fid is not None else 1 + (e % 2)
  c['fwhm'] = fwhm
  c['magzpsci'] = 26.2 + 0.05 * math.sin(o + e)
  return rec


def _stream(templates, path, num_objects=6, num_epochs=5, seed=0):
  recs = [_packet(templates, o, e) for o, e in _plan(num_objects, num_epochs, seed)]
  return _write(path, templates[0], recs), recs


def _run(clf, db, files, out, slots=SLOTS, **kw):
  store = state_lib.Store(db)
  try:
    store.bind(state_lib.model_identity(clf))
    s = pipeline.classify_files(clf, store, [str(f) for f in files], str(out), slots=slots,
                               progress=False, stderr=kw.pop('stderr', io.StringIO()), **kw)
  finally:
    store.close()
  return s


def _dump(db):
  """The database's alerts and objects (slots decoded), for equality."""
  con = sqlite3.connect(db)
  alerts = [(a, o, m, b, st, status, bytes(p)) for a, o, m, b, st, status, p in
            con.execute('SELECT alert_id, object_id, mjd, band, step, status, probs FROM alerts '
                        'ORDER BY alert_id')]
  objects = [(o, n, last, bytes(s)) for o, n, last, s in
             con.execute('SELECT object_id, num_images, last_mjd, slot FROM objects '
                         'ORDER BY object_id')]
  con.close()
  return alerts, objects


def _rows(path):
  with open(path) as f:
    return list(csv.DictReader(f))


def _decode_ztf_independently(rec):
  """The inputs of one ZTF packet, decoded here without the reader (schema 3.3 fields)."""
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    img = fits.open(io.BytesIO(gzip.decompress(rec['cutoutScience']['stampData'])))[0].data
  c = rec['candidate']
  return dict(stamp=np.asarray(img, np.float32)[21:42, 21:42], mjd=c['jd'] - 2400000.5,
              zp=c['magzpsci'] - 2.5 * math.log10(c['exptime']),
              seeing=c['fwhm'] * 1.01, band='gr'[c['fid'] - 1])


# ----------------------------------------------------------------------------------------------
# The reader on the shared samples


def test_reader_ztf_samples(templates):
  spec = reader.StampSpec.from_config(ztf.get_config('smoke'))
  files = reader.list_inputs([ALERTS / 'ztf'])
  assert len(files) == 6
  out = [x for f in files for x in reader.read_epochs(f, spec)]
  good = [x for x in out if isinstance(x, reader.Epoch)]
  bad = [x for x in out if isinstance(x, reader.BadPacket)]
  assert len(good) == 15 and len(bad) == 1
  assert 'candid 1034529784115010007' in str(bad[0]) and 'NaN' in str(bad[0])
  by_id = {e.alert_id: e for e in good}
  for i, rec in enumerate(templates[1]):
    if i == NAN_PACKET:
      continue
    e, want = by_id[str(rec['candid'])], _decode_ztf_independently(rec)
    assert e.object_id == rec['objectId'] and e.survey == 'ztf'
    np.testing.assert_array_equal(e.stamp, want['stamp'])
    assert e.stamp.shape == (21, 21)
    assert e.mjd == pytest.approx(want['mjd'], abs=1e-9)
    assert e.zero_point == pytest.approx(want['zp'], abs=1e-9)
    assert e.seeing_arcsec == pytest.approx(want['seeing'], rel=1e-6)
    assert e.band == want['band'] and e.exp_time_s == 30.0
  # The RRLyr sample of Fink: g band, fwhm 2.19 px.
  rr = [e for e in good if e.object_id == 'ZTF18abvcdqu'][0]
  assert rr.band == 'g' and rr.seeing_arcsec == pytest.approx(2.19 * 1.01, rel=1e-6)


def test_reader_rubin_samples():
  config = lsst.get_config('smoke')
  spec = reader.StampSpec.from_config(config)
  out = list(reader.read_epochs(RUBIN, spec))
  assert all(isinstance(e, reader.Epoch) for e in out) and len(out) == 7
  with open(RUBIN, 'rb') as f:
    recs = list(fastavro.reader(f))
  zp = float(config.survey.band_conditions['i'].zero_point_quantiles[1])
  factor = 30.0 * 10.0**((zp - 31.4) / 2.5)  # nJy -> ADU of a 30 s visit at the median zp
  for e, rec in zip(out, recs):
    s = rec['diaSource']
    assert e.alert_id == str(rec['diaSourceId']) and e.band == 'i' and e.survey == 'rubin'
    assert e.mjd == s['midpointMjdTai'] and e.zero_point == zp
    with warnings.catch_warnings():
      warnings.simplefilter('ignore')
      h = fits.open(io.BytesIO(rec['cutoutScience']))
    x0 = int(math.floor(h[0].header['CRPIX1'] - 1 + 0.5)) - 10
    y0 = int(math.floor(h[0].header['CRPIX2'] - 1 + 0.5)) - 10
    want = h[0].data[y0:y0 + 21, x0:x0 + 21].astype(np.float64) * factor
    np.testing.assert_allclose(e.stamp, want, rtol=1e-6)
    # The PSF cutout's FWHM agrees with the source's adaptive PSF moments (arcsec^2) to ~15 %.
    moments = 2.3548 * math.sqrt(0.5 * (s['ixxPSF'] + s['iyyPSF']))
    assert e.seeing_arcsec == pytest.approx(moments, rel=0.15)
  ids = [e.object_id for e in out]
  # diaObjectId 0: solar-system sources, each its own object (never one object '0').
  assert ids.count('0') == 0 and len(set(ids)) == 7
  assert sum(i.startswith('ss') for i in ids) == 2


def test_surveys_and_pixel_scales_do_not_mix():
  ztf_spec = reader.StampSpec.from_config(ztf.get_config('smoke'))
  out = list(reader.read_epochs(RUBIN, ztf_spec))
  assert len(out) == 7 and all(isinstance(e, reader.BadPacket) for e in out)
  assert 'Rubin packet' in str(out[0]) and 'diaSourceId' in str(out[0])
  lsst_spec = reader.StampSpec.from_config(lsst.get_config('smoke'))
  out = list(reader.read_epochs(ALERTS / 'ztf' / 'ZTF19acihgng.avro', lsst_spec))
  assert len(out) == 1 and 'ZTF packet' in str(out[0]) and 'candid' in str(out[0])


# ----------------------------------------------------------------------------------------------
# The engine: the same inputs as Classifier.update, objects never mixed, late alerts


def test_alert_path_equals_direct_updates(clf, templates, tmp_path):
  """Every row equals Classifier.update fed the same epochs decoded independently, one object
  at a time, in a state of its own."""
  path, _ = _stream(templates, tmp_path / 's.avro', num_objects=5, num_epochs=5)
  with open(path, 'rb') as f:
    recs = list(fastavro.reader(f))  # as stored (Avro floats are float32)
  s = _run(clf, tmp_path / 's.db', [path], tmp_path / 's.csv')
  assert s['exit'] == 0 and s['rows'] == 25 and s['objects'] == 5
  rows = {r['alert_id']: r for r in _rows(tmp_path / 's.csv')}
  for o in range(5):
    state = clf.new_state(SLOTS)
    mine = [r for r in recs if r['objectId'] == f'ZTFsyn{o:03d}']
    for k, rec in enumerate(mine):
      d = _decode_ztf_independently(rec)
      p, state = clf.update(state, d['stamp'][None], [d['mjd']], [d['zp']], None, objects=[0],
                            seeing_arcsec=[d['seeing']], band=[d['band']])
      row = rows[str(rec['candid'])]
      assert int(row['step']) == max(k + 1 - clf.n_w + 1, 0)
      assert row['status'] == ('classified' if k + 1 >= clf.n_w else 'warmup')
      # The CSV's 7 significant digits of the same float32 probabilities.
      assert [row[c] for c in clf.class_names] == [pipeline._fmt(float(v)) for v in p[0]]  # pylint: disable=protected-access
    # The model's inputs are identical: the window of eq. 4 images, their times and bands,
    # and the eq. 4 reference (zp0) and first MJD kept in the state.
    store = state_lib.Store(tmp_path / 's.db')
    eng = engine_lib.Engine(clf, store, slots=SLOTS)
    saved = store.slots([f'ZTFsyn{o:03d}'], eng._fresh)[f'ZTFsyn{o:03d}']  # pylint: disable=protected-access
    store.close()
    np.testing.assert_array_equal(saved['window'], np.asarray(state.window[0]))
    np.testing.assert_array_equal(saved['window_t'], np.asarray(state.window_t[0]))
    np.testing.assert_array_equal(saved['window_band'], np.asarray(state.window_band[0]))
    assert saved['zp0'] == state.zp0[0] and saved['mjd0'] == state.mjd0[0]
    assert saved['num_images'] == state.num_images[0] == 5
  # Input order kept in the CSV.
  assert [r['alert_id'] for r in _rows(tmp_path / 's.csv')] == [str(r['candid']) for r in recs]


def test_objects_never_mixed_whatever_the_interleaving(clf, templates, tmp_path):
  a, _ = _stream(templates, tmp_path / 'a.avro', num_objects=7, num_epochs=4, seed=1)
  b, _ = _stream(templates, tmp_path / 'b.avro', num_objects=7, num_epochs=4, seed=2)
  _run(clf, tmp_path / 'a.db', [a], tmp_path / 'a.csv')
  _run(clf, tmp_path / 'b.db', [b], tmp_path / 'b.csv', slots=SLOTS, max_chunk=3)
  ra = {r['alert_id']: r for r in _rows(tmp_path / 'a.csv')}
  rb = {r['alert_id']: r for r in _rows(tmp_path / 'b.csv')}
  assert ra.keys() == rb.keys() and len(ra) == 28
  for k in ra:
    assert ra[k]['object_id'] == rb[k]['object_id'] and ra[k]['step'] == rb[k]['step']
    for c in clf.class_names:
      assert ra[k][c] == rb[k][c] or abs(float(ra[k][c]) - float(rb[k][c])) < 1e-6


def test_late_alert_is_recorded_with_the_current_probabilities(clf, templates, tmp_path):
  recs = [_packet(templates, 0, e) for e in range(5)]
  late = _packet(templates, 0, 1, candid=7)  # epoch 1's time again, a new alert id
  older = _packet(templates, 0, 0, jd=2459000.0, candid=8)  # before the object's first
  path = _write(tmp_path / 'l.avro', templates[0], recs + [late, older])
  s = _run(clf, tmp_path / 'l.db', [path], tmp_path / 'l.csv')
  assert s['counts']['late'] == 2
  rows = _rows(tmp_path / 'l.csv')
  last, r_late, r_older = rows[4], rows[5], rows[6]
  for r in (r_late, r_older):
    assert r['status'] == 'late' and r['step'] == last['step'] == '3'
    assert [r[c] for c in clf.class_names] == [last[c] for c in clf.class_names]
  # The object's state is that of its five alerts: as a run without the late ones.
  ref = _write(tmp_path / 'r.avro', templates[0], recs)
  _run(clf, tmp_path / 'r.db', [ref], tmp_path / 'r.csv')
  assert _dump(tmp_path / 'l.db')[1] == _dump(tmp_path / 'r.db')[1]


def test_dropped_alert_is_not_fed(clf, templates, tmp_path, capsys):
  """Seeing above the config's cut (9 px = 9.1" > 4") and an implausible zero point (the
  stream's rules) leave the object as if the alert had not come; the stream's warning names
  the alert."""
  recs = [_packet(templates, 0, e, fwhm=(9.0 if e == 2 else 2.0)) for e in range(6)]
  recs[4]['candidate']['magzpsci'] = 40.0
  path = _write(tmp_path / 'c.avro', templates[0], recs)
  _run(clf, tmp_path / 'c.db', [path], tmp_path / 'c.csv')
  rows = _rows(tmp_path / 'c.csv')
  assert [r['status'] for r in rows] == ['warmup', 'warmup', 'dropped', 'classified',
                                         'dropped', 'classified']
  assert [r['step'] for r in rows] == ['0', '0', '0', '1', '1', '2']
  assert [r[c] for c in clf.class_names for r in rows[3:5]] == [
      r[c] for c in clf.class_names for r in (rows[3], rows[3])]
  err = capsys.readouterr().err
  assert f'ZTFsyn000 alert {recs[4]["candid"]}' in err and 'zero point' in err


# ----------------------------------------------------------------------------------------------
# The state: round trip, idempotence


def test_state_round_trip(clf, templates, tmp_path):
  """Slots survive the database exactly (np.save, no pickle), and a run split across two
  processes' worth of stores equals one run."""
  path, recs = _stream(templates, tmp_path / 's.avro', num_objects=5, num_epochs=4)
  first = _write(tmp_path / 'first.avro', templates[0], recs[:9])
  rest = _write(tmp_path / 'rest.avro', templates[0], recs[9:])
  _run(clf, tmp_path / 'one.db', [path], tmp_path / 'one.csv')
  _run(clf, tmp_path / 'two.db', [first], tmp_path / 'two_a.csv')
  _run(clf, tmp_path / 'two.db', [rest], tmp_path / 'two_b.csv')
  assert _dump(tmp_path / 'one.db') == _dump(tmp_path / 'two.db')
  store = state_lib.Store(tmp_path / 'one.db')
  eng = engine_lib.Engine(clf, store, slots=SLOTS)
  slots = store.slots(['ZTFsyn000', 'ZTFsyn001'], eng._fresh)  # pylint: disable=protected-access
  st = eng._state([slots['ZTFsyn000'], slots['ZTFsyn001']])  # pylint: disable=protected-access
  assert st.num_images[:2].tolist() == [4, 4] and not st.num_images[2:].any()
  assert len(st.num_images) % engine_lib.ROW_MULTIPLE == 0
  again = eng._slots_of(st, {'ZTFsyn000': 0})['ZTFsyn000']  # pylint: disable=protected-access
  for k, v in slots['ZTFsyn000'].items():
    np.testing.assert_array_equal(again[k], v)
    assert again[k].dtype == v.dtype
  assert slots['ZTFsyn000']['window'].shape == (clf.n_w - 1, 21, 21)
  assert slots['ZTFsyn000']['window_band'].shape == (clf.n_w - 1,)
  blob = store.all_objects()[0][3]
  assert b'pickle' not in blob and blob[:6] == b'\x93NUMPY'
  back = state_lib.unpack_slot(state_lib.pack_slot(slots['ZTFsyn000'], eng._fresh), eng._fresh)  # pylint: disable=protected-access
  assert all(np.array_equal(back[k], v) for k, v in slots['ZTFsyn000'].items())
  for damaged in (blob[:len(blob) // 2], blob[:-4], blob + blob[:200]):
    with pytest.raises(state_lib.UserError, match='damaged state database'):
      state_lib.unpack_slot(damaged, eng._fresh)  # pylint: disable=protected-access
  store.close()


def test_same_file_twice_changes_nothing(clf, templates, tmp_path):
  path, _ = _stream(templates, tmp_path / 's.avro', num_objects=3, num_epochs=4)
  s1 = _run(clf, tmp_path / 's.db', [path], tmp_path / '1.csv')
  before = _dump(tmp_path / 's.db')
  s2 = _run(clf, tmp_path / 's.db', [path, path], tmp_path / '2.csv')
  assert _dump(tmp_path / 's.db') == before
  assert s1['already'] == 0 and s2['already'] == 24 and sum(s2['counts'].values()) == 0
  rows1, rows2 = _rows(tmp_path / '1.csv'), _rows(tmp_path / '2.csv')
  assert rows2 == rows1 + rows1


def test_parquet_output_holds_the_csv_rows(clf, templates, tmp_path):
  pq = pytest.importorskip('pyarrow.parquet')
  path, _ = _stream(templates, tmp_path / 's.avro', num_objects=2, num_epochs=4)
  _run(clf, tmp_path / 'a.db', [path], tmp_path / 'a.csv')
  _run(clf, tmp_path / 'b.db', [path], tmp_path / 'b.parquet')
  rows, table = _rows(tmp_path / 'a.csv'), pq.read_table(tmp_path / 'b.parquet').to_pylist()
  assert [r['alert_id'] for r in rows] == [t['alert_id'] for t in table]
  for r, t in zip(rows, table):
    assert r['status'] == t['status'] and int(r['step']) == t['step']
    for c in clf.class_names:
      assert (t[c] is None) if not r[c] else t[c] == pytest.approx(float(r[c]), rel=1e-6)


def test_partitions_own_disjoint_objects(clf, templates, tmp_path):
  path, _ = _stream(templates, tmp_path / 's.avro', num_objects=6, num_epochs=3)
  _run(clf, tmp_path / 'all.db', [path], tmp_path / 'all.csv')
  parts = [_run(clf, tmp_path / f'p{k}.db', [path], tmp_path / f'p{k}.csv', partition=(k, 2))
           for k in range(2)]
  assert sum(p['rows'] for p in parts) == 18 and all(p['other_partition'] for p in parts)
  a = {r['alert_id']: r for r in _rows(tmp_path / 'all.csv')}
  p0, p1 = _rows(tmp_path / 'p0.csv'), _rows(tmp_path / 'p1.csv')
  assert not {r['object_id'] for r in p0} & {r['object_id'] for r in p1}
  for r in p0 + p1:
    assert r == a[r['alert_id']]


def test_model_mismatch_is_refused(clf, tmp_path):
  store = state_lib.Store(tmp_path / 'm.db')
  ident = state_lib.model_identity(clf)
  store.bind(ident)
  with pytest.raises(state_lib.UserError, match='another model'):
    store.bind(dict(ident, weights_sha256='0' * 64))
  store.close()


# ----------------------------------------------------------------------------------------------
# Bad packets and bad paths


def test_bad_packets_one_line_each_the_rest_classified(clf, templates, tmp_path):
  good = [_packet(templates, 0, e) for e in range(3)]
  missing = _packet(templates, 1, 0, candid=11)
  missing['cutoutScience'] = None
  corrupt = _packet(templates, 2, 0, candid=12)
  corrupt['cutoutScience'] = dict(corrupt['cutoutScience'], stampData=b'\x1f\x8bnot gzip')
  nan = copy.deepcopy(templates[1][NAN_PACKET])
  band = _packet(templates, 3, 0, fid=3, candid=13)  # i: not a band of the ZTF model
  malformed = _packet(templates, 4, 0, candid=14)  # a needed field malformed (issue 41)
  malformed['candidate']['jd'] = float('nan')
  path = _write(tmp_path / 'mixed.avro', templates[0],
                good[:1] + [missing, corrupt, nan] + good[1:2] + [band, malformed] + good[2:])
  full = _write(tmp_path / 'full.avro', templates[0], [_packet(templates, 5, e)
                                                       for e in range(6)])
  data = pathlib.Path(full).read_bytes()
  trunc = tmp_path / 'trunc.avro'
  trunc.write_bytes(data[:int(len(data) * 0.6)])
  notavro = tmp_path / 'not.avro'
  notavro.write_bytes(b'hello')
  err = io.StringIO()
  s = _run(clf, tmp_path / 'b.db', [path, trunc, notavro], tmp_path / 'b.csv', stderr=err)
  lines = err.getvalue().strip().splitlines()
  assert s['exit'] == 2 and s['bad'] == 7 == len(lines)
  assert all(l.startswith('error: ') for l in lines)
  for needle in ('candid 11: no science cutout', 'candid 12: corrupt science cutout',
                 'candid 1034529784115010007: NaN', "candid 13: band 'i'",
                 "candid 14: candidate.jd malformed", 'trunc.avro: truncated',
                 'not.avro: not an Avro'):
    assert sum(needle in l for l in lines) == 1, needle
  rows = _rows(tmp_path / 'b.csv')
  n_trunc = sum(r['object_id'] == 'ZTFsyn005' for r in rows)
  assert 1 <= n_trunc < 6  # the records before the truncation are classified
  assert [r['object_id'] for r in rows[:3]] == ['ZTFsyn000'] * 3


def test_paths_checked_before_any_work(ztf_model, tmp_path):
  wd = ztf_model[0]
  with pytest.raises(state_lib.UserError, match='does not exist'):
    pipeline.run_command(wd, [str(ZTF_MULTI)], str(tmp_path / 'no' / 's.db'),
                        str(tmp_path / 'o.csv'), progress=False)
  with pytest.raises(state_lib.UserError, match='output .* folder'):
    pipeline.run_command(wd, [str(ZTF_MULTI)], str(tmp_path / 's.db'),
                        str(tmp_path / 'no' / 'o.csv'), progress=False)
  with pytest.raises(state_lib.UserError, match='no such file'):
    pipeline.run_command(wd, [str(tmp_path / 'nothing.avro')], str(tmp_path / 's.db'),
                        str(tmp_path / 'o.csv'), progress=False)
  assert not (tmp_path / 's.db').exists()


def test_rubin_samples_with_an_lsst_model(tmp_path):
  config = lsst.get_config('smoke')
  clf = _random_model(config, tmp_path / 'lsst_model')
  s = _run(clf, tmp_path / 'r.db', [RUBIN, ZTF_MULTI], tmp_path / 'r.csv', slots=8)
  rows = _rows(tmp_path / 'r.csv')
  assert len(rows) == 7 and s['objects'] == 7 and s['bad'] == 11  # the ZTF packets refused
  assert {r['band'] for r in rows} == {'i'} and {r['status'] for r in rows} == {'warmup'}


# ----------------------------------------------------------------------------------------------
# kill -9 in the middle of a file, then a rerun: one uninterrupted run


def _command(args, **kw):
  env = dict(os.environ, PYTHONPATH=str(ROOT), **kw.pop('env', {}))
  return subprocess.Popen([sys.executable, '-m', 'rcnn_jax.alerts'] + args, cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _count(db):
  try:
    con = sqlite3.connect(f'file:{db}?mode=ro', uri=True, timeout=1.0)
    try:
      return con.execute('SELECT COUNT(*) FROM alerts').fetchone()[0]
    finally:
      con.close()
  except sqlite3.Error:
    return 0


def test_kill_9_mid_file_then_rerun_equals_one_run(ztf_model, clf, templates, tmp_path):
  wd = ztf_model[0]
  path, _ = _stream(templates, tmp_path / 's.avro', num_objects=8, num_epochs=5, seed=3)
  bad = tmp_path / 'bad.avro'
  bad.write_bytes(b'not avro')
  db, out = tmp_path / 'k.db', tmp_path / 'k.csv'
  args = ['--workdir', wd, '--state', str(db), '--out', str(out), '--batch', str(SLOTS),
          '--noprogress']
  p = _command(args + [path], env={engine_lib.PAUSE_ENV: '0.5'})
  t0 = time.time()
  while _count(db) < 5 and p.poll() is None and time.time() - t0 < 600:
    time.sleep(0.05)
  time.sleep(0.2)  # inside the next chunk's transaction (it sleeps 0.5 s before COMMIT)
  p.send_signal(signal.SIGKILL)
  p.wait()
  assert p.returncode == -signal.SIGKILL, p.stderr.read()
  done = _count(db)
  assert 5 <= done < 40  # stopped mid-file, with whole chunks committed only
  assert not out.exists()
  p = _command(args + [path, str(bad)])
  stdout, stderr = p.communicate(timeout=600)
  assert p.returncode == 2, stderr
  assert 'bad.avro: not an Avro' in stderr and f'{done} already in the state' in stdout
  # One uninterrupted run (in this process, the same weights and XLA flags).
  _run(clf, tmp_path / 'one.db', [path], tmp_path / 'one.csv')
  assert _dump(db) == _dump(tmp_path / 'one.db')
  assert _rows(out) == _rows(tmp_path / 'one.csv')


def test_fast_fits_equals_astropy():
  """The reader's FITS parser reads the samples' cutouts (ZTF gzipped, Rubin's three HDUs) as
  astropy does."""
  with open(RUBIN, 'rb') as f:
    rubin = next(iter(fastavro.reader(f)))['cutoutScience']
  with open(ZTF_MULTI, 'rb') as f:
    ztf_cut = gzip.decompress(next(iter(fastavro.reader(f)))['cutoutScience']['stampData'])
  for data in (rubin, ztf_cut):
    ours = reader.parse_fits(data)
    with warnings.catch_warnings():
      warnings.simplefilter('ignore')
      theirs = fits.open(io.BytesIO(data))
      assert [h.name for h in ours] == [h.name for h in theirs]
      for a, b in zip(ours, theirs):
        np.testing.assert_array_equal(a.data, b.data)
        for k in ('BITPIX', 'NAXIS1', 'CRPIX1', 'CRPIX2'):
          if k in b.header:
            assert a.header[k] == b.header[k]


def _fits_gz(image):
  buf = io.BytesIO()
  fits.PrimaryHDU(np.asarray(image, np.float32)).writeto(buf)
  return gzip.compress(buf.getvalue())


@pytest.mark.parametrize('width,xpos,col', [(40, 20.2, 19), (50, 3060.0, 31), (63, 500.0, 31)])
def test_ztf_cutout_cut_at_a_ccd_edge(templates, width, xpos, col):
  """ZTF cuts its 63 px cutouts short at a CCD edge: the candidate's pixel is then on the cut
  side's offset (x/ypos, 1-based), else the cutout's centre; the stamp is centred on it."""
  image = np.full((63, width), 100.0)
  image[31, col] = 5000.0
  rec = _packet(templates, 0, 0)
  rec['cutoutScience'] = dict(rec['cutoutScience'], stampData=_fits_gz(image))
  rec['candidate']['xpos'], rec['candidate']['ypos'] = xpos, 1500.0
  e = reader.decode(rec, templates[0], 'x', reader.StampSpec.from_config(ztf.get_config('smoke')))
  assert e.stamp[10, 10] == 5000.0 and e.stamp.sum() == 5000.0 + 100.0 * (21 * 21 - 1)


# ----------------------------------------------------------------------------------------------
# The shipped stream models on the shared samples (the README's alert command)


@pytest.mark.parametrize('name,survey,rows,refused', [
    ('ztf_rcnn', 'ztf', 15, 1),   # 16 packets, one with NaN pixels in its stamp
    ('lsst_rcnn', 'rubin', 7, 0)])
def test_shipped_stream_models_classify_every_sample(name, survey, rows, refused, tmp_path):
  folder = ROOT / 'pretrained' / name
  assert (folder / 'MODEL_CARD.md').exists(), f'{folder} is missing its card'
  m = shipped.read_manifest(str(folder))
  assert m['model_kind'] == 'rcnn' and len(m['class_names']) == 7
  csvs = []
  for run in range(2):  # the same files again: nothing changes
    err = io.StringIO()
    csvs.append(tmp_path / f'{run}.csv')
    code = pipeline.run_command(str(folder), [str(ALERTS / survey)], str(tmp_path / 's.db'),
                                str(csvs[-1]), slots=16, progress=False, stderr=err)
    lines = [l for l in err.getvalue().splitlines() if l.startswith('error:')]
    assert code == (2 if refused else 0) and len(lines) == refused, err.getvalue()
  out = _rows(csvs[0])
  assert len(out) == rows and len({r['alert_id'] for r in out}) == rows  # one row per alert
  # One alert per sample object: fewer than n_w = 3 images, so no probabilities yet.
  assert {r['status'] for r in out} <= {'warmup', 'dropped'}
  assert all(r[c] == '' for r in out for c in m['class_names'])
  assert csvs[0].read_bytes() == csvs[1].read_bytes()


def test_shipped_ztf_model_gives_probabilities_on_a_stream(templates, tmp_path):
  """Objects with 5 alerts each (real cutouts): from the n_w-th image on, the shipped model's
  probabilities, finite and summing to one."""
  clf = Classifier.from_workdir(str(ROOT / 'pretrained' / 'ztf_rcnn'))
  path, _ = _stream(templates, tmp_path / 's.avro', num_objects=4, num_epochs=5, seed=5)
  _run(clf, tmp_path / 's.db', [path], tmp_path / 's.csv', slots=16)
  out = _rows(tmp_path / 's.csv')
  assert len(out) == 20
  done = [r for r in out if r['status'] == 'classified']
  assert len(done) == 4 * (5 - clf.n_w + 1)
  p = np.array([[float(r[c]) for c in clf.class_names] for r in done])
  assert np.isfinite(p).all()
  np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-5)


def test_summary_rate_leaves_out_the_update_compile(ztf_model, templates, tmp_path):
  """The first update call of a classifier compiles it: timed as ``compile`` and left out of
  the summary's alerts/s; a second run of the same classifier compiles nothing. Alerts that
  complete no step (warm-up) never call the model."""
  fresh = Classifier.from_workdir(ztf_model[0])
  warm, _ = _stream(templates, tmp_path / 'w.avro', num_objects=3, num_epochs=fresh.n_w - 1)
  s0 = _run(fresh, tmp_path / '0.db', [warm], tmp_path / '0.csv')
  assert s0['counts']['warmup'] == 3 * (fresh.n_w - 1)
  assert fresh._update._cache_size() == 0 and fresh._shift._cache_size() == 1
  path, _ = _stream(templates, tmp_path / 's.avro', num_objects=3, num_epochs=4)
  s1 = _run(fresh, tmp_path / '1.db', [path], tmp_path / '1.csv')
  s2 = _run(fresh, tmp_path / '2.db', [path], tmp_path / '2.csv')
  assert s1['timers']['compile'] > 0 and 'compile' not in s2['timers']
  assert fresh._update._cache_size() == 1
  assert s2['timers']['model'] > 0
  assert _rows(tmp_path / '1.csv') == _rows(tmp_path / '2.csv')
  line = pipeline.summary_line('1.csv', s1)
  rate = s1['rows'] / (s1['seconds'] - s1['timers']['compile'])
  assert f'{rate:.0f} alerts/s (' in line and 'compiling the update' in line
  assert 'compiling' not in pipeline.summary_line('2.csv', s2)


def test_bench_alerts_times_a_warm_stream(tmp_path):
  """``bench alerts``: every alert of the stream gets a row (n_w - 1 warm-ups per object, the
  rest classified), and no compile falls in the timed run (the warm-up compiled both jitted
  calls)."""
  out = tmp_path / 'bench.jsonl'
  subprocess.run([sys.executable, '-m', 'rcnn_jax.bench', 'alerts', '--config_arg', 'smoke',
                  '--alert_objects', '8', '--alert_epochs', '4', '--alert_slots', '4',
                  '--out', str(out)], check=True, capture_output=True, cwd=ROOT)
  import json  # pylint: disable=g-import-not-at-top
  lines = [json.loads(l) for l in out.read_text().splitlines()]
  e2e = next(l for l in lines if l['name'] == 'alerts')
  n_w = e2e['config']['n_w']
  assert e2e['rows'] == 32 and e2e['config']['statuses'] == {
      'classified': 8 * (4 - n_w + 1), 'warmup': 8 * (n_w - 1), 'dropped': 0, 'late': 0}
  assert 'compile' not in e2e['breakdown_s'] and e2e['breakdown_s']['model'] > 0
  assert e2e['value'] > 0
  assert [l['config']['slots'] for l in lines if l['name'] == 'alerts_latency'] == [4, 1]
