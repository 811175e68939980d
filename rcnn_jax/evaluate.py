"""Sec. 4 on simulated data: accuracy and recall against steps, against magnitude, confusion.

    python -m rcnn_jax.evaluate --workdir W [--workdir W2] [--step S] [--out DIR]

Restores the best checkpoint of each workdir (or ``--step``), rebuilds simulator and model
from the workdir's config.json, and evaluates on a fixed, seeded, class-balanced simulated test
set (``eval.test_size``; distinct seed from validation). Writes ``metrics.json`` and figures in
the style of the paper's Fig. 5-9 to ``--out`` (default: ``W/eval``); with two workdirs (RCNN
and light-curve classifier) the figures show them side by side.
"""

from __future__ import annotations

import json
import os

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from rcnn_jax import config_check
from rcnn_jax import train
from rcnn_jax import utils
from rcnn_jax import workdir as workdir_lib

def _define_flags():
  """Command-line flags, defined only when the module runs as a command."""
  global _WORKDIR, _STEP, _OUT
  _WORKDIR = flags.DEFINE_multi_string('workdir', None, 'Training workdir(s); two for side by side.')
  _STEP = flags.DEFINE_integer('step', None, 'Checkpoint step (default: the best by val loss).')
  _OUT = flags.DEFINE_string('out', None, 'Output directory (default: first workdir/eval).')


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


def recall_by_magnitude(pred, labels, mask, magnitude, edges, num_classes, step=20):
  """[C, bins] recall of each class in magnitude bins at ``step`` (last valid step if shorter),
  NaN where a class has no object in a bin; with the counts [C, bins]."""
  edges = np.asarray(edges, float)
  nb = len(edges) - 1
  b = np.digitize(magnitude, edges) - 1
  inside = (b >= 0) & (b < nb) & np.isfinite(magnitude)
  idx = np.minimum(last_valid_index(mask), step - 1)
  ok = pred[np.arange(len(pred)), idx] == labels
  counts = np.zeros((num_classes, nb))
  hits = np.zeros((num_classes, nb))
  np.add.at(counts, (labels[inside], b[inside]), 1)
  np.add.at(hits, (labels[inside], b[inside]), ok[inside])
  recall = np.where(counts > 0, hits / np.maximum(counts, 1), np.nan)
  return {'bin_edges': edges.tolist(), 'step': int(step), 'recall': recall.tolist(),
          'count': counts.astype(int).tolist()}


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
      'recall_by_magnitude': _nan_to_none(dict(
          recall_by_magnitude(pred, labels, mask, magnitude, magnitude_bins, k,
                              confusion_step), class_names=list(class_names))),
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
  """(config, sim, model, state, step) from a workdir: the best checkpoint unless ``step``.

  Reads only (no lock, nothing created). Each restored checkpoint is verified; a damaged best
  falls back to the same step in ``checkpoints/`` where it is there, else to the newest intact
  checkpoint, each fallback named in one line on stderr.
  """
  if not os.path.isdir(workdir):
    raise utils.UserError(f'{workdir}: no such workdir')
  config = train.load_config(workdir)
  config_check.validate(config, strict=False)
  mesh = train.make_mesh()
  sim, model, tx = train.build(config)
  target = train.init_state(config, sim, model, tx, mesh)
  latest = train.open_manager(workdir, config, 'latest', read_only=True)
  best = train.open_manager(workdir, config, 'best', read_only=True)
  latest_steps = latest.all_steps() if latest is not None else []
  best_steps = best.all_steps() if best is not None else []
  from_latest = lambda s: train.restore_state(latest, s, target)
  from_best = lambda s: train.restore_state(best, s, target)
  latest_dir = os.path.join(workdir, 'checkpoints')
  best_dir = os.path.join(workdir, 'best')

  def done(state, s):
    return config, sim, model, state, s

  if step is not None:
    tried = []
    for steps, restore, d in ((latest_steps, from_latest, latest_dir),
                              (best_steps, from_best, best_dir)):
      if step in steps:
        state, why = workdir_lib.try_restore(restore, d, step)
        if state is not None:
          if tried:
            workdir_lib.warn(tried[-1] + f'; using step {step} of {d}')
          return done(state, step)
        tried.append(why)
    if tried:
      raise utils.UserError(tried[-1] if len(tried) == 1 else ' and '.join(tried))
    raise utils.UserError(f'{workdir}: no checkpoint at step {step} (have: '
                          f'{sorted(set(latest_steps) | set(best_steps))})')

  best_step = best.best_step() if best is not None else None
  if best_step is None:
    best_step = _best_json_step(workdir)  # best/ unreadable or absent: best.json may name it
  if best_step is not None and best_step in best_steps:
    state, why = workdir_lib.try_restore(from_best, best_dir, best_step)
    if state is not None:
      return done(state, best_step)
    more = ('; using the same step in ' + latest_dir if best_step in latest_steps else
            '; using the newest intact checkpoint in ' + latest_dir)
    workdir_lib.warn(why + more)
  if not latest_steps:
    raise utils.UserError(f'{workdir}: no checkpoint to evaluate' if best_step is None else
                          f'{workdir}: no intact checkpoint to evaluate')
  order = sorted(latest_steps, reverse=True)
  if best_step in latest_steps:  # the best step first, then the newest
    order = [best_step] + [s for s in order if s != best_step]
  state, s, _ = workdir_lib.restore_newest_intact(from_latest, latest_dir, order)
  if s != best_step and best_step is not None:
    workdir_lib.warn(f'evaluating step {s} of {latest_dir}, not the best step {best_step}')
  return done(state, s)


def _best_json_step(workdir):
  try:
    with open(os.path.join(workdir, 'best.json')) as f:
      return int(json.load(f)['step'])
  except (OSError, ValueError, KeyError, TypeError):
    return None


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


def _read_jsonl(path):
  """metrics.jsonl's rows, one per step and metric set; partial lines skipped with a warning."""
  return workdir_lib.read_jsonl(path)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  workdirs = _WORKDIR.value or []
  if not workdirs:
    raise app.UsageError('--workdir is required')
  if len(workdirs) > 2:
    raise app.UsageError('at most two --workdir (RCNN and light-curve classifier)')
  for w in workdirs:
    if not os.path.isdir(w):
      raise utils.UserError(f'{w}: no such workdir')
  out = _OUT.value or os.path.join(workdirs[0], 'eval')
  results = [evaluate_workdir(w, _STEP.value) for w in workdirs]
  os.makedirs(out, exist_ok=True)
  name = lambda m: f'metrics_{m["model"]}.json' if len(results) > 1 else 'metrics.json'
  for m in results:
    utils.write_json(os.path.join(out, name(m)), m)
    print(f'{m["workdir"]} ({m["model"]}, step {m["checkpoint_step"]}): accuracy at step '
          f'{m["confusion_step"]} = {m["accuracy_at_confusion_step"]:.3f} on '
          f'{m["num_examples"]} simulated test objects')
  from rcnn_jax import plots  # pylint: disable=g-import-not-at-top
  paths = plots.plot_evaluation(results, out)
  runs = [(m['model'], _read_jsonl(os.path.join(w, 'metrics.jsonl')))
          for m, w in zip(results, workdirs)]
  paths.append(plots.plot_learning_curves(runs, os.path.join(out, 'learning_curves.png')))
  print('wrote ' + ', '.join([os.path.join(out, name(m)) for m in results] + paths))


if __name__ == '__main__':
  _define_flags()
  utils.run(main)
