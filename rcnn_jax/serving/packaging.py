"""Checks made when a model folder is packaged (``python -m rcnn_jax.pretrained``): the packaged
float16 model must call the same top class as its source on real files, and a reference of its
probabilities is kept beside it for the test that the shipped model's predictions stay put.
"""

from __future__ import annotations

import os

import numpy as np

from rcnn_jax.core import utils
from rcnn_jax.inputs import realdata
from rcnn_jax.serving.classifier import Classifier


def top_class_check(workdir, out, dirs, batch=64):
  """(max |p32 - p_stored|, files whose step-20 top class changed, files) on ``dirs``."""
  files = realdata.expand_inputs(list(dirs))
  ref = Classifier.from_workdir(workdir, None)
  new = Classifier.from_workdir(out, None)
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
  seqs = [realdata.load_sequence(f, classifier.stamp_size, n_w=classifier.n_w) for f in files]
  return np.stack([p[-1] for p in classifier.classify(seqs)])


def write_reference(out, dirs, root, per_dir):
  """reference_predictions.json: the stored model's last-step probabilities on the first
  ``per_dir`` files of each folder (sorted), for the stability test of the shipped model."""
  files = []
  for d in dirs:
    found = realdata.expand_inputs([d])
    by_folder = {}
    for f in found:
      by_folder.setdefault(os.path.dirname(f), []).append(f)
    for folder in sorted(by_folder):
      files += sorted(by_folder[folder])[:per_dir]
  clf = Classifier.from_workdir(out)
  probs = last_probs(clf, files)
  ref = {'files': [os.path.relpath(f, root) for f in files],
         'probabilities': np.round(probs.astype(np.float64), 7).tolist(),
         'top_class': [clf.class_names[i] for i in probs.argmax(-1)]}
  utils.write_json(os.path.join(out, 'reference_predictions.json'), ref)
  return ref
