"""Sec. 4 on simulated data: a workdir's model on the fixed, seeded, class-balanced simulated
test set (``eval.test_size``), or on a prepared ``hits_sim`` / ``hits_real`` split.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from rcnn_jax.core import utils
from rcnn_jax.datasets import reading
from rcnn_jax.evaluation.metrics import compute_metrics
from rcnn_jax.evaluation.real import require_real_compatible
from rcnn_jax.serving import loading
from rcnn_jax.serving.classifier import Classifier
from rcnn_jax.training import checkpoints
from rcnn_jax.training import steps as steps_lib
from rcnn_jax.training import workdir as workdir_lib


def predict_test_set(config, sim, model, state, progress=True):
  """Per-step logits, labels, masks and magnitudes of the seeded test set (padding dropped)."""
  mesh = steps_lib.make_mesh()
  eval_step = steps_lib.make_eval_step(config, sim, model, mesh, with_logits=True)
  key = steps_lib.test_key(config)
  n, eb = config.eval.test_size, config.eval.batch_size
  parts = []
  for off in utils.progress(range(0, n, eb), total=-(-n // eb), desc='evaluate',
                            disable=not progress):
    _, logits, batch = eval_step(state.params, state.batch_stats, key, jnp.int32(off),
                                 jnp.int32(n))
    keep = min(eb, n - off)
    parts.append(jax.device_get({'logits': logits[:keep], 'label': batch['label'][:keep],
                                 'mask': batch['mask'][:keep],
                                 'magnitude': batch['magnitude'][:keep]}))
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def evaluate_workdir(workdir, step=None, progress=True):
  config, sim, model, state, step = loading.load(workdir, step)
  out = predict_test_set(config, sim, model, state, progress)
  m = compute_metrics(out['logits'], out['label'], out['mask'], out['magnitude'],
                      sim.class_names, config.eval.magnitude_bins,
                      confusion_step=min(20, sim.max_steps))
  m['checkpoint_step'] = int(step)
  m['model'] = config.model.kind
  m['workdir'] = workdir
  return m


def evaluate_tfds(workdir, path, split=None, step=None):
  """Metrics of a workdir's model on a prepared tfds split: ``hits_sim`` (default split 'test';
  its test split is this module's simulated test set) or ``hits_real`` (default 'dev'; real
  sequences through ``Classifier``, magnitudes unknown). ``path`` is the prepared
  folder (DATA_DIR/<name>/<config>/<version>)."""
  real = reading.producer(path).endswith('hits_real')
  config = checkpoints.load_config(workdir)
  names = tuple(config.sim.class_names)
  if real:
    require_real_compatible(workdir, 'evaluate --tfds on a hits_real split')
    seqs, labels, data_names = reading.load_real_split(path, split or 'dev')
    clf = Classifier.from_workdir(workdir, step)
    step = clf.checkpoint_step
    probs = clf.classify(seqs, batch_size=config.eval.batch_size)
    t = max(len(p) for p in probs)
    logits = np.zeros((len(probs), t, len(names)), np.float32)
    mask = np.zeros((len(probs), t), bool)
    for i, p in enumerate(probs):
      logits[i, :len(p)], mask[i, :len(p)] = np.log(np.maximum(p, 1e-30)), True
    magnitude = np.full(len(probs), np.nan)
  else:
    config, sim, model, state, step = loading.load(workdir, step)
    keys = ('images', 'time_gaps', 'mask', 'raw_adu', 'sky_adu', 'seeing_arcsec', 'gain',
            'read_noise_e', 'zero_point', 'zero_point_ref', 'epoch_valid', 'label', 'magnitude')
    eb = int(config.eval.batch_size)
    n, data_names, batches = reading.sim_batches(path, split or 'test', eb, keys)
    _check_classes(path, data_names, names)
    apply = jax.jit(lambda v, b: model.apply(v, steps_lib.model_inputs(b, sim, config.model.kind),
                                             b['time_gaps'], b['mask'], train=False))
    variables = {'params': state.params, 'batch_stats': state.batch_stats}
    parts = []
    for b in utils.progress(batches, total=-(-n // eb), desc='evaluate'):
      if b['mask'].shape[1] != sim.max_steps or b['images'].shape[2] != sim.stamp_size:
        raise utils.UserError(f'{path}: sequences of {b["mask"].shape[1]} steps of '
                              f'{b["images"].shape[2]}-pixel stamps; the model takes '
                              f'{sim.max_steps} steps of {sim.stamp_size}')
      k = len(b['label'])
      idx = np.minimum(np.arange(eb), k - 1)  # the last batch padded (repeats), then cut
      logits = np.asarray(apply(variables, {key: b[key][idx] for key in keys[:-2]}))[:k]
      parts.append({'logits': logits, 'label': b['label'], 'mask': b['mask'],
                    'magnitude': b['magnitude']})
    logits, labels, mask, magnitude = (np.concatenate([p[key] for p in parts])
                                       for key in ('logits', 'label', 'mask', 'magnitude'))
  _check_classes(path, data_names, names)
  m = compute_metrics(logits, labels, mask, magnitude, names, config.eval.magnitude_bins,
                      confusion_step=min(20, int(config.sim.max_steps)))
  m.update(checkpoint_step=int(step), model=config.model.kind, workdir=workdir,
           data=f'{path}:{split or ("dev" if real else "test")}')
  return m


def _check_classes(path, data_names, names):
  if tuple(data_names) != tuple(names):
    raise utils.UserError(f'{path}: classes {", ".join(data_names)} differ from the model\'s '
                          f'{", ".join(names)}')


def _read_jsonl(path):
  """metrics.jsonl's rows, one per step and metric set; partial lines skipped with a warning."""
  return workdir_lib.read_jsonl(path)
