"""tensorflow-datasets builders: hits_sim equals simulate, interrupted generation, hits_real holds
every development file once, evaluate on both, reading without TensorFlow."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from configs import hits
from rcnn_jax.core import utils
from rcnn_jax.datasets import build
from rcnn_jax.datasets import hits_real
from rcnn_jax.datasets import hits_sim
from rcnn_jax.datasets import reading
from rcnn_jax.evaluation import simulated as sim_eval
from rcnn_jax.inputs import realdata
from rcnn_jax.sim import batches
from rcnn_jax.training import loop


def _config():
  c = hits.get_config('smoke')  # dataset sizes 14 / 7 / 28 (= eval.test_size), chunk 14
  c.train.num_steps = 1
  return c


@pytest.fixture(scope='module')
def sim_dataset(tmp_path_factory):
  return build.build_sim(_config(), str(tmp_path_factory.mktemp('tfds')))


def test_hits_sim_split_equals_simulate(sim_dataset):
  config = _config()
  sizes, offsets = hits_sim.split_sizes(config), hits_sim.seed_offsets(config)
  assert sizes == {'train': 14, 'validation': 7, 'test': 28}
  assert offsets['test'] == config.eval.test_seed_offset
  for split in ('test', 'train'):
    got = reading.load_sim_split(sim_dataset, split)
    want = batches.simulate_to_host(config, sizes[split], chunk=config.dataset.chunk,
                                     seed_offset=offsets[split], progress=False)
    np.testing.assert_array_equal(got['index'], np.arange(sizes[split]))
    np.testing.assert_array_equal(got['label'], np.arange(sizes[split]) % 7)  # balanced
    for name in hits_sim.FIELDS:
      assert got[name].dtype == want[name].dtype, name
      np.testing.assert_array_equal(got[name], want[name], err_msg=f'{split}/{name}')
    assert list(got['class_names']) == list(want['class_names'])
  info = reading.open_dataset(sim_dataset).info
  assert info.metadata['seed'] == config.seed
  assert info.metadata['config']['sim']['max_steps'] == 6
  assert info.metadata['seed_offsets']['train'] == config.dataset.train_seed_offset
  assert any(f.startswith('hits_sim-test.array_record') for f in os.listdir(sim_dataset))
  # Another config is another folder: the name carries a digest of what decides the data.
  other = _config()
  other.seed = 1
  assert hits_sim.config_name(other) != hits_sim.config_name(config)
  other = _config()
  other.model.lstm_size = 8  # the model does not change the data
  assert hits_sim.config_name(other) == hits_sim.config_name(config)


def test_full_size_and_bad_size():
  c = hits.get_config()
  assert hits_sim.split_sizes(c) == {'train': 700, 'validation': 140, 'test': 140}
  c.dataset.size = 'full'
  assert hits_sim.split_sizes(c) == {'train': 686_000, 'validation': 85_750, 'test': 85_750}
  c.dataset.size = 'huge'
  with pytest.raises(utils.UserError, match="'small' or 'full'"):
    hits_sim.split_sizes(c)


def test_reading_needs_no_tensorflow(sim_dataset):
  code = f"""
import sys
import tensorflow_datasets as tfds
b = tfds.builder_from_directory({sim_dataset!r})  # no rcnn_jax import at all
ds = b.as_data_source(split='validation')
assert len(ds) == 7 and ds[3]['index'] == 3 and ds[3]['images'].shape == (6, 21, 21, 3)
assert 'tensorflow' not in sys.modules and not any(m.startswith('rcnn_jax') for m in sys.modules)
print('ok')
"""
  r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120,
                     check=False)
  assert r.returncode == 0 and 'ok' in r.stdout, r.stderr[-3000:]


def test_interrupted_generation_leaves_no_complete_split(tmp_path, monkeypatch):
  config = _config()
  data_dir = str(tmp_path)
  original = hits_sim.HitsSim._generate_examples

  def interrupted(self, split, num):
    for count, ex in enumerate(original(self, split, num)):
      if split == 'validation' and count == 3:  # train is written by now
        raise KeyboardInterrupt
      yield ex

  monkeypatch.setattr(hits_sim.HitsSim, '_generate_examples', interrupted)
  with pytest.raises(KeyboardInterrupt):
    build.build_sim(config, data_dir)
  builder = hits_sim.HitsSim(config=config, data_dir=data_dir)
  path = os.fspath(builder.data_path)
  assert not os.path.exists(path)
  with pytest.raises(utils.UserError, match='not a prepared dataset'):
    reading.load_sim_split(path, 'train')
  # A killed run (no clean-up at all) leaves its incomplete folder: still not read as complete,
  # named in the error, and removed by the next build.
  stale = os.path.join(os.path.dirname(path), 'incomplete.KILLED_1.0.0')
  os.makedirs(stale)
  open(os.path.join(stale, 'hits_sim-train.array_record-00000-of-00001'), 'wb').close()
  with pytest.raises(utils.UserError, match='incomplete.KILLED'):
    reading.open_dataset(path)
  monkeypatch.setattr(hits_sim.HitsSim, '_generate_examples', original)
  assert build.build_sim(config, data_dir) == path
  assert not os.path.exists(stale)
  assert len(reading.load_sim_split(path, 'validation')['label']) == 7
  with pytest.raises(utils.UserError, match="no split 'nope'"):
    reading.load_sim_split(path, 'nope')


def test_folder_labels():
  names = hits.CLASS_NAMES
  # The one declared rule (realdata.folder_class): exact class names only, no guessing.
  assert hits_real.folder_label('/x/real_nonvariable_dev', names) is None
  assert hits_real.folder_label('/x/not_a_Supernova', names) is None
  assert hits_real.folder_label('/x/real_labelled_dev/RRLyrae/', names) == 'RRLyrae'
  assert hits_real.folder_label('/x/eclipsing-binary', names) == 'EclipsingBinary'
  assert hits_real.folder_label('/x/misc', names) is None


def test_hits_real_holds_every_dev_file_once(hits_data, tmp_path):
  folders = [hits_data / 'real_labelled_dev', hits_data / 'real_nonvariable_dev']
  files = sorted(str(p) for f in folders for p in f.rglob('*.npz'))
  refused = []
  path = build.build_real([folders[0], f'{folders[1]}=NonVariable'], str(tmp_path),
                          refused=refused)
  assert refused == []
  seqs, labels, names = reading.load_real_split(path, 'dev')
  assert names == hits.CLASS_NAMES
  builder, ds = reading.data_source(path, 'dev')
  rel = [ds[i]['path'].decode() if isinstance(ds[i]['path'], bytes) else ds[i]['path']
         for i in range(len(ds))]
  assert len(rel) == len(set(rel)) == len(files) == len(seqs)
  assert sorted(os.path.join(str(hits_data), r) for r in rel) == files
  counts = dict(zip(names, np.bincount(labels, minlength=len(names))))
  assert counts == {'Supernova': 10, 'RRLyrae': 10, 'Cepheid': 0, 'EclipsingBinary': 10,
                    'NonVariable': 40, 'Galaxy': 0, 'Asteroid': 0}
  lengths = set()
  for r, seq, lab in zip(rel, seqs, labels):
    want = realdata.load_sequence(os.path.join(str(hits_data), r))
    np.testing.assert_array_equal(seq.stamps, want.stamps)  # whole sequence, as observed
    np.testing.assert_array_equal(seq.mjd, want.mjd)
    np.testing.assert_array_equal(seq.zero_point, want.zero_point)
    np.testing.assert_array_equal(seq.seeing_arcsec, want.seeing_arcsec)
    assert seq.name == want.name
    lengths.add(seq.num_epochs)
    z = np.load(os.path.join(str(hits_data), r))
    folder = os.path.basename(os.path.dirname(r))
    assert names[lab] == (str(z['label']) if 'label' in z.files else
                          hits_real.folder_label(folder, names) or 'NonVariable')
  assert len(lengths) > 1  # variable length kept
  assert builder.info.metadata['producer'] == 'rcnn_jax.datasets.hits_real'


def test_hits_real_leaves_out_a_bad_file_with_one_line(hits_data, tmp_path):
  """Issue 29: one bad file never costs the others (a corrupt one, an unlabelled one)."""
  src = sorted((hits_data / 'real_nonvariable_dev').glob('*.npz'))[:2]
  d = tmp_path / 'NonVariable'
  d.mkdir()
  shutil.copy(src[0], d / 'good.npz')
  (d / 'cut.npz').write_bytes(src[1].read_bytes()[:300])
  u = tmp_path / 'misc'
  u.mkdir()
  shutil.copy(src[1], u / 'unlabelled.npz')
  refused = []
  path = build.build_real([d, u], str(tmp_path / 'tfds'), refused=refused)
  seqs, labels, names = reading.load_real_split(path, 'dev')
  assert [s.name for s in seqs] == ['good'] and names[labels[0]] == 'NonVariable'
  assert len(refused) == 2
  assert str(d / 'cut.npz') in refused[0] and 'cannot read' in refused[0]
  assert str(u / 'unlabelled.npz') in refused[1] and 'DIR=Class' in refused[1]
  again = []  # prepared already: the record is reported again
  build.build_real([d, u], str(tmp_path / 'tfds'), refused=again)
  assert again == refused


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp('evaluate') / 'wd')
  loop.train_and_evaluate(_config(), wd, progress=False)
  return wd


def test_evaluate_on_tfds(workdir, sim_dataset, hits_data, tmp_path):
  # The hits_sim test split of the workdir's config is evaluate's simulated test set.
  direct = sim_eval.evaluate_workdir(workdir, progress=False)
  on_split = sim_eval.evaluate_tfds(workdir, sim_dataset)
  assert on_split['num_examples'] == direct['num_examples'] == 28
  assert on_split['confusion_counts'] == direct['confusion_counts']
  np.testing.assert_allclose(np.array(on_split['accuracy_by_step'], float),
                             np.array(direct['accuracy_by_step'], float))
  assert on_split['data'].endswith(':test')
  real = build.build_real([f"{hits_data / 'real_nonvariable_dev'}=NonVariable"], str(tmp_path))
  m = sim_eval.evaluate_tfds(workdir, real)
  assert m['num_examples'] == 40 and m['class_names'] == list(hits.CLASS_NAMES)
  assert sum(m['confusion_counts'][4]) == 40  # all true NonVariable
  assert m['sequences_by_step'][0] == 40
