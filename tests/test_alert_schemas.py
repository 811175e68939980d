"""Alert schemas by content (issue 41): every ZTF 3.x / 4.x and every Rubin schema with a science
cutout is read through the fields the reader uses, found by name or by an earlier name (Avro
aliases), and a packet is refused only for a missing, null or malformed field, named.

Packets: the shared samples (ZTF 3.3, 3.0, 3.1 without cutouts, 3.2; Rubin lsst.v10_0 as Fink
sends it), and, written here in tmp_path from those samples' real packets (cutouts and
measurements), ZTF 4.02 (its schema files in tests/data/ztf_schema_4.02, from
ZwickyTransientFacility/ztf-avro-alert) and 4.01, Rubin lsst.v11_0 / v11_1 (lsst-alert-packet's
schemas), and every lsst-alert-packet sample packet (whose cutouts are null) with a sample's real
science cutout put in.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import gzip
import io
import math
import os
import pathlib
import struct
import warnings

from astropy.io import fits
import fastavro
import numpy as np
import pytest

from configs import lsst
from configs import ztf
from rcnn_jax.serving.alerts import packets
from rcnn_jax.serving.alerts import pipeline
from rcnn_jax.serving.alerts import reader
from rcnn_jax.serving.alerts import sources

ROOT = pathlib.Path(__file__).resolve().parents[1]
ALERTS = ROOT.parent / 'shared' / 'data' / 'alerts'
ZTF4 = pathlib.Path(__file__).resolve().parent / 'data' / 'ztf_schema_4.02'
RUBIN = ALERTS / 'rubin' / 'part-2-918301.avro'
NAN_CANDID = 1034529784115010007  # the ZTF sample whose science stamp holds NaN pixels

pytestmark = pytest.mark.skipif(not RUBIN.exists(),
                                reason=f'shared alert samples not found at {ALERTS}')


@pytest.fixture(scope='module')
def zspec():
  return reader.StampSpec.from_config(ztf.get_config('smoke'))


@pytest.fixture(scope='module')
def lspec():
  return reader.StampSpec.from_config(lsst.get_config('smoke'))


def _records(path):
  """(writer schema, records read whole) of an Avro file."""
  with open(path, 'rb') as f:
    r = fastavro.reader(f)
    return r.writer_schema, list(r)


def _write(path, schema, records):
  with open(path, 'wb') as f:
    fastavro.writer(f, fastavro.parse_schema(copy.deepcopy(schema)), records)
  return str(path)


def _same(a, b):
  """Two decodings of one packet: identical but for ``source`` (Epoch), or the same refusal."""
  if isinstance(a, reader.BadPacket) or isinstance(b, reader.BadPacket):
    assert type(a) is type(b), (a, b)
    assert str(a).split(': ', 1)[1] == str(b).split(': ', 1)[1]
    assert str(a).split(': ', 1)[0].split(' ', 1)[1] == str(b).split(': ', 1)[0].split(' ', 1)[1]
    return
  for f in dataclasses.fields(reader.Epoch):
    if f.name == 'stamp':
      assert a.stamp.dtype == b.stamp.dtype and a.stamp.shape == b.stamp.shape
      np.testing.assert_array_equal(a.stamp, b.stamp)
    elif f.name != 'source':
      x, y = getattr(a, f.name), getattr(b, f.name)
      assert x == y or (isinstance(x, float) and math.isnan(x) and math.isnan(y)), f.name


# ----------------------------------------------------------------------------------------------
# ZTF


def _ztf_samples():
  """[(schema 3.3, record)] of the shared ZTF samples (16 packets)."""
  out = []
  for f in reader.list_inputs([ALERTS / 'ztf']):
    schema, recs = _records(f)
    out += [(schema, r) for r in recs]
  return out


def _ztf4_schema(version):
  """ZTF's pinned 4.02 schema (the files of ztf-avro-alert), or 4.01: the same with
  ``candidate.tooflag``'s default 0 (the only difference, upstream commit f5ee01b)."""
  names = ('cutout', 'candidate', 'prv_candidate', 'fp_hist', 'alert')
  schema = packets.plain(fastavro.schema.load_schema_ordered(
      [str(ZTF4 / f'{n}.avsc') for n in names]))
  assert schema['version'] == '4.02'
  if version == '4.01':
    cand = next(f['type'] for f in schema['fields'] if f['name'] == 'candidate')
    next(f for f in cand['fields'] if f['name'] == 'tooflag')['default'] = 0
  schema['version'] = version
  return schema


def _to_ztf4(rec, version):
  """A 3.3 packet as ZTF writes it in 4.x: the same fields, and forced photometry ``fp_hists``
  at its earlier epochs (from its previous candidates' real measurements)."""
  rec = copy.deepcopy(rec)
  rec['schemavsn'] = version
  c = rec['candidate']
  rec['fp_hists'] = [
      dict(p, rfid=c['rfid'], ranr=c['ranr'], decnr=c['decnr'], field=c.get('field'),
           rcid=c.get('rcid'), forcediffimflux=None, procstatus='0')
      for p in rec.get('prv_candidates') or []] or None
  return rec


def _ztf4_file(path, version, samples=None, edit=None):
  samples = samples if samples is not None else _ztf_samples()
  recs = [_to_ztf4(r, version) for _, r in samples]
  for i, r in enumerate(recs):
    if edit:
      edit(i, r)
  return _write(path, _ztf4_schema(version), recs)


@pytest.mark.parametrize('version', ['4.01', '4.02'])
def test_ztf4_packets_decode_as_their_3_3_originals(version, zspec, tmp_path):
  samples = _ztf_samples()
  path = _ztf4_file(tmp_path / 'z4.avro', version, samples)
  schema, recs = _records(path)
  assert schema['fields'][6]['name'] == 'fp_hists' and recs[0]['schemavsn'] == version
  assert sum(bool(r['fp_hists']) for r in recs) >= 10  # forced photometry skipped, not lost
  new = list(reader.read_epochs(path, zspec))
  old = [x for f in reader.list_inputs([ALERTS / 'ztf']) for x in reader.read_epochs(f, zspec)]
  assert len(new) == len(old) == 16
  for a, b in zip(old, new):
    _same(a, b)
  bad = [x for x in new if isinstance(x, reader.BadPacket)]
  assert len(bad) == 1 and f'candid {NAN_CANDID}: NaN' in str(bad[0])


def _ztf_independently(rec):
  """The inputs of one ZTF packet decoded here without the reader (exptime 30 s where the
  schema, 3.0, has none)."""
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    img = fits.open(io.BytesIO(gzip.decompress(rec['cutoutScience']['stampData'])))[0].data
  c = rec['candidate']
  return dict(stamp=np.asarray(img, np.float32)[21:42, 21:42], mjd=c['jd'] - 2400000.5,
              zp=c['magzpsci'] - 2.5 * math.log10(c.get('exptime', 30.0)),
              seeing=c['fwhm'] * 1.01, band='gri'[c['fid'] - 1], id=str(rec['candid']),
              object=rec['objectId'])


def test_ztf_3x_versions(zspec):
  """3.0 (no exptime in its candidate), 3.1 (cutouts stripped, an i-band alert), 3.2."""
  gri = dataclasses.replace(zspec, bands=('g', 'r', 'i'))
  files = sorted((ALERTS / 'ztf_versions').glob('*.avro'))
  seen = {}
  for f in files:
    schema, (rec,) = _records(f)
    (e,) = reader.read_epochs(f, gri)
    seen[rec['schemavsn']] = e
    if rec['cutoutScience'] is None:
      assert isinstance(e, reader.BadPacket)
      assert str(e).endswith(f'candid {rec["candid"]}: no science cutout (cutoutScience is '
                             'null)')
      (e2,) = reader.read_epochs(f, zspec)
      assert f"candid {rec['candid']}: band 'i' is not one of the model's bands" in str(e2)
      continue
    want = _ztf_independently(rec)
    np.testing.assert_array_equal(e.stamp, want['stamp'])
    assert (e.alert_id, e.object_id, e.band) == (want['id'], want['object'], want['band'])
    assert e.mjd == pytest.approx(want['mjd'], abs=1e-9)
    assert e.zero_point == pytest.approx(want['zp'], abs=1e-9)
    assert e.seeing_arcsec == pytest.approx(want['seeing'], rel=1e-6)
  assert sorted(seen) == ['3.0', '3.1', '3.2']
  assert seen['3.0'].exp_time_s == 30.0 and seen['3.2'].exp_time_s == 30.0


def test_ztf_refused_only_for_a_needed_field_named(zspec, tmp_path):
  """In one 4.02 file: a null cutout, an fid that is no ZTF filter, a NaN jd, an empty objectId;
  each refused in one line naming its field and alert, the others decoded as before. A schema
  without candidate.jd: every packet refused naming it. Fields not used (schemavsn) do not
  matter."""
  samples = [s for s in _ztf_samples() if s[1]['candid'] != NAN_CANDID][:8]

  def edit(i, r):
    if i == 1:
      r['cutoutScience'] = None
    elif i == 2:
      r['candidate']['fid'] = 7
    elif i == 3:
      r['candidate']['jd'] = float('nan')
    elif i == 4:
      r['objectId'] = ''
    elif i == 5:
      r['schemavsn'] = '9.9'

  path = _ztf4_file(tmp_path / 'mixed.avro', '4.02', samples, edit)
  out = list(reader.read_epochs(path, zspec))
  ids = [r['candid'] for _, r in samples]
  assert str(out[1]).endswith(f'#1 candid {ids[1]}: no science cutout (cutoutScience is null)')
  assert str(out[2]).endswith(f'#2 candid {ids[2]}: candidate.fid malformed (7: 1, 2, 3 = g, '
                              'r, i)')
  assert str(out[3]).endswith(f"#3 candid {ids[3]}: candidate.jd malformed ('nan')")
  assert str(out[4]).endswith(f"#4 candid {ids[4]}: objectId malformed ('')")
  for i in (0, 5, 6, 7):
    assert isinstance(out[i], reader.Epoch)
    _same(out[i], reader.decode(samples[i][1], samples[i][0], 'x', zspec))
  # A writer schema without candidate.jd (and without schemavsn): each packet names the field.
  schema = _ztf4_schema('4.02')
  schema['fields'] = [f for f in schema['fields'] if f['name'] != 'schemavsn']
  cand = schema['fields'][3]['type']
  assert cand['name'] == 'ztf.alert.candidate'
  cand['fields'] = [f for f in cand['fields'] if f['name'] != 'jd']
  recs = [_to_ztf4(r, '4.02') for _, r in samples[:3]]
  path = _write(tmp_path / 'nojd.avro', schema, recs)
  out = list(reader.read_epochs(path, zspec))
  assert len(out) == 3 and all(isinstance(e, reader.BadPacket) for e in out)
  for i, e in enumerate(out):
    assert str(e).endswith(f"#{i} candid {ids[i]}: no field candidate.jd in the packet's schema "
                           'ztf.alert')


# ----------------------------------------------------------------------------------------------
# Rubin


def _conform(value, schema):
  """``value`` (a record of another version) in ``schema``'s shape: its fields by name, a field
  it lacks at the schema's default (or null); a nested record whose required fields are null
  (as Fink's Spark writes an absent ``ssSource``) is null where its union allows it."""
  if isinstance(schema, list):
    if value is None:
      assert 'null' in schema
      return None
    branch = [t for t in schema if t != 'null']
    if len(branch) != 1:
      return value
    try:
      return _conform(value, branch[0])
    except ValueError:
      if 'null' in schema:
        return None
      raise
  if isinstance(schema, dict) and schema.get('type') == 'record':
    out = {}
    for f in schema['fields']:
      nullable = isinstance(f['type'], list) and 'null' in f['type']
      if f['name'] in value:
        out[f['name']] = _conform(value[f['name']], f['type'])
      elif 'default' in f:
        out[f['name']] = f['default']
      elif nullable:
        out[f['name']] = None
      else:
        raise ValueError(f'no value for the required field {f["name"]}')
      if out[f['name']] is None and not nullable:
        raise ValueError(f'{f["name"]} is null')
    return out
  if isinstance(schema, dict) and schema.get('type') == 'array':
    return [_conform(v, schema['items']) for v in value]
  return value


def _rubin(version_id):
  return packets.rubin_schema(version_id)


def _fink_v10():
  return _records(RUBIN)


@pytest.mark.parametrize('schema_id', [1100, 1101])
def test_rubin_11_packets_decode_as_their_v10_originals(schema_id, lspec, tmp_path):
  """lsst.v11_0 / v11_1 packets of the Fink v10 samples (every field by name, the new ones
  null or default): the same Epochs, from a container file and from the Confluent wire format
  (byte 0, schema id, schemaless body) with the pinned writer schema found by its id."""
  schema = _rubin(schema_id)
  assert schema['name'] == f'lsst.v11_{schema_id % 100}.alert'
  _, recs = _fink_v10()
  new = [_conform(r, schema) for r in recs]
  path = _write(tmp_path / 'r11.avro', schema, new)
  old = list(reader.read_epochs(RUBIN, lspec))
  assert len(old) == 7 and all(isinstance(e, reader.Epoch) for e in old)
  for a, b in zip(old, reader.read_epochs(path, lspec)):
    _same(a, b)
  parsed = fastavro.parse_schema(copy.deepcopy(schema))
  for a, rec in zip(old, new):
    body = io.BytesIO()
    fastavro.schemaless_writer(body, parsed, rec)
    msg = struct.pack('>bI', 0, schema_id) + body.getvalue()
    got, writer = reader.decode_message(msg, source='kafka')
    assert writer['name'] == schema['name'] and len(got) == 1
    _same(a, reader.decode(got[0], writer, 'kafka', lspec))


def test_rubin_names_moved_are_read_by_alias(lspec, tmp_path):
  """The v10 samples written with lsst.v3_0 / v4_0's names for the time and the band
  (``midPointTai``, ``filterName``): read through the reader schema's aliases, and also from
  records read whole (``decode`` looks the earlier names up too)."""
  schema, recs = _fink_v10()
  schema = packets.plain(copy.deepcopy(schema))
  ds = next(f['type'] for f in schema['fields'] if f['name'] == 'diaSource')
  ren = {'midpointMjdTai': 'midPointTai', 'band': 'filterName'}
  for f in ds['fields']:
    f['name'] = ren.get(f['name'], f['name'])
  old_names = []
  for r in recs:
    r = copy.deepcopy(r)
    r['diaSource'] = {ren.get(k, k): v for k, v in r['diaSource'].items()}
    old_names.append(r)
  path = _write(tmp_path / 'old_names.avro', schema, old_names)
  old = list(reader.read_epochs(RUBIN, lspec))
  for a, b in zip(old, reader.read_epochs(path, lspec)):
    _same(a, b)
  w, whole = _records(path)
  assert 'midPointTai' in whole[0]['diaSource']
  for a, r in zip(old, whole):
    _same(a, reader.decode(r, w, 'x', lspec))


def test_rubin_refused_only_for_a_needed_field_named(lspec, tmp_path):
  schema = _rubin(1101)
  _, recs = _fink_v10()
  new = [_conform(r, schema) for r in recs]
  new[1]['diaSource']['band'] = None
  new[2]['diaSource']['midpointMjdTai'] = float('inf')
  new[3]['cutoutScience'] = None
  new[4]['diaSource']['diaObjectId'] = None  # not needed: the source becomes its own object
  new[4]['diaSource']['ssObjectId'] = None
  path = _write(tmp_path / 'mixed.avro', schema, new)
  out = list(reader.read_epochs(path, lspec))
  ids = [r['diaSourceId'] for r in recs]
  assert str(out[1]).endswith(f'#1 diaSourceId {ids[1]}: diaSource.band is null')
  assert str(out[2]).endswith(f"#2 diaSourceId {ids[2]}: diaSource.midpointMjdTai malformed "
                              "('inf')")
  assert str(out[3]).endswith(f'#3 diaSourceId {ids[3]}: no science cutout (cutoutScience is '
                              'null)')
  assert out[4].object_id == f'src{ids[4]}'
  old = list(reader.read_epochs(RUBIN, lspec))
  for i in (0, 5, 6):
    _same(old[i], out[i])


def _package_samples():
  """(schema id, sample file) of every lsst-alert-packet version with a sample packet."""
  root = packets.rubin_schema_root()
  out = []
  for sid in packets.rubin_schema_ids():
    f = os.path.join(root, str(sid // 100), str(sid % 100), 'sample_data', 'fakeAlert.avro')
    if os.path.isfile(f):
      out.append((sid, f))
  return out


def test_every_lsst_alert_packet_sample(lspec, tmp_path):
  """lsst-alert-packet's own sample packet of each schema (3.0 to 11.1; their cutouts are null):
  refused naming cutoutScience (absent from 3.0 to 6.0, null from 6.1 on), and, from 6.1 on,
  with a real science cutout put in, decoded: its own ids, time and band, the cutout's stamp."""
  samples = _package_samples()
  assert [s for s, _ in samples] == [300, 400, 500, 600, 601, 700, 701, 702, 703, 704, 800, 900,
                                     1000, 1100, 1101]
  _, fink = _fink_v10()
  ref = copy.deepcopy(fink[0])
  ref['diaSource']['band'] = 'r'
  want = reader.decode(ref, None, 'ref', lspec)  # the Fink cutout's stamp in the r band
  decoded = []
  for sid, f in samples:
    writer, (rec,) = _records(f)
    (e,) = reader.read_epochs(f, lspec)
    alert = rec.get('diaSourceId', rec['diaSource']['diaSourceId'])
    assert isinstance(e, reader.BadPacket) and f'diaSourceId {alert}: no science cutout' in str(e)
    has_field = any(x['name'] == 'cutoutScience' for x in writer['fields'])
    assert has_field == (sid >= 601)
    assert ("no field cutoutScience in the packet's schema" in str(e)) == (not has_field)
    if not has_field:
      continue
    rec['cutoutScience'] = fink[0]['cutoutScience']
    path = _write(tmp_path / f'{sid}.avro', writer, [rec])
    (e,) = reader.read_epochs(path, lspec)
    assert isinstance(e, reader.Epoch), e
    s = rec['diaSource']
    assert e.alert_id == str(alert) and e.object_id == f'src{alert}'  # no DIAObject, no SSObject
    assert e.mjd == s['midpointMjdTai'] and e.band == s['band'] == 'r'
    np.testing.assert_array_equal(e.stamp, want.stamp)
    assert e.seeing_arcsec == want.seeing_arcsec and e.zero_point == want.zero_point
    decoded.append(sid)
  assert decoded == [601, 700, 701, 702, 703, 704, 800, 900, 1000, 1100, 1101]


# ----------------------------------------------------------------------------------------------
# One Kafka message


def test_decode_message_forms_and_refusals(zspec, lspec, tmp_path):
  # ZTF's stream: an Avro container per message.
  samples = _ztf_samples()[:2]
  path = _ztf4_file(tmp_path / 'one.avro', '4.02', samples[:1])
  recs, writer = reader.decode_message(pathlib.Path(path).read_bytes())
  assert len(recs) == 1 and writer['version'] == '4.02'
  assert 'fp_hists' not in recs[0] and 'prv_candidates' not in recs[0]  # projected
  _same(reader.decode(recs[0], writer, 'm', zspec),
        reader.decode(samples[0][1], samples[0][0], 'x', zspec))
  # The Confluent wire format with a writer schema of the caller's (by id, or given).
  schema, fink = _fink_v10()
  parsed = fastavro.parse_schema(copy.deepcopy(schema))
  body = io.BytesIO()
  fastavro.schemaless_writer(body, parsed, fink[0])
  msg = b'\x00' + struct.pack('>I', 7) + body.getvalue()
  want = next(reader.read_epochs(RUBIN, lspec))
  for kw in (dict(schemas={7: schema}), dict(schema=schema)):
    (rec,), _ = reader.decode_message(msg, **kw)
    _same(want, reader.decode(rec, schema, 'm', lspec))
  refusals = {
      'unknown schema id 7': msg,  # not Rubin's, and no schema given
      'neither an Avro container nor the Confluent wire format': b'\x01' + msg[1:],
      'does not decode with schema id 1000': msg[:1] + struct.pack('>I', 1000) + msg[5:-40],
      'bytes left over': b'\x00' + struct.pack('>I', 7) + body.getvalue() + b'\x00\x01',
      'corrupt Avro container': pathlib.Path(path).read_bytes()[:3000],
  }
  for needle, data in refusals.items():
    kw = dict(schemas={7: schema}) if 'left over' in needle else {}
    with pytest.raises(reader.BadPacket, match=needle) as err:
      reader.decode_message(data, source='topic/3@42', **kw)
    assert str(err.value).startswith('topic/3@42: ')


# ----------------------------------------------------------------------------------------------
# The README's command with the shipped ZTF model on 4.02 packets


def _stream(samples, version, num_objects=3, num_epochs=4):
  """Objects of num_epochs alerts each from the samples' real packets (new ids, times, bands)."""
  good = [r for _, r in samples if r['candid'] != NAN_CANDID]
  out = []
  for e in range(num_epochs):
    for o in range(num_objects):
      rec = copy.deepcopy(good[(o + 3 * e) % len(good)])
      rec['objectId'] = f'ZTFsyn{o:03d}'
      rec['candid'] = rec['candidate']['candid'] = 10**15 + 1000 * o + e
      rec['candidate'].update(jd=2459000.5 + 0.7 * e + 0.01 * o, fid=1 + (e % 2), fwhm=2.0)
      out.append(rec if version == '3.3' else _to_ztf4(rec, version))
  return out


def test_shipped_ztf_model_classifies_ztf4_as_ztf33(tmp_path):
  """``python -m rcnn_jax.alerts --workdir pretrained/ztf_rcnn ...`` (``run_command``) on the same
  stream written in 3.3 and in 4.02: identical rows, probabilities from the n_w-th alert on."""
  samples = _ztf_samples()
  rows = {}
  for version in ('3.3', '4.02'):
    schema = samples[0][0] if version == '3.3' else _ztf4_schema(version)
    path = _write(tmp_path / f'{version}.avro', schema, _stream(samples, version))
    out = tmp_path / f'{version}.csv'
    err = io.StringIO()
    code = pipeline.run_command(str(ROOT / 'pretrained' / 'ztf_rcnn'), [path],
                                str(tmp_path / f'{version}.db'), str(out), slots=4,
                                progress=False, stderr=err)
    assert code == 0, err.getvalue()
    with open(out) as f:
      rows[version] = list(csv.DictReader(f))
  assert rows['3.3'] == rows['4.02'] and len(rows['4.02']) == 12
  assert sum(r['status'] == 'classified' for r in rows['4.02']) == 6


# ----------------------------------------------------------------------------------------------
# One decoder (packets.py) against an independent one: fastavro reading every field, no
# projection, no plan (issue 41)


def _eq(a, b):
  return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a)
                    and math.isnan(b))


def _under(rec, name, wanted):
  """(found, ``rec[name]`` under its name or an earlier one) of a record read whole."""
  for n in (name,) + tuple(wanted.get(name, ())):
    if n in rec:
      return True, rec[n]
  return False, None


def _check_projected(rec, whole):
  """A record of the decoder holds exactly the used fields of the record read whole, with
  the same values (nested records: the subfields used)."""
  want = [n for n in packets.FIELDS if _under(whole, n, packets.FIELDS)[0]]
  assert sorted(rec) == sorted(want)
  for k, v in rec.items():
    _, w = _under(whole, k, packets.FIELDS)
    sub = packets.SUBFIELDS.get(k)
    if sub and isinstance(w, dict):
      assert isinstance(v, dict), k
      assert sorted(v) == sorted(n for n in sub if _under(w, n, sub)[0]), k
      for sk, sv in v.items():
        assert _eq(sv, _under(w, sk, sub)[1]), f'{k}.{sk}'
    else:
      assert _eq(v, w), k


def _epoch(rec, schema, source, spec):
  """``reader.decode``'s Epoch, or its refusal."""
  try:
    return reader.decode(rec, schema, source, spec)
  except reader.BadPacket as e:
    return e


def _wire(writer, rec, schema_id=4242):
  body = io.BytesIO()
  fastavro.schemaless_writer(body, fastavro.parse_schema(packets.plain(copy.deepcopy(writer))),
                             rec)
  return struct.pack('>bI', 0, schema_id) + body.getvalue()


def _check_file(path, spec):
  """Every record of ``path``: from the file, as one container message and in the wire format
  (both decode_message's), the same fields and values and the same Epoch (or refusal) as read
  whole by fastavro. Returns the Epochs and refusals."""
  writer, whole = _records(path)
  got = list(reader.read_records(path))
  assert len(got) == len(whole) and not any(isinstance(r, reader.BadPacket) for _, r, _ in got)
  msg_recs, msg_writer = reader.decode_message(pathlib.Path(path).read_bytes())
  (kafka,) = [sources.decode_message(pathlib.Path(path).read_bytes(), sources.Schemas(), 'm')]
  out = []
  for (i, rec, schema), w, m, (k, _) in zip(got, whole, msg_recs, kafka):
    _check_projected(rec, w)
    assert rec == m == k
    want = _epoch(w, writer, 'whole', spec)
    for r, s in ((rec, schema), (m, msg_writer)):
      _same(want, _epoch(r, s, f'{path}#{i}', spec))
    msg = _wire(writer, w)
    for (wr,), _ in (reader.decode_message(msg, schema=writer),
                     reader.decode_message(msg, schemas={4242: writer})):
      _check_projected(wr, w)
      _same(want, _epoch(wr, writer, 'wire', spec))
    ((ks, _),) = sources.decode_message(msg, sources.Schemas({4242: writer}), 'k')
    _check_projected(ks, w)
    out.append(want)
  return out


def test_every_packet_decodes_as_fastavro_reads_it_whole(zspec, lspec, tmp_path):
  """Every shared sample (ZTF 3.0 to 3.3, Fink's Rubin 10.0), the ZTF 4.01 / 4.02 and Rubin
  11.0 / 11.1 packets written above, lsst-alert-packet's own sample of every schema (3.0 to
  11.1), also with a real science cutout put in: the decoder's records (the fields used, their
  values) and Epochs (stamp, mjd, zero point, seeing, ids, band, exposure) are those of an
  independent decode of every field by fastavro (``fastavro.reader``, no projection)."""
  gri = dataclasses.replace(zspec, bands=('g', 'r', 'i'))
  ztf_files = reader.list_inputs([ALERTS / 'ztf', ALERTS / 'ztf_versions'])
  ztf_files += [_ztf4_file(tmp_path / f'z{v}.avro', v) for v in ('4.01', '4.02')]
  _, fink = _fink_v10()
  rubin_files = [str(RUBIN)]
  for sid in (1100, 1101):
    schema = _rubin(sid)
    rubin_files.append(_write(tmp_path / f'r{sid}.avro', schema,
                              [_conform(r, schema) for r in fink]))
  for sid, f in _package_samples():
    rubin_files.append(f)
    writer, (rec,) = _records(f)
    if any(x['name'] == 'cutoutScience' for x in writer['fields']):
      rec['cutoutScience'] = fink[0]['cutoutScience']
      rubin_files.append(_write(tmp_path / f'{sid}.avro', writer, [rec]))
  ztf_out = [e for f in ztf_files for e in _check_file(f, gri)]
  rubin_out = [e for f in rubin_files for e in _check_file(f, lspec)]
  ztf_ok = [e for e in ztf_out if isinstance(e, reader.Epoch)]
  rubin_ok = [e for e in rubin_out if isinstance(e, reader.Epoch)]
  # 16 + 3 shared and 2 x 16 4.x packets; refused: the NaN stamp (x 3), 3.1's null cutouts.
  assert (len(ztf_out), len(ztf_ok)) == (51, 47)
  assert (len(rubin_out), len(rubin_ok)) == (7 + 14 + 15 + 11, 7 + 14 + 11)
  assert {e.band for e in ztf_ok} == {'g', 'r'} and {e.survey for e in rubin_ok} == {'rubin'}


def _random_value(t, rnd, depth=0):
  """A random value of an (expanded) Avro type, with the encodings' edge cases: nulls, the
  extreme longs, NaN and Inf, strings of 0 to 300 bytes and beyond (a longer one than the
  patterns take), arrays of 0, 15, 16, 17 and 40 items."""
  if isinstance(t, list):
    return _random_value(t[rnd.randrange(len(t))], rnd, depth)
  if isinstance(t, dict):
    kind = t['type']
    if kind == 'record':
      return {f['name']: _random_value(f['type'], rnd, depth + 1) for f in t['fields']}
    if kind == 'array':
      n = rnd.choice([0, 1, 15, 16, 17, 40]) if depth < 2 else rnd.randrange(3)
      return [_random_value(t['items'], rnd, depth + 1) for _ in range(n)]
    if kind == 'map':
      return {f'k{i}' * rnd.randrange(1, 90): _random_value(t['values'], rnd, depth + 1)
              for i in range(rnd.randrange(4))}
    if kind == 'enum':
      return rnd.choice(t['symbols'])
    if kind == 'fixed':
      return bytes(rnd.randrange(256) for _ in range(t['size']))
    return _random_value(kind, rnd, depth)
  if t == 'null':
    return None
  if t == 'boolean':
    return rnd.random() < 0.5
  if t in ('int', 'long'):
    top = 2**31 if t == 'int' else 2**63
    return rnd.choice([0, -1, 1, 63, 64, -65, top - 1, -top, rnd.randrange(-top, top)])
  if t in ('float', 'double'):
    return rnd.choice([0.0, -0.0, math.nan, math.inf, -math.inf, rnd.uniform(-1e30, 1e30)])
  n = rnd.choice([0, 1, 63, 64, 255, 256, 300, 2000])
  if t == 'bytes':
    return bytes(rnd.randrange(256) for _ in range(n))
  return ''.join(rnd.choice('abcé') for _ in range(n))


@pytest.mark.parametrize('codec', ['null', 'deflate', 'bzip2'])
def test_skipped_fields_in_every_encoding(codec, lspec, tmp_path):
  """Fink's Rubin samples with every field the reader does not use (the previous sources and
  forced sources, diaObject, the brokers' blocks) replaced by random values of their types
  (nulls, extreme longs, NaN, strings past what the skipping patterns take, arrays of 0 to 40
  items), in containers of small blocks and in the wire format: the fields used decode as
  fastavro reads them whole, and a wire-format body is consumed to its last byte."""
  import random  # pylint: disable=import-outside-toplevel
  rnd = random.Random(f'issue41-{codec}')
  writer, fink = _fink_v10()
  expanded = packets.plain(fastavro.schema.expand_schema(
      fastavro.parse_schema(packets.plain(copy.deepcopy(writer)))))
  recs = []
  for r in fink * 3:
    r = copy.deepcopy(r)
    for f in expanded['fields']:
      if f['name'] not in packets.FIELDS:
        r[f['name']] = _random_value(f['type'], rnd)
    recs.append(r)
  assert any(len(r['prvDiaSources'] or []) >= 17 for r in recs)
  path = tmp_path / f'{codec}.avro'
  with open(path, 'wb') as f:
    fastavro.writer(f, fastavro.parse_schema(packets.plain(copy.deepcopy(writer))), recs,
                    codec=codec, sync_interval=20000)
  out = _check_file(path, lspec)
  assert len(out) == len(recs) and all(isinstance(e, reader.Epoch) for e in out)
  with open(path, 'rb') as f:
    assert fastavro.block_reader(f).codec == codec


def test_array_blocks_with_sizes_and_long_strings():
  """Avro arrays in several blocks, one of them with a negative count and its byte size
  (Avro 1.11 spec: such a block is skipped at once), items with strings longer than the
  patterns take: the skipper (with and without its patterns) ends where the array does."""
  item = {'type': 'record', 'name': 'p', 'fields': [
      {'name': 'a', 'type': ['null', 'long']}, {'name': 'b', 'type': ['float', 'null']},
      {'name': 's', 'type': ['null', 'string']}, {'name': 'c', 'type': 'boolean'}]}
  parsed = fastavro.parse_schema(copy.deepcopy(item))

  def enc(values):
    buf = io.BytesIO()
    for v in values:
      fastavro.schemaless_writer(buf, parsed, v)
    return buf.getvalue()

  def zz(n):
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema('long'), n)
    return buf.getvalue()

  vals = [dict(a=i * 10**12, b=float(i), s='x' * (i * 37 % 700) if i % 3 else None, c=i % 2 == 0)
          for i in range(40)]
  a, b, c = enc(vals[:17]), enc(vals[17:20]), enc(vals[20:])
  data = zz(17) + a + zz(-3) + zz(len(b)) + b + zz(20) + c + zz(0) + b'\x7f tail'
  end = len(data) - len(b'\x7f tail')
  array = {'type': 'array', 'items': item}
  for skip in (packets._skipper(array), packets._fast_skipper(array)):  # pylint: disable=protected-access
    assert skip(data, 0) == end
  assert packets._pattern(array) is None and packets._pattern(item) is not None  # pylint: disable=protected-access


def test_a_wrong_skipper_is_caught(monkeypatch):
  """The checks above can fail: a skipper that takes a float as 3 bytes (its pattern and its
  walker) makes the wire-format decode of a Rubin sample refuse the body or differ from
  fastavro's whole read."""
  writer, fink = _fink_v10()
  monkeypatch.setitem(packets._PRIMITIVE_RX, 'float', b'.{3}')  # pylint: disable=protected-access
  monkeypatch.setitem(packets._PRIMITIVE_SKIP, 'float', packets._fixed(3))  # pylint: disable=protected-access
  msg = _wire(writer, fink[0])
  try:
    ((rec, _),) = sources.decode_message(msg, sources.Schemas({4242: writer}), 'k')
  except reader.BadPacket as e:
    assert 'does not decode with schema id 4242' in str(e)
    return
  with pytest.raises(AssertionError):
    _check_projected(rec, fink[0])


def test_rubin_history_skipped_by_patterns(monkeypatch):
  """Fink's Rubin samples are skipped by the patterns (the walker, ~10x slower, takes only
  what they cannot): every history record, diaObject and the brokers' blocks in one match."""
  writer, fink = _fink_v10()
  walked = []
  for kind, skip in list(packets._PRIMITIVE_SKIP.items()):  # pylint: disable=protected-access
    if skip is not None:
      monkeypatch.setitem(packets._PRIMITIVE_SKIP, kind,  # pylint: disable=protected-access
                          lambda b, pos, skip=skip, kind=kind: walked.append(kind) or skip(b, pos))
  schemas = sources.Schemas({4242: writer})
  for rec in fink:
    ((got, _),) = sources.decode_message(_wire(writer, rec), schemas, 'k')
    _check_projected(got, rec)
  assert sum(len(r['prvDiaSources'] or ()) for r in fink) > 1000
  # The walker: the template and difference cutouts (bytes longer than a pattern takes) and
  # mpc_orbits (a long JSON string): some 20 values an alert (120 in these 7), of ~40,000.
  assert len(walked) < 100 * len(fink), len(walked)


@pytest.mark.parametrize('codec', ['null', 'deflate'])
def test_truncated_container_yields_the_records_before(codec, tmp_path):
  """A container cut anywhere: the records fastavro.reader yields before it stops, then one
  BadPacket for the rest (a cut in the header: 'not an Avro container file')."""
  writer, recs = _records(ALERTS / 'ztf' / 'avro_multi_alerts.avro')
  buf = io.BytesIO()
  fastavro.writer(buf, fastavro.parse_schema(packets.plain(copy.deepcopy(writer))),
                  recs, codec=codec, sync_interval=120000)  # blocks of a few records
  data = buf.getvalue()
  seen = set()
  for cut in (3000, len(data) // 3, len(data) // 2, len(data) - 10, len(data) - 17):
    path = tmp_path / f'cut{cut}.avro'
    path.write_bytes(data[:cut])
    want = []
    try:
      with open(path, 'rb') as f:
        for r in fastavro.reader(f):
          want.append(r)
    except (EOFError, ValueError):
      pass
    got = list(reader.read_records(path))
    *good, (n, bad, _) = got
    assert [r['candid'] for _, r, _ in good] == [r['candid'] for r in want]
    assert isinstance(bad, reader.BadPacket) and n == len(want)
    assert ('not an Avro container file' if n == 0 else
            f'truncated or corrupt after {n} records') in str(bad)
    seen.add(n)
  assert len(seen) >= 3
