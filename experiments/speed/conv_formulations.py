"""Micro-benchmark: Table 3's six 3x3 convolutions (+ ReLU, 2x2 max pools), forward + backward,
on 640 stamps (a training step's batch 32 x 20 steps), in several formulations.

    .venv/bin/python experiments/speed/conv_formulations.py {rows,im2col,shift,xla,winograd} [N]

POOL=reshape replaces ``reduce_window`` max pooling by a reshape + max. XLA flags such as
XLA_FLAGS=--xla_cpu_use_onednn=true apply as usual. Prints the best and median of 5 calls.
"""
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

# Winograd F(2x2, 3x3): input tile transform B^T d B, kernel G g G^T, output A^T m A.
BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float32)
G = np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]], np.float32)
AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float32)


def winograd(x, k):
  n, h, w, _ = x.shape
  f = k.shape[-1]
  th, tw = -(-h // 2), -(-w // 2)
  xp = jnp.pad(x, ((0, 0), (1, 2 * th + 1 - h), (1, 2 * tw + 1 - w), (0, 0)))
  r = [xp[:, a:a + 2 * th:2] for a in range(4)]
  rb = [sum(BT[i, a] * r[a] for a in range(4) if BT[i, a]) for i in range(4)]
  v = jnp.stack([jnp.stack([sum(BT[j, b] * t[:, :, b:b + 2 * tw:2] for b in range(4) if BT[j, b])
                            for j in range(4)]) for t in rb])  # [4, 4, N, th, tw, C]
  u = jnp.einsum('ia,abcf,jb->ijcf', G, k, G)
  m = jnp.einsum('ijntsc,ijcf->ijntsf', v, u)  # 16 matmuls: 2.25x fewer multiplications
  mr = [sum(AT[p, i] * m[i] for i in range(4) if AT[p, i]) for p in range(2)]
  y = jnp.stack([jnp.stack([sum(AT[q, j] * t[j] for j in range(4) if AT[q, j])
                            for q in range(2)], 3) for t in mr], 2)
  return y.reshape(n, 2 * th, 2 * tw, f)[:, :h, :w]


def conv(x, k, impl):
  c, f = k.shape[2], k.shape[3]
  h, w = x.shape[1], x.shape[2]
  p = jnp.pad(x, [(0, 0), (1, 1), (1, 1), (0, 0)])
  if impl == 'im2col':
    patches = jnp.concatenate([p[:, dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)],
                              -1)
    return patches @ k.reshape(9 * c, f)
  if impl == 'rows':
    px = jnp.concatenate([p[:, :, dx:dx + w] for dx in range(3)], -1)
    z = px @ k.transpose(1, 2, 0, 3).reshape(3 * c, 3 * f)
    return sum(z[:, dy:dy + h, :, dy * f:(dy + 1) * f] for dy in range(3))
  if impl == 'shift':
    return sum(p[:, dy:dy + h, dx:dx + w] @ k[dy, dx] for dy in range(3) for dx in range(3))
  if impl == 'winograd':
    return winograd(x, k)
  return jax.lax.conv_general_dilated(x, k, (1, 1), 'SAME',
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def pool(x):
  if os.environ.get('POOL') == 'reshape':
    n, h, w, c = x.shape
    x = jnp.pad(x, [(0, 0), (0, h % 2), (0, w % 2), (0, 0)], constant_values=-jnp.inf)
    return x.reshape(n, (h + 1) // 2, 2, (w + 1) // 2, 2, c).max(axis=(2, 4))
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), 'SAME')


def main():
  impl = sys.argv[1]
  n = int(sys.argv[2]) if len(sys.argv) > 2 else 640

  def net(ks, x):
    for i, k in enumerate(ks):
      x = jax.nn.relu(conv(x, k, impl))
      if i in (2, 5):
        x = pool(x)
    return jnp.sum(x**2)

  ks = [jax.random.normal(jax.random.key(i), (3, 3, 3 if i == 0 else 64, 64)) * 0.05
        for i in range(6)]
  x = jax.random.normal(jax.random.key(9), (n, 21, 21, 3))
  f = jax.jit(jax.value_and_grad(net))
  t0 = time.perf_counter()
  jax.block_until_ready(f(ks, x))
  compile_s = time.perf_counter() - t0
  ts = []
  for _ in range(5):
    t0 = time.perf_counter()
    jax.block_until_ready(f(ks, x))
    ts.append(time.perf_counter() - t0)
  flop = 3 * n * (441 * 27 * 64 * 2 + 2 * 441 * 576 * 64 * 2 + 3 * 121 * 576 * 64 * 2)
  print(f'{impl:9s} best {min(ts) * 1e3:7.1f} ms  median {np.median(ts) * 1e3:7.1f} ms  '
        f'{flop / min(ts) / 1e9:6.1f} GFLOP/s (direct-convolution FLOPs)  compile {compile_s:.1f} s')


if __name__ == '__main__':
  main()
