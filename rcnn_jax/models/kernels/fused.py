"""The image encoder's CPU formulation: layers fused with the batch norm, ReLU and pool before
them and run over the batch in chunks that stay in the caches (``fused_conv_layer``, with its
own backward pass), plus the max pool and the chunk loop they use.

Pure functions of the parameters of ``models.ImageEncoder``'s plain layers (kernels, biases
and each batch norm as a per-channel affine map); ``models.ImageEncoder`` calls them when
``config.model.encoder_chunk`` resolves to > 0 and the convolution to 'rows'. Tested equal to
the plain path (outputs, batch statistics, gradients) in tests/test_models.py.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from rcnn_jax.models.kernels.conv import conv3x3
from rcnn_jax.models.kernels.conv import conv3x3_grads
from rcnn_jax.models.kernels.conv import conv3x3_winograd
from rcnn_jax.models.kernels.conv import winograd_kernel
from rcnn_jax.models.kernels.conv import winograd_wins


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


def chunked(fn, chunk, w, *arrays):
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


def masked_sums(y, w):
  """Per-channel sums of w y and w y^2 over all but the last axis; w [N] row weights."""
  wb = w.reshape(w.shape + (1,) * (y.ndim - 1))
  axes = tuple(range(y.ndim - 1))
  return jnp.sum(y * wb, axis=axes), jnp.sum(jnp.square(y) * wb, axis=axes)


def layer_input(y_prev, a, b, mode):
  """a y_prev + b, then ReLU ('relu'), and a max pool ('relu_pool'); 'affine' stops at the
  affine map (the input batch norm). Returns (conv input, pre-activation, activation)."""
  pre = y_prev * a + b
  if mode == 'affine':
    return pre, pre, pre
  h = jax.nn.relu(pre)
  return (max_pool_2x2(h) if mode == 'relu_pool' else h), pre, h


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7))
def fused_conv_layer(y_prev, a, b, kernel, bias, w, mode, chunk):
  """One encoder layer over the batch, ``chunk`` rows at a time, in the CPU's caches.

  y_prev [N, H, W, C], the previous convolution's output (or the input stamps), goes through
  its batch norm as the per-channel affine map (a, b), then as ``mode`` says ReLU and a 2 x 2
  max pool (``layer_input``); then the 3 x 3 convolution plus bias. Returns that output y
  and its per-channel sums of w y and w y^2 (w [N]: 1 for valid steps), from which the next
  batch norm takes its statistics. Only y is written to memory; the backward pass recomputes
  the rest chunk by chunk as well. Chunks of padding steps only (w = 0) are skipped: their
  y is 0.
  """
  def fn(w, yp):
    x, _, _ = layer_input(yp, a, b, mode)
    y = conv3x3(x.astype(kernel.dtype), kernel) + bias
    return y, masked_sums(y, w)

  y, (s1, s2) = chunked(fn, chunk, w, y_prev)
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
    x, pre, h = layer_input(yp, a, b, mode)
    dx, dkernel = conv3x3_grads(x.astype(kernel.dtype), kernel, gt)
    dh = _max_pool_2x2_grad(h, x, dx) if mode == 'relu_pool' else dx
    dpre = dh if mode == 'affine' else jnp.where(pre > 0, dh, 0.0)
    axes = tuple(range(y.ndim - 1))
    return dpre * a, (jnp.sum(dpre * yp, axis=axes), jnp.sum(dpre, axis=axes), dkernel,
                      jnp.sum(gt, axis=axes))

  dyp, (da, db, dkernel, dbias) = chunked(fn, chunk, w, y_prev, y, gy)
  return (dyp.astype(y_prev.dtype), da, db, dkernel.astype(kernel.dtype),
          dbias.astype(bias.dtype), jnp.zeros_like(w))


fused_conv_layer.defvjp(_fused_fwd, _fused_bwd)


def encode_eval_chunked(x, w, affine, kernels, modes, chunk):
  """The encoder in evaluation mode (running batch statistics): every layer of a chunk of
  ``chunk`` stamps before the next chunk, so that its activations stay in the CPU's caches
  and only the features are written; chunks of padding (w = 0) are skipped.

  x [N, H, W, n_w]; ``affine`` [(a, b)] per batch norm (the input's first, the last after the
  last convolution), ``kernels`` [(kernel, bias)] per convolution, ``modes`` as for
  ``fused_conv_layer``. -> [N, features].
  """
  # Kernel transforms once per layer, outside the chunk loop (those of layers that do not
  # use them are dead code to XLA).
  transformed = [winograd_kernel(k) if k.shape[2] >= 16 else None for k, _ in kernels]

  def encode(wc, xc):
    del wc
    y = xc
    for (a, b), mode, (kernel, bias), u in zip(affine, modes, kernels, transformed):
      h, _, _ = layer_input(y, a, b, mode)
      if winograd_wins(h.shape):
        y = conv3x3_winograd(h, kernel, u) + bias
      else:
        y = conv3x3(h.astype(kernel.dtype), kernel) + bias
    h, _, _ = layer_input(y, *affine[-1], modes[-1])
    return h.reshape(h.shape[0], -1), ()

  feats, _ = chunked(encode, chunk, w, x)
  return feats
