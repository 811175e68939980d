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
CPU formulations are in ``rcnn_jax/kernels/`` (``kernels.conv``: 3 x 3 convolutions as
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

from rcnn_jax.errors import UserError
from rcnn_jax.kernels import fused
from rcnn_jax.kernels.conv import conv3x3
from rcnn_jax.kernels.conv import conv3x3_im2col
from rcnn_jax.kernels.fused import fused_conv_layer
from rcnn_jax.kernels.fused import layer_input
from rcnn_jax.kernels.fused import masked_sums
from rcnn_jax.kernels.fused import max_pool_2x2


CONV_IMPLS = ('rows', 'im2col', 'xla')


def resolve_encoder_chunk(chunk: int) -> int:
  """-1 ('auto'): 16 sequences' steps at a time on the CPU, the whole batch elsewhere."""
  if chunk == -1:
    return 16 if jax.default_backend() == 'cpu' else 0
  if chunk < 0:
    raise UserError(f'config.model.encoder_chunk must be -1 (auto), 0 (off) or > 0, got {chunk}')
  return int(chunk)


def resolve_conv_impl(impl: str) -> str:
  if impl == 'auto':
    return 'rows' if jax.default_backend() == 'cpu' else 'xla'
  if impl not in CONV_IMPLS:
    raise UserError(f"config.model.conv_impl must be 'auto' or one of {CONV_IMPLS}, got "
                    f'{impl!r}')
  return impl


class Conv3x3(nn.Module):
  """3 x 3 convolution, stride 1, SAME padding; kernel [3, 3, C_in, C_out] as nn.Conv's.

  'rows' (the CPU default) switches to 'im2col' for thin inputs (C_in < 16, the first layer
  on the n_w = 3 image stack), where 9 C_in is still a small matmul depth and 3 x 3 patches
  write less than the rows formulation's 3F-wide partial outputs.
  """
  features: int
  impl: str = 'auto'
  dtype: Any = jnp.float32

  @nn.compact
  def kernel_and_bias(self, in_features: int):
    """The layer's (kernel [3, 3, in_features, features] in ``dtype``, bias): what the fused
    CPU kernels (``kernels/``) take."""
    kernel = self.param('kernel', nn.initializers.lecun_normal(),
                        (3, 3, in_features, self.features))
    bias = self.param('bias', nn.initializers.zeros, (self.features,))
    return kernel.astype(self.dtype), bias

  def __call__(self, x):
    kernel, bias = self.kernel_and_bias(x.shape[-1])
    x = x.astype(self.dtype)
    impl = resolve_conv_impl(self.impl)
    if impl == 'rows':
      y = conv3x3(x, kernel)
    elif impl == 'im2col':
      y = conv3x3_im2col(x, kernel)
    else:
      y = jax.lax.conv_general_dilated(x, kernel, (1, 1), 'SAME',
                                       dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                       preferred_element_type=jnp.float32)
    return y + bias


def batch_moments(x, mask, sums=None):
  """Per-channel (mean, variance) of x over every axis but the last, counting only the rows
  where ``mask`` [N] is True (E[x^2] - mean^2, clipped at 0, as nn.BatchNorm). ``sums``: the
  (sum of x, sum of x^2) over valid rows when already computed (``fused_conv_layer``)."""
  w = mask.astype(jnp.float32)
  per_row = float(np.prod(x.shape[1:-1]))
  count = jnp.maximum(jnp.sum(w) * per_row, 1.0)
  s1, s2 = masked_sums(x, w) if sums is None else sums
  mean = s1 / count
  return mean, jnp.maximum(0.0, s2 / count - jnp.square(mean))


class MaskedBatchNorm(nn.Module):
  """Batch norm over every axis but the last, counting only rows where ``mask`` [N] is True.

  The same variables, statistics and update as ``nn.BatchNorm(epsilon, momentum)`` with a
  broadcast mask (mean, then E[x^2] - mean^2 clipped at 0), written as one per-channel affine
  map so that XLA fuses the statistics into one pass and the normalisation into its consumer.
  """
  momentum: float
  epsilon: float = 1e-3  # Keras' default, as the paper

  @nn.compact
  def affine(self, features: int, train: bool, moments=None):
    """The per-channel (a, b) with which the normalised x is a x + b: from the batch's
    ``moments`` (``batch_moments``; the running averages updated) when ``train``, else from
    the running averages."""
    scale = self.param('scale', nn.initializers.ones, (features,))
    bias = self.param('bias', nn.initializers.zeros, (features,))
    ra_mean = self.variable('batch_stats', 'mean', lambda: jnp.zeros((features,), jnp.float32))
    ra_var = self.variable('batch_stats', 'var', lambda: jnp.ones((features,), jnp.float32))
    if train:
      mean, var = moments
      if not self.is_initializing():
        ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
        ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    else:
      mean, var = ra_mean.value, ra_var.value
    a = scale * jax.lax.rsqrt(var + self.epsilon)
    return a, bias - mean * a

  def __call__(self, x, mask, train: bool):
    a, b = self.affine(x.shape[-1], train, batch_moments(x, mask) if train else None)
    return x * a + b


class MaskedLSTM(nn.Module):
  """LSTM over axis 1 with a zero initial state; steps where mask is False keep the state.

  Parameters as Flax's LSTM cells: 4 input kernels (no bias) and 4 recurrent kernels with
  bias, stored fused: wi [D, 4H], wh [H, 4H], b [4H] (gates i, f, g, o).
  """
  features: int

  @nn.compact
  def __call__(self, x, mask, carry=None):
    """x [B, T, D], mask [B, T] -> (outputs [B, T, H], final carry (c, h))."""
    h_dim = self.features
    wi = self.param('wi', nn.initializers.lecun_normal(), (x.shape[-1], 4 * h_dim))
    wh = self.param('wh', nn.initializers.orthogonal(), (h_dim, 4 * h_dim))
    b = self.param('b', nn.initializers.zeros, (4 * h_dim,))
    if carry is None:
      carry = self.initial_carry(x.shape[0])
    xw = (x.astype(jnp.float32) @ wi + b).swapaxes(0, 1)  # [T, B, 4H]

    def step(carry, inp):
      c, h = carry
      z, m = inp
      z = z + h @ wh
      i, f, g, o = jnp.split(z, 4, axis=-1)
      c_new = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
      h_new = jax.nn.sigmoid(o) * jnp.tanh(c_new)
      m = m[:, None]
      c, h = jnp.where(m, c_new, c), jnp.where(m, h_new, h)
      return (c, h), h

    carry, hs = jax.lax.scan(step, carry, (xw, mask.swapaxes(0, 1)))
    return hs.swapaxes(0, 1), carry

  def initial_carry(self, batch_size):
    z = jnp.zeros((batch_size, self.features), jnp.float32)
    return (z, z)


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


def build_model(model_config, num_classes: int) -> SequenceClassifier:
  """The model ``config.model.kind`` names, its fields read from ``config.model`` by name."""
  kind = model_config.kind
  if kind not in MODELS:
    raise UserError(f'config.model.kind must be one of {", ".join(map(repr, MODELS))}, got '
                    f'{kind!r}')
  cls = MODELS[kind]
  names = [f.name for f in dataclasses.fields(cls)
           if f.init and f.name not in ('parent', 'name', 'num_classes')]
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
