"""What training, evaluation, prediction, fine-tuning and the benchmarks share: the model's
inputs, the loss, the device mesh, the jitted training and evaluation steps.

    build(config) -> (simulator, model, optimiser)
    init_state(...) -> TrainState;  make_train_step(...), make_eval_step(...)

Each step simulates its batch from ``fold_in(key, step)`` inside the jitted function (no stored
data, no host round trip), each device its own shard (``make_simulate_fn``).
"""

from __future__ import annotations

import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import optax

from rcnn_jax import models
from rcnn_jax.core.errors import UserError
from rcnn_jax.sim import bands as bands_lib
from rcnn_jax.sim import simulator as sim_lib


@flax.struct.dataclass
class TrainState:
  """Everything a checkpoint holds."""
  step: jnp.ndarray
  params: Any
  batch_stats: Any
  opt_state: Any


def model_inputs(batch, sim, kind: str):
  """The model's per-step input: image stacks (RCNN) or photometry features (Sec. 3.3)."""
  if kind == 'lc':
    return sim_lib.photometry_features(batch, sim)
  return batch['images']


def sequence_loss(logits, labels, mask, weights=None):
  """Sec. 3.4: cross-entropy summed over valid steps; mean over (weighted) sequences."""
  ce = optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), labels[:, None].astype(jnp.int32))
  per_seq = jnp.sum(ce * mask, axis=1)
  if weights is None:
    return per_seq.mean()
  return jnp.sum(per_seq * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def last_valid(x, mask):
  """x [B, T, ...] at each sequence's last valid step."""
  last = jnp.maximum(jnp.sum(mask, axis=1).astype(jnp.int32) - 1, 0)
  return jnp.take_along_axis(x, last[:, None, None], axis=1)[:, 0]


def make_mesh():
  return jax.make_mesh((jax.device_count(),), ('data',),
                       axis_types=(jax.sharding.AxisType.Auto,))


def make_simulate_fn(sim, mesh):
  """(key, consecutive global indices [B]) -> batch, each device simulating its own shard
  (a consecutive slice, so the simulator's schedules run per class)."""
  def local(key, index):
    return sim_lib.simulate_indices(key, sim, index, consecutive=True)

  return jax.shard_map(local, mesh=mesh, in_specs=(P(), P('data')), out_specs=P('data'))


def build(config):
  """Simulator, model and optimiser from a config."""
  sim = sim_lib.build_simulator(config)
  model = models.build_model(config.model, num_classes=sim.num_classes)
  tx = optax.adam(learning_rate_schedule(config.train))
  return sim, model, tx


def learning_rate_schedule(train_config):
  """The step -> learning rate of ``config.train``.

  ``schedule='constant'`` (the paper, Sec. 3.4: Adam at a fixed rate; also a saved config
  without the field): ``learning_rate`` throughout. ``'warmup_cosine'``: a linear warm-up from
  0 over ``warmup_steps``, then a cosine decay to ``final_lr_fraction * learning_rate`` at
  ``num_steps`` (Loshchilov & Hutter 2017, SGDR; the warm-up of Goyal et al. 2017), which
  settles a short run at a low rate instead of ending at the noisy fixed-rate loss.
  """
  t = train_config
  lr = float(t.learning_rate)
  kind = str(t.get('schedule', 'constant'))
  if kind == 'constant':
    return lr  # a float, not a schedule: Adam's state (and older checkpoints) as before
  if kind == 'warmup_cosine':
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=lr, warmup_steps=int(t.warmup_steps),
        decay_steps=int(t.num_steps), end_value=lr * float(t.final_lr_fraction))
  raise UserError(f'config.train.schedule={kind!r} is invalid: must be constant or '
                  'warmup_cosine')


def init_state(config, sim, model, tx, mesh) -> TrainState:
  key = jax.random.fold_in(jax.random.key(config.seed), 1)
  # Only the shapes of a batch are needed: nothing is simulated, nothing traced (tracing the
  # simulator for them took 12 s of every command that loads a model).
  x, gaps, mask = (jnp.zeros(a.shape, a.dtype)
                   for a in example_input_shapes(sim, config.model.kind))

  @functools.partial(jax.jit, out_shardings=NamedSharding(mesh, P()))
  def init(key):
    variables = model.init({'params': key, 'dropout': key}, x, gaps, mask, train=False)
    params = variables['params']
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      batch_stats=variables.get('batch_stats', {}), opt_state=tx.init(params))

  return init(key)


def example_input_shapes(sim, kind, batch=2):
  """The (inputs, side input, mask) shapes ``model_inputs`` and the simulator give a batch,
  from the simulator's sizes alone: images [B, T, S, S, n_w] (RCNN) or photometry features
  [B, T, 2 n_w] (light curves), time gaps with the band one-hots [B, T, side_width], mask
  [B, T]. ``tests/test_models.py`` checks them against a traced batch of every survey."""
  t, n_w = sim.max_steps, sim.n_w
  x = ((batch, t, sim.stamp_size, sim.stamp_size, n_w) if kind != 'lc' else
       (batch, t, 2 * n_w))
  return (jax.ShapeDtypeStruct(x, jnp.float32),
          jax.ShapeDtypeStruct((batch, t, bands_lib.side_width(n_w, sim.num_bands)),
                               jnp.float32),
          jax.ShapeDtypeStruct((batch, t), jnp.bool_))


def make_train_step(config, sim, model, tx, mesh, all_steps_valid=False):
  """The jitted step: simulate the batch, forward, backward, Adam. Traced exactly once.

  ``all_steps_valid`` (benchmarks only) treats every step of every sequence as valid, the
  work of a batch without padding steps, as a fixed-length implementation does.
  """
  batch_size = config.train.batch_size
  simulate = make_simulate_fn(sim, mesh)
  data = NamedSharding(mesh, P('data'))
  trace_count = [0]

  def step_fn(state: TrainState, root_key):
    trace_count[0] += 1
    k_sim, k_drop = jax.random.split(jax.random.fold_in(root_key, state.step))
    index = jax.lax.with_sharding_constraint(jnp.arange(batch_size, dtype=jnp.int32), data)
    batch = simulate(k_sim, index)
    if all_steps_valid:
      batch = {**batch, 'mask': jnp.ones_like(batch['mask'])}
    x = model_inputs(batch, sim, config.model.kind)
    mask = batch['mask'].astype(jnp.float32)

    def loss_fn(params):
      logits, updates = model.apply(
          {'params': params, 'batch_stats': state.batch_stats}, x, batch['time_gaps'],
          batch['mask'], train=True, rngs={'dropout': k_drop}, mutable=['batch_stats'])
      return sequence_loss(logits, batch['label'], mask), (logits, updates)

    (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    upd, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, upd)
    pred = jnp.argmax(last_valid(logits, mask), axis=-1)
    metrics = {
        'loss': loss,
        'accuracy': jnp.mean(pred == batch['label']),
        'grad_norm': optax.tree.norm(grads),
        'param_norm': optax.tree.norm(params),
    }
    new_state = TrainState(step=state.step + 1, params=params,
                           batch_stats=updates.get('batch_stats', state.batch_stats),
                           opt_state=opt_state)
    return new_state, metrics

  replicated = NamedSharding(mesh, P())
  fn = jax.jit(step_fn, donate_argnums=(0,), out_shardings=(replicated, replicated))
  fn.trace_count = trace_count
  return fn


def make_eval_step(config, sim, model, mesh, with_logits=False):
  """(state, key, offset) -> sums over eval.batch_size objects with global index < num.

  Validation and test sets are simulated with the survey's own conditions: randomised
  conditions (``config.sim.randomise_conditions``) are a training augmentation only, so that
  runs with and without it are measured on the same objects.
  """
  eb = config.eval.batch_size
  sim = sim_lib.without_randomised_conditions(sim)
  simulate = make_simulate_fn(sim, mesh)
  data = NamedSharding(mesh, P('data'))

  @jax.jit
  def eval_step(params, batch_stats, key, offset, num):
    index = jax.lax.with_sharding_constraint(offset + jnp.arange(eb, dtype=jnp.int32), data)
    batch = simulate(key, index)
    x = model_inputs(batch, sim, config.model.kind)
    logits = model.apply({'params': params, 'batch_stats': batch_stats}, x,
                         batch['time_gaps'], batch['mask'], train=False)
    weights = (index < num).astype(jnp.float32)
    mask = batch['mask'].astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch['label'][:, None])
    pred = jnp.argmax(last_valid(logits, mask), axis=-1)
    sums = {
        'loss': jnp.sum(jnp.sum(ce * mask, axis=1) * weights),
        'correct': jnp.sum((pred == batch['label']) * weights),
        'count': jnp.sum(weights),
    }
    if with_logits:
      return sums, logits, batch
    return sums

  return eval_step


def evaluate_loss(eval_step, state, key, num, batch_size):
  """Validation loss and last-step accuracy over a fixed simulated set of ``num`` objects."""
  totals = {'loss': 0.0, 'correct': 0.0, 'count': 0.0}
  # Several processes: the scalars as arrays over the global mesh (the same in each process).
  put = _replicated_like(state.params) if jax.process_count() > 1 else jnp.int32
  for off in range(0, num, batch_size):
    s = jax.device_get(eval_step(state.params, state.batch_stats, key, put(off), put(num)))
    totals = {k: totals[k] + float(s[k]) for k in totals}
  return {'loss': totals['loss'] / totals['count'],
          'accuracy': totals['correct'] / totals['count']}


def _replicated_like(tree):
  """int -> an int32 scalar replicated over the (global) mesh of ``tree``'s first array, the
  same value given by every process."""
  sharding = NamedSharding(jax.tree.leaves(tree)[0].sharding.mesh, P())
  return lambda v: jax.make_array_from_callback((), sharding, lambda _: np.int32(v))


def validation_key(config):
  return jax.random.fold_in(jax.random.key(config.seed), config.eval.val_seed_offset)


def test_key(config):
  """The seeded test set's key (evaluate); config_check keeps it off the validation key."""
  return jax.random.fold_in(jax.random.key(config.seed), config.eval.test_seed_offset)
