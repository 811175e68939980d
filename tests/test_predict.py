"""Prediction on real sequences: incremental mode = whole sequence, CSV, bad files, CLI, dev set."""

from __future__ import annotations

import csv
import io
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from configs import hits
from rcnn_jax.inputs import realdata
from rcnn_jax.serving import files as files_lib
from rcnn_jax.serving.classifier import Classifier
from rcnn_jax.training import checkpoints
from rcnn_jax.training import loop
from rcnn_jax.training import steps as steps_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  config = hits.get_config('smoke')  # max_steps 6, n_w 3
  config.train.num_steps = 1
  config.eval.batch_size = 7 * 3  # the 28 test objects in 2 batches: the second padded by 14
  wd = str(tmp_path_factory.mktemp('predict') / 'wd')
  loop.train_and_evaluate(config, wd, progress=False)
  return wd


@pytest.fixture(scope='module')
def classifier(workdir):
  return Classifier.from_workdir(workdir)


def _arrays(t, seed, size=25, zero_point=True, sky=True):
  """A sequence's raw arrays: sky + a centred source of changing flux, irregular MJD."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:size, :size] - size // 2
  psf = np.exp(-(xx**2 + yy**2) / (2 * 1.5**2))
  flux = rng.uniform(0.0, 3000.0, t)
  sky_adu = rng.uniform(90.0, 400.0, t)
  stamps = sky_adu[:, None, None] + flux[:, None, None] * psf + rng.normal(0.0, 8.0,
                                                                             (t, size, size))
  out = dict(stamps=stamps.astype(np.float32),
             mjd=57070.0 + np.cumsum(rng.uniform(0.04, 3.0, t)))
  if zero_point:
    out['zero_point'] = 25.0 + rng.normal(0.0, 0.3, t)
  if sky:
    out['sky_adu'] = sky_adu
  return out


def _save(path, **arrays):
  np.savez(path, **arrays)
  return str(path)


def _sequence(tmp_path, name, t, seed, **kw):
  return realdata.load_sequence(_save(tmp_path / f'{name}.npz', **_arrays(t, seed, **kw)))


def test_incremental_equals_whole_sequence(classifier, tmp_path):
  n_w = classifier.n_w
  # Different starts and lengths in one batch: 14 images run past max_steps + n_w - 1 = 8 (a
  # second chunk, carry continued); 3 images give exactly one step; one without zero points
  # and sky (no eq. 4 scaling, estimated sky). Slot 2 is reused by a fifth object.
  seqs = [_sequence(tmp_path, 'a', 14, 0), _sequence(tmp_path, 'b', 5, 1),
          _sequence(tmp_path, 'c', 3, 2), _sequence(tmp_path, 'd', 9, 3, zero_point=False,
                                                    sky=False),
          _sequence(tmp_path, 'e', 6, 4)]
  assert seqs[3].sky_estimated and seqs[3].zero_point is None
  slots, starts = [0, 1, 2, 3, 2], [0, 3, 1, 2, 5]
  # full_length: every step, as the incremental mode (classify truncates at max_steps).
  whole = classifier.classify(seqs, batch_size=4, full_length=True)
  assert [len(p) for p in whole] == [s.num_epochs - n_w + 1 for s in seqs]
  assert [len(p) for p in classifier.classify(seqs, batch_size=4)] == [
      min(s.num_epochs - n_w + 1, classifier.max_steps) for s in seqs]
  # The comparison means something: probabilities move with the step and differ by object.
  assert np.ptp(whole[0], axis=0).max() > 1e-3
  assert np.abs(whole[0][:3] - whole[4][:3]).max() > 1e-3

  state = classifier.new_state(4)
  got = [[] for _ in seqs]
  for tick in range(20):
    live = [i for i, s in enumerate(seqs) if starts[i] <= tick < starts[i] + s.num_epochs]
    if tick == starts[4]:
      state = classifier.reset(state, [slots[4]])
      assert state.num_images[slots[4]] == 0 and np.isnan(state.probs[slots[4]]).all()
    if not live:
      continue
    e = [tick - starts[i] for i in live]
    sl = np.array([slots[i] for i in live])
    zp = [seqs[i].zero_point[j] if seqs[i].zero_point is not None else np.nan
          for i, j in zip(live, e)]
    sky = [np.nan if seqs[i].sky_estimated else seqs[i].sky_adu[j] for i, j in zip(live, e)]
    raw = np.stack([_arrays(seqs[i].num_epochs, i)['stamps'][j] for i, j in zip(live, e)])
    objects = sl
    if tick == 4:  # a boolean mask instead of indices (slots in increasing order)
      order = np.argsort(sl)
      live, e, sl, raw = [live[o] for o in order], [e[o] for o in order], sl[order], raw[order]
      zp, sky = [zp[o] for o in order], [sky[o] for o in order]
      objects = np.isin(np.arange(4), sl)
    probs, state = classifier.update(state, raw, [seqs[i].mjd[j] for i, j in zip(live, e)],
                                     zp, sky, objects=objects)
    assert probs.shape == (4, classifier.num_classes)
    for i, j, s in zip(live, e, sl):
      if j + 1 < n_w:
        assert np.isnan(probs[s]).all()  # no step yet
      else:
        got[i].append(probs[s])
  for i, (g, w) in enumerate(zip(got, whole)):
    np.testing.assert_allclose(np.array(g), w, atol=1e-4, rtol=0, err_msg=seqs[i].name)
  assert state.carry[0].dtype == np.float32

  with pytest.raises(ValueError, match='not after'):
    classifier.update(state, raw[:1], [seqs[0].mjd[-1]], objects=[slots[0]])
  with pytest.raises(ValueError, match='distinct'):
    classifier.update(state, raw[:1].repeat(2, 0), [1e5, 1e5], objects=[0, 0])


def test_bfloat16_mode_is_close_and_keeps_fp32_state(classifier, tmp_path):
  seqs = [_sequence(tmp_path, 'a', 8, 0), _sequence(tmp_path, 'b', 4, 1)]
  bf = Classifier(classifier.config, classifier.params, classifier.batch_stats,
                          dtype='bfloat16')
  assert bf.dtype == 'bfloat16'
  full, half = classifier.classify(seqs), bf.classify(seqs)
  for a, b in zip(full, half):
    assert np.abs(a - b).max() < 0.05 and np.isfinite(b).all()
  state = bf.new_state(2)
  for j in range(3):
    _, state = bf.update(state, np.stack([s.stamps[j] for s in seqs]), [s.mjd[j] for s in seqs],
                         [s.zero_point[j] for s in seqs], [s.sky_adu[j] for s in seqs])
  assert state.carry[0].dtype == np.float32 and state.window.dtype == np.float32


def _read_csv(path):
  with open(path, newline='') as f:
    return list(csv.DictReader(f))


def test_csv_rows_columns_and_figures(classifier, tmp_path):
  data = tmp_path / 'in'
  data.mkdir()
  arrays = {'obj_long': _arrays(11, 5), 'obj_short': _arrays(4, 6)}
  for name, a in arrays.items():
    _save(data / f'{name}.npz', **a)
  out, figs = tmp_path / 'p.csv', tmp_path / 'figs'
  err = io.StringIO()
  assert files_lib.predict_files(None, [str(data)], str(out), plot_dir=str(figs),
                               classifier=classifier, stderr=err) == 0
  # Files without seeing keep all epochs, said once (not once per file).
  assert err.getvalue().count('warning:') == 1 and 'no seeing' in err.getvalue()
  rows = _read_csv(out)
  names = list(classifier.class_names)
  assert list(rows[0]) == ['object', 'step', 'mjd'] + names
  seqs, _ = realdata.load_many([str(data)])
  whole = classifier.classify(seqs)
  for seq, w in zip(seqs, whole):
    mine = [r for r in rows if r['object'] == seq.object_id]
    # Truncated at max_steps (the paper's "after 20 inputs"; 6 in smoke).
    assert len(mine) == min(seq.num_epochs - classifier.n_w + 1, classifier.max_steps) == len(w)
    assert [int(r['step']) for r in mine] == list(range(1, len(mine) + 1))
    np.testing.assert_allclose([float(r['mjd']) for r in mine],
                               arrays[seq.name]['mjd'][classifier.n_w - 1:][:len(mine)],
                               atol=1e-6)
    p = np.array([[float(r[c]) for c in names] for r in mine])
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(p, w, atol=1e-6)
    assert (figs / f'{seq.name}.png').stat().st_size > 10_000


def test_bad_files_fail_fast_and_no_good_file(classifier, tmp_path):
  data = tmp_path / 'in'
  data.mkdir()
  _save(data / 'good.npz', **_arrays(5, 0))
  nan = _arrays(5, 1)
  nan['stamps'][2, 3, 3] = np.nan
  _save(data / 'a_nan.npz', **nan)  # sorted first
  out = tmp_path / 'p.csv'
  err = io.StringIO()
  assert files_lib.predict_files(None, [str(data)], str(out), fail_fast=True,
                               classifier=classifier, stderr=err) == 2
  assert 'a_nan.npz' in err.getvalue() and not out.exists()

  out.write_text('keep me\n')
  err = io.StringIO()
  short = _arrays(2, 2)  # fewer than n_w epochs
  assert files_lib.predict_files(None, [_save(tmp_path / 'short.npz', **short),
                                      str(data / 'a_nan.npz')], str(out),
                               classifier=classifier, stderr=err) == 2
  lines = err.getvalue().splitlines()
  assert lines[0].startswith('error: ') and 'short.npz' in lines[0] and 'n_w' in lines[0]
  assert 'a_nan.npz' in lines[1] and 'NaN' in lines[1]
  assert 'no valid input' in lines[2]
  assert out.read_text() == 'keep me\n'


def _run(args):
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  return subprocess.run([sys.executable, '-m', 'rcnn_jax.predict'] + args, cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=900)


def test_cli_reports_bad_file_and_classifies_the_rest(workdir, tmp_path):
  data = tmp_path / 'in'
  data.mkdir()
  for i in range(2):
    _save(data / f'good{i}.npz', **_arrays(6 + i, i))
  nan = _arrays(5, 9)
  nan['stamps'][0, 12, 12] = np.nan
  bad = _save(data / 'bad.npz', **nan)
  out = tmp_path / 'pred.csv'
  r = _run(['--workdir', workdir, str(data), '--out', str(out), '--plot', str(tmp_path / 'f'),
            '--batch', '2'])
  assert r.returncode == 2, r.stderr[-3000:]
  errors = [l for l in r.stderr.splitlines() if l.startswith('error:')]
  assert len(errors) == 1 and bad in errors[0] and 'NaN' in errors[0], r.stderr[-3000:]
  rows = _read_csv(out)
  assert sorted({r['object'] for r in rows}) == [str(data / 'good0.npz'),
                                                 str(data / 'good1.npz')]
  assert len(rows) == 4 + 5
  assert sorted(os.listdir(tmp_path / 'f')) == ['good0.png', 'good1.png']

  r = _run(['--workdir', workdir, str(data), '--out', str(tmp_path / 'ff.csv'), '--fail-fast'])
  assert r.returncode == 2
  errors = [l for l in r.stderr.splitlines() if l.startswith('error:')]
  assert len(errors) == 1 and bad in errors[0], r.stderr[-3000:]
  assert not (tmp_path / 'ff.csv').exists()


def test_real_dev_files_classify(classifier, hits_data):
  dev = hits_data / 'real_nonvariable_dev'
  if not dev.is_dir():
    pytest.skip(f'{dev} not found')
  seqs, errors = realdata.load_many([dev], classifier.stamp_size, classifier.n_w)
  assert errors == [] and seqs
  probs = classifier.classify(seqs)
  for seq, p in zip(seqs, probs):
    d = classifier.prepare(seq)
    bad = np.sum(seq.seeing_arcsec > classifier.config.survey.max_seeing_arcsec)
    assert d['num_steps'] == min(seq.num_epochs - bad - classifier.n_w + 1,
                                 classifier.max_steps)
    assert p.shape == (d['num_steps'], classifier.num_classes)
    assert np.isfinite(p).all()
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-5)


def test_evaluate_workdir_counts_each_test_object_once(workdir, tmp_path):
  """Sec. 4 on the simulated test set, from the workdir alone: every object counted once, in
  batches of 21 (the second padded by 14)."""
  from rcnn_jax.core import plots  # pylint: disable=g-import-not-at-top
  from rcnn_jax.evaluation import simulated as sim_eval  # pylint: disable=g-import-not-at-top
  config = checkpoints.load_config(workdir)
  assert config.eval.batch_size == 21
  m = sim_eval.evaluate_workdir(workdir, progress=False)
  n = config.eval.test_size
  assert m['num_examples'] == n
  assert np.asarray(m['confusion_counts']).sum(1).tolist() == [n // 7] * 7  # each class once
  assert list(m['recall_by_step']) == list(config.sim.class_names)
  assert len(m['accuracy_by_step']) == config.sim.max_steps
  # The test set is not the validation set (the simulator draws objects from the key).
  import jax  # pylint: disable=g-import-not-at-top
  assert not np.array_equal(jax.random.key_data(steps_lib.test_key(config)),
                            jax.random.key_data(steps_lib.validation_key(config)))
  paths = plots.plot_evaluation([m, m], str(tmp_path))
  assert all(os.path.getsize(p) > 10_000 for p in paths)


def test_bench_inference_on_a_trained_workdir(workdir, tmp_path):
  """The inference benchmark's JSON: speed, and the float32 mode within 1e-4 of full
  precision (the plain XLA layers) on the trained model's probabilities."""
  import json  # pylint: disable=g-import-not-at-top
  out = tmp_path / 'bench.jsonl'
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  r = subprocess.run([sys.executable, '-m', 'rcnn_jax.bench', 'inference', '--workdir', workdir,
                      '--objects', '16', '--iters', '2', '--min_time_s', '0', '--out', str(out)],
                     cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert r.returncode == 0, r.stderr[-2000:]
  recs = {d['name']: d for d in map(json.loads, out.read_text().splitlines())}
  assert set(recs) == {'inference', 'inference_bfloat16'}
  for d in recs.values():
    assert d['unit'] == 'images_per_s' and d['value'] > 0 and d['calls'] >= 2
    assert d['compared_updates'] == 8 and 0.0 <= d['top_class_agreement_vs_full_precision'] <= 1
    assert d['config']['parameters'].startswith('trained')
  assert recs['inference']['max_abs_prob_diff_vs_full_precision'] < 1e-4
  assert recs['inference_bfloat16']['max_abs_prob_diff_vs_full_precision'] > 0  # coarser
  bad = subprocess.run([sys.executable, '-m', 'rcnn_jax.bench', 'nonsense', '--out', ''],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert bad.returncode == 2 and 'unknown benchmark' in bad.stderr.strip().splitlines()[-1]
