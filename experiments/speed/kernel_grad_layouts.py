"""Kernel-gradient product [3C, M] x [M, 3F] of the rows convolution in several layouts, over
20 chunks of 32 x 21 x 21 rows (lax.map), in GFLOP/s; forward (NN) and input-gradient (NT)
products for scale. See README.md (round 2).

    GLIBC_TUNABLES=glibc.malloc.hugetlb=1 .venv/bin/python experiments/speed/kernel_grad_layouts.py
"""
import time, jax, jax.numpy as jnp
def t(f, *a, n=15):
  jax.block_until_ready(f(*a)); ts=[]
  for _ in range(n):
    t0=time.perf_counter(); jax.block_until_ready(f(*a)); ts.append(time.perf_counter()-t0)
  return min(ts)*1e3
M=14112*20
a = jax.random.normal(jax.random.key(0), (20, 14112,192)); b = jax.random.normal(jax.random.key(1), (20, 14112,192))
fl = 2*M*192*192
def run(name, body):
  f = jax.jit(lambda a,b: jax.lax.map(lambda ab: body(*ab), (a,b)).sum(0))
  ms = t(f,a,b); print(f'{name:12s} {ms:7.1f} ms {fl/ms/1e6:6.1f} GF/s')
run('TN', lambda a,b: jax.lax.dot_general(a,b,(((0,),(0,)),((),()))))
run('T then NN', lambda a,b: jnp.transpose(a) @ b)
run('NN (fwd)', lambda a,b: jnp.sum(a @ jnp.ones((192,192))))
run('NT (drows)', lambda a,b: jnp.sum(jax.lax.dot_general(a, jnp.ones((192,192)), (((1,),(1,)),((),())))))
run('TN via bT', lambda a,b: jax.lax.dot_general(b,a,(((0,),(0,)),((),()))).T)
run('TN as batch', lambda a,b: jnp.einsum('kmc,kmf->cf', a.reshape(-1, 441, 192), b.reshape(-1,441,192)))
print('--- with rows construction')
x = jax.random.normal(jax.random.key(2), (20, 32, 21, 21, 64))
def hp(a, axis_w):
  pads = [(0,0)]*a.ndim; pads[axis_w]=(1,1); return jnp.pad(a, pads)
def A(x, g):
  p = hp(x, 2)
  rows = jnp.concatenate([p[:, :, dx:dx+21] for dx in range(3)], -1).reshape(-1, 192)
  return jax.lax.dot_general(rows, g, (((0,),(0,)),((),())))
def B(x, g):
  xT = jnp.transpose(x, (3, 0, 1, 2))  # [C, c, H, W]
  p = hp(xT, 3)
  rowsT = jnp.concatenate([p[..., dx:dx+21] for dx in range(3)], 0).reshape(192, -1)
  return rowsT @ g
for name, body in (('A rows TN', A), ('B rowsT NN', B)):
  f = jax.jit(lambda x,b: jax.lax.map(lambda ab: body(*ab), (x,b)).sum(0))
  ms = t(f,x,b); print(f'{name:12s} {ms:7.1f} ms {fl/ms/1e6:6.1f} GF/s')
def C(x, g):
  xT = jnp.transpose(x, (3, 0, 1, 2))  # [C, c, H, W]
  p = hp(xT, 3)
  rowsT = jnp.concatenate([p[..., dx:dx+21] for dx in range(3)], 0).reshape(192, -1)
  rowsT = jax.lax.optimization_barrier(rowsT)
  return rowsT @ g
def D(x, g):
  p = hp(x, 2)
  rows = jnp.concatenate([p[:, :, dx:dx+21] for dx in range(3)], -1).reshape(-1, 192)
  rowsT = jax.lax.optimization_barrier(rows.T)
  return rowsT @ g
for name, body in (('C barrier', C), ('D barrier', D)):
  f = jax.jit(lambda x,b: jax.lax.map(lambda ab: body(*ab), (x,b)).sum(0))
  ms = t(f,x,b); print(f'{name:12s} {ms:7.1f} ms {fl/ms/1e6:6.1f} GF/s')
