"""Table 3's RCNN and Sec. 3.3's light-curve classifier: size, shapes, masking, incremental use."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import hits
from rcnn_jax import models
from rcnn_jax.models.kernels import conv as kconv
from rcnn_jax.models.kernels import fused as kfused
from rcnn_jax.training import steps as steps_lib

B, T, N_W, C = 3, 5, 3, 7


def _inputs(kind, seed=0, b=B, t=T):
  rng = np.random.default_rng(seed)
  if kind == 'rcnn':
    x = rng.normal(size=(b, t, 21, 21, N_W)) * 50.0
  else:
    x = np.concatenate([rng.normal(size=(b, t, N_W)) * 500.0,
                        rng.uniform(10.0, 100.0, size=(b, t, N_W))], -1)
  gaps = np.cumsum(rng.uniform(0.0, 2.0, size=(b, t, N_W)), 1)
  mask = np.ones((b, t), bool)
  if b >= 3 and t >= 4:
    mask[1, 3:] = False
    mask[2, 1:] = False
  return jnp.asarray(x, jnp.float32), jnp.asarray(gaps, jnp.float32), jnp.asarray(mask)


def _small_model(kind, conv_impl='auto'):
  m = hits.get_config('smoke').model
  m.kind = kind
  m.conv_impl = conv_impl
  return models.build_model(m, C)


def _init(model, x, gaps, mask):
  return jax.jit(lambda x, g, m: model.init(
      {'params': jax.random.key(0), 'dropout': jax.random.key(1)}, x, g, m, train=False))(
          x, gaps, mask)


@pytest.fixture(scope='module', params=['rcnn', 'lc'])
def small(request):
  kind = request.param
  model = _small_model(kind)
  x, gaps, mask = _inputs(kind)
  variables = _init(model, x, gaps, mask)
  # Non-trivial batch statistics, so that eval mode is not the identity normalisation.
  _, upd = jax.jit(lambda v, x, g, m: model.apply(
      v, x, g, m, train=True, rngs={'dropout': jax.random.key(2)}, mutable=['batch_stats']))(
          variables, x, gaps, mask)
  variables = {'params': variables['params'], 'batch_stats': upd['batch_stats']}
  apply = jax.jit(lambda v, x, g, m: model.apply(v, x, g, m, train=False))
  return kind, model, variables, apply


# --------------------------------------------------------------------------- size


def test_paper_parameter_count_matches_table3():
  config = hits.get_config()  # 'paper'
  model = models.build_model(config.model, 7)
  x = jnp.zeros((1, 2, 21, 21, 3))
  variables = jax.eval_shape(lambda: model.init(
      {'params': jax.random.key(0), 'dropout': jax.random.key(1)}, x, jnp.zeros((1, 2, 3)),
      jnp.ones((1, 2), bool), train=False))
  params = variables['params']

  # Table 3 by hand (n_w = 3, 64 filters, 3 x 3 kernels, BN = scale + offset per channel):
  bn_input = 2 * 3                          # 6
  conv_first = 3 * 3 * 3 * 64 + 64          # 1,792
  conv_other = 3 * 3 * 64 * 64 + 64         # 36,928
  bn_conv = 2 * 64                          # 128
  convs = conv_first + 5 * conv_other + 6 * bn_conv  # 187,200
  # 21 -> pool -> 11 -> pool -> 6 (SAME padding): flatten 6 * 6 * 64 = 2304.
  dense = 2304 * 1024 + 1024                # 2,360,320
  lstm = 4 * 512 * (1024 + 3 + 512) + 4 * 512  # 3,153,920 (input: dense + n_w time gaps)
  out = 512 * 7 + 7                         # 3,591
  by_hand = bn_input + convs + dense + lstm + out
  assert by_hand == 5_705_037

  assert models.count_params(params) == by_hand
  assert models.table3_param_count() == by_hand
  # The pieces, not only the total.
  assert params['fc']['kernel'].shape == (2304, 1024)
  assert params['lstm']['wi'].shape == (1027, 2048)
  assert params['lstm']['wh'].shape == (512, 2048)
  assert params['out']['kernel'].shape == (512, 7)
  enc = params['encoder']
  assert enc['conv0_0']['kernel'].shape == (3, 3, 3, 64)
  assert enc['conv1_2']['kernel'].shape == (3, 3, 64, 64)
  bn = [k for k in enc if k.startswith('bn')]
  assert len(bn) == 7 and all(set(enc[k]) == {'scale', 'bias'} for k in bn)
  # Batch statistics (mean and variance per channel) are state, not parameters.
  assert models.count_params(variables['batch_stats']) == 2 * (3 + 6 * 64)


def test_light_curve_model_parameter_count():
  config = hits.get_config('paper,lc')
  model = models.build_model(config.model, 7)
  variables = jax.eval_shape(lambda: model.init(
      {'params': jax.random.key(0), 'dropout': jax.random.key(1)}, jnp.zeros((1, 2, 6)),
      jnp.zeros((1, 2, 3)), jnp.ones((1, 2), bool), train=False))
  # Input BN on the 6 features, then Table 3's last three rows (dense input 6 instead of 2304).
  by_hand = 2 * 6 + (6 * 1024 + 1024) + (4 * 512 * (1024 + 3 + 512) + 4 * 512) + (512 * 7 + 7)
  assert models.count_params(variables['params']) == by_hand


# --------------------------------------------------------------------------- shapes and masks


def test_output_shapes(small):
  kind, model, variables, apply = small
  for b, t in ((B, T), (2, 3)):
    x, gaps, mask = _inputs(kind, 1, b, t)
    logits = apply(variables, x, gaps, mask)
    assert logits.shape == (b, t, C) and logits.dtype == jnp.float32
    assert np.isfinite(np.asarray(logits)).all()


def test_padded_steps_do_not_affect_valid_steps(small):
  kind, model, variables, apply = small
  x, gaps, mask = _inputs(kind)
  base = np.asarray(apply(variables, x, gaps, mask))
  pad = ~np.asarray(mask)
  x2 = jnp.where(pad.reshape(pad.shape + (1,) * (x.ndim - 2)), 1e4 * jnp.ones_like(x), x)
  gaps2 = jnp.where(pad[..., None], 99.0, gaps)
  moved = np.asarray(apply(variables, x2, gaps2, mask))
  valid = np.asarray(mask)
  np.testing.assert_allclose(moved[valid], base[valid], rtol=1e-5, atol=1e-6)
  # Padded steps keep the state, so they repeat the last valid step's logits.
  last = valid.sum(1) - 1
  for i in range(B):
    np.testing.assert_allclose(moved[i, ~valid[i]], np.broadcast_to(base[i, last[i]],
                               moved[i, ~valid[i]].shape), rtol=1e-5, atol=1e-6)
  # The same change at a valid step does change that step's logits (the test can fail).
  x3 = x.at[1, 1].set(x2[1, 3])
  changed = np.asarray(apply(variables, x3, gaps, mask))
  assert np.abs(changed[1, 1:3] - base[1, 1:3]).max() > 1e-3


def test_masked_interior_step_is_skipped(small):
  """A step masked in the middle leaves the LSTM state as it was: the later valid steps' logits
  are those of the same sequence with that step removed."""
  kind, model, variables, apply = small
  x, gaps, _ = _inputs(kind)
  mask = jnp.array([[True, True, False, True, True]] * B)
  holed = np.asarray(apply(variables, x, gaps, mask))
  keep = np.array([0, 1, 3, 4])
  compact = np.asarray(apply(variables, x[:, keep], gaps[:, keep], jnp.ones((B, 4), bool)))
  np.testing.assert_allclose(holed[:, keep], compact, rtol=1e-5, atol=1e-5)
  # Without the mask the step counts, and the later logits differ.
  full = np.asarray(apply(variables, x, gaps, jnp.ones((B, T), bool)))
  assert np.abs(full[:, 3:] - holed[:, 3:]).max() > 1e-4


def test_eval_logits_do_not_depend_on_other_sequences(small):
  kind, model, variables, apply = small
  x, gaps, mask = _inputs(kind)
  together = np.asarray(apply(variables, x, gaps, mask))
  for i in range(B):
    alone = np.asarray(apply(variables, x[i:i + 1], gaps[i:i + 1], mask[i:i + 1]))[0]
    v = np.asarray(mask[i])
    np.testing.assert_allclose(alone[v], together[i][v], rtol=1e-5, atol=1e-5)
  # Reversing the batch permutes the outputs and changes nothing else.
  rev = np.asarray(apply(variables, x[::-1], gaps[::-1], mask[::-1]))[::-1]
  np.testing.assert_allclose(rev[np.asarray(mask)], together[np.asarray(mask)], rtol=1e-5,
                             atol=1e-5)


def test_train_mode_batch_statistics_use_valid_steps_only(small):
  kind, model, variables, _ = small
  x, gaps, mask = _inputs(kind)

  @jax.jit
  def run(x, gaps):
    return model.apply(variables, x, gaps, mask, train=True, rngs={'dropout': jax.random.key(5)},
                       mutable=['batch_stats'])

  logits, upd = run(x, gaps)
  pad = ~np.asarray(mask)
  x2 = jnp.where(pad.reshape(pad.shape + (1,) * (x.ndim - 2)), 1e4 * jnp.ones_like(x), x)
  logits2, upd2 = run(x2, jnp.where(pad[..., None], 99.0, gaps))
  valid = np.asarray(mask)
  np.testing.assert_allclose(np.asarray(logits2)[valid], np.asarray(logits)[valid], rtol=1e-4,
                             atol=1e-5)
  for a, b in zip(jax.tree.leaves(upd), jax.tree.leaves(upd2)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
  # ... while the batch statistics do follow the valid inputs.
  _, upd3 = run(x * 2.0, gaps)
  diff = [np.abs(np.asarray(a) - np.asarray(b)).max()
          for a, b in zip(jax.tree.leaves(upd), jax.tree.leaves(upd3))]
  assert max(diff) > 1e-3


# --------------------------------------------------------------------------- incremental use


def test_incremental_steps_equal_whole_sequence(small):
  kind, model, variables, apply = small
  x, gaps, mask = _inputs(kind)
  whole = np.asarray(apply(variables, x, gaps, mask))
  step = jax.jit(lambda v, x, g, m, c: model.apply(v, x, g, m, c, method='step'))
  carry = model.apply(variables, B, method='initial_carry')
  assert all(np.all(np.asarray(c) == 0) for c in carry)  # zero initial state (Sec. 3.2)
  outs = []
  for t in range(T):
    logits, carry = step(variables, x[:, t:t + 1], gaps[:, t:t + 1], mask[:, t:t + 1], carry)
    outs.append(np.asarray(logits))
  np.testing.assert_allclose(np.concatenate(outs, 1), whole, rtol=1e-5, atol=1e-5)
  # In two chunks of unequal length as well.
  zeros = model.apply(variables, B, method='initial_carry')
  a, carry = step(variables, x[:, :1], gaps[:, :1], mask[:, :1], zeros)
  b, _ = step(variables, x[:, 1:], gaps[:, 1:], mask[:, 1:], carry)
  np.testing.assert_allclose(np.concatenate([a, b], 1), whole, rtol=1e-5, atol=1e-5)
  # The carry matters: restarting from zeros at step 1 gives other logits.
  c, _ = step(variables, x[:, 1:], gaps[:, 1:], mask[:, 1:], zeros)
  assert np.abs(np.asarray(c) - whole[:, 1:]).max() > 1e-4


@pytest.mark.parametrize('impl', ['im2col', 'rows'])
def test_conv_implementations_agree(impl):
  x, gaps, mask = _inputs('rcnn')
  im2col, xla = _small_model('rcnn', impl), _small_model('rcnn', 'xla')
  variables = _init(im2col, x, gaps, mask)
  assert (jax.tree.structure(variables) ==
          jax.tree.structure(jax.eval_shape(lambda: _init(xla, x, gaps, mask))))
  a = np.asarray(jax.jit(im2col.apply)(variables, x, gaps, mask))
  b = np.asarray(jax.jit(xla.apply)(variables, x, gaps, mask))
  np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(b).max())


@pytest.mark.parametrize('impl', ['rows', 'im2col', 'xla'])
def test_conv3x3_is_flax_same_convolution(impl):
  """Conv3x3 equals nn.Conv (3 x 3, stride 1, SAME, cross-correlation) with the same weights."""
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.normal(size=(2, 9, 7, 4)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(3, 3, 4, 5)), jnp.float32)
  bias = jnp.asarray(rng.normal(size=(5,)), jnp.float32)
  p = {'params': {'kernel': kernel, 'bias': bias}}
  ours = models.Conv3x3(5, impl).apply(p, x)
  ref = nn.Conv(5, (3, 3), padding='SAME').apply(p, x)
  np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), rtol=1e-5, atol=1e-5)
  # One output pixel by hand: the kernel's [dy, dx] tap multiplies pixel (y + dy - 1, x + dx - 1).
  xn, kn = np.asarray(x), np.asarray(kernel)
  y0, x0 = 0, 3  # on the top edge: zero padding above
  hand = bias.copy()
  for dy in range(3):
    for dx in range(3):
      yy, xx = y0 + dy - 1, x0 + dx - 1
      if 0 <= yy < 9 and 0 <= xx < 7:
        hand = hand + xn[0, yy, xx] @ kn[dy, dx]
  np.testing.assert_allclose(np.asarray(ours)[0, y0, x0], np.asarray(hand), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- loss


def test_sequence_loss_by_hand():
  rng = np.random.default_rng(4)
  logits = rng.normal(size=(3, 4, 7)).astype(np.float32) * 3.0
  labels = np.array([2, 6, 0])
  mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]], np.float32)
  per_seq = np.zeros(3)
  for i in range(3):
    for t in range(4):
      if mask[i, t]:
        z = logits[i, t].astype(np.float64)
        log_softmax = z - np.log(np.exp(z - z.max()).sum()) - z.max()
        per_seq[i] += -log_softmax[labels[i]]
  got = float(steps_lib.sequence_loss(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(mask)))
  np.testing.assert_allclose(got, per_seq.mean(), rtol=1e-5)
  w = np.array([1.0, 0.0, 3.0], np.float32)
  got_w = float(steps_lib.sequence_loss(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(mask),
                                    jnp.asarray(w)))
  np.testing.assert_allclose(got_w, (per_seq[0] + 3 * per_seq[2]) / 4.0, rtol=1e-5)
  # Uniform logits: log(7) per valid step, summed over steps (not averaged).
  got_u = float(steps_lib.sequence_loss(jnp.zeros((3, 4, 7)), jnp.asarray(labels),
                                    jnp.asarray(mask)))
  np.testing.assert_allclose(got_u, np.log(7.0) * mask.sum() / 3, rtol=1e-6)


@pytest.mark.parametrize('shape', [(3, 9, 7, 20, 6), (2, 6, 5, 32, 64)])
def test_rows_convolution_gradients_equal_xla(shape):
  """The hand-written backward pass of 'rows' gives XLA's gradients (input and kernel)."""
  n, h, w, c, f = shape
  rng = np.random.default_rng(5)
  x = jnp.asarray(rng.normal(size=(n, h, w, c)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(3, 3, c, f)), jnp.float32)
  g = jnp.asarray(rng.normal(size=(n, h, w, f)), jnp.float32)
  ref = lambda x, k: jax.lax.conv_general_dilated(x, k, (1, 1), 'SAME',
                                                  dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  y, vjp = jax.vjp(kconv.conv3x3_rows, x, k)
  y_ref, vjp_ref = jax.vjp(ref, x, k)
  np.testing.assert_allclose(y, y_ref, rtol=1e-4, atol=1e-4)
  for ours, theirs in zip(vjp(g), vjp_ref(g)):
    scale = float(np.abs(theirs).max())
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize('train', [True, False])
def test_masked_batch_norm_equals_flax(train):
  """Variables, outputs, updated statistics and gradients as nn.BatchNorm with a mask."""
  rng = np.random.default_rng(6)
  x = jnp.asarray(rng.normal(2.0, 3.0, size=(10, 5, 4, 6)), jnp.float32)
  mask = jnp.asarray(rng.random(10) < 0.6)
  ours = models.MaskedBatchNorm(momentum=0.9)
  ref = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-3)
  bmask = jnp.broadcast_to(mask[:, None, None, None], x.shape)
  v = ref.init(jax.random.key(0), x, mask=bmask)
  v = {'params': {'scale': v['params']['scale'] + 0.5, 'bias': v['params']['bias'] - 0.2},
       'batch_stats': {'mean': jnp.full((6,), 0.3), 'var': jnp.full((6,), 2.0)}}
  assert (jax.tree.structure(v) == jax.tree.structure(
      ours.init(jax.random.key(0), x, mask, train)))

  def run(module, **kw):
    def f(params, x):
      y, upd = module.apply({**v, 'params': params}, x, mutable=['batch_stats'], **kw)
      return jnp.sum(jnp.sin(y) * bmask), (y, upd)
    return jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(v['params'], x)

  (_, (y1, u1)), g1 = run(ours, mask=mask, train=train)
  (_, (y2, u2)), g2 = run(ref, mask=bmask)
  m = np.asarray(mask)
  np.testing.assert_allclose(np.asarray(y1)[m], np.asarray(y2)[m], rtol=1e-5, atol=1e-5)
  for a, b in zip(jax.tree.leaves((u1, g1)), jax.tree.leaves((u2, g2))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  if train:  # the statistics moved: the comparison above is not between two constants
    assert np.abs(np.asarray(u1['batch_stats']['mean']) - 0.3).max() > 1e-3


def test_max_pool_equals_flax():
  rng = np.random.default_rng(7)
  for hw in [(21, 21), (11, 10)]:
    x = jnp.asarray(rng.normal(size=(2,) + hw + (3,)), jnp.float32)
    ref = nn.max_pool(x, (2, 2), strides=(2, 2), padding='SAME')
    np.testing.assert_array_equal(kfused.max_pool_2x2(x), ref)
    g = jnp.asarray(rng.normal(size=ref.shape), jnp.float32)
    ours_g = jax.vjp(kfused.max_pool_2x2, x)[1](g)[0]
    ref_g = jax.vjp(lambda x: nn.max_pool(x, (2, 2), strides=(2, 2), padding='SAME'), x)[1](g)[0]
    np.testing.assert_allclose(ours_g, ref_g, rtol=1e-6, atol=1e-6)


def test_chunked_encoder_equals_whole_batch():
  """encoder_chunk (fused layers over chunks of the batch, padded to a multiple) gives the
  whole-batch layers' logits, batch statistics and gradients, in training mode with a mask."""
  x, gaps, mask = _inputs('rcnn', seed=4)  # 15 steps, 4 masked out: chunks of 4 need padding
  m = hits.get_config('smoke').model
  m.conv_impl = 'rows'
  m.dropout = 0.0
  m.encoder_chunk = 0
  whole = models.build_model(m, C)
  m.encoder_chunk = 4
  chunked = models.build_model(m, C)
  variables = _init(whole, x, gaps, mask)
  assert (jax.tree.structure(variables) ==
          jax.tree.structure(jax.eval_shape(lambda: _init(chunked, x, gaps, mask))))

  def run(model):
    def loss(params):
      logits, upd = model.apply({**variables, 'params': params}, x, gaps, mask, train=True,
                                mutable=['batch_stats'])
      return jnp.sum(jnp.where(mask[..., None], jnp.sin(logits), 0.0)), (logits, upd)
    return jax.jit(jax.value_and_grad(loss, has_aux=True))(variables['params'])

  (_, (l1, u1)), g1 = run(chunked)
  (_, (l2, u2)), g2 = run(whole)
  np.testing.assert_allclose(l1, l2, rtol=1e-4, atol=1e-4)
  # Biases before a batch norm have zero gradient up to rounding: a floor of 1e-5 of the
  # largest gradient.
  floor = 1e-5 * max(float(np.abs(np.asarray(g)).max()) for g in jax.tree.leaves(g2))
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path((u1, g1)),
                          jax.tree.leaves((u2, g2))):
    scale = float(np.abs(np.asarray(b)).max())
    np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-4 * scale + floor,
                               err_msg=jax.tree_util.keystr(path))
  # Evaluation mode too (running statistics).
  ev = lambda model: jax.jit(lambda v: model.apply(v, x, gaps, mask, train=False))(
      {'params': variables['params'], 'batch_stats': u2['batch_stats']})
  np.testing.assert_allclose(ev(chunked), ev(whole), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('shape', [(2, 9, 7, 4), (2, 21, 21, 16), (3, 11, 11, 5)])
def test_winograd_convolution_equals_flax(shape):
  """conv3x3_winograd (F(2 x 2, 3 x 3), odd and even sizes) equals nn.Conv without bias; with
  a precomputed kernel transform too, and with bfloat16 products to bfloat16's precision."""
  rng = np.random.default_rng(5)
  x = jnp.asarray(rng.normal(size=shape), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(3, 3, shape[-1], 6)), jnp.float32)
  p = {'params': {'kernel': kernel}}
  ref = np.asarray(nn.Conv(6, (3, 3), padding='SAME', use_bias=False).apply(p, x))
  scale = np.abs(ref).max()
  ours = jax.jit(kconv.conv3x3_winograd)(x, kernel)
  assert ours.shape == ref.shape and ours.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(ours), ref, rtol=0, atol=1e-5 * scale)
  pre = kconv.conv3x3_winograd(x, kernel, kconv.winograd_kernel(kernel))
  np.testing.assert_allclose(np.asarray(pre), ref, rtol=0, atol=1e-5 * scale)
  half = kconv.conv3x3_winograd(x, kernel.astype(jnp.bfloat16))
  err = np.abs(np.asarray(half) - ref).max()
  assert 1e-5 * scale < err < 2e-2 * scale  # bfloat16 products: coarser, but close


def test_eval_encoder_with_winograd_layers_equals_whole_batch():
  """Evaluation mode of the chunked encoder, whose 21 x 21 layers of 16 filters go through
  Winograd, equals the plain whole-batch layers, padding chunks skipped."""
  x, gaps, mask = _inputs('rcnn', seed=6, b=3, t=6)
  m = hits.get_config('smoke').model
  m.conv_impl, m.filters = 'rows', 16
  m.encoder_chunk = 0
  whole = models.build_model(m, C)
  m.encoder_chunk = 4
  chunked = models.build_model(m, C)
  assert kconv.winograd_wins((21, 21, 16)) and not kconv.winograd_wins((11, 11, 16))
  mask = mask.at[2].set(False)  # a whole sequence of padding: skipped chunks
  variables = _init(whole, x, gaps, mask)
  rng = np.random.default_rng(7)  # running statistics away from (0, 1)
  stats = jax.tree_util.tree_map_with_path(
      lambda path, v: jnp.asarray(rng.uniform(0.5, 2.0, v.shape) if 'var' in str(path) else
                                  rng.normal(0.0, 0.2, v.shape), jnp.float32),
      variables['batch_stats'])
  v = {'params': variables['params'], 'batch_stats': stats}
  ev = lambda model: np.asarray(jax.jit(lambda v: model.apply(v, x, gaps, mask))(v))
  a, b = ev(chunked), ev(whole)
  assert np.abs(b[mask]).max() > 0.1 and np.abs(b[0] - b[1]).max() > 0.01  # not a dead net
  np.testing.assert_allclose(a[mask], b[mask], rtol=1e-4, atol=1e-4 * np.abs(b).max())


@pytest.mark.parametrize('survey,kind', [('hits', 'rcnn'), ('hits', 'lc'), ('ztf', 'rcnn'),
                                         ('lsst', 'rcnn'), ('lsst', 'lc')])
def test_example_input_shapes_equal_a_simulated_batch(survey, kind):
  """Models are initialised from shapes computed without the simulator: they must be those of a
  traced simulated batch (images or photometry, band one-hots, mask) for every survey."""
  import importlib
  from rcnn_jax.sim import simulator as sim_lib
  config = importlib.import_module(f'configs.{survey}').get_config(
      'smoke' + (',lc' if kind == 'lc' else ''))
  assert config.model.kind == kind
  sim = sim_lib.build_simulator(config)

  def traced(key):
    batch = sim_lib.simulate_batch(key, sim, 3)
    return (steps_lib.model_inputs(batch, sim, kind), batch['time_gaps'], batch['mask'])

  want = jax.eval_shape(traced, jax.random.key(0))
  got = steps_lib.example_input_shapes(sim, kind, batch=3)
  assert [(a.shape, a.dtype) for a in got] == [(a.shape, a.dtype) for a in want]
