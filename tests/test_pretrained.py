"""The shipped-model folder (rcnn_jax.pretrained): round trip, refusals, and the shipped models."""

from __future__ import annotations

import json
import os
import pathlib
import shutil

import numpy as np
import pytest

from configs import hits
from rcnn_jax.core import utils
from rcnn_jax.inputs import realdata
from rcnn_jax.serving import loading
from rcnn_jax.serving import packaging
from rcnn_jax.serving import shipped
from rcnn_jax.serving.classifier import Classifier
from rcnn_jax.training import checkpoints
from rcnn_jax.training import loop

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHIPPED = ROOT / 'pretrained' / 'hits2015_rcnn'
SHIPPED_FT = ROOT / 'pretrained' / 'hits2015_rcnn_finetuned'


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  config = hits.get_config('smoke')
  config.train.num_steps = 2
  # A scheduled run (as the shipped long variant): its fine-tuned workdir must restore too.
  config.train.schedule = 'warmup_cosine'
  config.train.warmup_steps = 1
  config.train.final_lr_fraction = 0.1
  wd = str(tmp_path_factory.mktemp('pre') / 'wd')
  loop.train_and_evaluate(config, wd, progress=False)
  return wd


@pytest.fixture(scope='module')
def packaged(workdir, tmp_path_factory):
  _, _, _, state, step = loading.load(workdir)
  out = str(tmp_path_factory.mktemp('pre') / 'model')
  config = checkpoints.load_config(workdir)
  shipped.save(out, config, state.params, state.batch_stats, step, {'workdir': workdir})
  return out, state


def test_round_trip_rounds_only_large_weights(packaged):
  out, state = packaged
  m = shipped.read_manifest(out)
  _, _, _, loaded, step = loading.load(out)  # the workdir entry point
  assert step == m['step'] and loaded.opt_state is None
  flat = lambda t, p: shipped._flatten(t, p)  # pylint: disable=protected-access
  a = {**flat(state.params, 'params'), **flat(state.batch_stats, 'batch_stats')}
  b = {**flat(loaded.params, 'params'), **flat(loaded.batch_stats, 'batch_stats')}
  assert a.keys() == b.keys()
  assert m['num_params'] == sum(v.size for k, v in a.items() if k.startswith('params/'))
  half = set(m['storage']['float16'])
  assert half and all(k.startswith('params/') and a[k].ndim >= 2 for k in half)
  for k in a:
    assert b[k].dtype == np.float32
    if k in half:  # float16: relative rounding at most 2^-11 (normal range)
      np.testing.assert_allclose(b[k], a[k], rtol=2.0**-11, atol=6.2e-5)
      assert np.array_equal(b[k], a[k].astype(np.float16).astype(np.float32))
    else:
      np.testing.assert_array_equal(b[k], a[k])
  with np.load(os.path.join(out, shipped.WEIGHTS), allow_pickle=False) as z:
    assert not any(n.startswith('opt_state') for n in z.files)


def test_classifier_from_pretrained_matches_workdir(workdir, packaged):
  out, _ = packaged
  ref = Classifier.from_workdir(workdir)
  new = Classifier.from_workdir(out)
  rng = np.random.default_rng(1)
  seqs = []
  for i in range(4):
    t = 8
    stamps = rng.normal(120.0, 6.0, (t, 21, 21)).astype(np.float32)
    stamps[:, 9:12, 9:12] += rng.uniform(0, 2000, (t, 1, 1)).astype(np.float32)
    p = f'{pathlib.Path(out).parent}/s{i}.npz'
    np.savez(p, stamps=stamps, mjd=57070.0 + np.cumsum(rng.uniform(0.05, 1, t)),
             zero_point=np.full(t, 25.0), sky_adu=np.full(t, 120.0))
    seqs.append(realdata.load_sequence(p, 21, n_w=ref.n_w))
  for a, b in zip(ref.classify(seqs), new.classify(seqs)):
    np.testing.assert_allclose(a, b, atol=2e-3)
    assert (a.argmax(-1) == b.argmax(-1)).mean() >= 0.75


def test_refusals_are_one_line(packaged, tmp_path):
  out, state = packaged
  bad = tmp_path / 'bad'
  shutil.copytree(out, bad)
  with pytest.raises(utils.UserError, match='holds step'):
    shipped.load(str(bad), step=12345)
  with open(bad / shipped.WEIGHTS, 'r+b') as f:  # one byte changed
    f.seek(100)
    byte = f.read(1)
    f.seek(100)
    f.write(bytes([byte[0] ^ 0xFF]))
  with pytest.raises(utils.UserError, match='SHA-256') as e:
    loading.load(str(bad))
  assert '\n' not in str(e.value)
  m = json.loads((bad / shipped.MANIFEST).read_text())
  m['format_version'] = 99
  (bad / shipped.MANIFEST).write_text(json.dumps(m))
  with pytest.raises(utils.UserError, match='format version'):
    shipped.read_manifest(str(bad))
  with pytest.raises(utils.UserError, match='already holds'):
    shipped.save(out, checkpoints.load_config(out), state.params, state.batch_stats, 1)


def test_wrong_model_is_refused(packaged, tmp_path):
  out, _ = packaged
  bad = tmp_path / 'other'
  shutil.copytree(out, bad)
  c = json.loads((bad / shipped.CONFIG).read_text())
  c['model']['dense'] = 2 * c['model']['dense']
  (bad / shipped.CONFIG).write_text(json.dumps(c))
  with pytest.raises(utils.UserError, match='does not fit the model'):
    shipped.load(str(bad))


@pytest.mark.parametrize('folder', [SHIPPED, SHIPPED_FT], ids=['base', 'finetuned'])
def test_shipped_model(folder):
  """The shipped models: their config, Table 3's parameter count, their size and precision."""
  assert folder.exists(), f'{folder} is missing from the repository'
  m = shipped.read_manifest(str(folder))
  config = checkpoints.load_config(str(folder))
  assert config.model.kind == 'rcnn' and tuple(config.sim.class_names) == hits.CLASS_NAMES
  assert (config.model.filters, config.model.dense, config.model.lstm_size) == (64, 1024, 512)
  assert m['num_params'] == 5_705_037  # Table 3 (tests/test_models.py counts it layer by layer)
  assert os.path.getsize(folder / shipped.WEIGHTS) <= 12.5e6
  assert m['precision_check']['files'] == 70
  assert m['precision_check']['top_class_changed'] == 0
  assert (folder / 'MODEL_CARD.md').exists()


@pytest.mark.parametrize('folder', [SHIPPED, SHIPPED_FT], ids=['base', 'finetuned'])
def test_shipped_predictions_are_stable(folder, hits_data):
  """Predictions on a few development files equal those recorded when the model was shipped."""
  ref = json.loads((folder / 'reference_predictions.json').read_text())
  clf = Classifier.from_workdir(str(folder))
  files = [os.path.join(hits_data, f) for f in ref['files']]
  probs = packaging.last_probs(clf, files)
  np.testing.assert_allclose(probs, np.asarray(ref['probabilities']), atol=1e-4)
  assert [clf.class_names[i] for i in probs.argmax(-1)] == ref['top_class']


def test_finetune_and_export_accept_a_pretrained_folder(packaged, hits_data, tmp_path):
  from rcnn_jax.evaluation import finetune  # pylint: disable=g-import-not-at-top
  from rcnn_jax.serving import export  # pylint: disable=g-import-not-at-top
  from rcnn_jax.serving import exported  # pylint: disable=g-import-not-at-top
  out, state = packaged
  lab = hits_data / 'real_labelled_dev'
  if not lab.is_dir():
    pytest.skip('real development files not found')
  w2 = str(tmp_path / 'ft')
  finetune.finetune(out, [str(lab)], w2, progress=False, overrides=['finetune.per_class=2'])
  rec = json.loads((tmp_path / 'ft' / 'finetune.json').read_text())
  assert len(rec['files']) == 6 and rec['base_step'] == shipped.read_manifest(out)['step']
  _, _, _, tuned, _ = loading.load(w2)
  moved = [np.abs(np.asarray(a) - np.asarray(b)).max() for a, b in zip(
      jax_leaves(tuned.params), jax_leaves(state.params))]
  assert max(moved) > 0
  clf = Classifier.from_workdir(out)
  m = export.export_classifier(clf, str(tmp_path / 'exp'), 2.0)
  assert m['checkpoint_step'] == clf.checkpoint_step
  loaded = exported.load(str(tmp_path / 'exp'))
  assert loaded.class_names == clf.class_names


def jax_leaves(tree):
  import jax  # pylint: disable=g-import-not-at-top
  return jax.tree_util.tree_leaves(tree)
