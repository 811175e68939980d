"""A trained model as a small folder that ships with the project (``pretrained/hits2015_rcnn/``).

    python -m rcnn_jax.pretrained --workdir W --out pretrained/NAME [--step S]
        [--dtype float16|float32] [--check_dir DIR ...] [--reference_root DIR]
    python -m rcnn_jax.pretrained pretrained/NAME        # prints the manifest, or why it's refused

A folder holds ``config.json`` (the training run's resolved config, as in a workdir),
``weights.npz`` (parameters and batch-norm statistics only, no optimizer state: one array per
leaf, named by its path, e.g. ``params/Conv_0/kernel``) and ``pretrained.json`` (format,
source run and step, how each array is stored, the SHA-256 of ``weights.npz``, and the
precision check below). ``checkpoints.restore_for_eval`` (so ``predict``, ``evaluate``,
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

import hashlib
import json
import os
import shutil

from absl import app
from absl import flags
import jax
import numpy as np

from rcnn_jax import outputs
from rcnn_jax import utils

FORMAT = 'rcnn_jax.pretrained'
FORMAT_VERSION = 1
MANIFEST = 'pretrained.json'
WEIGHTS = 'weights.npz'
CONFIG = 'config.json'
COLLECTIONS = ('params', 'batch_stats')


def is_pretrained(path) -> bool:
  return os.path.isfile(os.path.join(path, MANIFEST))


def _flatten(tree, prefix):
  out = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    name = '/'.join([prefix] + [str(getattr(k, 'key', getattr(k, 'idx', k))) for k in path])
    out[name] = np.asarray(jax.device_get(leaf))
  return out


def _stored_dtype(name, array, dtype):
  """float16 for the large weight arrays (kernels, dense and LSTM matrices), float32 else."""
  if dtype == 'float32' or not name.startswith('params/') or array.ndim < 2:
    return np.float32
  return np.float16


def sha256(path) -> str:
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      h.update(block)
  return h.hexdigest()


def save(out, config, params, batch_stats, step, source=None, dtype='float16', extra=None):
  """Writes a pretrained folder; returns its manifest. Refuses an existing one (never
  overwrites a shipped model)."""
  if dtype not in ('float16', 'float32'):
    raise utils.UserError(f'--dtype {dtype!r}: must be float16 or float32')
  if os.path.exists(os.path.join(out, MANIFEST)):
    raise utils.UserError(f'{out} already holds a pretrained model; choose another --out')
  os.makedirs(out, exist_ok=True)
  arrays = {**_flatten(params, 'params'), **_flatten(batch_stats, 'batch_stats')}
  stored = {k: v.astype(_stored_dtype(k, v, dtype)) for k, v in arrays.items()}
  utils.atomic_savez(os.path.join(out, WEIGHTS), **stored)
  utils.write_json(os.path.join(out, CONFIG), json.loads(config.to_json_best_effort()))
  n_params = int(sum(v.size for k, v in arrays.items() if k.startswith('params/')))
  manifest = {
      'format': FORMAT, 'format_version': FORMAT_VERSION, 'step': int(step),
      'source': source, 'model_kind': str(config.model.kind),
      'class_names': list(config.sim.class_names), 'num_params': n_params,
      'storage': {'float16': sorted(k for k, v in stored.items() if v.dtype == np.float16),
                  'float32': 'every other array'},
      'max_abs_rounding': float(max(np.abs(stored[k].astype(np.float32) - v).max()
                                    for k, v in arrays.items())),
      'weights_sha256': sha256(os.path.join(out, WEIGHTS)),
      'weights_bytes': os.path.getsize(os.path.join(out, WEIGHTS)),
  }
  manifest.update(extra or {})
  utils.write_json(os.path.join(out, MANIFEST), manifest)
  return manifest


def read_manifest(path) -> dict:
  """The manifest, or a one-line UserError naming what is wrong."""
  mpath = os.path.join(path, MANIFEST)
  try:
    with open(mpath) as f:
      m = json.load(f)
  except (OSError, ValueError) as e:
    raise utils.UserError(f'{mpath} cannot be read ({e})') from None
  if not isinstance(m, dict) or m.get('format') != FORMAT:
    raise utils.UserError(f'{mpath}: not a {FORMAT} manifest')
  if m.get('format_version') != FORMAT_VERSION:
    raise utils.UserError(f'{mpath}: format version {m.get("format_version")!r}; this code '
                          f'reads version {FORMAT_VERSION}')
  return m


def load(path, step=None):
  """(config, sim, model, state, step) as ``checkpoints.restore_for_eval`` returns them; the
  state's ``opt_state`` is None (no optimizer state is shipped)."""
  from rcnn_jax import config_check  # pylint: disable=g-import-not-at-top
  from rcnn_jax import checkpoints  # pylint: disable=g-import-not-at-top
  from rcnn_jax import common  # pylint: disable=g-import-not-at-top
  m = read_manifest(path)
  if step is not None and int(step) != int(m['step']):
    raise utils.UserError(f'{path} holds step {m["step"]} only, not {step}')
  config = checkpoints.load_config(path)
  config_check.validate(config, strict=False)
  wpath = os.path.join(path, WEIGHTS)
  if not os.path.isfile(wpath):
    raise utils.UserError(f'{wpath}: missing')
  if m.get('weights_sha256') and sha256(wpath) != m['weights_sha256']:
    raise utils.UserError(f'{wpath} does not match the SHA-256 of {MANIFEST} (damaged or '
                          'replaced)')
  sim, model, tx = common.build(config)
  target = jax.eval_shape(lambda: common.init_state(config, sim, model, tx, common.make_mesh()))
  with np.load(wpath, allow_pickle=False) as z:
    stored = {k: z[k] for k in z.files}
  trees = {}
  for coll in COLLECTIONS:
    tree = getattr(target, coll)
    leaves = []
    for p, leaf in jax.tree_util.tree_leaves_with_path(tree):
      name = '/'.join([coll] + [str(getattr(k, 'key', getattr(k, 'idx', k))) for k in p])
      if name not in stored:
        raise utils.UserError(f'{wpath} does not fit the model of {CONFIG}: no {name}')
      a = stored.pop(name)
      if tuple(a.shape) != tuple(leaf.shape):
        raise utils.UserError(f'{wpath} does not fit the model of {CONFIG}: {name} is '
                              f'{a.shape}, the model needs {tuple(leaf.shape)}')
      leaves.append(jax.numpy.asarray(a, leaf.dtype))
    trees[coll] = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(tree), leaves)
  if stored:
    raise utils.UserError(f'{wpath} does not fit the model of {CONFIG}: unexpected '
                          f'{sorted(stored)[0]}')
  state = common.TrainState(step=jax.numpy.asarray(int(m['step']), jax.numpy.int32),
                           params=trees['params'], batch_stats=trees['batch_stats'],
                           opt_state=None)
  return config, sim, model, state, int(m['step'])


def top_class_check(workdir, out, dirs, batch=64):
  """(max |p32 - p_stored|, files whose step-20 top class changed, files) on ``dirs``."""
  from rcnn_jax import predict  # pylint: disable=g-import-not-at-top
  from rcnn_jax import realdata  # pylint: disable=g-import-not-at-top
  files = realdata.expand_inputs(list(dirs))
  ref = predict.Classifier.from_workdir(workdir, None)
  new = predict.Classifier.from_workdir(out, None)
  worst, changed = 0.0, []
  for i in range(0, len(files), batch):
    chunk = files[i:i + batch]
    a = last_probs(ref, chunk)
    b = last_probs(new, chunk)
    worst = max(worst, float(np.abs(a - b).max()))
    changed += [f for f, x, y in zip(chunk, a, b) if x.argmax() != y.argmax()]
  return worst, changed, len(files)


def last_probs(classifier, files):
  """[N, C] probabilities at each file's last step (at most sim.max_steps)."""
  from rcnn_jax import realdata  # pylint: disable=g-import-not-at-top
  seqs = [realdata.load_sequence(f, classifier.stamp_size, n_w=classifier.n_w) for f in files]
  return np.stack([p[-1] for p in classifier.classify(seqs)])


def write_reference(out, dirs, root, per_dir):
  """reference_predictions.json: the stored model's last-step probabilities on the first
  ``per_dir`` files of each folder (sorted), for the stability test of the shipped model."""
  from rcnn_jax import predict  # pylint: disable=g-import-not-at-top
  from rcnn_jax import realdata  # pylint: disable=g-import-not-at-top
  files = []
  for d in dirs:
    found = realdata.expand_inputs([d])
    by_folder = {}
    for f in found:
      by_folder.setdefault(os.path.dirname(f), []).append(f)
    for folder in sorted(by_folder):
      files += sorted(by_folder[folder])[:per_dir]
  clf = predict.Classifier.from_workdir(out)
  probs = last_probs(clf, files)
  ref = {'files': [os.path.relpath(f, root) for f in files],
         'probabilities': np.round(probs.astype(np.float64), 7).tolist(),
         'top_class': [clf.class_names[i] for i in probs.argmax(-1)]}
  utils.write_json(os.path.join(out, 'reference_predictions.json'), ref)
  return ref


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
  from rcnn_jax import checkpoints  # pylint: disable=g-import-not-at-top
  out = _OUT.value.rstrip(os.sep)
  if os.path.exists(out):
    raise utils.UserError(f'{out} exists; choose another --out (a shipped model is never '
                          'overwritten)')
  outputs.check_dir(out)  # writable, and not inside another model folder: before any work
  dirs = [d.split('=')[0] for d in _CHECK.value]
  for d in dirs:
    if not os.path.isdir(d):
      raise utils.UserError(f'--check_dir {d}: no such folder')
  config, _, _, state, step = checkpoints.restore_for_eval(_WORKDIR.value, _STEP.value)
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
