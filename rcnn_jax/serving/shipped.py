"""The shipped-model folder format (the library behind ``python -m rcnn_jax.pretrained``): float16
weights (``weights.npz``), the resolved config, a manifest (``pretrained.json``, format
``rcnn_jax.pretrained`` version 1) and the reference predictions that keep it honest.
"""

from __future__ import annotations

import hashlib
import json
import os

import jax
import numpy as np

from rcnn_jax.core import utils
from rcnn_jax.training import checkpoints
from rcnn_jax.training import config_check
from rcnn_jax.training import steps as steps_lib

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
  sim, model, tx = steps_lib.build(config)
  target = jax.eval_shape(
      lambda: steps_lib.init_state(config, sim, model, tx, steps_lib.make_mesh()))
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
  state = steps_lib.TrainState(step=jax.numpy.asarray(int(m['step']), jax.numpy.int32),
                           params=trees['params'], batch_stats=trees['batch_stats'],
                           opt_state=None)
  return config, sim, model, state, int(m['step'])
