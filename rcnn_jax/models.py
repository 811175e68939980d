"""The RCNN of Table 3 and the light-curve classifier of Sec. 3.3 (Flax linen).

Both map per-step inputs [B, T, ...], time gaps [B, T, n_w] and a step mask [B, T] to logits
[B, T, num_classes]. The recurrent head is shared: dense (ReLU, dropout), the n_w time gaps
concatenated, an LSTM with a zero initial state scanned over the steps (padded steps leave
its state unchanged), and a dense softmax layer at every step.

Speed: on CPU, where XLA's native convolution runs far below the machine's matmul rate, the
3 x 3 convolutions are matmuls ('rows': one matmul per layer over 1 x 3 row patches that
yields the three kernel rows' partial outputs at once, summed after a vertical shift; twice as
fast as full 3 x 3 patches, 'im2col', which moves three times the memory). Elsewhere they are
``lax.conv_general_dilated`` ('xla'). ``conv_impl='auto'`` picks by backend. All three use
the same parameters and give the same outputs. The LSTM's input projection is one matmul over all steps; only the
recurrent matmul runs inside the scan. Batch norm statistics use valid steps only.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


CONV_IMPLS = ('rows', 'im2col', 'xla')


def resolve_conv_impl(impl: str) -> str:
  if impl == 'auto':
    return 'rows' if jax.default_backend() == 'cpu' else 'xla'
  if impl not in CONV_IMPLS:
    raise ValueError(f"config.model.conv_impl must be 'auto' or one of {CONV_IMPLS}, got "
                     f'{impl!r}')
  return impl


class Conv3x3(nn.Module):
  """3 x 3 convolution, stride 1, SAME padding; kernel [3, 3, C_in, C_out] as nn.Conv's."""
  features: int
  impl: str = 'auto'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    kernel = self.param('kernel', nn.initializers.lecun_normal(), (3, 3, c, self.features))
    bias = self.param('bias', nn.initializers.zeros, (self.features,))
    x = x.astype(self.dtype)
    kernel = kernel.astype(self.dtype)
    impl = resolve_conv_impl(self.impl)
    h, w, f = x.shape[-3], x.shape[-2], self.features
    pad = [(0, 0)] * (x.ndim - 3) + [(1, 1), (1, 1), (0, 0)]
    if impl == 'rows':
      p = jnp.pad(x, pad)
      rows = jnp.concatenate([p[..., dx:dx + w, :] for dx in range(3)], axis=-1)  # [.., H+2, W, 3C]
      k = kernel.transpose(1, 2, 0, 3).reshape(3 * c, 3 * f)  # (dx, c) -> (dy, f)
      z = rows @ k
      y = sum(z[..., dy:dy + h, :, dy * f:(dy + 1) * f] for dy in range(3))
    elif impl == 'im2col':
      p = jnp.pad(x, pad)
      patches = jnp.concatenate([p[..., dy:dy + h, dx:dx + w, :]
                                 for dy in range(3) for dx in range(3)], axis=-1)
      y = patches @ kernel.reshape(9 * c, f)
    else:
      y = jax.lax.conv_general_dilated(x, kernel, (1, 1), 'SAME',
                                       dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    return y + bias.astype(self.dtype)


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
  filters: int = 64
  convs_per_block: int = 3
  num_blocks: int = 2
  conv_impl: str = 'auto'
  dtype: Any = jnp.float32
  bn_momentum: float = 0.99
  input_asinh_scale: float = 0.0

  @nn.compact
  def __call__(self, x, mask, train: bool):
    """x [N, H, W, n_w], mask [N] -> [N, features]."""
    bn_mask = mask[:, None, None, None]
    if self.input_asinh_scale > 0:
      x = jnp.arcsinh(x / self.input_asinh_scale)
    bn = lambda name: nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                                   epsilon=1e-3,
                                   name=name)
    x = bn('bn_input')(x, mask=jnp.broadcast_to(bn_mask, x.shape))
    for blk in range(self.num_blocks):
      for j in range(self.convs_per_block):
        x = Conv3x3(self.filters, self.conv_impl, self.dtype, name=f'conv{blk}_{j}')(x)
        x = bn(f'bn{blk}_{j}')(x.astype(jnp.float32), mask=jnp.broadcast_to(bn_mask, x.shape))
        x = nn.relu(x)
      x = nn.max_pool(x, (2, 2), strides=(2, 2), padding='SAME')
    return x.reshape(x.shape[0], -1)


class SequenceClassifier(nn.Module):
  """RCNN (kind 'rcnn', Table 3) or light-curve classifier (kind 'lc', Sec. 3.3)."""
  num_classes: int = 7
  kind: str = 'rcnn'
  filters: int = 64
  convs_per_block: int = 3
  num_blocks: int = 2
  dense: int = 1024
  dropout: float = 0.5
  lstm_size: int = 512
  conv_impl: str = 'auto'
  dtype: Any = jnp.float32
  bn_momentum: float = 0.99
  input_asinh_scale: float = 10.0

  def setup(self):
    if self.kind == 'rcnn':
      self.encoder = ImageEncoder(self.filters, self.convs_per_block, self.num_blocks,
                                  self.conv_impl, self.dtype, self.bn_momentum,
                                  self.input_asinh_scale)
    elif self.kind == 'lc':
      self.input_bn = nn.BatchNorm(momentum=self.bn_momentum, epsilon=1e-3)
    else:
      raise ValueError(f"config.model.kind must be 'rcnn' or 'lc', got {self.kind!r}")
    self.fc = nn.Dense(self.dense, dtype=self.dtype)
    self.drop = nn.Dropout(self.dropout)
    self.lstm = MaskedLSTM(self.lstm_size)
    self.out = nn.Dense(self.num_classes)

  def features(self, x, time_gaps, mask, train: bool = False):
    """Per-step LSTM inputs [B, T, dense + n_w] (everything before the recurrence)."""
    b, t = mask.shape
    m = mask.reshape(b * t)
    if self.kind == 'rcnn':
      f = self.encoder(x.reshape((b * t,) + x.shape[2:]), m, train)
    else:
      # Fluxes and variances span six decades: asinh compresses them before the batch norm.
      f = x.reshape(b * t, -1)
      if self.input_asinh_scale > 0:
        f = jnp.arcsinh(f / self.input_asinh_scale)
      f = self.input_bn(f, use_running_average=not train,
                        mask=jnp.broadcast_to(m[:, None], f.shape))
    f = nn.relu(self.fc(f.astype(self.dtype))).astype(jnp.float32)
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


def build_model(model_config, num_classes: int, n_w: int) -> SequenceClassifier:
  del n_w  # the input width follows the data
  m = model_config
  dtype = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}.get(m.dtype)
  if dtype is None:
    raise ValueError(f"config.model.dtype must be 'float32' or 'bfloat16', got {m.dtype!r}")
  for name in ('filters', 'convs_per_block', 'num_blocks', 'dense', 'lstm_size'):
    if int(m[name]) < 1:
      raise ValueError(f'config.model.{name} must be >= 1, got {m[name]}')
  if not 0.0 <= float(m.dropout) < 1.0:
    raise ValueError(f'config.model.dropout must be in [0, 1), got {m.dropout}')
  bn_momentum = float(m.get('bn_momentum', 0.99))
  if not 0.0 <= bn_momentum < 1.0:
    raise ValueError(f'config.model.bn_momentum must be in [0, 1), got {bn_momentum}')
  asinh = float(m.get('input_asinh_scale', 10.0))
  if asinh < 0:
    raise ValueError(f'config.model.input_asinh_scale must be >= 0, got {asinh}')
  resolve_conv_impl(m.conv_impl)
  return SequenceClassifier(
      num_classes=num_classes, kind=m.kind, filters=int(m.filters),
      convs_per_block=int(m.convs_per_block), num_blocks=int(m.num_blocks), dense=int(m.dense),
      dropout=float(m.dropout), lstm_size=int(m.lstm_size), conv_impl=m.conv_impl, dtype=dtype,
      bn_momentum=bn_momentum, input_asinh_scale=asinh)


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
