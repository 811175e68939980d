"""Writes a ``hits_sim`` or ``hits_real`` dataset (array_record) with tensorflow-datasets.

    python -m rcnn_jax.datasets.build hits_sim --config configs/hits.py \
        [--config.dataset.size=full] --data_dir DIR
    python -m rcnn_jax.datasets.build hits_real --data ../shared/data/hits2015/real_labelled_dev \
        --data ../shared/data/hits2015/real_nonvariable_dev=NonVariable --data_dir DIR

Prints the prepared folder (the path ``evaluate --tfds`` and ``tfds.builder_from_directory``
take). Splits are written into a temporary ``incomplete.*`` folder that is renamed only when all
are complete: an interrupted run leaves no dataset that reads as complete, and running the
command again starts over (stale ``incomplete.*`` folders of this dataset are removed first). An
existing complete dataset is kept and reused.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time

from absl import app
from absl import flags
from ml_collections import config_flags

from rcnn_jax.core import utils

NAMES = ('hits_sim', 'hits_real')


def _define_flags():
  global _CONFIG, _DATA_DIR, _DATA, _SPLIT
  _CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (hits_sim: required).',
                                            lock_config=True)
  _DATA_DIR = flags.DEFINE_string('data_dir', None, 'tfds data folder to write into.')
  _DATA = flags.DEFINE_multi_string('data', None, 'hits_real: folder(s) of sequence files '
                                    '(DIR or DIR=Class).')
  _SPLIT = flags.DEFINE_string('split', 'dev', 'hits_real: the split name.')


def remove_stale(builder):
  """Removes leftovers of interrupted runs of this dataset version (incomplete.*_<version>)."""
  parent = os.path.dirname(os.fspath(builder.data_path))
  version = str(builder.version)
  if os.path.isdir(parent):
    for d in os.listdir(parent):
      if d.startswith('incomplete.') and d.endswith('_' + version):
        shutil.rmtree(os.path.join(parent, d), ignore_errors=True)


def prepare(builder) -> str:
  """download_and_prepare in array_record; returns the prepared folder."""
  if not os.path.isfile(os.path.join(os.fspath(builder.data_path), 'dataset_info.json')):
    remove_stale(builder)
  builder.download_and_prepare()
  return os.fspath(builder.data_path)


def _quiet(make):
  """Builds a tfds builder without its warning that prints the whole custom config."""
  from absl import logging  # pylint: disable=g-import-not-at-top
  level = logging.get_verbosity()
  logging.set_verbosity(logging.ERROR)
  try:
    return make()
  finally:
    logging.set_verbosity(level)


def build_sim(config, data_dir) -> str:
  from rcnn_jax.datasets import hits_sim  # lazy: tensorflow-datasets
  return prepare(_quiet(lambda: hits_sim.HitsSim(config=config, data_dir=data_dir,
                                                 file_format='array_record')))


def build_real(folders, data_dir, config=None, split='dev', refused=None) -> str:
  """``config``: the classes, stamp size and n_w (default: configs/hits.py's). ``folders``:
  ``DIR`` or ``DIR=Class`` each. ``refused``: a list that receives one line per file left out
  (also kept in the prepared folder's ``refused.json``, so a rebuild that finds the dataset
  prepared reports them again)."""
  from rcnn_jax.datasets import hits_real  # lazy: tensorflow-datasets
  if config is None:
    from configs import hits  # pylint: disable=g-import-not-at-top
    config = hits.get_config()
  names = tuple(config.sim.class_names)
  s, n_w = int(config.sim.stamp_size), int(config.sim.n_w)
  bc = hits_real.builder_config(folders, names, s, n_w, split)
  builder = _quiet(lambda: hits_real.HitsReal(config=bc, data_dir=data_dir,
                                              file_format='array_record'))
  path = prepare(builder)
  record = os.path.join(path, 'refused.json')
  if getattr(builder, 'refused', None) is not None:
    utils.write_json(record, builder.refused)
  lines = []
  if os.path.isfile(record):
    with open(record) as f:
      lines = json.load(f)
  if refused is not None:
    refused.extend(lines)
  return path


def main(argv):
  if len(argv) != 2 or argv[1] not in NAMES:
    raise app.UsageError(f'give one dataset name: {" or ".join(NAMES)}')
  if not _DATA_DIR.value:
    raise app.UsageError('--data_dir is required')
  t0 = time.perf_counter()
  if argv[1] == 'hits_sim':
    if _CONFIG.value is None:
      raise app.UsageError('hits_sim needs --config')
    path = build_sim(_CONFIG.value, _DATA_DIR.value)
  else:
    if not _DATA.value:
      raise app.UsageError('hits_real needs --data FOLDER (repeatable)')
    refused = []
    path = build_real(_DATA.value, _DATA_DIR.value, _CONFIG.value, _SPLIT.value, refused)
    for line in refused:
      print(f'error: {line}', file=sys.stderr)
  from rcnn_jax.datasets import reading  # lazy: tensorflow-datasets, only for the builder asked for
  info = reading.open_dataset(path).info
  counts = ', '.join(f'{k} {v.num_examples}' for k, v in info.splits.items())
  size = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))
  print(f'{path}: {counts} records, {size / 1e6:.1f} MB, {time.perf_counter() - t0:.1f} s')
  return 2 if argv[1] == 'hits_real' and refused else 0


if __name__ == '__main__':
  _define_flags()
  utils.run(main)
