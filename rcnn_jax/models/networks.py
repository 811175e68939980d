"""The RCNN of Table 3 and the light-curve classifier of Sec. 3.3 (Flax linen).

Both map per-step inputs [B, T, ...], time gaps [B, T, n_w] and a step mask [B, T] to logits
[B, T, num_classes]. The recurrent head is shared: dense (ReLU, dropout), the n_w time gaps
concatenated, an LSTM with a zero initial state scanned over the steps (padded steps leave
its state unchanged), and a dense softmax layer at every step.

Model kinds: ``MODELS`` maps ``config.model.kind`` to a class ('rcnn': ``RCNN``, 'lc':
``LightCurveClassifier``), each a ``SequenceClassifier`` with its own ``encode``;
``build_model`` reads the class's fields from ``config.model`` by name. A new model is a
subclass registered with ``@register('kind')``.

Speed (measurements: experiments/speed/README.md). The layers here are plain Linen; the fast
CPU formulations are in ``rcnn_jax/models/kernels/`` (``kernels.conv``: 3 x 3 convolutions as
row-patch matmuls, im2col and Winograd; ``kernels.fused``: encoder layers fused with their
batch norm, ReLU and pool, run over the batch in chunks, with valid steps sorted first so that
chunks of padding steps are skipped). They are functions of the same parameters, picked by
``config.model.conv_impl`` and ``encoder_chunk`` ('auto' / -1: the kernels on the CPU, plain
``lax.conv_general_dilated`` over the whole batch elsewhere), and tests/test_models.py tests
each equal to the plain layers (outputs, batch statistics, gradients). The LSTM's input
projection is one matmul over all steps; only the recurrent matmul runs inside the scan.
Batch norm statistics use valid steps only.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rcnn_jax.core.errors import UserError
from rcnn_jax.models.kernels import fused
from rcnn_jax.models.kernels.fused import fused_conv_layer
from rcnn_jax.models.kernels.fused import layer_input
from rcnn_jax.models.kernels.fused import max_pool_2x2
from rcnn_jax.models.layers import Conv3x3
from rcnn_jax.models.layers import MaskedBatchNorm
from rcnn_jax.models.layers import MaskedLSTM
from rcnn_jax.models.layers import batch_moments
from rcnn_jax.models.layers import resolve_conv_impl
from rcnn_jax.models.layers import resolve_encoder_chunk


class ImageEncoder(nn.Module):
  """Table 3 up to the flattened features: BN, blocks of (conv, BN, ReLU) x k and max pool."""
  filters: int
  convs_per_block: int
  num_blocks: int
  conv_impl: str
  dtype: Any
  bn_momentum: float
  input_asinh_scale: float
  encoder_chunk: int

  @nn.compact
  def __call__(self, x, mask, train: bool):
    """x [N, H, W, n_w], mask [N] -> [N, features]."""
    if self.input_asinh_scale > 0:
      x = jnp.arcsinh(x / self.input_asinh_scale)
    bn = lambda name: MaskedBatchNorm(momentum=self.bn_momentum, epsilon=1e-3, name=name)
    conv = lambda blk, j: Conv3x3(self.filters, self.conv_impl, self.dtype,
                                  name=f'conv{blk}_{j}')
    chunk = resolve_encoder_chunk(self.encoder_chunk)
    if chunk <= 0 or resolve_conv_impl(self.conv_impl) != 'rows':
      x = bn('bn_input')(x, mask, train)
      for blk in range(self.num_blocks):
        for j in range(self.convs_per_block):
          x = conv(blk, j)(x)
          x = nn.relu(bn(f'bn{blk}_{j}')(x.astype(jnp.float32), mask, train))
        x = max_pool_2x2(x)
      return x.reshape(x.shape[0], -1)
    # The same layers, each fused with the batch norm, ReLU (and pool) before it and run over
    # the batch in chunks (fused_conv_layer). Valid steps first (a stable sort), so that the
    # chunks of padding steps, 43 % of a paper batch, are whole and skipped; the features go
    # back to their rows at the end.
    order = jnp.argsort(jnp.logical_not(mask), stable=True)
    x, mask = x[order], mask[order]
    w = mask.astype(jnp.float32)
    layers = [(blk, j) for blk in range(self.num_blocks) for j in range(self.convs_per_block)]
    # What precedes each convolution: the input batch norm, then batch norm and ReLU, and a
    # max pool after a block's last convolution (``layer_input``); the same after the last.
    modes = ['affine'] + ['relu_pool' if j == self.convs_per_block - 1 else 'relu'
                          for _, j in layers]
    bn_names = ['bn_input'] + [f'bn{blk}_{j}' for blk, j in layers]
    c_in = [x.shape[-1]] + [self.filters] * len(layers)
    if train:
      y, sums = x, None
      for (blk, j), name, mode, c in zip(layers, bn_names, modes, c_in):
        a, b = bn(name).affine(c, True, batch_moments(y, mask, sums))
        kernel, bias = conv(blk, j).kernel_and_bias(c)
        y, s1, s2 = fused_conv_layer(y, a, b, kernel, bias, w, mode, chunk)
        sums = (s1, s2)
      a, b = bn(bn_names[-1]).affine(self.filters, True, batch_moments(y, mask, sums))
      x, _, _ = layer_input(y, a, b, modes[-1])
      x = x.reshape(x.shape[0], -1)
    else:
      # Evaluation mode (running statistics): every layer of a chunk of ``chunk`` stamps before
      # the next chunk, so that its activations stay in the CPU's caches and only the features
      # are written; chunks of padding (w = 0) are skipped.
      affine = [bn(name).affine(c, False) for name, c in zip(bn_names, c_in)]
      kernels = [conv(blk, j).kernel_and_bias(c) for (blk, j), c in zip(layers, c_in)]
      x = fused.encode_eval_chunked(x, w, affine, kernels, modes, chunk)
    return jnp.zeros_like(x).at[order].set(x)


class SequenceClassifier(nn.Module):
  """The recurrent head shared by every model kind: per-step features [B, T, D] from
  ``encode`` (a subclass's), dense (ReLU, dropout), the n_w time gaps, a masked LSTM and a
  dense layer to logits at every step."""
  num_classes: int
  dense: int
  dropout: float
  lstm_size: int
  dtype: str  # 'float32' | 'bfloat16': dense (and convolution) operands

  def setup(self):
    self.setup_encoder()
    self.fc = nn.Dense(self.dense, dtype=self.compute_dtype)
    self.drop = nn.Dropout(self.dropout)
    self.lstm = MaskedLSTM(self.lstm_size)
    self.out = nn.Dense(self.num_classes)

  @property
  def compute_dtype(self):
    if self.dtype not in DTYPES:
      raise UserError(f'config.model.dtype must be one of {tuple(DTYPES)}, got {self.dtype!r}')
    return DTYPES[self.dtype]

  def setup_encoder(self):
    """Submodules of ``encode``."""
    raise NotImplementedError

  def encode(self, x, mask, train: bool):
    """x [N, ...] (the steps of the batch), mask [N] -> features [N, F]."""
    raise NotImplementedError

  def features(self, x, time_gaps, mask, train: bool = False):
    """Per-step LSTM inputs [B, T, dense + n_w] (everything before the recurrence)."""
    b, t = mask.shape
    f = self.encode(x.reshape((b * t,) + x.shape[2:]), mask.reshape(b * t), train)
    f = nn.relu(self.fc(f.astype(self.compute_dtype))).astype(jnp.float32)
    f = self.drop(f, deterministic=not train)
    return jnp.concatenate([f.reshape(b, t, -1), time_gaps.astype(jnp.float32)], axis=-1)

  def recur(self, feats, mask, carry=None):
    """(logits [B, T, C], carry) from features; ``carry`` continues an earlier call."""
    hs, carry = self.lstm(feats, mask, carry)
    return self.out(hs), carry

  def __call__(self, x, time_gaps, mask, train: bool = False):
    logits, _ = self.recur(self.features(x, time_gaps, mask, train), mask)
    return logits

  def step(self, x, time_gaps, mask, carry):
    """Incremental inference: new steps x [B, S, ...] continuing ``carry`` -> (logits, carry)."""
    return self.recur(self.features(x, time_gaps, mask, False), mask, carry)

  def initial_carry(self, batch_size):
    return self.lstm.initial_carry(batch_size)


DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}

# config.model.kind -> model class. A new model: a SequenceClassifier subclass (its fields are
# read from config.model by name) registered here with ``@register('kind')``.
MODELS: dict[str, type[SequenceClassifier]] = {}


def register(kind: str):
  def add(cls):
    MODELS[kind] = cls
    return cls
  return add


@register('rcnn')
class RCNN(SequenceClassifier):
  """Table 3: the image encoder on each step's n_w stacked stamps [N, S, S, n_w]."""
  filters: int
  convs_per_block: int
  num_blocks: int
  conv_impl: str
  bn_momentum: float
  input_asinh_scale: float
  encoder_chunk: int

  def setup_encoder(self):
    self.encoder = ImageEncoder(self.filters, self.convs_per_block, self.num_blocks,
                                self.conv_impl, self.compute_dtype, self.bn_momentum,
                                self.input_asinh_scale, self.encoder_chunk)

  def encode(self, x, mask, train):
    return self.encoder(x, mask, train)


@register('lc')
class LightCurveClassifier(SequenceClassifier):
  """Sec. 3.3: optimal photometry (flux and variance of each of the n_w images) per step."""
  bn_momentum: float
  input_asinh_scale: float

  def setup_encoder(self):
    self.input_bn = nn.BatchNorm(momentum=self.bn_momentum, epsilon=1e-3)

  def encode(self, x, mask, train):
    # Fluxes and variances span six decades: asinh compresses them before the batch norm.
    f = x.reshape(x.shape[0], -1)
    if self.input_asinh_scale > 0:
      f = jnp.arcsinh(f / self.input_asinh_scale)
    return self.input_bn(f, use_running_average=not train,
                         mask=jnp.broadcast_to(mask[:, None], f.shape))


def config_fields(kind: str) -> list[str]:
  """The ``config.model`` fields the model ``kind`` reads (its dataclass fields): the schema
  that ``build_model`` reads and ``config_check`` checks."""
  return [f.name for f in dataclasses.fields(MODELS[kind])
          if f.init and f.name not in ('parent', 'name', 'num_classes')]


def build_model(model_config, num_classes: int) -> SequenceClassifier:
  """The model ``config.model.kind`` names, its fields read from ``config.model`` by name."""
  kind = model_config.kind
  if kind not in MODELS:
    raise UserError(f'config.model.kind must be one of {", ".join(map(repr, MODELS))}, got '
                    f'{kind!r}')
  cls = MODELS[kind]
  names = config_fields(kind)
  missing = [n for n in names if n not in model_config]
  if missing:
    raise UserError(f'config.model.{missing[0]} is missing (model kind {kind!r})')
  model = cls(num_classes=num_classes, **{n: model_config[n] for n in names})
  model.compute_dtype  # noqa: B018  (an unknown dtype, said now)
  if 'conv_impl' in names:
    resolve_conv_impl(model.conv_impl)
  if 'encoder_chunk' in names:
    resolve_encoder_chunk(model.encoder_chunk)
  return model


def count_params(params) -> int:
  return int(sum(np.prod(p.shape) for p in jax.tree.leaves(params)))


def table3_param_count(n_w=3, filters=64, convs=3, blocks=2, dense=1024, lstm=512, classes=7,
                       stamp=21):
  """Trainable parameters of Table 3 computed by hand (BN scale and shift included)."""
  total = 2 * n_w  # input batch norm
  c_in, size = n_w, stamp
  for _ in range(blocks):
    for _ in range(convs):
      total += 9 * c_in * filters + filters + 2 * filters
      c_in = filters
    size = -(-size // 2)
  flat = size * size * filters
  total += flat * dense + dense
  total += 4 * lstm * (dense + n_w) + 4 * lstm * lstm + 4 * lstm
  total += lstm * classes + classes
  return total
