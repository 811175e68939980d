"""Sec. 4 on simulated data: accuracy and recall against steps, against magnitude, confusion.

    python -m rcnn_jax.evaluate --workdir W [--workdir W2] [--step S] [--out DIR]
        [--tfds PREPARED_DATASET_DIR [--tfds_split SPLIT]]

Restores the best checkpoint of each workdir (or ``--step``), rebuilds simulator and model
from the workdir's config.json, and evaluates on a fixed, seeded, class-balanced simulated test
set (``eval.test_size``; distinct seed from validation). Writes ``metrics.json`` and figures in
the style of the paper's Fig. 5-9 to ``--out`` (default: ``W/eval``); with two workdirs (RCNN
and light-curve classifier) the figures show them side by side. ``--tfds`` evaluates on a
prepared ``hits_sim`` split (default 'test') or ``hits_real`` split (default 'dev') instead
(``evaluate_tfds``).
"""

from __future__ import annotations

import json
import os

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from rcnn_jax import train
from rcnn_jax import utils

def _define_flags():
  """Command-line flags, defined only when the module runs as a command."""
  global _WORKDIR, _STEP, _OUT, _TFDS, _TFDS_SPLIT
  _WORKDIR = flags.DEFINE_multi_string('workdir', None, 'Training workdir(s); two for side by side.')
  _STEP = flags.DEFINE_integer('step', None, 'Checkpoint step (default: the best by val loss).')
  _OUT = flags.DEFINE_string('out', None, 'Output directory (default: first workdir/eval).')
  _TFDS = flags.DEFINE_string('tfds', None, 'Evaluate on a prepared hits_sim or hits_real '
                              'dataset folder (DATA_DIR/<name>/<config>/<version>) instead.')
  _TFDS_SPLIT = flags.DEFINE_string('tfds_split', None, "With --tfds: the split (default: "
                                    "'test' for hits_sim, 'dev' for hits_real).")


# ----------------------------------------------------------------------------------------------
# Metrics on logits (pure numpy; tested on fixed logits)


def last_valid_index(mask):
  return np.maximum(mask.sum(1) - 1, 0)


def accuracy_by_step(pred, labels, mask):
  """Accuracy after s = 1..T steps over the sequences that have at least s steps."""
  correct = (pred == labels[:, None]) & mask
  n = mask.sum(0)
  return np.where(n > 0, correct.sum(0) / np.maximum(n, 1), np.nan)


def recall_by_step(pred, labels, mask, num_classes):
  """[C, T]: recall of each class after s steps (sequences with >= s steps)."""
  out = np.full((num_classes, mask.shape[1]), np.nan)
  for c in range(num_classes):
    sel = labels == c
    if sel.any():
      out[c] = accuracy_by_step(pred[sel], labels[sel], mask[sel])
  return out


def confusion_at_step(pred, labels, mask, num_classes, step):
  """Row-normalised confusion (rows: true labels) at ``step`` (1-based), or at the last valid
  step for shorter sequences."""
  idx = np.minimum(last_valid_index(mask), step - 1)
  p = pred[np.arange(len(pred)), idx]
  counts = np.zeros((num_classes, num_classes))
  np.add.at(counts, (labels, p), 1)
  rows = counts.sum(1, keepdims=True)
  return np.where(rows > 0, counts / np.maximum(rows, 1), 0.0), counts


def accuracy_by_magnitude(pred, labels, mask, magnitude, edges, steps=(1, 5, 10, 20)):
  """Accuracy in magnitude bins after each of ``steps`` (last valid step if shorter)."""
  edges = np.asarray(edges, float)
  b = np.digitize(magnitude, edges) - 1
  inside = (b >= 0) & (b < len(edges) - 1) & np.isfinite(magnitude)
  out = {'bin_edges': edges.tolist(), 'steps': list(steps), 'accuracy': [], 'count': []}
  counts = np.bincount(b[inside], minlength=len(edges) - 1)
  out['count'] = counts.tolist()
  for s in steps:
    idx = np.minimum(last_valid_index(mask), s - 1)
    ok = pred[np.arange(len(pred)), idx] == labels
    hits = np.bincount(b[inside], weights=ok[inside], minlength=len(edges) - 1)
    out['accuracy'].append(np.where(counts > 0, hits / np.maximum(counts, 1), np.nan).tolist())
  return out


def compute_metrics(logits, labels, mask, magnitude, class_names, magnitude_bins,
                    confusion_step=20):
  """All of Sec. 4's simulated-data metrics from per-step logits [N, T, C]."""
  mask = np.asarray(mask, bool)
  pred = np.argmax(logits, -1)
  k = len(class_names)
  conf, counts = confusion_at_step(pred, labels, mask, k, confusion_step)
  rec = recall_by_step(pred, labels, mask, k)
  idx = np.minimum(last_valid_index(mask), confusion_step - 1)
  final = pred[np.arange(len(pred)), idx] == labels
  return {
      'class_names': list(class_names),
      'num_examples': int(len(labels)),
      'accuracy_by_step': _nan_to_none(accuracy_by_step(pred, labels, mask)),
      'sequences_by_step': mask.sum(0).tolist(),
      'recall_by_step': {n: _nan_to_none(rec[c]) for c, n in enumerate(class_names)},
      'confusion_step': confusion_step,
      'confusion': conf.tolist(),
      'confusion_counts': counts.astype(int).tolist(),
      'accuracy_at_confusion_step': float(final.mean()),
      'recall_at_confusion_step': {n: float(conf[c, c]) for c, n in enumerate(class_names)},
      'accuracy_by_magnitude': _nan_to_none(accuracy_by_magnitude(pred, labels, mask,
                                                                  magnitude, magnitude_bins)),
  }


def _nan_to_none(x):
  if isinstance(x, dict):
    return {k: _nan_to_none(v) for k, v in x.items()}
  if isinstance(x, (list, tuple, np.ndarray)):
    return [_nan_to_none(v) for v in np.asarray(x, dtype=object).tolist()] if np.ndim(x) else x
  if isinstance(x, float) and np.isnan(x):
    return None
  return x


# ----------------------------------------------------------------------------------------------
# Running a workdir's model over the test set


def restore_for_eval(workdir, step=None):
  """(config, sim, model, state) from a workdir: the best checkpoint unless ``step`` is given."""
  config = train.load_config(workdir)
  mesh = train.make_mesh()
  sim, model, tx = train.build(config)
  target = train.init_state(config, sim, model, tx, mesh)
  latest, best = train.checkpoint_managers(workdir, config)
  if step is None:
    manager, step = best, best.best_step()
    if step is None:
      manager, step = latest, latest.latest_step()
  else:
    manager = latest if step in latest.all_steps() else best
    if step not in manager.all_steps():
      raise utils.UserError(f'{workdir}: no checkpoint at step {step} (have: '
                            f'{sorted(set(latest.all_steps()) | set(best.all_steps()))})')
  if step is None:
    raise utils.UserError(f'{workdir}: no checkpoint to evaluate')
  return config, sim, model, train.restore_state(manager, step, target), step


def predict_test_set(config, sim, model, state, progress=True):
  """Per-step logits, labels, masks and magnitudes of the seeded test set (padding dropped)."""
  mesh = train.make_mesh()
  eval_step = train.make_eval_step(config, sim, model, mesh, with_logits=True)
  key = jax.random.fold_in(jax.random.key(config.seed), config.eval.test_seed_offset)
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
  config, sim, model, state, step = restore_for_eval(workdir, step)
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
  sequences through ``predict.Classifier``, magnitudes unknown). ``path`` is the prepared
  folder (DATA_DIR/<name>/<config>/<version>)."""
  from rcnn_jax.datasets import reading  # pylint: disable=g-import-not-at-top
  real = reading.producer(path).endswith('hits_real')
  config = train.load_config(workdir)
  names = tuple(config.sim.class_names)
  if real:
    from rcnn_jax import predict  # pylint: disable=g-import-not-at-top
    seqs, labels, data_names = reading.load_real_split(path, split or 'dev')
    clf = predict.Classifier.from_workdir(workdir, step)
    step = clf.checkpoint_step
    probs = clf.classify(seqs, batch_size=config.eval.batch_size)
    t = max(len(p) for p in probs)
    logits = np.zeros((len(probs), t, len(names)), np.float32)
    mask = np.zeros((len(probs), t), bool)
    for i, p in enumerate(probs):
      logits[i, :len(p)], mask[i, :len(p)] = np.log(np.maximum(p, 1e-30)), True
    magnitude = np.full(len(probs), np.nan)
  else:
    config, sim, model, state, step = restore_for_eval(workdir, step)
    keys = ('images', 'time_gaps', 'mask', 'raw_adu', 'sky_adu', 'seeing_arcsec', 'gain',
            'read_noise_e', 'zero_point', 'zero_point_ref', 'epoch_valid', 'label', 'magnitude')
    eb = int(config.eval.batch_size)
    n, data_names, batches = reading.sim_batches(path, split or 'test', eb, keys)
    _check_classes(path, data_names, names)
    apply = jax.jit(lambda v, b: model.apply(v, train.model_inputs(b, sim, config.model.kind),
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
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  workdirs = _WORKDIR.value or []
  if not workdirs:
    raise app.UsageError('--workdir is required')
  if len(workdirs) > 2:
    raise app.UsageError('at most two --workdir (RCNN and light-curve classifier)')
  out = _OUT.value or os.path.join(workdirs[0], 'eval')
  os.makedirs(out, exist_ok=True)
  if _TFDS.value:
    results = [evaluate_tfds(w, _TFDS.value, _TFDS_SPLIT.value, _STEP.value) for w in workdirs]
  else:
    results = [evaluate_workdir(w, _STEP.value) for w in workdirs]
  name = lambda m: f'metrics_{m["model"]}.json' if len(results) > 1 else 'metrics.json'
  for m in results:
    utils.write_json(os.path.join(out, name(m)), m)
    print(f'{m["workdir"]} ({m["model"]}, step {m["checkpoint_step"]}): accuracy at step '
          f'{m["confusion_step"]} = {m["accuracy_at_confusion_step"]:.3f} on '
          f'{m["num_examples"]} ' + (m['data'] if 'data' in m else 'simulated test objects'))
  from rcnn_jax import plots  # pylint: disable=g-import-not-at-top
  paths = plots.plot_evaluation(results, out)
  runs = [(m['model'], _read_jsonl(os.path.join(w, 'metrics.jsonl')))
          for m, w in zip(results, workdirs)]
  paths.append(plots.plot_learning_curves(runs, os.path.join(out, 'learning_curves.png')))
  print('wrote ' + ', '.join([os.path.join(out, name(m)) for m in results] + paths))


if __name__ == '__main__':
  _define_flags()
  utils.run(main)
