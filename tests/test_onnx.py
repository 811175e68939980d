"""The ONNX streaming classifier (``python -m rcnn_jax.export --format onnx``): onnxruntime
equals the JAX stream (``Classifier.update``) step by step on the real HiTS development files
and on the real ZTF alert cutouts, seeing cuts, implausible epochs, estimated skies and slots
without an image included; a damaged or edited artifact is refused in one line; the broker
example classifies with numpy and onnxruntime only.

Tolerance (float32 on both sides): ``TOL`` in probability. The two differ only by float32
rounding: batch norms folded into the convolutions, onnxruntime's own convolutions against
XLA's Winograd ones, carried through up to 27 recurrent steps (measured: at most 1.7e-6 over
the 70 files' 13,223 probabilities with the weights shipped until 2026-12-08, 2.4e-5 with
today's, 8.3e-7 on the ZTF cutouts; ``bench inference``: each within 4e-6 of full precision on
its 8 compared updates). Wherever the top two classes differ by more than 2 TOL the top class
must be the same.
"""

from __future__ import annotations

import ast
import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from configs import ztf
from rcnn_jax.inputs import realdata
from rcnn_jax.serving import export_onnx
from rcnn_jax.serving import exported
from rcnn_jax.serving import onnx_stream
from rcnn_jax.serving.alerts import reader
from rcnn_jax.serving.classifier import Classifier

pytest.importorskip('onnxruntime')
pytest.importorskip('jax2onnx')

ROOT = pathlib.Path(__file__).resolve().parents[1]
DATA = ROOT.parent / 'shared' / 'data'
DEV = [DATA / 'hits2015' / 'real_labelled_dev', DATA / 'hits2015' / 'real_nonvariable_dev']
ZTF_ALERTS = DATA / 'alerts' / 'ztf'
TOL = 5e-5  # largest |p_onnx - p_jax| allowed, float32 (measured: 2.4e-5)
ENV = dict(os.environ, PYTHONPATH=str(ROOT), RCNN_JAX_HUGEPAGES='0')


@pytest.fixture(scope='module')
def hits(tmp_path_factory):
  """(Classifier, loaded ONNX artifact, its folder) of the shipped HiTS model."""
  clf = Classifier.from_workdir(str(ROOT / 'pretrained' / 'hits2015_rcnn'))
  out = tmp_path_factory.mktemp('onnx') / 'hits'
  export_onnx.export_onnx(clf, str(out), float(clf.config.survey.max_seeing_arcsec))
  return clf, onnx_stream.load(out), out


@pytest.fixture(scope='module')
def ztf_artifact(tmp_path_factory):
  """The shipped ZTF model exported by the command, as a user would."""
  out = tmp_path_factory.mktemp('onnx') / 'ztf'
  r = subprocess.run([sys.executable, '-m', 'rcnn_jax.export', '--format', 'onnx', '--workdir',
                      str(ROOT / 'pretrained' / 'ztf_rcnn'), '--out', str(out)],
                     capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=600, check=False)
  assert r.returncode == 0, r.stderr[-3000:]
  assert 'wrote' in r.stdout and r.stderr.strip() == '', r.stderr[-2000:]
  return out


def _dev_sequences():
  if not all(d.is_dir() for d in DEV):
    pytest.skip(f'real development files not found under {DATA / "hits2015"}')
  return [realdata.load_sequence(p) for p in realdata.expand_inputs([str(d) for d in DEV])]


def _both(clf, onnx_clf, epochs, num_slots, capsys=None):
  """Feeds the same epochs to Classifier.update and the ONNX loader; epochs is a list of
  {slot: (stamp, mjd, zp, sky, seeing, band)}. Returns the per-epoch probabilities of both
  ([slots, C] each, NaN before a slot's first step) and the warning lines of each."""
  st_j, st_o = clf.new_state(num_slots), onnx_clf.new_state(num_slots)
  got_j, got_o, warn_j, warn_o = [], [], [], []
  multi = len(clf.bands) > 1
  for ep in epochs:
    idx = np.array(sorted(ep), np.int64)
    cols = list(zip(*[ep[i] for i in idx]))
    stamps = np.stack(cols[0])
    mjd, zp, sky, seeing = (np.array(c, np.float64) for c in cols[1:5])
    band = np.array(cols[5]) if multi else None
    p_j, st_j = clf.update(st_j, stamps, mjd, zp, sky, objects=idx, seeing_arcsec=seeing,
                           band=band)
    if capsys is not None:
      warn_j.append(capsys.readouterr().err)
    # The loader's slots are positional: slot i's values at row i, inactive rows padded.
    rows = np.zeros((num_slots,) + stamps.shape[1:], np.float32)
    rows[idx] = stamps
    put = lambda a: (lambda o: (o.__setitem__(idx, a), o)[1])(np.full(num_slots, np.nan))
    act = np.zeros(num_slots, bool)
    act[idx] = True
    b_rows = None
    if multi:
      b_rows = np.full(num_slots, clf.bands[0])
      b_rows[idx] = band
    p_o, st_o = onnx_clf.update(st_o, rows, put(mjd), put(zp), put(sky), put(seeing), act,
                                band=b_rows)
    if capsys is not None:
      warn_o.append(capsys.readouterr().err)
    got_j.append(np.asarray(p_j))
    got_o.append(p_o)
  return np.stack(got_j), np.stack(got_o), warn_j, warn_o


def _assert_close(p_j, p_o):
  assert np.array_equal(np.isnan(p_j), np.isnan(p_o)), 'steps differ (NaN before n_w images)'
  done = ~np.isnan(p_j)
  diff = float(np.abs(p_j[done] - p_o[done]).max())
  assert diff <= TOL, f'largest probability difference {diff:.2e} > {TOL:.0e}'
  rows = done.all(-1)
  pj, po = p_j[rows], p_o[rows]
  top2 = np.sort(pj, axis=-1)[:, -2:]
  clear = top2[:, 1] - top2[:, 0] > 2 * TOL
  assert clear.sum() > 0.9 * len(clear), 'too few clear answers to compare'
  assert np.array_equal(pj[clear].argmax(-1), po[clear].argmax(-1)), 'top class differs'
  return diff


def test_hits_dev_files_step_by_step(hits, capsys):
  """All 70 development files as one stream of 70 slots, epoch by epoch: each file's epochs
  in order, slots idle once their file ends (padding), bad-seeing and unknown-seeing epochs cut,
  two implausible epochs (a fill-value zero point, a negative sky) dropped with their line,
  a few skies left NaN (estimated from the ring)."""
  clf, onnx_clf, _ = hits
  seqs = _dev_sequences()
  capsys.readouterr()
  epochs = []
  for e in range(max(s.num_epochs for s in seqs)):
    ep = {}
    for i, s in enumerate(seqs):
      if e < s.num_epochs:
        zp, sky = float(s.zero_point[e]), float(s.sky_adu[e])
        if (i, e) == (3, 7):
          zp = -99.0  # implausible: dropped
        if (i, e) == (11, 9):
          sky = -5.0  # implausible: dropped
        if i % 9 == 0 and e % 4 == 1:
          sky = np.nan  # estimated
        ep[i] = (s.stamps[e], float(s.mjd[e]), zp, sky, float(s.seeing_arcsec[e]), None)
    epochs.append(ep)
  p_j, p_o, warn_j, warn_o = _both(clf, onnx_clf, epochs, len(seqs), capsys)
  _assert_close(p_j, p_o)
  assert warn_o == warn_j and sum(w.count('dropped') for w in warn_o) == 2
  # What the stream saw: every kind of step.
  seeing = np.concatenate([s.seeing_arcsec for s in seqs])
  assert (seeing > clf.rules.max_seeing_arcsec).sum() > 100 and np.isnan(seeing).sum() > 10
  assert min(s.num_epochs for s in seqs) < len(epochs)  # padded (idle) slots
  assert np.isfinite(p_o[-1]).all()


def _ztf_epochs():
  if not ZTF_ALERTS.is_dir():
    pytest.skip(f'ZTF alert samples not found under {ZTF_ALERTS}')
  spec = reader.StampSpec.from_config(ztf.get_config('smoke'))
  out = []
  for f in sorted(ZTF_ALERTS.glob('*.avro')):
    out += [e for e in reader.read_epochs(str(f), spec) if isinstance(e, reader.Epoch)]
  return out


def test_ztf_alert_cutouts_step_by_step(ztf_artifact):
  """The shipped ZTF model (two bands) on the real alert samples' science cutouts, made into
  8 objects of 6 epochs each (as tests/test_alerts.py does): bands alternating, the samples'
  own seeing (some above the 4" cut), one object idle for two epochs."""
  clf = Classifier.from_workdir(str(ROOT / 'pretrained' / 'ztf_rcnn'))
  onnx_clf = onnx_stream.load(ztf_artifact)
  samples = _ztf_epochs()
  good = [e for e in samples if np.isfinite(e.stamp).all()]
  assert len(good) >= 10
  epochs = []
  for e in range(6):
    ep = {}
    for o in range(8):
      if o == 5 and e in (2, 3):
        continue  # no alert for this object in these epochs
      smp = good[(o + 3 * e) % len(good)]
      ep[o] = (smp.stamp, 59000.0 + 0.7 * e + 0.01 * o, smp.zero_point, np.nan,
               smp.seeing_arcsec, ('g', 'r')[(o + e) % 2])
    epochs.append(ep)
  p_j, p_o, _, _ = _both(clf, onnx_clf, epochs, 8)
  _assert_close(p_j, p_o)
  assert np.isfinite(p_o[-1]).sum(axis=1).min() == 7  # every object has classified steps
  # A cutout with NaN pixels (one of the samples) is refused by both, nothing updated.
  bad = [e for e in samples if not np.isfinite(e.stamp).all()]
  if bad:
    st = onnx_clf.new_state(1)
    with pytest.raises(exported.InputError, match='object slot 0: image contains NaN'):
      onnx_clf.update(st, bad[0].stamp[None], [59000.0], [bad[0].zero_point], None, None,
                      band=['g'])
    assert st['num_images'][0] == 0


def _copy(src, dst):
  shutil.copytree(src, dst)
  return dst


def test_damaged_or_edited_artifact_refused(hits, tmp_path):
  _, _, art = hits
  rng = np.random.default_rng(43)
  # A 4 KB overwrite anywhere in step.onnx.
  for k in range(3):
    d = _copy(art, tmp_path / f'damaged{k}')
    blob = bytearray((d / export_onnx.ARTIFACT).read_bytes())
    at = int(rng.integers(0, len(blob) - 4096))
    blob[at:at + 4096] = rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()
    (d / export_onnx.ARTIFACT).write_bytes(bytes(blob))
    with pytest.raises(exported.ManifestError, match='step.onnx fails its integrity check'):
      onnx_stream.load(d)
  # Two class names swapped; the seeing cut changed.
  for edit in ('swap', 'seeing'):
    d = _copy(art, tmp_path / edit)
    m = json.loads((d / 'manifest.json').read_text())
    if edit == 'swap':
      m['class_names'][0], m['class_names'][1] = m['class_names'][1], m['class_names'][0]
    else:
      m['max_seeing_arcsec'] = 3.0
    (d / 'manifest.json').write_text(json.dumps(m))
    with pytest.raises(exported.ManifestError, match='manifest.json fails its integrity check'):
      onnx_stream.load(d)
  # Reformatted (keys reordered, no indentation): loads.
  d = _copy(art, tmp_path / 'reformatted')
  m = json.loads((d / 'manifest.json').read_text())
  (d / 'manifest.json').write_text(json.dumps(dict(reversed(list(m.items())))))
  assert onnx_stream.load(d).class_names == tuple(m['class_names'])
  # The command's check: one line, exit status 2; the jax.export loader refuses it too.
  r = subprocess.run([sys.executable, '-m', 'rcnn_jax.serving.onnx_stream',
                      str(tmp_path / 'damaged0')], capture_output=True, text=True, env=ENV,
                     cwd=ROOT, timeout=300, check=False)
  assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
  assert 'integrity check' in r.stderr
  with pytest.raises(exported.ManifestError, match='not an rcnn_jax streaming-update artifact'):
    exported.load(art)
  d = _copy(art, tmp_path / 'jax_manifest')  # and the reverse: a jax.export manifest
  m = json.loads((d / 'manifest.json').read_text())
  (d / 'manifest.json').write_text(json.dumps(dict(m, format=exported.FORMAT)))
  with pytest.raises(exported.ManifestError, match='not an rcnn_jax ONNX streaming artifact'):
    onnx_stream.load(d)


def test_export_command_refuses_before_work(hits, tmp_path):
  """An --out that holds an artifact, or a jax-only flag with --format onnx: one line, exit 2,
  nothing written."""
  _, _, art = hits
  before = {p.name: p.stat().st_mtime_ns for p in art.iterdir()}
  for extra, out, why in (([], art, 'never overwritten'),
                          (['--conv_impl', 'rows'], tmp_path / 'new', 'for --format jax only')):
    r = subprocess.run([sys.executable, '-m', 'rcnn_jax.export', '--format', 'onnx', *extra,
                        '--workdir', str(ROOT / 'pretrained' / 'hits2015_rcnn'), '--out',
                        str(out)], capture_output=True, text=True, env=ENV, cwd=ROOT,
                       timeout=300, check=False)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert why in r.stderr
  assert {p.name: p.stat().st_mtime_ns for p in art.iterdir()} == before
  assert not (tmp_path / 'new').exists()


BROKER = ROOT / 'examples' / 'broker_onnx.py'
ALLOWED = {'hashlib', 'json', 'os', 'sys', 'numpy', 'onnxruntime'}


def test_broker_example_without_rcnn_jax(hits, tmp_path):
  """examples/broker_onnx.py imports only numpy, onnxruntime and the standard library, runs
  without rcnn_jax or jax loaded, and gives the JAX stream's probabilities on a real file."""
  clf, _, art = hits
  tree = ast.parse(BROKER.read_text())
  imported = {a.name.split('.')[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
              for a in n.names}
  imported |= {n.module.split('.')[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
  assert imported <= ALLOWED, imported - ALLOWED
  seq = [s for s in _dev_sequences() if (s.seeing_arcsec > 2.0).any()][0]
  sky = seq.sky_adu.astype(np.float64).copy()
  sky[::3] = np.nan  # estimated by the example from the ring
  npz = tmp_path / 'object.npz'
  np.savez(npz, stamps=seq.stamps, mjd=seq.mjd, zero_point=seq.zero_point, sky_adu=sky,
           seeing_arcsec=seq.seeing_arcsec)
  probe = ('import runpy, sys\n'
           'sys.argv = sys.argv[1:]\n'
           'try:\n  runpy.run_path(sys.argv[0], run_name="__main__")\n'
           'except SystemExit as e:\n  code = e.code\n'
           'bad = sorted(m for m in sys.modules if m.split(".")[0] in ("rcnn_jax", "jax"))\n'
           'sys.stderr.write("LOADED " + ",".join(bad) + "\\n")\n'
           'sys.exit(code)\n')
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  r = subprocess.run([sys.executable, '-c', probe, str(BROKER), str(art), str(npz)],
                     capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
                     check=False)
  assert r.returncode == 0, r.stderr[-3000:]
  assert 'LOADED \n' in r.stderr, r.stderr  # neither rcnn_jax nor jax was imported
  lines = [json.loads(x) for x in r.stdout.splitlines()]
  assert len(lines) == seq.num_epochs
  st = clf.new_state(1)
  want = []
  for e in range(seq.num_epochs):
    p, st = clf.update(st, seq.stamps[e:e + 1], seq.mjd[e:e + 1], seq.zero_point[e:e + 1],
                       sky[e:e + 1], seeing_arcsec=seq.seeing_arcsec[e:e + 1])
    want.append(np.asarray(p)[0])
  want = np.stack(want)
  got = np.array([x['probs'] if x['probs'] is not None else [np.nan] * 7 for x in lines])
  assert {x['status'] for x in lines} == {'warmup', 'dropped', 'classified'}
  _assert_close(want, got)
