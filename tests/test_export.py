"""Exported streaming update: equals Classifier.update, skips bad seeing, loads without the
model code, refuses mismatched manifests."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from configs import hits
from rcnn_jax import exported
from rcnn_jax import predict
from rcnn_jax import realdata
from rcnn_jax import train

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  config = hits.get_config('smoke')  # max_steps 6, n_w 3, max seeing 2.0"
  config.train.num_steps = 1
  wd = str(tmp_path_factory.mktemp('export') / 'wd')
  train.train_and_evaluate(config, wd, progress=False)
  return wd


@pytest.fixture(scope='module')
def classifier(workdir):
  return predict.Classifier.from_workdir(workdir)


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
from rcnn_jax import exported
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


def _edited(artifact, tmp_path, name, edit):
  out = tmp_path / name
  shutil.copytree(artifact, out)
  path = out / exported.MANIFEST
  m = json.loads(path.read_text())
  edit(m)
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
    path = _edited(artifact, tmp_path, edit.__name__, edit)
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
  with pytest.raises(exported.ManifestError, match='cannot deserialize'):
    exported.load(str(corrupt))
  with pytest.raises(exported.ManifestError, match='no manifest.json'):
    exported.load(str(tmp_path))
  assert exported.main(['x', artifact]) == 0
  assert '7 classes' in capsys.readouterr().out


def test_estimated_sky_matches_realdata():
  from rcnn_jax import export  # pylint: disable=g-import-not-at-top
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
  from rcnn_jax import export  # pylint: disable=g-import-not-at-top
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
