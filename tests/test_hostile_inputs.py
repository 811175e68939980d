"""Issue 29: one bad file, path or input never costs the good results, a model folder, or a
right answer. Each test is one numbered case of the issue, reproduced with the shipped model
(a copy of ``pretrained/hits2015_rcnn`` in a temporary folder) and copies of the real
development files; `docs/robustness.md` ("What survives what") lists them."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from rcnn_jax import evaluate
from rcnn_jax import finetune as finetune_cmd
from rcnn_jax.core import outputs
from rcnn_jax.core.errors import UserError
from rcnn_jax.evaluation import finetune
from rcnn_jax.evaluation import real as real_eval
from rcnn_jax.inputs import realdata
from rcnn_jax.serving import files as files_lib
from rcnn_jax.serving.classifier import Classifier
from rcnn_jax.training import checkpoints

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHIPPED = ROOT / 'pretrained' / 'hits2015_rcnn'
DEV = ROOT.parent / 'shared' / 'data' / 'hits2015'
NV = DEV / 'real_nonvariable_dev'
READ_ONLY = '/proc/rcnn_jax_no_such_place'  # not writable, even by root


def _nv_files(n):
  if not NV.is_dir():
    pytest.skip(f'{NV} not found')
  return sorted(NV.glob('*.npz'))[:n]


def _arrays(path) -> dict:
  with np.load(path, allow_pickle=False) as z:
    return {k: np.array(z[k]) for k in z.files}


def _digest(folder) -> dict:
  out = {}
  for d, _, files in os.walk(folder):
    for f in files:
      p = os.path.join(d, f)
      out[os.path.relpath(p, folder)] = hashlib.sha256(pathlib.Path(p).read_bytes()).hexdigest()
  return out


def _read_csv(path):
  with open(path, newline='') as f:
    return list(csv.DictReader(f))


@pytest.fixture(scope='module')
def shipped(tmp_path_factory):
  dst = tmp_path_factory.mktemp('models') / 'hits2015_rcnn'
  shutil.copytree(SHIPPED, dst)
  return str(dst)


@pytest.fixture(scope='module')
def classifier(shipped):
  return Classifier.from_workdir(shipped)


def _predict(classifier, inputs, out):
  err = io.StringIO()
  code = files_lib.predict_files(None, [str(i) for i in inputs], str(out), classifier=classifier,
                               stderr=err)
  return code, [l for l in err.getvalue().splitlines() if l.startswith('error:')], err.getvalue()


# 1. One file loses the whole run -----------------------------------------------------------


def test_1_files_without_usable_epochs_are_one_line_each(classifier, tmp_path):
  good, other = _nv_files(2)
  d = tmp_path / 'in'
  d.mkdir()
  shutil.copy(good, d / 'good.npz')
  a = _arrays(other)
  np.savez(d / 'nan_seeing.npz', **{**a, 'seeing_arcsec': np.full_like(a['seeing_arcsec'],
                                                                        np.nan)})
  np.savez(d / 'bad_seeing.npz', **{**a, 'seeing_arcsec': np.full_like(a['seeing_arcsec'], 3.0)})
  two = a['seeing_arcsec'].copy()
  two[2:] = 3.0
  np.savez(d / 'two_epochs.npz', **{**a, 'seeing_arcsec': two})
  odd = os.fsdecode(os.path.join(os.fsencode(str(d)), b'odd_\xff\xfe.npz'))
  shutil.copy(other, odd)
  out = tmp_path / 'p.csv'
  code, errors, text = _predict(classifier, [d], out)
  assert code == 2, text
  assert len(errors) == 3, text
  for name in ('nan_seeing.npz', 'bad_seeing.npz', 'two_epochs.npz'):
    line = [e for e in errors if name in e]
    assert len(line) == 1 and str(d / name) in line[0] and 'fewer than n_w' in line[0], text
  assert '2 usable epoch(s)' in [e for e in errors if 'two_epochs' in e][0]
  rows = _read_csv(out)
  objects = sorted({r['object'] for r in rows})
  assert objects == sorted([str(d / 'good.npz'), str(d) + '/odd_\\xff\\xfe.npz'])
  # The undecodable name's object is the same sequence as its source: identical probabilities.
  odd_rows = [r for r in rows if 'odd_' in r['object']]
  got = np.array([[float(r[c]) for c in classifier.class_names] for r in odd_rows])
  ref = classifier.classify([realdata.load_sequence(other)])[0]
  np.testing.assert_allclose(got, ref, atol=1e-6)


def test_1_evaluate_real_and_finetune_keep_the_good_files(shipped, tmp_path):
  files = _nv_files(3)
  d = tmp_path / 'NonVariable'
  d.mkdir()
  for f in files[:2]:
    shutil.copy(f, d / f.name)
  a = _arrays(files[2])
  np.savez(d / 'nan_seeing.npz', **{**a, 'seeing_arcsec': np.full_like(a['seeing_arcsec'],
                                                                        np.nan)})
  errors = []
  m = real_eval.evaluate_real(shipped, [str(d)], errors=errors)
  assert m['num_sequences'] == 2 and m['count_per_class'] == {'NonVariable': 2}
  assert len(errors) == 1 and str(d / 'nan_seeing.npz') in errors[0]
  assert m['refused'] == errors
  # finetune selects its files among the usable ones (one bad file shifts nothing).
  config = finetune.finetune_config(checkpoints.load_config(shipped))
  errors = []
  seqs, labels = finetune._usable_labelled([str(d)], config, errors)  # pylint: disable=protected-access
  assert [s.name for s in seqs] == [f.stem for f in files[:2]] and len(errors) == 1


# 2. Output paths fail after the work -------------------------------------------------------


def test_2_output_locations_are_checked_before_any_work(tmp_path):
  (tmp_path / 'a_file').write_text('x')
  (tmp_path / 'a_folder').mkdir()
  missing = str(tmp_path / 'no_such_model')  # were the work started first, this would fail
  cases = [(str(tmp_path / 'a_folder'), 'existing folder'),
           (str(tmp_path / 'a_file' / 'p.csv'), 'a_file is a file'),
           (f'{READ_ONLY}/p.csv', 'not writable')]
  for out, why in cases:
    with pytest.raises(UserError, match=re.escape(why)):
      files_lib.predict_files(missing, [str(tmp_path)], out)
  with pytest.raises(UserError, match='--plot .*a_file is a file'):
    files_lib.predict_files(missing, [str(tmp_path)], str(tmp_path / 'p.csv'),
                          plot_dir=str(tmp_path / 'a_file' / 'figs'))
  for out in (READ_ONLY, str(tmp_path / 'a_file')):
    with pytest.raises(UserError, match='--out'):
      finetune.finetune(missing, [str(tmp_path)], out)
    with pytest.raises(UserError, match='--out'):
      finetune.kfold(missing, [str(tmp_path)], out)
    with pytest.raises(UserError, match='--out'):
      outputs.check_dir(out)  # evaluate's --out (main calls it before restoring anything)


# 3. Model folders are written into ---------------------------------------------------------


def test_3_no_command_writes_into_a_model_folder(shipped, tmp_path):
  other = tmp_path / 'other_model'
  shutil.copytree(SHIPPED, other)
  link = tmp_path / 'link_to_base'
  link.symlink_to(shipped)
  before = {p: _digest(p) for p in (shipped, str(other))}
  for out, why in ((other, 'is a shipped model folder'), (link, 'is the base model folder'),
                   (pathlib.Path(shipped) / 'sub', 'is inside a shipped model folder')):
    with pytest.raises(UserError, match=why):
      finetune.finetune(shipped, [str(tmp_path)], str(out))
  with pytest.raises(UserError, match='shipped model folder.*--out'):
    real_eval.default_out(shipped)
  with pytest.raises(UserError, match='inside a shipped model folder'):
    files_lib.predict_files(None, [str(tmp_path)], os.path.join(shipped, 'p.csv'))
  with pytest.raises(UserError, match='inside a shipped model folder'):
    outputs.check_dir(os.path.join(str(link), 'eval'), allow_eval_of=str(link))
  # A training workdir: its own eval/ is evaluate's default; nothing else inside it.
  wd = tmp_path / 'wd'
  (wd / 'checkpoints').mkdir(parents=True)
  (wd / 'config.json').write_text('{}')
  outputs.check_dir(str(wd / 'eval'), allow_eval_of=str(wd))
  for bad in (wd, wd / 'checkpoints'):
    with pytest.raises(UserError, match='inside a training workdir'):
      outputs.check_dir(str(bad), allow_eval_of=str(wd))
  with pytest.raises(UserError, match='training workdir'):
    finetune.finetune(shipped, [str(tmp_path)], str(wd))
  # export: into a model folder, or over an existing artifact: refused before any compile.
  r = _run('rcnn_jax.export', ['--workdir', shipped, '--out', os.path.join(shipped, 'exp')])
  assert r.returncode == 2 and 'inside a shipped model folder' in r.stderr, r.stderr[-2000:]
  (tmp_path / 'exp').mkdir()
  (tmp_path / 'exp' / 'manifest.json').write_text('{}')
  r = _run('rcnn_jax.export', ['--workdir', shipped, '--out', str(tmp_path / 'exp')])
  assert r.returncode == 2 and 'already holds an exported artifact' in r.stderr
  assert (tmp_path / 'exp' / 'manifest.json').read_text() == '{}'
  assert {p: _digest(p) for p in (shipped, str(other))} == before


# 4. Silent wrong labels in evaluate --real -------------------------------------------------

NAMES = ['Supernova', 'RRLyrae', 'Cepheid', 'EclipsingBinary', 'NonVariable', 'Galaxy',
         'Asteroid']


def test_4_labels_follow_the_declared_rule(tmp_path):
  good = _nv_files(1)[0]
  root = tmp_path / 'root'
  for sub in ('Supernova', 'rr_lyrae', 'not_a_Supernova'):
    (root / sub).mkdir(parents=True)
    shutil.copy(good, root / sub / 'x.npz')
  assert realdata.folder_class('x/rr_lyrae', NAMES) == 'RRLyrae'
  assert realdata.folder_class('x/Eclipsing-Binary', NAMES) == 'EclipsingBinary'
  assert realdata.folder_class('x/not_a_Supernova', NAMES) is None
  assert realdata.folder_class('x/real_nonvariable_dev', NAMES) is None
  pairs, problems = realdata.labelled_files([str(root)], NAMES)
  assert problems == []
  assert sorted((os.path.basename(os.path.dirname(p)), c) for p, c in pairs) == [
      ('Supernova', 'Supernova'), ('not_a_Supernova', None), ('rr_lyrae', 'RRLyrae')]
  # A stray file beside the class folders: the whole argument is refused, not guessed.
  shutil.copy(good, root / 'stray.npz')
  pairs, problems = realdata.labelled_files([str(root)], NAMES)
  assert pairs == [] and len(problems) == 1 and 'mixed layout' in str(problems[0])
  assert str(root) in str(problems[0])
  # DIR=Class labels a folder whatever its name; an unknown class is one line.
  pairs, problems = realdata.labelled_files([f'{root / "not_a_Supernova"}=Galaxy',
                                             f'{root / "Supernova"}=Star'], NAMES)
  assert [c for _, c in pairs] == ['Galaxy'] and 'unknown class' in str(problems[0])


def test_4_unlabelled_file_is_one_line_in_evaluate(shipped, tmp_path):
  good = _nv_files(2)
  for sub in ('NonVariable', 'not_a_Supernova'):
    (tmp_path / sub).mkdir()
  shutil.copy(good[0], tmp_path / 'NonVariable' / 'a.npz')
  shutil.copy(good[1], tmp_path / 'not_a_Supernova' / 'b.npz')
  config = checkpoints.load_config(shipped)
  errors = []
  seqs, labels = real_eval.load_labelled([str(tmp_path)], config, errors)
  assert [s.name for s in seqs] == ['a'] and list(labels) == [NAMES.index('NonVariable')]
  assert len(errors) == 1 and 'b.npz' in errors[0] and 'DIR=Class' in errors[0]


# 6. Ambiguous output --------------------------------------------------------------------------


def test_6_identity_is_the_path_and_unreadable_entries_are_named(classifier, tmp_path):
  f0, f1 = _nv_files(2)
  for sub, f in (('a', f0), ('b', f1)):
    (tmp_path / sub).mkdir()
    shutil.copy(f, tmp_path / sub / 'x.npz')
  (tmp_path / 'a' / 'dangling.npz').symlink_to(tmp_path / 'nowhere.npz')
  (tmp_path / 'a' / 'loop.npz').symlink_to(tmp_path / 'a' / 'loop.npz')
  out = tmp_path / 'p.csv'
  code, errors, text = _predict(classifier, [tmp_path / 'a', tmp_path / 'b'], out)
  assert code == 2
  assert sorted(errors) == sorted([
      f'error: {tmp_path / "a" / "dangling.npz"}: dangling symbolic link or link loop, skipped',
      f'error: {tmp_path / "a" / "loop.npz"}: dangling symbolic link or link loop, skipped'])
  rows = _read_csv(out)
  assert sorted({r['object'] for r in rows}) == [str(tmp_path / 'a' / 'x.npz'),
                                                  str(tmp_path / 'b' / 'x.npz')]
  n = lambda o: sum(r['object'] == o for r in rows)
  assert n(str(tmp_path / 'a' / 'x.npz')) <= classifier.max_steps
  assert n(str(tmp_path / 'b' / 'x.npz')) <= classifier.max_steps


# 7. Physically impossible conditions ---------------------------------------------------------


def test_7_implausible_epochs_are_dropped_with_one_line(classifier, tmp_path):
  src = _nv_files(1)[0]
  a = _arrays(src)
  d = tmp_path / 'in'
  d.mkdir()
  cases = {}

  def put(name, **change):
    np.savez(d / f'{name}.npz', **{**a, **change})
    cases[name] = change

  zp = a['zero_point'].copy()
  zp[0] = -99.0
  put('zp_minus99_first', zero_point=zp)
  zp = a['zero_point'].copy()
  zp[3] = 0.0
  put('zp_zero', zero_point=zp)
  put('zp_negated', zero_point=-a['zero_point'])
  st = a['stamps'].copy()
  st[2, 10, 10] = 1e30
  put('pixel_1e30', stamps=st)
  se = a['seeing_arcsec'].copy()
  se[1] = -1.0
  put('seeing_negative', seeing_arcsec=se)
  out = tmp_path / 'p.csv'
  code, errors, text = _predict(classifier, [d], out)
  assert code == 2
  assert len(errors) == 1 and 'zp_negated.npz' in errors[0], text
  warn = [l for l in text.splitlines() if 'dropped:' in l]
  expect = {'zp_minus99_first': (0, 'zero point -99'), 'zp_zero': (3, 'zero point 0'),
            'pixel_1e30': (2, 'beyond what the camera records'),
            'seeing_negative': (1, 'seeing -1')}
  for name, (epoch, why) in expect.items():
    line = [l for l in warn if f'{name}.npz: epoch {epoch} ' in l]
    assert len(line) == 1 and why in line[0], text
  # The -99 copy is classified as the file without its first epoch (before: Asteroid 0.999).
  rows = _read_csv(out)
  got = np.array([[float(r[c]) for c in classifier.class_names] for r in rows
                  if r['object'] == str(d / 'zp_minus99_first.npz')])
  seq = realdata.load_sequence(src)
  keep = np.arange(1, seq.num_epochs)
  trimmed = realdata.RealSequence(
      name='t', stamps=seq.stamps[keep], mjd=seq.mjd[keep], sky_adu=seq.sky_adu[keep],
      zero_point=seq.zero_point[keep], sky_estimated=False,
      seeing_arcsec=seq.seeing_arcsec[keep])
  np.testing.assert_allclose(got, classifier.classify([trimmed])[0], atol=1e-6)


def test_7_streaming_drops_an_infinite_zero_point(classifier, capfd):
  seq = realdata.load_sequence(_nv_files(1)[0])
  state = classifier.new_state(2)
  for e in range(3):
    probs, state = classifier.update(state, seq.stamps[e:e + 1], seq.mjd[e:e + 1],
                                     seq.zero_point[e:e + 1], seq.sky_adu[e:e + 1],
                                     objects=[0], seeing_arcsec=seq.seeing_arcsec[e:e + 1])
  before = np.array(state.num_images)
  zp = np.array([np.inf, seq.zero_point[3]])
  probs2, state2 = classifier.update(state, seq.stamps[[3, 3]], seq.mjd[[3, 3]], zp,
                                     seq.sky_adu[[3, 3]], seeing_arcsec=seq.seeing_arcsec[[3, 3]])
  err = capfd.readouterr().err
  assert 'object slot 0: epoch MJD' in err and 'zero point inf' in err
  assert state2.num_images[0] == before[0] and state2.num_images[1] == before[1] + 1
  np.testing.assert_array_equal(probs2[0], probs[0])
  # Every image of a call dropped (here by the seeing cut): nothing changes, no error.
  probs3, state3 = classifier.update(state2, seq.stamps[[4]], seq.mjd[[4]], seq.zero_point[[4]],
                                     seq.sky_adu[[4]], objects=[0], seeing_arcsec=[9.0])
  assert list(state3.num_images) == list(state2.num_images)
  np.testing.assert_array_equal(probs3, probs2)


# 8. The usage line is what the command takes -------------------------------------------------


def _usage(module, flag):
  line = [l for l in module.__doc__.splitlines() if f'{flag} DIR [DIR...]' in l]
  assert line, f'{module.__name__}: no usage line with {flag} DIR [DIR...]'
  return line[0].split()


def _run(module, args):
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  return subprocess.run([sys.executable, '-m', module] + args, cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=900)


def test_8_real_takes_several_folders_as_its_usage_line_shows(shipped, tmp_path):
  files = _nv_files(2)
  dirs = []
  for i, f in enumerate(files):
    d = tmp_path / f'd{i}'
    d.mkdir()
    shutil.copy(f, d / f.name)
    dirs.append(f'{d}=NonVariable')
  words = _usage(evaluate, '--real')
  i = words.index('--real')
  assert words[i + 1:i + 3] == ['DIR', '[DIR...]']
  out = tmp_path / 'eval'
  args = ['--workdir', shipped, '--real'] + dirs + ['--out', str(out)]
  r = _run('rcnn_jax.evaluate', args)
  assert r.returncode == 0, r.stderr[-2000:]
  m = json.loads((out / "metrics_real.json").read_text())
  assert m['num_sequences'] == 2
  # finetune's usage line takes the same form: both folders are accepted (it stops at --out).
  assert _usage(finetune_cmd, '--real')
  r = _run('rcnn_jax.finetune', ['--workdir', shipped, '--real'] + dirs + ['--out', READ_ONLY])
  assert r.returncode == 2 and 'unexpected' not in r.stderr and '--out' in r.stderr
