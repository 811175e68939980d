"""Sec. 3.4: training on the simulator's on-the-fly stream.

    python -m rcnn_jax.train --config configs/hits.py:cpu [--workdir DIR] [--config.x.y=v]

The default workdir is ``workdirs/<variant>_<model kind>`` (e.g. ``workdirs/cpu_rcnn``).
Each step simulates its batch from ``fold_in(key, step)`` inside the jitted gradient step (no
stored data, no host round trip). The loss is the cross-entropy summed over each sequence's
valid steps, averaged over the batch; Adam. Validation on a fixed, seeded simulated set every
``train.eval_every`` steps; orbax keeps the latest ``ckpt.max_to_keep`` checkpoints in
``checkpoints/`` and the best by validation loss in ``best/``. A rerun resumes from the latest.
"""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Any

from absl import app
from absl import flags
import flax
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import ml_collections
from ml_collections import config_flags
import numpy as np
import optax
import orbax.checkpoint as ocp

from rcnn_jax import models
from rcnn_jax import simulator as sim_lib
from rcnn_jax import utils

def _define_flags():
  """Command-line flags, defined only when the module runs as a command."""
  global _CONFIG, _WORKDIR
  _CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file.', lock_config=True)
  _WORKDIR = flags.DEFINE_string('workdir', None, 'Where checkpoints, metrics and the config go '
                                 '(default: workdirs/<variant>_<model kind>).')


@flax.struct.dataclass
class TrainState:
  step: jnp.ndarray
  params: Any
  batch_stats: Any
  opt_state: Any


def default_workdir(config) -> str:
  return os.path.join('workdirs', f'{config.get("variant", "run")}_{config.model.kind}')


# ----------------------------------------------------------------------------------------------
# Pieces shared with evaluation and prediction


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
  """(key, global indices [B]) -> batch, each device simulating its own shard."""
  def local(key, index):
    return sim_lib.simulate_indices(key, sim, index)

  return jax.shard_map(local, mesh=mesh, in_specs=(P(), P('data')), out_specs=P('data'))


def build(config):
  """Simulator, model and optimiser from a config."""
  sim = sim_lib.build_simulator(config)
  model = models.build_model(config.model, num_classes=sim.num_classes, n_w=sim.n_w)
  tx = optax.adam(config.train.learning_rate)
  return sim, model, tx


def init_state(config, sim, model, tx, mesh) -> TrainState:
  key = jax.random.fold_in(jax.random.key(config.seed), 1)
  # Only the shapes of a batch are needed: nothing is simulated (op by op that takes a minute).
  shapes = jax.eval_shape(lambda k: _example_inputs(k, sim, config.model.kind),
                          jax.random.key(0))
  x, gaps, mask = (jnp.zeros(a.shape, a.dtype) for a in shapes)

  @functools.partial(jax.jit, out_shardings=NamedSharding(mesh, P()))
  def init(key):
    variables = model.init({'params': key, 'dropout': key}, x, gaps, mask, train=False)
    params = variables['params']
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      batch_stats=variables.get('batch_stats', {}), opt_state=tx.init(params))

  return init(key)


def _example_inputs(key, sim, kind):
  batch = sim_lib.simulate_batch(key, sim, 2)
  return model_inputs(batch, sim, kind), batch['time_gaps'], batch['mask']


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
  """(state, key, offset) -> sums over eval.batch_size objects with global index < num."""
  eb = config.eval.batch_size
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
  for off in range(0, num, batch_size):
    s = jax.device_get(eval_step(state.params, state.batch_stats, key, jnp.int32(off),
                                 jnp.int32(num)))
    totals = {k: totals[k] + float(s[k]) for k in totals}
  return {'loss': totals['loss'] / totals['count'],
          'accuracy': totals['correct'] / totals['count']}


def validation_key(config):
  return jax.random.fold_in(jax.random.key(config.seed), config.eval.val_seed_offset)


# ----------------------------------------------------------------------------------------------
# Checkpoints and the saved config


def checkpoint_managers(workdir, config):
  latest = ocp.CheckpointManager(
      os.path.abspath(os.path.join(workdir, 'checkpoints')),
      options=ocp.CheckpointManagerOptions(max_to_keep=config.ckpt.max_to_keep, create=True))
  best = ocp.CheckpointManager(
      os.path.abspath(os.path.join(workdir, 'best')),
      options=ocp.CheckpointManagerOptions(max_to_keep=1, best_fn=lambda m: m['val_loss'],
                                           best_mode='min', create=True))
  return latest, best


def restore_state(manager, step, target: TrainState) -> TrainState:
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  return manager.restore(step, args=ocp.args.StandardRestore(abstract))


# Fields that may differ when a run is resumed (length of the run, logging cadence).
_RESUMABLE = ('train.num_steps', 'train.log_every', 'train.eval_every', 'ckpt.every',
              'ckpt.max_to_keep')


def _flatten(d, prefix=''):
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def save_config(workdir, config):
  """Writes config.json; refuses to mix a different configuration into an existing run."""
  path = os.path.join(workdir, 'config.json')
  new = json.loads(config.to_json_best_effort())
  if os.path.exists(path) and os.path.isdir(os.path.join(workdir, 'checkpoints')):
    with open(path) as f:
      old = json.load(f)
    a, b = _flatten(old), _flatten(new)
    diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in _RESUMABLE)
    if diff:
      raise utils.UserError(
          f'{workdir} holds a run with a different config ({diff[0]}: {a.get(diff[0])!r} there,'
          f' {b.get(diff[0])!r} now); use another --workdir')
  utils.write_json(path, new)


def load_config(workdir):
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise utils.UserError(f'{workdir}: no config.json (not a training workdir)')
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


# ----------------------------------------------------------------------------------------------
# The loop


class MetricWriter:
  """TensorBoard event files (train_/val_ prefixes) plus metrics.jsonl for scripts."""

  def __init__(self, workdir):
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    self._tb = SummaryWriter(logdir=os.path.join(workdir, 'tb'))
    self._jsonl = open(os.path.join(workdir, 'metrics.jsonl'), 'a')

  def write(self, step, scalars):
    for k, v in scalars.items():
      self._tb.add_scalar(k, float(v), int(step))
    self._jsonl.write(json.dumps({'step': int(step), **{k: float(v) for k, v in scalars.items()}})
                      + '\n')
    self._jsonl.flush()

  def close(self):
    self._tb.close()
    self._jsonl.close()


def train_and_evaluate(config, workdir, progress=True):
  """Trains (resuming from the latest checkpoint in ``workdir``); returns the final metrics."""
  if config.train.get('distributed', False):
    jax.distributed.initialize()
  mesh = make_mesh()
  n_dev = mesh.devices.size
  for name, size in (('train.batch_size', config.train.batch_size),
                     ('eval.batch_size', config.eval.batch_size)):
    if size % n_dev:
      raise utils.UserError(f'config.{name}={size} is not divisible by the {n_dev} devices')
  os.makedirs(workdir, exist_ok=True)
  save_config(workdir, config)

  sim, model, tx = build(config)
  state = init_state(config, sim, model, tx, mesh)
  latest, best = checkpoint_managers(workdir, config)
  if latest.latest_step() is not None:
    state = restore_state(latest, latest.latest_step(), state)
    state = jax.device_put(state, NamedSharding(mesh, P()))
  start = int(state.step)
  best_val = (best.best_step() is not None and
              _read_best_val(workdir)) or float('inf')

  train_step = make_train_step(config, sim, model, tx, mesh)
  eval_step = make_eval_step(config, sim, model, mesh)
  root = jax.random.key(config.seed)
  val_key = validation_key(config)
  writer = MetricWriter(workdir)
  n_params = models.count_params(state.params)
  if start == 0:
    writer.write(0, {'hparams/num_params': n_params})

  total = config.train.num_steps
  bar = utils.progress(range(start, total), total=total - start, desc='train',
                       disable=not progress)
  last = {}
  t_log, n_log = time.perf_counter(), 0
  try:
    for step in bar:
      state, metrics = train_step(state, root)
      metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
      # The new parameters too: a NaN update leaves a finite loss for this step.
      if not all(np.isfinite(metrics[k]) for k in ('loss', 'grad_norm', 'param_norm')):
        raise FloatingPointError(
            f'non-finite training loss or update at step {step + 1} (loss {metrics["loss"]:.3g}, '
            f'grad norm {metrics["grad_norm"]:.3g},'
            f' param norm {metrics["param_norm"]:.3g}); the last good checkpoint '
            f'(step {latest.latest_step()}) in {workdir} is intact')
      n_log += 1
      done = step + 1
      if done % config.train.log_every == 0 or done == total:
        dt = time.perf_counter() - t_log
        rate = n_log / dt
        last = {f'train_{k}': v for k, v in metrics.items()}
        last |= {'train_learning_rate': config.train.learning_rate, 'train_steps_per_s': rate,
                 'train_sequences_per_s': rate * config.train.batch_size}
        writer.write(done, last)
        if hasattr(bar, 'set_postfix'):
          bar.set_postfix(loss=f'{metrics["loss"]:.3f}', acc=f'{metrics["accuracy"]:.2f}')
        t_log, n_log = time.perf_counter(), 0
      if done % config.train.eval_every == 0 or done == total:
        val = evaluate_loss(eval_step, state, val_key, config.eval.val_size,
                            config.eval.batch_size)
        last |= {'val_loss': val['loss'], 'val_accuracy': val['accuracy']}
        writer.write(done, {'val_loss': val['loss'], 'val_accuracy': val['accuracy']})
        if val['loss'] < best_val:
          best_val = val['loss']
          best.save(done, args=ocp.args.StandardSave(state), metrics={'val_loss': best_val})
          best.wait_until_finished()
          utils.write_json(os.path.join(workdir, 'best.json'),
                           {'step': done, 'val_loss': best_val, 'val_accuracy': val['accuracy']})
        t_log, n_log = time.perf_counter(), 0
      if done % config.ckpt.every == 0 or done == total:
        latest.save(done, args=ocp.args.StandardSave(state))
  finally:
    latest.wait_until_finished()
    best.wait_until_finished()
    writer.close()
  last['step'] = int(state.step)
  last['num_params'] = n_params
  return last


def _read_best_val(workdir):
  path = os.path.join(workdir, 'best.json')
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return float(json.load(f)['val_loss'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  config = _CONFIG.value
  workdir = _WORKDIR.value or default_workdir(config)
  print(f'workdir: {workdir}  devices: {jax.device_count()} x {jax.default_backend()}')
  final = train_and_evaluate(config, workdir)
  print(json.dumps({k: round(v, 5) if isinstance(v, float) else v for k, v in final.items()}))


if __name__ == '__main__':
  _define_flags()
  utils.run(main)
