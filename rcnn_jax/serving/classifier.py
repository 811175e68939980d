"""A trained RCNN for real sequences: whole ones (``classify``) or, with the methods of
``stream.Streaming``, image by image (``new_state``, ``update``, ``reset``).

Inputs are prepared exactly as in training (``preprocess.prepare``): epochs with seeing above
``config.survey.max_seeing_arcsec`` are dropped, eq. 4 scales to the first kept epoch's zero
point, and the sequence starts at the first kept epoch (``start='first'``) or
``sim.pre_detection`` epochs before the first detection (``start='detection'``, for supernovae
and asteroids; ``preprocess.detection_start``). Sequences are truncated at
``config.sim.max_steps`` steps (the paper's "after 20 inputs"; the model never saw more);
``full_length=True`` classifies every step, the LSTM running on with its carry, an
extrapolation.

Only the image model (``model.kind == 'rcnn'``) is supported: the light-curve classifier needs
per-image seeing, gain and read noise for its optimal photometry, which real files lack.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from rcnn_jax import models
from rcnn_jax.core.errors import UserError
from rcnn_jax.inputs import preprocess
from rcnn_jax.serving import loading
from rcnn_jax.serving import stream
from rcnn_jax.sim import bands as bands_lib
from rcnn_jax.training import checkpoints


class Classifier(stream.Streaming):
  """A trained RCNN for real sequences: whole ones (``classify``) or image by image (``update``)."""

  def __init__(self, config, params, batch_stats, dtype=None):
    """``dtype`` ('float32' or 'bfloat16') overrides config.model.dtype for conv and dense layers;
    the LSTM and its state stay in float32 either way."""
    check_kind(config)
    model_config = ml_collections.ConfigDict(config.model.to_dict())
    if dtype is not None:
      model_config.dtype = dtype
    self.config = config
    self.class_names = tuple(str(c) for c in config.sim.class_names)
    self.n_w = int(config.sim.n_w)
    self.max_steps = int(config.sim.max_steps)
    self.stamp_size = int(config.sim.stamp_size)
    self.bands = bands_lib.survey_bands(config.get('survey', None))
    self.rules = preprocess.Rules.from_config(config)
    self.dtype = str(model_config.dtype)
    self.model = models.build_model(model_config, len(self.class_names))
    self.params = params
    self.batch_stats = batch_stats
    self.checkpoint_step = None  # set by from_workdir
    self._chunk = jax.jit(self._chunk_fn)
    self._update = jax.jit(self._update_fn)
    self._shift = jax.jit(self._shift_fn)

  @classmethod
  def from_workdir(cls, workdir, step=None, dtype=None) -> 'Classifier':
    """The best checkpoint of a training workdir (or ``step``)."""
    # The simulator and the checkpoints only when a workdir is read (not for bench or a broker).
    config = checkpoints.load_config(workdir)
    check_kind(config)
    config, _, _, state, step = loading.load(workdir, step)
    out = cls(config, state.params, state.batch_stats, dtype)
    out.checkpoint_step = int(step)
    return out

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def _variables(self):
    return {'params': self.params, 'batch_stats': self.batch_stats}

  def _initial_carry(self, n):
    z = jnp.zeros((n, self.model.lstm_size), jnp.float32)
    return (z, z)

  # Whole sequences ----------------------------------------------------------------------------

  def _chunk_fn(self, variables, x, time_gaps, mask, carry):
    logits, carry = self.model.apply(variables, x, time_gaps, mask, carry, method='step')
    return jax.nn.softmax(logits.astype(jnp.float32), axis=-1), carry

  def classify(self, seqs, batch_size=64, max_steps=None, start='first',
               full_length=False, warn=None) -> list[np.ndarray]:
    """Per sequence, probabilities [num_steps, C] over its first ``config.sim.max_steps`` steps.

    ``max_steps`` overrides that limit; ``full_length`` classifies every step instead.
    ``start``: 'first', 'detection' or a list of either per sequence (``preprocess.prepare``).
    Sequences are batched by length into [batch, config.sim.max_steps] chunks (zero-padded,
    masked) run one after another with the LSTM carry, so every call has the same shapes.
    """
    bands_lib.require_one_band(self.config, 'Classifier.classify (whole real sequences)')
    seqs = list(seqs)
    if not seqs:
      return []
    starts = start if isinstance(start, (list, tuple)) else [start] * len(seqs)
    limit = None if full_length else (self.max_steps if max_steps is None else int(max_steps))
    return self.classify_prepared([self.prepare(s, limit, st, warn)
                                   for s, st in zip(seqs, starts)], batch_size)

  def classify_prepared(self, preps, batch_size=64) -> list[np.ndarray]:
    """``classify`` on inputs already made by ``prepare`` (one dict per sequence), so that a
    command can prepare each file on its own and report the ones that fail."""
    bands_lib.require_one_band(self.config, 'Classifier.classify (whole real sequences)')
    inputs = [(d['images'][:d['num_steps']], d['time_gaps'][:d['num_steps']],
               d['mask'][:d['num_steps']]) for d in preps]
    if not inputs:
      return []
    lengths = np.array([len(m) for _, _, m in inputs])
    order = np.argsort(-lengths, kind='stable')  # similar lengths share a batch: less padding
    b = int(min(batch_size, _next_pow2(len(inputs))))
    t = self.max_steps
    s, n_w = self.stamp_size, self.n_w
    out = [None] * len(inputs)
    variables = self._variables()
    for start in range(0, len(inputs), b):
      idx = order[start:start + b]
      total = -(-int(lengths[idx].max()) // t) * t
      x = np.zeros((b, total, s, s, n_w), np.float32)
      gaps = np.zeros((b, total, n_w), np.float32)
      mask = np.zeros((b, total), bool)
      for row, i in enumerate(idx):
        images, g, m = inputs[i]
        x[row, :len(m)], gaps[row, :len(m)], mask[row, :len(m)] = images, g, m
      carry = self._initial_carry(b)
      probs = []
      for c in range(0, total, t):
        p, carry = self._chunk(variables, x[:, c:c + t], gaps[:, c:c + t], mask[:, c:c + t],
                               carry)
        probs.append(p)
      probs = np.concatenate(jax.device_get(probs), axis=1)
      for row, i in enumerate(idx):
        out[i] = probs[row, :lengths[i]]
    return out

  def prepare(self, seq, max_steps='config', start='first', warn=None) -> dict:
    """``preprocess.prepare`` with this model's rules (seeing cut, zp_ref, start, window)."""
    if seq.stamps.shape[1:] != (self.stamp_size, self.stamp_size):
      raise UserError(f'{seq.name}: stamps are {seq.stamps.shape[1]}x{seq.stamps.shape[2]}, '
                      f'the model takes {self.stamp_size}x{self.stamp_size}')
    return preprocess.prepare(seq, self.rules, start=start, max_steps=max_steps, warn=warn)

  # Incremental (alert-broker) mode --------------------------------------------------------------


def check_kind(config):
  if config.model.kind != 'rcnn':
    raise UserError(f"prediction needs the image model (model.kind 'rcnn'), got "
                    f"{config.model.kind!r}: the light-curve classifier's photometry "
                    'needs per-image seeing, gain and read noise')


def _next_pow2(n):
  return 1 << max(int(n) - 1, 0).bit_length()
