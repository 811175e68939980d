"""A trained model as a small folder that ships with the project (``pretrained/hits2015_rcnn/``).

    python -m rcnn_jax.pretrained --workdir W --out pretrained/NAME [--step S]
        [--dtype float16|float32] [--check_dir DIR ...] [--reference_root DIR]
    python -m rcnn_jax.pretrained pretrained/NAME        # prints the manifest, or why it's refused

A folder holds ``config.json`` (the training run's resolved config, as in a workdir),
``weights.npz`` (parameters and batch-norm statistics only, no optimizer state: one array per
leaf, named by its path, e.g. ``params/Conv_0/kernel``) and ``pretrained.json`` (format,
source run and step, how each array is stored, the SHA-256 of ``weights.npz``, and the
precision check below). ``serving.loading.load`` (so ``predict``, ``evaluate``,
``finetune``, ``export`` and ``predict.Classifier``) accepts such a folder wherever it accepts a
workdir.

Storage: weight matrices and kernels in float16 (``--dtype``; 10 bits of mantissa, a relative
rounding error below 5e-4, and their magnitudes are far inside float16's range), biases,
batch-norm scales and the running statistics in float32 (they are small, and the running
variance enters as 1/sqrt(var + eps)); np.savez_compressed. At load every array becomes
float32. ``--check_dir`` folders of real sequences are classified with the float32 checkpoint
and with the stored weights; the manifest records the largest probability difference and the
number of files whose top class changed (refused unless zero), and
``reference_predictions.json`` keeps the stored model's probabilities on a few of those files
(``--reference_per_dir`` per folder) for the test that the shipped model's predictions stay put.
"""

from __future__ import annotations

import json
import os
import shutil

from absl import app
from absl import flags

from rcnn_jax.core import outputs
from rcnn_jax.core import utils
from rcnn_jax.serving import loading
from rcnn_jax.serving.packaging import top_class_check
from rcnn_jax.serving.packaging import write_reference
from rcnn_jax.serving.shipped import MANIFEST
from rcnn_jax.serving.shipped import read_manifest
from rcnn_jax.serving.shipped import save


def _define_flags():
  """Command-line flags, defined only when the module runs as a command."""
  global _WORKDIR, _OUT, _STEP, _DTYPE, _CHECK, _REF_ROOT, _REF_PER_DIR
  _WORKDIR = flags.DEFINE_string('workdir', None, 'Training workdir to package.')
  _OUT = flags.DEFINE_string('out', None, 'New pretrained folder.')
  _STEP = flags.DEFINE_integer('step', None, 'Checkpoint step (default: the best).')
  _DTYPE = flags.DEFINE_enum('dtype', 'float16', ['float16', 'float32'], 'Storage of weights.')
  _CHECK = flags.DEFINE_multi_string('check_dir', [], 'Real sequences for the precision check.')
  _REF_ROOT = flags.DEFINE_string(
      'reference_root', None, 'reference_predictions.json names files relative to this folder '
      '(default: the folder above the check dirs).')
  _REF_PER_DIR = flags.DEFINE_integer('reference_per_dir', 2, 'Files per check dir (and per class '
                                      'folder) recorded in reference_predictions.json.')


def main(argv):
  if len(argv) == 2 and not _WORKDIR.value:
    print(json.dumps(read_manifest(argv[1]), indent=1))
    return
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  if not _WORKDIR.value or not _OUT.value:
    raise app.UsageError('--workdir and --out are required')
  out = _OUT.value.rstrip(os.sep)
  if os.path.exists(out):
    raise utils.UserError(f'{out} exists; choose another --out (a shipped model is never '
                          'overwritten)')
  outputs.check_dir(out)  # writable, and not inside another model folder: before any work
  dirs = [d.split('=')[0] for d in _CHECK.value]
  for d in dirs:
    if not os.path.isdir(d):
      raise utils.UserError(f'--check_dir {d}: no such folder')
  config, _, _, state, step = loading.load(_WORKDIR.value, _STEP.value)
  src = {'workdir': os.path.relpath(os.path.abspath(_WORKDIR.value)), 'step': step}
  tmp = out + '.partial'
  if os.path.exists(tmp):
    shutil.rmtree(tmp)
  try:  # built in OUT.partial and renamed when complete: OUT is never half-written
    m = save(tmp, config, state.params, state.batch_stats, step, src, _DTYPE.value)
    if dirs:
      worst, changed, n = top_class_check(_WORKDIR.value, tmp, dirs)
      m['precision_check'] = {'files': n, 'max_abs_probability_difference': worst,
                              'top_class_changed': len(changed)}
      utils.write_json(os.path.join(tmp, MANIFEST), m)
      if changed:
        raise utils.UserError(f'stored precision changes the top class of {len(changed)} of '
                              f'{n} files (e.g. {changed[0]}); use --dtype float32')
      root = _REF_ROOT.value or os.path.commonpath(
          [os.path.dirname(os.path.abspath(d)) for d in dirs])
      write_reference(tmp, dirs, root, _REF_PER_DIR.value)
    os.rename(tmp, out)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  print(f'wrote {out}: step {step}, {m["num_params"]:,} parameters, '
        f'{m["weights_bytes"] / 1e6:.1f} MB' + (
            f'; {n} files, top class unchanged, max |dp| {worst:.2g}' if _CHECK.value else ''))


if __name__ == '__main__':
  _define_flags()
  utils.run(main)
