"""Sec. 4's measures, from predictions: accuracy and recall against steps and magnitude, the
confusion matrix at a step, and the per-class real-data summary (numpy, no model).
"""

from __future__ import annotations

import numpy as np


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


def real_metrics(pred, labels, mask, class_names, step=20):
  """Sec. 4's real-data numbers from per-step predictions [N, T] (pure numpy, tested).

  Recall per class by step and at ``step`` (the last valid step of shorter sequences), over the
  classes present; confusion at ``step`` with rows the classes present and columns all classes;
  mean recall over the classes present.
  """
  pred, labels, mask = np.asarray(pred), np.asarray(labels), np.asarray(mask, bool)
  names = list(class_names)
  present = [c for c in range(len(names)) if (labels == c).any()]
  conf, counts = confusion_at_step(pred, labels, mask, len(names), step)
  rec = recall_by_step(pred, labels, mask, len(names))
  at = {names[c]: float(conf[c, c]) for c in present}
  idx = np.minimum(last_valid_index(mask), step - 1)
  return {
      'class_names': names,
      'classes_present': [names[c] for c in present],
      'num_sequences': int(len(labels)),
      'count_per_class': {names[c]: int((labels == c).sum()) for c in present},
      'steps_per_sequence': mask.sum(1).astype(int).tolist(),
      'confusion_step': int(step),
      'recall_by_step': {names[c]: _nan_to_none(rec[c]) for c in present},
      'sequences_by_step': {names[c]: mask[labels == c].sum(0).astype(int).tolist()
                            for c in present},
      'recall_at_step': at,
      'mean_recall': float(np.mean(list(at.values()))),
      'accuracy_at_step': float(np.mean(pred[np.arange(len(pred)), idx] == labels)),
      'confusion_rows': [names[c] for c in present],
      'confusion': conf[present].tolist(),
      'confusion_counts': counts[present].astype(int).tolist(),
  }
