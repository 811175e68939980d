"""One loader for a trained model, wherever it lies: a training workdir (its best checkpoint, or
``step``) or a shipped model folder (``pretrained.json``; ``shipped.py``).

    config, sim, model, state, step = loading.load(path, step=None)

Every command that reads a model (``evaluate``, ``predict``, ``finetune``, ``export``,
``pretrained``, ``alerts``, ``bench``) and the ``Classifier`` go through it.
"""

from __future__ import annotations

from rcnn_jax.serving import shipped
from rcnn_jax.training import checkpoints


def load(path, step=None):
  """(config, sim, model, state, step) of the model at ``path``: a shipped folder or a workdir."""
  if shipped.is_pretrained(path):
    return shipped.load(path, step)
  return checkpoints.restore_for_eval(path, step)
