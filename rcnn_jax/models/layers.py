"""The building blocks of the models (Table 3 and Sec. 3.3): the 3 x 3 convolution with its
CPU formulations (``kernels/``), batch norm over valid steps only, the masked LSTM.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rcnn_jax.core.errors import UserError
from rcnn_jax.models.kernels.conv import conv3x3
from rcnn_jax.models.kernels.conv import conv3x3_im2col
from rcnn_jax.models.kernels.fused import masked_sums

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
