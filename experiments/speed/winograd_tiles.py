"""Micro-benchmark: one 3 x 3, 64 -> 64 convolution (+ ReLU) over 1,024 stamps in chunks of 16
(as inference runs it), forward only: 'rows' against Winograd F(m x m, 3 x 3) for m = 2, 3, 4,
at 21 x 21 and 11 x 11, with each formulation's largest error against 'rows'.

    GLIBC_TUNABLES=glibc.malloc.hugetlb=1 .venv/bin/python experiments/speed/winograd_tiles.py

The Toom-Cook matrices come from the interpolation points (A^T and G in closed form, B^T solved
from the 1-D identity); m = 2 with points 0, 1, -1 is ``kconv.conv3x3_winograd``.
"""
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', '..'))
import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from rcnn_jax.models.kernels import conv as kconv  # pylint: disable=g-import-not-at-top


def toom_cook(m, points, r=3):
  """(A^T [m, n], G [n, r], B^T [n, n]) of F(m, r) for n - 1 finite points and infinity."""
  n = m + r - 1
  pts = points[:n - 1]
  at, g = np.zeros((m, n)), np.zeros((n, r))
  for j, p in enumerate(pts):
    at[:, j] = [p**i for i in range(m)]
    g[j] = [p**k / np.prod([p - q for q in pts if q != p]) for k in range(r)]
  at[m - 1, n - 1] = g[n - 1, r - 1] = 1.0
  # B^T from sum_j A^T[i, j] G[j, k] B^T[j, a] = [a == i + k] for all i, k, a.
  rows, rhs = [], []
  for i in range(m):
    for k in range(r):
      for a in range(n):
        coef = np.zeros((n, n))
        coef[:, a] = at[i] * g[:, k]
        rows.append(coef.reshape(-1))
        rhs.append(float(a == i + k))
  bt = np.linalg.lstsq(np.array(rows), np.array(rhs), rcond=None)[0].reshape(n, n)
  bt[np.abs(bt) < 1e-12] = 0.0
  return at, g, bt


def winograd(x, k, m, mats):
  at, g, bt = [np.asarray(a, np.float32) for a in mats]
  n, h, w, _ = x.shape
  t = m + 2
  th, tw = -(-h // m), -(-w // m)
  xp = jnp.pad(x, ((0, 0), (1, th * m + 1 - h), (1, tw * m + 1 - w), (0, 0)))
  comb = lambda mat, parts: [sum(float(mat[i, a]) * parts[a] for a in range(len(parts))
                                 if mat[i, a]) for i in range(mat.shape[0])]
  rows = comb(bt, [xp[:, a:a + m * (th - 1) + 1:m] for a in range(t)])
  v = jnp.stack([jnp.stack(comb(bt, [q[:, :, b:b + m * (tw - 1) + 1:m] for b in range(t)]))
                 for q in rows])
  u = jnp.einsum('ia,abcf,jb->ijcf', g, k, g)
  mm = jnp.einsum('ijntsc,ijcf->ijntsf', v, u)
  out = comb(at, [mm[i] for i in range(t)])
  y = jnp.stack([jnp.stack(comb(at, [o[j] for j in range(t)]), 3) for o in out], 2)
  return y.reshape(n, m * th, m * tw, -1)[:, :h, :w]


def bench(fn, x, k, chunk=16):
  n = x.shape[0]
  f = jax.jit(lambda x, k: jax.lax.map(lambda xc: jax.nn.relu(fn(xc, k)),
                                       x.reshape((n // chunk, chunk) + x.shape[1:])))
  jax.block_until_ready(f(x, k))
  ts = []
  for _ in range(15):
    t0 = time.perf_counter()
    jax.block_until_ready(f(x, k))
    ts.append(time.perf_counter() - t0)
  return 1e3 * np.median(ts), 1e3 * min(ts)


def main():
  points = [0, 1, -1, 2, -2]
  for hw in (21, 11):
    x = jax.random.normal(jax.random.key(0), (1024, hw, hw, 64))
    k = jax.random.normal(jax.random.key(1), (3, 3, 64, 64)) * 0.05
    ref = kconv.conv3x3_rows(x[:16], k)
    print(f'{hw} x {hw} rows: median {bench(kconv.conv3x3_rows, x, k)[0]:.1f} ms')
    for m in (2, 3, 4):
      mats = toom_cook(m, points)
      fn = lambda xc, kk, m=m, mats=mats: winograd(xc, kk, m, mats)
      err = float(jnp.abs(ref - fn(x[:16], k)).max())
      print(f'{hw} x {hw} F({m}x{m},3x3): median {bench(fn, x, k)[0]:.1f} ms, largest error '
            f'{err:.1e} (outputs up to {float(jnp.abs(ref).max()):.1f})')


if __name__ == '__main__':
  main()
