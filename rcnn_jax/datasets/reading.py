"""Reading prepared ``hits_sim`` / ``hits_real`` splits into numpy, without TensorFlow.

A prepared dataset is the folder ``DATA_DIR/<name>/<config>/<version>`` that tfds renames into
place only once every split is written; an interrupted generation leaves nothing there (its
files sit in an ``incomplete.*`` folder beside it) and reads as "not prepared".
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow_datasets as tfds

from rcnn_jax.core import utils


def open_dataset(path):
  """tfds builder of a prepared dataset folder (no project code needed to read it)."""
  path = os.path.normpath(os.fspath(path))
  if not os.path.isfile(os.path.join(path, 'dataset_info.json')):
    parent = os.path.dirname(path)
    stale = [d for d in (os.listdir(parent) if os.path.isdir(parent) else [])
             if d.startswith('incomplete.')]
    raise utils.UserError(f'{path}: not a prepared dataset (no dataset_info.json'
                          + ('; an interrupted generation left ' + stale[0] if stale else '')
                          + '); run python -m rcnn_jax.datasets.build')
  return tfds.builder_from_directory(path)


def data_source(path, split):
  builder = open_dataset(path)
  if split not in builder.info.splits:
    raise utils.UserError(f'{path}: no split {split!r} (has: {", ".join(builder.info.splits)})')
  return builder, builder.as_data_source(split=split)


def sim_batches(path, split='test', batch_size=512, keys=None):
  """(num records, class_names, iterator of stacked batches) of a hits_sim split, index order;
  only ``batch_size`` records are in memory at a time (a full test split is 12 GB)."""
  builder, ds = data_source(path, split)
  if builder.info.metadata.get('producer') != 'rcnn_jax.datasets.hits_sim':
    raise utils.UserError(f'{path}: not a hits_sim dataset')
  feats = builder.info.features
  names = tuple(feats['label'].names)
  keys = tuple(keys or feats.keys())

  def batches():
    for off in range(0, len(ds), batch_size):
      records = ds.__getitems__(list(range(off, min(off + batch_size, len(ds)))))
      out = {k: np.stack([np.asarray(r[k], feats[k].np_dtype) for r in records]) for k in keys}
      if 'label' in out:
        out['label'] = out['label'].astype(np.int32)  # ClassLabel decodes int64; simulate's int32
      yield out

  return len(ds), names, batches()


def load_sim_split(path, split='test') -> dict:
  """A hits_sim split as stacked arrays (simulate's names), plus class_names; index order."""
  _, names, batches = sim_batches(path, split)
  parts = list(batches)
  out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
  out['class_names'] = np.asarray(names)
  return out


def load_real_split(path, split='dev'):
  """(sequences, labels [N], class_names) of a hits_real split, in path order."""
  from rcnn_jax.datasets import hits_real  # lazy: tensorflow-datasets
  builder, ds = data_source(path, split)
  if builder.info.metadata.get('producer') != 'rcnn_jax.datasets.hits_real':
    raise utils.UserError(f'{path}: not a hits_real dataset')
  records = [ds[i] for i in range(len(ds))]
  return ([hits_real.to_sequence(r) for r in records],
          np.array([int(r['label']) for r in records], np.int64),
          tuple(builder.info.features['label'].names))


def producer(path) -> str:
  return str(open_dataset(path).info.metadata.get('producer', ''))
