"""3 x 3 convolutions for the CPU, with the parameters of ``models.Conv3x3`` (kernel [3, 3, C, F]).

'rows': one matmul over 1 x 3 row patches that yields the three kernel rows' partial outputs at
once, summed after a vertical shift, with a hand-written backward of two plain matmuls;
'im2col' for thin inputs (the n_w = 3 first layer); Winograd F(2 x 2, 3 x 3) for inference on
the 21 x 21 layers. Each equals ``jax.lax.conv_general_dilated`` (SAME, stride 1) within float
rounding, forward and backward (tests/test_models.py). Measurements: experiments/speed/.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


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


def _thin(x):
  """Inputs with few channels (the first layer's n_w = 3 stack) go through 'im2col'."""
  return x.shape[-1] < 16


def conv3x3(x, kernel):
  """'rows', or 'im2col' for thin inputs."""
  return conv3x3_im2col(x, kernel) if _thin(x) else conv3x3_rows(x, kernel)


def winograd_wins(shape):
  """Inference convolutions of wide inputs on wide images (C >= 16, H, W >= 16: Table 3's
  21 x 21 layers after the first) go through Winograd."""
  return shape[-1] >= 16 and min(shape[-3], shape[-2]) >= 16


def conv3x3_grads(x, kernel, g):
  """(dL/dx, dL/dkernel) of ``conv3x3``."""
  if _thin(x):
    _, vjp = jax.vjp(conv3x3_im2col, x, kernel)
    return vjp(g.astype(jnp.float32))
  return _conv3x3_rows_grads(x, kernel, g)
