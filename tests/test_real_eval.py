"""Sec. 4 on real labelled sequences (evaluate --real) and fine-tuning on them (finetune)."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

from configs import hits
from rcnn_jax.evaluation import finetune
from rcnn_jax.evaluation import metrics as metrics_lib
from rcnn_jax.evaluation import real as real_eval
from rcnn_jax.inputs import realdata
from rcnn_jax.serving.classifier import Classifier
from rcnn_jax.training import checkpoints
from rcnn_jax.training import loop
from rcnn_jax.training import steps as steps_lib

NAMES = list(hits.CLASS_NAMES)


def test_real_metrics_on_fixed_predictions():
  """Hand-computed: 3 supernovae, 2 RR Lyrae; steps 1..3; step-2 confusion and recall."""
  sn, rrl, ceph = NAMES.index('Supernova'), NAMES.index('RRLyrae'), NAMES.index('Cepheid')
  pred = np.array([[sn, sn, sn],
                   [rrl, sn, sn],
                   [sn, rrl, rrl],  # wrong from step 2
                   [rrl, rrl, ceph],
                   [sn, ceph, ceph]])  # one step only: its step-2 answer is its step-1 one
  mask = np.array([[1, 1, 1], [1, 1, 1], [1, 1, 0], [1, 1, 1], [1, 0, 0]], bool)
  labels = np.array([sn, sn, sn, rrl, rrl])
  m = metrics_lib.real_metrics(pred, labels, mask, NAMES, step=2)
  assert m['classes_present'] == ['Supernova', 'RRLyrae']
  assert m['count_per_class'] == {'Supernova': 3, 'RRLyrae': 2}
  assert m['recall_by_step']['Supernova'] == pytest.approx([2 / 3, 2 / 3, 1.0])
  assert m['recall_by_step']['RRLyrae'] == pytest.approx([0.5, 1.0, 0.0])
  assert m['recall_at_step'] == pytest.approx({'Supernova': 2 / 3, 'RRLyrae': 0.5})
  assert m['mean_recall'] == pytest.approx((2 / 3 + 0.5) / 2)
  assert m['accuracy_at_step'] == pytest.approx(3 / 5)
  assert m['confusion_rows'] == ['Supernova', 'RRLyrae'] and len(m['confusion'][0]) == 7
  assert m['confusion_counts'][0][sn] == 2 and m['confusion_counts'][0][rrl] == 1
  assert m['confusion_counts'][1][rrl] == 1 and m['confusion_counts'][1][sn] == 1
  assert m['sequences_by_step']['RRLyrae'] == [2, 1, 1]


def test_labels_from_key_folder_or_argument(tmp_path):
  # The declared rule: a folder's name is exactly a class name (case, punctuation ignored).
  assert realdata.folder_class('x/real_nonvariable_dev', NAMES) is None
  assert realdata.folder_class('x/RRLyrae', NAMES) == 'RRLyrae'
  assert realdata.folder_class('x/non_variable', NAMES) == 'NonVariable'
  assert realdata.folder_class('x/stars', NAMES) is None
  rng = np.random.default_rng(0)
  arrays = dict(stamps=rng.normal(100, 5, (6, 21, 21)).astype(np.float32),
                mjd=np.arange(6.0), sky_adu=np.full(6, 100.0))
  for folder, label in (('Supernova', None), ('misc', 'RRLyrae'), ('stars', None)):
    (tmp_path / 'root' / folder).mkdir(parents=True)
    extra = {} if label is None else {'label': np.array(label)}
    np.savez(tmp_path / 'root' / folder / 'a.npz', **arrays, **extra)
  config = hits.get_config('smoke')
  with pytest.raises(realdata.BadInput, match='no .label. key'):
    real_eval.load_labelled([str(tmp_path / 'root')], config)
  seqs, labels = real_eval.load_labelled(
      [str(tmp_path / 'root' / 'Supernova'), str(tmp_path / 'root' / 'misc'),
       f'{tmp_path / "root" / "stars"}=Galaxy'], config)
  assert [NAMES[l] for l in labels] == ['Supernova', 'RRLyrae', 'Galaxy']
  with pytest.raises(realdata.BadInput, match='unknown class'):
    real_eval.load_labelled([f'{tmp_path / "root" / "stars"}=Star'], config)


def test_stratified_folds():
  labels = np.repeat([0, 1, 4], [10, 10, 40])
  fold = finetune.stratified_folds(labels, 5, 10)
  assert (fold[labels == 4][10:] == -1).all()
  for f in range(5):
    assert [int(np.sum((fold == f) & (labels == c))) for c in (0, 1, 4)] == [2, 2, 2]


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  config = hits.get_config('smoke')
  config.train.num_steps = 1
  wd = str(tmp_path_factory.mktemp('real') / 'wd')
  loop.train_and_evaluate(config, wd, progress=False)
  return wd


def _dev_dirs(hits_data):
  lab, nv = hits_data / 'real_labelled_dev', hits_data / 'real_nonvariable_dev'
  if not lab.is_dir() or not nv.is_dir():
    pytest.skip('real development files not found')
  return [str(lab), f'{nv}=NonVariable']


def test_evaluate_real_and_finetune_change_predictions(workdir, hits_data, tmp_path):
  """evaluate --real on the 70 dev files; a smoke fine-tune changes the model's real
  predictions and writes a workdir that evaluate and predict read."""
  dirs = _dev_dirs(hits_data)
  out = tmp_path / 'eval'
  real_eval.main_real(workdir, dirs, None, str(out))
  m = json.loads((out / 'metrics_real.json').read_text())
  assert m['num_sequences'] == 70
  assert m['count_per_class'] == {'Supernova': 10, 'RRLyrae': 10, 'EclipsingBinary': 10,
                                  'NonVariable': 40}
  assert m['confusion_step'] == 6  # smoke: min(20, max_steps)
  assert max(m['steps_per_sequence']) <= 6
  starts = {f['label']: [] for f in m['files']}
  for f in m['files']:
    starts[f['label']].append(f['start_epoch'])
  assert max(starts['NonVariable']) == 0 and max(starts['Supernova']) > 0
  assert (out / 'real_recall.png').stat().st_size > 10_000
  # The rule before PSF-matched differences, on request: hosts whose photometry changes with
  # the seeing start most supernovae earlier (7 of 10 in the cpu config; detection_start).
  assert m['detection_method'] == 'difference'
  old = real_eval.evaluate_real(workdir, dirs, detection_method='photometry')
  assert old['detection_method'] == 'photometry'
  old_sn = [f['start_epoch'] for f in old['files'] if f['label'] == 'Supernova']
  assert sum(a < b for a, b in zip(old_sn, starts['Supernova'])) >= 3

  config, sim, model, state, _ = checkpoints.restore_for_eval(workdir)
  seqs, labels = real_eval.load_labelled(dirs, config)
  batch = real_eval.real_inputs(seqs, labels, config)
  before = real_eval.real_logits(config, sim, model, state, batch)

  w2 = str(tmp_path / 'ft')
  finetune.finetune(workdir, [dirs[0]], w2, progress=False,
                    overrides=['finetune.learning_rate=0.01', 'finetune.per_class=4'])
  rec = json.loads((tmp_path / 'ft' / 'finetune.json').read_text())
  assert len(rec['loss']) == 3
  # The published protocol's per-class count: the first 4 (sorted) of each of the 3 classes.
  by_class = {}
  for f in rec['files']:
    by_class.setdefault(f['label'], []).append(os.path.basename(f['path']))
  assert sorted(by_class) == ['EclipsingBinary', 'RRLyrae', 'Supernova']
  for c, names in by_class.items():
    assert names == sorted(os.listdir(os.path.join(dirs[0], c)))[:4]
  _, _, _, state2, step2 = checkpoints.restore_for_eval(w2)
  assert step2 == 1 + 3
  after = real_eval.real_logits(config, sim, model, state2, batch)
  assert np.abs(after - before).max() > 1e-3
  # finetune.frozen_batch_norm (the default): the base's batch-norm statistics, unchanged.
  assert rec['finetune']['frozen_batch_norm'] is True
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state2.batch_stats),
               jax.device_get(state.batch_stats))
  clf = Classifier.from_workdir(w2)
  assert len(clf.classify(seqs[:2])[0]) <= clf.max_steps
  # The streaming mode drops a bad-seeing image as training's survey does.
  st = clf.new_state(2)
  s0 = seqs[0]
  _, st = clf.update(st, s0.stamps[:2], s0.mjd[:2], s0.zero_point[:2], s0.sky_adu[:2],
                     seeing_arcsec=[1.0, 2.5])
  assert list(st.num_images) == [1, 0]
  assert st.zp0[0] == s0.zero_point[0] and np.isnan(st.zp0[1])
  with pytest.raises(Exception, match='never overwritten'):
    finetune.finetune(workdir, [dirs[0]], w2, progress=False)


def test_light_curve_classifier_on_real_files(hits_data):
  """Fig. 9's path: optimal photometry on the real stamps (file seeing, camera gain and read
  noise) feeds the light-curve classifier; files without seeing are refused in one line."""
  dirs = _dev_dirs(hits_data)
  config = hits.get_config('smoke,lc')
  sim, model, tx = steps_lib.build(config)
  state = steps_lib.init_state(config, sim, model, tx, steps_lib.make_mesh())
  seqs, labels = real_eval.load_labelled([dirs[0]], config)
  seqs, labels = seqs[::10], labels[::10]
  batch = real_eval.real_inputs(seqs, labels, config)
  logits = real_eval.real_logits(config, sim, model, state, batch, seqs)
  assert logits.shape == (3, config.sim.max_steps, 7) and np.isfinite(logits).all()
  seqs[0].seeing_arcsec = None
  batch = real_eval.real_inputs(seqs, labels, config)
  with pytest.raises(Exception, match='no seeing'):
    real_eval.real_logits(config, sim, model, state, batch, seqs)


def test_kfold_spread_is_per_fold_and_paired():
  """The k-fold report gives each fold's held-out recall (mean over its classes) before and
  after, their paired gain, and the spread over folds, not only the pooled recall."""
  names = ['A', 'B', 'C']
  labels = np.array([0, 0, 1, 1, 0, 0, 1, 1, 2])
  fold = np.array([0, 1, 0, 1, 0, 1, 0, 1, -1])  # the last file in no fold
  before = np.array([0, 1, 1, 1, 0, 0, 1, 0, 2])
  after = np.array([0, 0, 1, 1, 0, 0, 1, 1, 0])
  r = finetune.fold_spread(labels, fold, before, after, names)
  f0, f1 = r['per_fold']
  assert (f0['fold'], f0['files'], f1['files']) == (0, 4, 4)
  # fold 0 (files 0, 2, 4, 6): A 2/2 and B 2/2 right before and after
  assert (f0['before'], f0['after']) == (1.0, 1.0)
  # fold 1 (files 1, 3, 5, 7): before A 1/2, B 1/2; after A 2/2, B 2/2
  assert (f1['before'], f1['after']) == (0.5, 1.0)
  np.testing.assert_allclose([f0['gain'], f1['gain']], [0.0, 0.5])
  s = r['spread']
  np.testing.assert_allclose(s['before']['mean'], 0.75)
  np.testing.assert_allclose(s['before']['std'], np.std([1.0, 0.5], ddof=1))
  assert (s['after']['min'], s['after']['max']) == (1.0, 1.0)
  np.testing.assert_allclose(s['gain']['std'], np.std([0.0, 0.5], ddof=1))
  # the file in no fold (label C) counts in no fold
  assert sum(p['files'] for p in r['per_fold']) == 8
