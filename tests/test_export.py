"""Exported streaming update: equals Classifier.update, skips bad seeing, loads without the
model code, refuses mismatched manifests, damaged or edited artifacts (SHA-256 digests) and the
inputs Classifier.update refuses, drops implausible epochs as it does."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from configs import hits
from rcnn_jax.inputs import plausibility
from rcnn_jax.inputs import realdata
from rcnn_jax.serving import exported
from rcnn_jax.serving.classifier import Classifier
from rcnn_jax.training import loop

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  config = hits.get_config('smoke')  # max_steps 6, n_w 3, max seeing 2.0"
  config.train.num_steps = 1
  wd = str(tmp_path_factory.mktemp('export') / 'wd')
  loop.train_and_evaluate(config, wd, progress=False)
  return wd


@pytest.fixture(scope='module')
def classifier(workdir):
  return Classifier.from_workdir(workdir)


@pytest.fixture(scope='module')
def artifact(workdir, tmp_path_factory):
  """Written by the command, as a user would."""
  out = str(tmp_path_factory.mktemp('export') / 'artifact')
  env = dict(os.environ, PYTHONPATH=str(ROOT), RCNN_JAX_HUGEPAGES='0')
  r = subprocess.run([sys.executable, '-m', 'rcnn_jax.export', '--workdir', workdir, '--out', out],
                     capture_output=True, text=True, env=env, cwd=ROOT, timeout=600, check=False)
  assert r.returncode == 0, r.stderr[-3000:]
  assert 'wrote' in r.stdout
  return out


@pytest.fixture(scope='module')
def loaded(artifact):
  return exported.load(artifact)


def _stream(num, t, seed, size=25):
  """[t, num, size, size] raw stamps with sky and a changing source; mjd, zp, sky [t, num]."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:size, :size] - size // 2
  psf = np.exp(-(xx**2 + yy**2) / (2 * 1.5**2))
  flux = rng.uniform(0.0, 3000.0, (t, num))
  sky = rng.uniform(90.0, 400.0, (t, num))
  stamps = (sky[..., None, None] + flux[..., None, None] * psf
            + rng.normal(0.0, 8.0, (t, num, size, size))).astype(np.float32)
  mjd = 57070.0 + np.cumsum(rng.uniform(0.04, 3.0, (t, num)), axis=0)
  zp = 25.0 + rng.normal(0.0, 0.3, (t, num))
  return stamps, mjd, zp, sky


def test_manifest(loaded):
  m = loaded.manifest
  assert m['format_version'] == exported.FORMAT_VERSION
  assert m['class_names'] == list(hits.CLASS_NAMES)
  assert (m['n_w'], m['stamp_size'], m['max_seeing_arcsec']) == (3, 21, 2.0)
  assert m['inputs']['image'] == [['b', 21, 21], 'float32']
  assert m['outputs']['probs'] == [['b', 7], 'float32']
  assert set(m['platforms']) == {'cpu', 'cuda'}
  assert m['project_version']
  # The batch is symbolic: one artifact serves any number of slots.
  assert str(loaded.exported.in_avals[0].shape[0]) == 'b'


def test_exported_equals_classifier_update(classifier, loaded):
  """Five objects starting at different ticks, one without zero points or sky; 9 ticks run past
  max_steps + n_w - 1 = 8 images."""
  n, ticks = 5, 11
  stamps, mjd, zp, sky = _stream(n, ticks, 0)
  start = np.array([0, 2, 1, 0, 3])
  zp[:, 3] = np.nan
  sky[:, 3] = np.nan  # estimated from the outer ring on both sides
  ref_state, exp_state = classifier.new_state(n), loaded.new_state(n)
  compared = 0
  for tick in range(ticks):
    active = tick >= start
    idx = np.flatnonzero(active)
    p_ref, ref_state = classifier.update(ref_state, stamps[tick, idx], mjd[tick, idx],
                                         zp[tick, idx], sky[tick, idx], objects=idx)
    p_exp, exp_state = loaded.update(exp_state, stamps[tick], mjd[tick], zp[tick], sky[tick],
                                     np.full(n, 1.2), active)
    assert p_exp.shape == (n, 7)
    np.testing.assert_array_equal(np.isnan(p_exp), np.isnan(p_ref))
    ok = ~np.isnan(p_ref[:, 0])
    np.testing.assert_allclose(p_exp[ok], p_ref[ok], atol=1e-5, rtol=0)
    compared += ok.sum()
  assert compared >= 30
  # The comparison means something: probabilities differ by object and move with the steps.
  assert np.ptp(p_ref, axis=0).max() > 1e-3
  np.testing.assert_array_equal(np.asarray(exp_state['num_images']), ticks - start)


def test_bad_seeing_epoch_is_skipped(loaded):
  n, t = 2, 7
  stamps, mjd, zp, sky = _stream(n, t, 1)
  seeing = np.full((t, n), 1.3)
  seeing[3, 0] = 2.6  # above max_seeing_arcsec (2.0): object 0 skips its 4th image
  seeing[2, 1] = np.nan  # not measured: object 1 skips its 3rd image (preprocess, step 1)
  state = loaded.new_state(n)
  probs = []
  for k in range(t):
    before = {key: np.asarray(v) for key, v in state.items()}
    p, state = loaded.update(state, stamps[k], mjd[k], zp[k], sky[k], seeing[k])
    probs.append(p)
    if k == 3:
      for key, v in state.items():  # object 0's slot is untouched, as if not given
        np.testing.assert_array_equal(np.asarray(v)[0], before[key][0], err_msg=key)
      assert not np.array_equal(np.asarray(state['window'])[1], before['window'][1])
  assert np.asarray(state['num_images']).tolist() == [t - 1, t - 1]
  # Each object without its skipped epoch, alone and with no seeing given (None: all kept):
  # identical probabilities at every kept image.
  for obj, skipped in ((0, 3), (1, 2)):
    solo = loaded.new_state(1)
    for k in [k for k in range(t) if k != skipped]:
      sl = slice(obj, obj + 1)
      p, solo = loaded.update(solo, stamps[k, sl], mjd[k, sl], zp[k, sl], sky[k, sl])
      np.testing.assert_allclose(p[0], probs[k][obj], atol=1e-6, rtol=0, equal_nan=True)
  assert not np.isnan(probs[-1]).any()


def test_loader_needs_no_model_code(artifact):
  code = f"""
import sys
import numpy as np
from rcnn_jax.serving import exported
clf = exported.load({artifact!r})
state = clf.new_state(3)
rng = np.random.default_rng(0)
for i in range(3):
  p, state = clf.update(state, rng.normal(100.0, 5.0, (3, 21, 21)), 57070.0 + i + np.arange(3),
                        [25.0] * 3, [100.0] * 3)
assert p.shape == (3, 7) and np.isfinite(p).all() and np.allclose(p.sum(-1), 1, atol=1e-5)
bad = [m for m in ('rcnn_jax.models', 'rcnn_jax.predict', 'flax', 'tensorflow') if m in sys.modules]
assert not bad, bad
print('ok')
"""
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env,
                     timeout=300, check=False)
  assert r.returncode == 0 and 'ok' in r.stdout, r.stderr[-3000:]


def _edited(artifact, tmp_path, name, edit, reseal=False):
  """A copy of the artifact with its manifest edited (rewritten without indentation); with
  ``reseal`` its fields digest is recomputed, as a careless tool would."""
  out = tmp_path / name
  shutil.copytree(artifact, out)
  path = out / exported.MANIFEST
  m = json.loads(path.read_text())
  edit(m)
  if reseal:
    m['fields_sha256'] = exported.fields_digest(m)
  path.write_text(json.dumps(m))
  return str(out)


def test_mismatched_manifest_is_refused(artifact, tmp_path, capsys):
  def version(m):
    m['format_version'] = 99

  def classes(m):
    m['class_names'] = m['class_names'][:6]

  def classes_consistent(m):  # a manifest that agrees with itself but not with the function
    m['class_names'] = m['class_names'][:6]
    m['state']['probs'] = [['b', 6], 'float32']
    m['outputs']['probs'] = [['b', 6], 'float32']

  def stamp(m):
    m['stamp_size'] = 25

  def other(m):
    m['format'] = 'something.else'

  cases = {version: 'format version 99 is not supported',
           classes: 'state.probs is',
           classes_consistent: 'input probs of the function',
           stamp: 'state.window is',
           other: 'not an rcnn_jax streaming-update artifact'}
  for edit, message in cases.items():
    # Resealed, so that the checks behind the digest are still tested.
    path = _edited(artifact, tmp_path, edit.__name__, edit, reseal=True)
    with pytest.raises(exported.ManifestError, match=message) as e:
      exported.load(path)
    assert '\n' not in str(e.value) and str(e.value).startswith(path)
  # The command line: one line on stderr, exit status 2.
  assert exported.main(['x', _edited(artifact, tmp_path, 'v2', version)]) == 2
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and 'format version 99' in err
  corrupt = tmp_path / 'corrupt'
  shutil.copytree(artifact, corrupt)
  (corrupt / exported.ARTIFACT).write_bytes(b'not a flatbuffer')
  m = json.loads((corrupt / exported.MANIFEST).read_text())
  m['update_sha256'] = hashlib.sha256(b'not a flatbuffer').hexdigest()  # past the digest
  (corrupt / exported.MANIFEST).write_text(json.dumps(m))
  with pytest.raises(exported.ManifestError, match='cannot deserialize'):
    exported.load(str(corrupt))
  with pytest.raises(exported.ManifestError, match='no manifest.json'):
    exported.load(str(tmp_path))
  assert exported.main(['x', artifact]) == 0
  assert '7 classes' in capsys.readouterr().out


def test_estimated_sky_matches_realdata():
  from rcnn_jax.serving import export  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(3)
  stamps = rng.normal(120.0, 6.0, (4, 21, 21)).astype(np.float32)
  stamps[1, 0, :5] += 900.0  # a bright neighbour in the ring: clipped away
  stamps[2] = 100.0  # no spread: sigma 0 stops at once
  got = np.asarray(export.estimate_sky(stamps))
  np.testing.assert_allclose(got, realdata.estimate_sky(stamps), rtol=0, atol=1e-4)
  assert abs(got[1] - 120.0) < 2.0


def test_cpu_layers_artifact_pads_to_its_batch_multiple(classifier, tmp_path):
  """conv_impl 'auto' exports the Classifier's own layers (on a CPU: chunks of 16 stamps,
  Winograd): the batch is a multiple of 16 slots and the loader pads to it."""
  from rcnn_jax.serving import export  # pylint: disable=g-import-not-at-top
  m = export.export_classifier(classifier, str(tmp_path), 2.0, ('cpu',), 'auto')
  assert m['batch_multiple'] == 16 and m['inputs']['active'] == [['16*k'], 'bool']
  clf = exported.load(str(tmp_path))
  n = 5
  stamps, mjd, zp, sky = _stream(n, 5, 2)
  state, ref = clf.new_state(n), classifier.new_state(n)
  assert state['num_images'].shape == (16,)
  for k in range(5):
    p, state = clf.update(state, stamps[k], mjd[k], zp[k], sky[k])
    p_ref, ref = classifier.update(ref, stamps[k], mjd[k], zp[k], sky[k])
    assert p.shape == (n, 7)
    np.testing.assert_allclose(p, p_ref, atol=1e-5, rtol=0, equal_nan=True)
  assert not np.isnan(p).any()
  assert np.asarray(state['num_images'])[n:].max() == 0  # padding slots stay empty


def test_manifest_is_sealed(artifact, loaded):
  """Both digests reproduce from the files alone (hashlib, canonical JSON), every field the
  exporter writes is sealed, and the plausibility limits are the config's."""
  m = json.loads((pathlib.Path(artifact) / exported.MANIFEST).read_text())
  assert m['format_version'] == 2
  blob = (pathlib.Path(artifact) / exported.ARTIFACT).read_bytes()
  assert m['update_sha256'] == hashlib.sha256(blob).hexdigest()
  sealed = {k: v for k, v in m.items() if k not in ('update_sha256', 'fields_sha256')}
  assert set(sealed) == set(exported.DIGEST_FIELDS)  # a new field must be sealed or excluded
  text = json.dumps(sealed, sort_keys=True, separators=(',', ':'))
  assert m['fields_sha256'] == hashlib.sha256(text.encode()).hexdigest()
  assert m['plausibility'] == plausibility.limits_from_config(hits.get_config('smoke'))
  assert m['plausibility']['zero_point_range'] is not None
  assert loaded.plausibility == m['plausibility']


def test_damaged_artifact_is_refused(artifact, tmp_path):
  """Random 4 KB overwrites inside update.jax (seeded positions) loaded and gave NaN before."""
  rng = np.random.default_rng(29)
  blob = (pathlib.Path(artifact) / exported.ARTIFACT).read_bytes()
  assert len(blob) > 16 * 4096
  for k, pos in enumerate(rng.integers(0, len(blob) - 4096, 4)):
    out = tmp_path / f'damaged{k}'
    shutil.copytree(artifact, out)
    bad = bytearray(blob)
    bad[pos:pos + 4096] = rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()
    (out / exported.ARTIFACT).write_bytes(bytes(bad))
    with pytest.raises(exported.ManifestError,
                       match=f'{exported.ARTIFACT} fails its integrity check') as e:
      exported.load(str(out))
    assert '\n' not in str(e.value) and str(e.value).startswith(str(out))


def test_edited_manifest_is_refused(artifact, tmp_path):
  """Edits that agree with the function's shapes were accepted before: two class names swapped
  (mislabelled columns), the seeing cut (reported, not applied), the unknown-seeing rule, the
  plausibility limits."""
  def swap_classes(m):
    m['class_names'][0], m['class_names'][1] = m['class_names'][1], m['class_names'][0]

  def seeing_cut(m):
    m['max_seeing_arcsec'] = 3.0

  def unknown_seeing(m):
    m['drop_unknown_seeing'] = not m['drop_unknown_seeing']

  def limits(m):
    m['plausibility']['zero_point_range'] = [-100.0, 100.0]

  def no_digest(m):
    del m['fields_sha256']

  for edit in (swap_classes, seeing_cut, unknown_seeing, limits):
    path = _edited(artifact, tmp_path, edit.__name__, edit)
    with pytest.raises(exported.ManifestError,
                       match=f'{exported.MANIFEST} fails its integrity check') as e:
      exported.load(path)
    assert '\n' not in str(e.value) and str(e.value).startswith(path)
  with pytest.raises(exported.ManifestError, match='manifest lacks fields_sha256'):
    exported.load(_edited(artifact, tmp_path, 'no_digest', no_digest))
  # Rewritten in another layout and key order with the same values: canonical JSON, still loads.
  same = _edited(artifact, tmp_path, 'reordered', lambda m: None)
  m = json.loads((pathlib.Path(same) / exported.MANIFEST).read_text())
  (pathlib.Path(same) / exported.MANIFEST).write_text(
      json.dumps(dict(reversed(list(m.items()))), indent=3))
  assert exported.load(same).class_names == tuple(hits.CLASS_NAMES)


def test_version_1_artifact_loads_with_one_warning(artifact, tmp_path, capsys):
  def version_1(m):
    m['format_version'] = 1
    for k in ('update_sha256', 'fields_sha256', 'plausibility'):
      m.pop(k, None)

  path = _edited(artifact, tmp_path, 'v1', version_1)
  capsys.readouterr()
  clf = exported.load(path)
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and err.startswith(f'warning: {path}: format version 1')
  assert 'no integrity check' in err and 're-export' in err
  assert clf.plausibility is None and clf.class_names == tuple(hits.CLASS_NAMES)


def test_update_refuses_what_classifier_update_refuses(classifier, loaded):
  """A NaN pixel, an MJD before the slot's previous image, the same image twice, an infinite
  sky: refused in one line naming the slot (a ValueError), the state untouched, exactly where
  Classifier.update refuses; not in an inactive slot or an image the seeing cut drops."""
  from rcnn_jax.core.errors import UserError  # pylint: disable=g-import-not-at-top
  n = 5
  stamps, mjd, zp, sky = _stream(n, 3, 4)
  state, ref = loaded.new_state(n), classifier.new_state(n)
  for k in range(2):
    _, state = loaded.update(state, stamps[k], mjd[k], zp[k], sky[k])
    _, ref = classifier.update(ref, stamps[k], mjd[k], zp[k], sky[k])
  nan_pixel = stamps[2].copy()
  nan_pixel[1, 12, 12] = np.nan
  earlier, again, inf_sky = mjd[2].copy(), mjd[2].copy(), sky[2].copy()
  earlier[2] = mjd[0, 2]
  again[3] = mjd[1, 3]
  inf_sky[4] = np.inf
  cases = [((nan_pixel, mjd[2], sky[2]), 'object slot 1: image contains NaN or Inf'),
           ((stamps[2], earlier, sky[2]),
            r'object slot 2: MJD \S+ is not after its previous image \(MJD'),
           ((stamps[2], again, sky[2]), 'object slot 3: MJD .* the same image twice'),
           ((stamps[2], mjd[2], inf_sky), 'object slot 4: sky_adu inf is not finite')]
  before = {k: np.array(v) for k, v in state.items()}
  for (images, m, s), message in cases:
    with pytest.raises(exported.InputError, match=message) as e:
      loaded.update(state, images, m, zp[2], s)
    assert isinstance(e.value, ValueError) and '\n' not in str(e.value)
    with pytest.raises(UserError):  # the twin refuses the same input
      classifier.update(ref, images, m, zp[2], s)
  for k, v in state.items():
    np.testing.assert_array_equal(np.asarray(v), before[k], err_msg=k)
  # A float32 copy of the host-side MJDs could not order images minutes apart: refused.
  with pytest.raises(exported.InputError, match=r"state\['last_mjd'\] must be the float64"):
    loaded.update(dict(state, last_mjd=state['last_mjd'].astype(np.float32)), stamps[2], mjd[2])
  # Where Classifier.update does not look: slot 1's NaN image has bad seeing, slot 2 (an earlier
  # MJD and a NaN pixel) is inactive. Both sides accept and agree.
  images = nan_pixel.copy()
  images[2, 0, 0] = np.nan
  seeing, active = np.full(n, 1.2), np.array([True, True, False, True, True])
  seeing[1] = 2.6
  p, state = loaded.update(state, images, earlier, zp[2], sky[2], seeing, active)
  on = np.flatnonzero(active)
  p_ref, ref = classifier.update(ref, images[on], earlier[on], zp[2, on], sky[2, on], objects=on,
                                 seeing_arcsec=seeing[on])
  np.testing.assert_allclose(p, p_ref, atol=1e-5, rtol=0, equal_nan=True)
  assert np.asarray(state['num_images']).tolist() == [3, 2, 2, 3, 3]
  np.testing.assert_array_equal(state['last_mjd'], [mjd[2, 0], mjd[1, 1], mjd[1, 2], mjd[2, 3],
                                                    mjd[2, 4]])
  # A reset slot holds a new object: its first image may come at any MJD.
  only_2 = np.arange(n) == 2
  with pytest.raises(exported.InputError, match='object slot 2'):
    loaded.update(state, stamps[0], mjd[0], zp[0], sky[0], active=only_2)
  state = loaded.reset(state, [2])
  assert state['last_mjd'].dtype == np.float64 and np.isnan(state['last_mjd'][2])
  _, state = loaded.update(state, stamps[0], mjd[0], zp[0], sky[0], active=only_2)
  assert np.asarray(state['num_images']).tolist() == [3, 2, 1, 3, 3]
  assert state['last_mjd'][2] == mjd[0, 2]


def test_implausible_epoch_is_dropped_as_classifier_update_does(classifier, loaded, capsys):
  """A zero point of -99 or +Inf, a pixel of 1e30 ADU, a negative sky: that slot's epoch is
  dropped (state unchanged, one line on stderr), the same lines and probabilities as
  Classifier.update; a NaN zero point (no scaling) is not implausible."""
  n, t, k = 5, 5, 2
  stamps, mjd, zp, sky = _stream(n, t, 5)
  zp[k, 0], zp[k, 1], zp[k, 4] = -99.0, np.inf, np.nan
  stamps[k, 2, 12, 12] = 1e30
  sky[k, 3] = -5.0
  seeing = np.full(n, 1.2)
  state, ref = loaded.new_state(n), classifier.new_state(n)
  capsys.readouterr()
  for i in range(t):
    before = {key: np.array(v) for key, v in state.items()}
    p, state = loaded.update(state, stamps[i], mjd[i], zp[i], sky[i], seeing)
    ours = capsys.readouterr().err.splitlines()
    p_ref, ref = classifier.update(ref, stamps[i], mjd[i], zp[i], sky[i], seeing_arcsec=seeing)
    theirs = capsys.readouterr().err.splitlines()
    np.testing.assert_allclose(p, p_ref, atol=1e-5, rtol=0, equal_nan=True)
    if i != k:
      assert ours == theirs == []
      continue
    assert ours == theirs and len(ours) == 4
    for slot, line, why in zip(range(4), ours, ('zero point -99 outside the plausible',
                                                 'zero point inf', 'pixel values',
                                                 'sky -5 ADU is not positive')):
      assert line.startswith(f'warning: object slot {slot}: epoch MJD {mjd[k, slot]:.5f} '
                             f'dropped: {why}')
      for key, v in state.items():  # as if the epoch had not come
        np.testing.assert_array_equal(np.asarray(v)[slot], before[key][slot], err_msg=key)
  assert np.asarray(state['num_images']).tolist() == [t - 1] * 4 + [t]
  assert not np.isnan(p).any()
