"""The RCNN of Table 3 and the light-curve classifier of Sec. 3.3 (Flax linen).

Both map per-step inputs [B, T, ...], time gaps [B, T, n_w] and a step mask [B, T] to logits
[B, T, num_classes]. The recurrent head is shared: dense (ReLU, dropout), the n_w time gaps
concatenated, an LSTM with a zero initial state scanned over the steps (padded steps leave
its state unchanged), and a dense softmax layer at every step.

Model kinds: ``MODELS`` maps ``config.model.kind`` to a class ('rcnn': ``RCNN``, 'lc':
``LightCurveClassifier``), each a ``SequenceClassifier`` with its own ``encode``;
``build_model`` reads the class's fields from ``config.model`` by name. A new model is a
subclass registered with ``@register('kind')``.

Speed (measurements: experiments/speed/README.md). On the CPU the 3 x 3 convolutions are
matmuls ('rows': one matmul per layer over 1 x 3 row patches that yields the three kernel
rows' partial outputs at once, summed after a vertical shift; a hand-written backward of two
plain matmuls; 'im2col' for the 3-channel first layer), and the image encoder runs layer by
layer over chunks of ``encoder_chunk`` steps, each layer fused with the batch norm, ReLU and
pool before it (``fused_conv_layer``), with valid steps sorted first so that chunks of padding
steps are skipped. In evaluation mode (running statistics, no layer waits for the batch's) each
chunk goes through every layer at once, and the 21 x 21 layers use Winograd F(2 x 2, 3 x 3)
(``conv3x3_winograd``: 2x fewer multiplications; inference only). Elsewhere (GPU) the layers
are plain ``lax.conv_general_dilated`` ('xla') over the whole batch. ``conv_impl='auto'`` and
``encoder_chunk=-1`` pick by backend; every formulation has the same parameters and is tested
equal to the plain layers. The LSTM's input projection is one matmul over all steps; only the
recurrent matmul runs inside the scan. Batch norm statistics use valid steps only.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rcnn_jax.errors import UserError


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


def _hpad(x, left, right):
  return jnp.pad(x, [(0, 0)] * (x.ndim - 2) + [(left, right), (0, 0)])


def _vpad(x, top, bottom):
  return jnp.pad(x, [(0, 0)] * (x.ndim - 3) + [(top, bottom), (0, 0), (0, 0)])


def _matmul(a, b):
  """a @ b accumulated and returned in float32 (bfloat16 operands run at twice the rate)."""
  return jax.lax.dot_general(a, b, (((a.ndim - 1,), (0,)), ((), ())),
                             preferred_element_type=jnp.float32)


def _row_patches(x):
  """[N, H, W, C] -> [N, H, W, 3C]: the 1 x 3 horizontal neighbourhood (dx = 0, 1, 2)."""
  w = x.shape[-2]
  p = _hpad(x, 1, 1)
  return jnp.concatenate([p[..., dx:dx + w, :] for dx in range(3)], axis=-1)


def _rows_kernel(kernel):
  """[3, 3, C, F] (dy, dx, c, f) -> [3C, 3F] with rows (dx, c) and columns (dy, f)."""
  c, f = kernel.shape[2], kernel.shape[3]
  return kernel.transpose(1, 2, 0, 3).reshape(3 * c, 3 * f)


def _vertical_sum(z, f):
  """z [N, H, W, 3F], the three kernel rows' partial outputs -> y [N, H, W, F]:
  y[i] = z_0[i - 1] + z_1[i] + z_2[i + 1], zero outside the image (SAME padding)."""
  z0, z1, z2 = z[..., :f], z[..., f:2 * f], z[..., 2 * f:]
  return z1 + _vpad(z0[..., :-1, :, :], 1, 0) + _vpad(z2[..., 1:, :, :], 0, 1)


@jax.custom_vjp
def conv3x3_rows(x, kernel):
  """SAME 3 x 3 convolution (no bias) as one matmul over 1 x 3 row patches, K = N = 3C.

  The matmul runs over the H image rows only (the zero padding rows contribute nothing), and
  the backward pass is written out so that both of its products are plain matmuls: the input
  gradient is the same formulation applied to the output gradient, the kernel gradient one
  [3C, M] x [M, 3F] product.
  """
  z = _matmul(_row_patches(x), _rows_kernel(kernel).astype(x.dtype))
  return _vertical_sum(z, kernel.shape[3])


def _conv3x3_rows_fwd(x, kernel):
  return conv3x3_rows(x, kernel), (x, kernel)


def _conv3x3_rows_grads(x, kernel, g):
  """(dL/dx, dL/dkernel) of ``conv3x3_rows`` for the output cotangent g [N, H, W, F]."""
  c, f = kernel.shape[2], kernel.shape[3]
  g = g.astype(x.dtype)
  # z_dy[r] fed y[r - dy + 1]: the gradient of the three partial outputs, [N, H, W, 3F].
  gz = jnp.concatenate([_vpad(g[..., 1:, :, :], 0, 1), g, _vpad(g[..., :-1, :, :], 1, 0)], -1)
  rows = _row_patches(x)
  kr = _rows_kernel(kernel).astype(x.dtype)
  dkr = jax.lax.dot_general(rows.reshape(-1, 3 * c), gz.reshape(-1, 3 * f),
                            (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)
  dkernel = dkr.reshape(3, c, 3, f).transpose(2, 0, 1, 3).astype(kernel.dtype)
  drows = _matmul(gz, kr.T)  # [N, H, W, 3C]; block dx came from x[j + dx - 1]
  dx = (drows[..., c:2 * c] + _hpad(drows[..., 1:, :c], 0, 1)
        + _hpad(drows[..., :-1, 2 * c:], 1, 0))
  return dx.astype(x.dtype), dkernel


def _conv3x3_rows_bwd(res, g):
  return _conv3x3_rows_grads(*res, g)


conv3x3_rows.defvjp(_conv3x3_rows_fwd, _conv3x3_rows_bwd)


def conv3x3_im2col(x, kernel):
  """SAME 3 x 3 convolution (no bias) as one matmul over full 3 x 3 patches, K = 9C."""
  h, w = x.shape[-3], x.shape[-2]
  c, f = kernel.shape[2], kernel.shape[3]
  p = _vpad(_hpad(x, 1, 1), 1, 1)
  patches = jnp.concatenate([p[..., dy:dy + h, dx:dx + w, :]
                             for dy in range(3) for dx in range(3)], axis=-1)
  return _matmul(patches, kernel.reshape(9 * c, f).astype(x.dtype))


# Winograd F(2 x 2, 3 x 3) (Lavin and Gray 2016): a 2 x 2 output tile from a 4 x 4 input tile,
# y = A^T [(G g G^T) * (B^T d B)] A, 16 products per tile instead of 36.
_WINO_BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float32)
_WINO_G = np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]], np.float32)
_WINO_AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float32)


def winograd_kernel(kernel):
  """[3, 3, C, F] -> G g G^T as [16, C, F] (float32): the kernel side of ``conv3x3_winograd``."""
  c, f = kernel.shape[2], kernel.shape[3]
  return jnp.einsum('ia,abcf,jb->ijcf', _WINO_G, kernel.astype(jnp.float32),
                    _WINO_G).reshape(16, c, f)


def conv3x3_winograd(x, kernel, transformed=None):
  """SAME 3 x 3 convolution (no bias) by Winograd F(2 x 2, 3 x 3), forward only.

  The tile transforms run in float32 and the 16 products as one batched matmul in the kernel's
  dtype with float32 accumulation: 2.05x fewer multiplications than the direct convolution on
  a 21 x 21 image (121 tiles of 2 x 2 over 22 x 22), within 1e-6 relative of it. On the CPU it
  runs the 21 x 21 layers of inference 1.35x faster than 'rows'; on 11 x 11 images, whose tiles
  waste more and whose matmuls are small, it is slower (experiments/speed/README.md).
  ``transformed``: ``winograd_kernel(kernel)``, when already computed (once per layer rather
  than once per chunk).
  """
  n, h, w, c = x.shape
  f = kernel.shape[-1]
  u = winograd_kernel(kernel) if transformed is None else transformed
  th, tw = -(-h // 2), -(-w // 2)
  xp = jnp.pad(x.astype(jnp.float32), ((0, 0), (1, 2 * th + 1 - h), (1, 2 * tw + 1 - w), (0, 0)))
  comb = lambda mat, parts: [sum(float(mat[i, a]) * parts[a] for a in range(len(parts))
                                 if mat[i, a]) for i in range(mat.shape[0])]
  rows = comb(_WINO_BT, [xp[:, a:a + 2 * th - 1:2] for a in range(4)])  # B^T d, over rows
  v = jnp.stack([jnp.stack(comb(_WINO_BT, [r[:, :, b:b + 2 * tw - 1:2] for b in range(4)]))
                 for r in rows])  # [4, 4, N, th, tw, C]
  m = jax.lax.dot_general(v.reshape(16, -1, c).astype(kernel.dtype), u.astype(kernel.dtype),
                          (((2,), (1,)), ((0,), (0,))), preferred_element_type=jnp.float32)
  m = m.reshape(4, 4, n, th, tw, f)
  out = comb(_WINO_AT, [m[i] for i in range(4)])  # A^T m, over rows: 2 x [4, N, th, tw, F]
  y = jnp.stack([jnp.stack(comb(_WINO_AT, [o[j] for j in range(4)]), 3) for o in out], 2)
  return y.reshape(n, 2 * th, 2 * tw, f)[:, :h, :w]


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
  def __call__(self, x, params_only: bool = False):
    """The convolution of x, or with ``params_only`` its (kernel in ``dtype``, bias) for an
    input shaped like x."""
    c = x.shape[-1]
    kernel = self.param('kernel', nn.initializers.lecun_normal(), (3, 3, c, self.features))
    bias = self.param('bias', nn.initializers.zeros, (self.features,))
    if params_only:
      return kernel.astype(self.dtype), bias
    x = x.astype(self.dtype)
    kernel = kernel.astype(self.dtype)
    impl = resolve_conv_impl(self.impl)
    if impl == 'rows':
      y = _conv(x, kernel)
    elif impl == 'im2col':
      y = conv3x3_im2col(x, kernel)
    else:
      y = jax.lax.conv_general_dilated(x, kernel, (1, 1), 'SAME',
                                       dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                       preferred_element_type=jnp.float32)
    return y + bias


class MaskedBatchNorm(nn.Module):
  """Batch norm over every axis but the last, counting only rows where ``mask`` [N] is True.

  The same variables, statistics and update as ``nn.BatchNorm(epsilon, momentum)`` with a
  broadcast mask (mean, then E[x^2] - mean^2 clipped at 0), written as one per-channel affine
  map so that XLA fuses the statistics into one pass and the normalisation into its consumer.
  """
  momentum: float
  epsilon: float = 1e-3  # Keras' default, as the paper

  @nn.compact
  def __call__(self, x, mask, train: bool, sums=None, affine_only: bool = False):
    """Normalised x; or with ``affine_only`` the per-channel (a, b) with which a x + b is.

    ``sums``: the per-channel (sum of x, sum of x^2) over valid rows, when already computed
    (``fused_conv_layer``); x then only gives the shape.
    """
    feat = x.shape[-1]
    scale = self.param('scale', nn.initializers.ones, (feat,))
    bias = self.param('bias', nn.initializers.zeros, (feat,))
    ra_mean = self.variable('batch_stats', 'mean', lambda: jnp.zeros((feat,), jnp.float32))
    ra_var = self.variable('batch_stats', 'var', lambda: jnp.ones((feat,), jnp.float32))
    if train:
      w = mask.astype(jnp.float32)
      per_row = float(np.prod(x.shape[1:-1]))
      count = jnp.maximum(jnp.sum(w) * per_row, 1.0)
      s1, s2 = _masked_sums(x, w) if sums is None else sums
      mean = s1 / count
      var = jnp.maximum(0.0, s2 / count - jnp.square(mean))
      if not self.is_initializing():
        ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
        ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    else:
      mean, var = ra_mean.value, ra_var.value
    a = scale * jax.lax.rsqrt(var + self.epsilon)
    b = bias - mean * a
    if affine_only:
      return a, b
    return x * a + b


def max_pool_2x2(x):
  """2 x 2 max pool, stride 2, SAME (an odd edge padded with -inf): as ``nn.max_pool``, but a
  reshape and a max, whose gradient is elementwise (no select-and-scatter)."""
  h, w = x.shape[-3], x.shape[-2]
  x = jnp.pad(x, [(0, 0)] * (x.ndim - 3) + [(0, h % 2), (0, w % 2), (0, 0)],
              constant_values=-jnp.inf)
  s = x.shape
  x = x.reshape(s[:-3] + (s[-3] // 2, 2, s[-2] // 2, 2, s[-1]))
  return x.max(axis=(-4, -2))


def _max_pool_2x2_grad(h, pooled, g):
  """Cotangent of ``max_pool_2x2`` at h: g goes to every position equal to its window's max."""
  hh, ww = h.shape[-3], h.shape[-2]
  up = lambda a: jnp.repeat(jnp.repeat(a, 2, axis=-3), 2, axis=-2)[..., :hh, :ww, :]
  return jnp.where(h == up(pooled), up(g), 0.0)


def _chunked(fn, chunk, w, *arrays):
  """fn(w_c, *arrays_c) -> (batched outputs, summed outputs) over chunks of ``chunk`` rows.

  Batched outputs are concatenated over the chunks, summed ones added up. A chunk whose
  row weights w [N] are all zero (padding steps only) is skipped: its batched outputs are zero
  and it adds nothing. The rows are padded to a multiple of ``chunk`` with w = 0.
  """
  n = w.shape[0]
  pad = -n % chunk
  w, *arrays = [jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1)) for a in (w,) + arrays]
  shapes = jax.eval_shape(fn, w[:chunk], *[a[:chunk] for a in arrays])
  zeros = lambda s: jnp.zeros(s.shape, s.dtype)
  split = [a.reshape((-1, chunk) + a.shape[1:]) for a in [w] + arrays]

  def body(args):
    wc = args[0]
    return jax.lax.cond(jnp.any(wc > 0), lambda: fn(*args),
                        lambda: jax.tree.map(zeros, shapes))

  # lax.map writes each chunk's outputs in place: no whole-batch buffer to zero first.
  batched, summed = jax.lax.map(body, tuple(split))
  return (jax.tree.map(lambda b: b.reshape((-1,) + b.shape[2:])[:n], batched),
          jax.tree.map(lambda t: t.sum(0), summed))


def _masked_sums(y, w):
  """Per-channel sums of w y and w y^2 over all but the last axis; w [N] row weights."""
  wb = w.reshape(w.shape + (1,) * (y.ndim - 1))
  axes = tuple(range(y.ndim - 1))
  return jnp.sum(y * wb, axis=axes), jnp.sum(jnp.square(y) * wb, axis=axes)


def _layer_input(y_prev, a, b, mode):
  """a y_prev + b, then ReLU ('relu'), and a max pool ('relu_pool'); 'affine' stops at the
  affine map (the input batch norm). Returns (conv input, pre-activation, activation)."""
  pre = y_prev * a + b
  if mode == 'affine':
    return pre, pre, pre
  h = jax.nn.relu(pre)
  return (max_pool_2x2(h) if mode == 'relu_pool' else h), pre, h


def _thin(x):
  """Inputs with few channels (the first layer's n_w = 3 stack) go through 'im2col'."""
  return x.shape[-1] < 16


def _conv(x, kernel):
  """'rows', or 'im2col' for thin inputs."""
  return conv3x3_im2col(x, kernel) if _thin(x) else conv3x3_rows(x, kernel)


def _winograd_wins(shape):
  """Inference convolutions of wide inputs on wide images (C >= 16, H, W >= 16: Table 3's
  21 x 21 layers after the first) go through Winograd."""
  return shape[-1] >= 16 and min(shape[-3], shape[-2]) >= 16


def _conv_grads(x, kernel, g):
  """(dL/dx, dL/dkernel) of ``_conv``."""
  if _thin(x):
    _, vjp = jax.vjp(conv3x3_im2col, x, kernel)
    return vjp(g.astype(jnp.float32))
  return _conv3x3_rows_grads(x, kernel, g)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7))
def fused_conv_layer(y_prev, a, b, kernel, bias, w, mode, chunk):
  """One encoder layer over the batch, ``chunk`` rows at a time, in the CPU's caches.

  y_prev [N, H, W, C], the previous convolution's output (or the input stamps), goes through
  its batch norm as the per-channel affine map (a, b), then as ``mode`` says ReLU and a 2 x 2
  max pool (``_layer_input``); then the 3 x 3 convolution plus bias. Returns that output y
  and its per-channel sums of w y and w y^2 (w [N]: 1 for valid steps), from which the next
  batch norm takes its statistics. Only y is written to memory; the backward pass recomputes
  the rest chunk by chunk as well. Chunks of padding steps only (w = 0) are skipped: their
  y is 0.
  """
  def fn(w, yp):
    x, _, _ = _layer_input(yp, a, b, mode)
    y = _conv(x.astype(kernel.dtype), kernel) + bias
    return y, _masked_sums(y, w)

  y, (s1, s2) = _chunked(fn, chunk, w, y_prev)
  return y, s1, s2


def _fused_fwd(y_prev, a, b, kernel, bias, w, mode, chunk):
  y, s1, s2 = fused_conv_layer(y_prev, a, b, kernel, bias, w, mode, chunk)
  return (y, s1, s2), (y_prev, a, b, kernel, bias, w, y)


def _fused_bwd(mode, chunk, res, cts):
  y_prev, a, b, kernel, bias, w, y = res
  gy, gs1, gs2 = cts

  def fn(w, yp, y, gy):
    wb = w.reshape(w.shape + (1,) * (y.ndim - 1))
    gt = gy + wb * (gs1 + 2.0 * y * gs2)  # the sums' cotangents reach y too
    x, pre, h = _layer_input(yp, a, b, mode)
    dx, dkernel = _conv_grads(x.astype(kernel.dtype), kernel, gt)
    dh = _max_pool_2x2_grad(h, x, dx) if mode == 'relu_pool' else dx
    dpre = dh if mode == 'affine' else jnp.where(pre > 0, dh, 0.0)
    axes = tuple(range(y.ndim - 1))
    return dpre * a, (jnp.sum(dpre * yp, axis=axes), jnp.sum(dpre, axis=axes), dkernel,
                      jnp.sum(gt, axis=axes))

  dyp, (da, db, dkernel, dbias) = _chunked(fn, chunk, w, y_prev, y, gy)
  return (dyp.astype(y_prev.dtype), da, db, dkernel.astype(kernel.dtype),
          dbias.astype(bias.dtype), jnp.zeros_like(w))


fused_conv_layer.defvjp(_fused_fwd, _fused_bwd)


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
    # max pool after a block's last convolution (``_layer_input``); the same after the last.
    modes = ['affine'] + ['relu_pool' if j == self.convs_per_block - 1 else 'relu'
                          for _, j in layers]
    bn_names = ['bn_input'] + [f'bn{blk}_{j}' for blk, j in layers]
    if train:
      y, sums = x, None
      for (blk, j), name, mode in zip(layers, bn_names, modes):
        a, b = bn(name)(y, mask, train, sums=sums, affine_only=True)
        kernel, bias = conv(blk, j)(y, params_only=True)
        y, s1, s2 = fused_conv_layer(y, a, b, kernel, bias, w, mode, chunk)
        sums = (s1, s2)
      a, b = bn(bn_names[-1])(y, mask, train, sums=sums, affine_only=True)
      x, _, _ = _layer_input(y, a, b, modes[-1])
      x = x.reshape(x.shape[0], -1)
    else:
      x = self._eval_chunked(x, w, layers, bn_names, modes, bn, conv, chunk)
    return jnp.zeros_like(x).at[order].set(x)

  def _eval_chunked(self, x, w, layers, bn_names, modes, bn, conv, chunk):
    """Evaluation mode (running batch statistics): every layer of a chunk of ``chunk`` stamps
    before the next chunk, so that its activations stay in the CPU's caches and only the
    features are written; chunks of padding (w = 0) are skipped. -> [N, features]."""
    probe = lambda c: jnp.zeros((1, 1, 1, c), jnp.float32)  # only the shapes are read
    c_in = [x.shape[-1]] + [self.filters] * len(layers)
    affine = [bn(name)(probe(c), None, False, affine_only=True)
              for name, c in zip(bn_names, c_in)]
    kernels = [conv(blk, j)(probe(c), params_only=True) for (blk, j), c in zip(layers, c_in)]
    # Kernel transforms once per layer, outside the chunk loop (those of layers that do not
    # use them are dead code to XLA).
    transformed = [winograd_kernel(k) if c >= 16 else None for (k, _), c in zip(kernels, c_in)]

    def encode(wc, xc):
      del wc
      y = xc
      for (a, b), mode, (kernel, bias), u in zip(affine, modes, kernels, transformed):
        h, _, _ = _layer_input(y, a, b, mode)
        if _winograd_wins(h.shape):
          y = conv3x3_winograd(h, kernel, u) + bias
        else:
          y = _conv(h.astype(kernel.dtype), kernel) + bias
      h, _, _ = _layer_input(y, *affine[-1], modes[-1])
      return h.reshape(h.shape[0], -1), ()

    feats, _ = _chunked(encode, chunk, w, x)
    return feats


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
