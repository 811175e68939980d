"""Sec. 3.4: training on the simulator's on-the-fly stream.

    python -m rcnn_jax.train --config configs/hits.py:cpu [--workdir DIR] [--config.x.y=v]

The default workdir is ``workdirs/<variant>_<model kind>`` (e.g. ``workdirs/cpu_rcnn``).
Each step simulates its batch from ``fold_in(key, step)`` inside the jitted gradient step (no
stored data, no host round trip). The loss is the cross-entropy summed over each sequence's
valid steps, averaged over the batch; Adam. Validation on a fixed, seeded simulated set every
``train.eval_every`` steps; orbax keeps the latest ``ckpt.max_to_keep`` checkpoints in
``checkpoints/`` and the best by validation loss in ``best/``. A rerun resumes from the newest
intact checkpoint. A run holds its workdir's lock, and every config value is checked before
anything compiles (``workdir.py``, ``config_check.py``; README: "What survives what").
"""

from __future__ import annotations

import errno
import functools
import json
import os
import re
import sys
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

from rcnn_jax import config_check
from rcnn_jax import errors
from rcnn_jax import models
from rcnn_jax import simulator as sim_lib
from rcnn_jax import utils
from rcnn_jax import workdir as workdir_lib

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
  model = models.build_model(config.model, num_classes=sim.num_classes)
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


_DIRS = {'latest': 'checkpoints', 'best': 'best'}


def _manager_options(config, which, read_only):
  if which == 'latest':
    opts = dict(max_to_keep=config.ckpt.max_to_keep)
  else:
    opts = dict(max_to_keep=1, best_fn=lambda m: m['val_loss'], best_mode='min')
  if read_only:
    return ocp.CheckpointManagerOptions(read_only=True, create=False, **opts)
  # Synchronous saves: a failed save (a full disk) stops the run at that step, not later.
  return ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False, **opts)


def checkpoint_managers(workdir, config, read_only=False):
  """orbax managers of W/checkpoints (the latest ckpt.max_to_keep) and W/best (lowest val loss).

  ``read_only`` (evaluation, prediction) creates nothing and takes no lock.
  """
  return tuple(ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, _DIRS[w])),
                                     options=_manager_options(config, w, read_only))
               for w in ('latest', 'best'))


def open_manager(workdir, config, which, read_only=False):
  """One manager ('latest' or 'best'), or None with a one-line warning when its folder cannot
  be read (a garbled checkpoint's metadata fails the manager itself) or, read-only, is absent."""
  path = os.path.abspath(os.path.join(workdir, _DIRS[which]))
  if read_only and not os.path.isdir(path):
    return None
  try:
    with workdir_lib.quiet_orbax():
      return ocp.CheckpointManager(path, options=_manager_options(config, which, read_only))
  except Exception as e:  # pylint: disable=broad-except
    workdir_lib.warn(f'{path} cannot be read ({workdir_lib.reason(e)})')
    return None


def restore_state(manager, step, target: TrainState) -> TrainState:
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  return manager.restore(step, args=ocp.args.StandardRestore(abstract))


def restore_newest_intact(manager, target, steps=None):
  """(state, step, damaged steps) from the newest of ``steps`` (default: all) that restores and
  verifies; each damaged one is named on stderr. UserError when none is intact."""
  steps = manager.all_steps() if steps is None else steps
  return workdir_lib.restore_newest_intact(lambda s: restore_state(manager, s, target),
                                           str(manager.directory), steps)


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
  if os.path.exists(path) and workdir_lib.has_checkpoint(workdir):
    try:
      with open(path) as f:
        old = json.load(f)
    except (OSError, ValueError) as e:
      raise utils.UserError(f'{path} cannot be read ({e}) although {workdir} holds checkpoints; '
                            'restore it or use another --workdir') from None
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
  try:
    with open(path) as f:
      return ml_collections.ConfigDict(json.load(f))
  except (OSError, ValueError) as e:
    raise utils.UserError(f'{path} cannot be read ({e})') from None


# ----------------------------------------------------------------------------------------------
# The loop


class MetricWriter:
  """TensorBoard event files (train_/val_ prefixes) plus metrics.jsonl for scripts.

  ``resume_step``: the step the run restored; metrics.jsonl keeps its rows up to it and drops
  the later ones (and a partial last line) that a killed run wrote, so each step has one row.
  """

  def __init__(self, workdir, resume_step=None):
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    self.path = os.path.join(workdir, 'metrics.jsonl')
    if resume_step is not None:
      dropped = workdir_lib.truncate_metrics(self.path, resume_step)
      if dropped:
        print(f'{self.path}: dropped {dropped} line(s) after step {resume_step}, written by a '
              'run that stopped before its next checkpoint', file=sys.stderr)
    self._tb = SummaryWriter(logdir=os.path.join(workdir, 'tb'))
    self._jsonl = open(self.path, 'a')

  def write(self, step, scalars):
    for k, v in scalars.items():
      self._tb.add_scalar(k, float(v), int(step))
    self._jsonl.write(json.dumps({'step': int(step), **{k: float(v) for k, v in scalars.items()}})
                      + '\n')
    self._jsonl.flush()

  def close(self, raise_errors=True):
    """Flushes and closes; ``raise_errors=False`` after a failure already being reported."""
    errors = []
    for f in (self._tb, self._jsonl):
      try:
        f.close()
      except OSError as e:
        errors.append(e)
    if errors and raise_errors:
      raise utils.UserError(f'writing the logs of {os.path.dirname(self.path)} failed '
                            f'({errors[0].strerror or errors[0]})') from errors[0]


# Errors of the file system rather than of the code: they end a run in one line.
_IO_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EACCES, errno.EFBIG)
_IO_MESSAGES = ('No space left', 'RESOURCE_EXHAUSTED', 'Disk quota', 'Read-only file system',
                'Input/output error', 'Permission denied', 'File too large')


def _io_error(e: BaseException) -> str | None:
  """The file-system reason behind ``e`` (its cause chain searched), or None for other errors."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError) and e.errno in _IO_ERRNOS:
      return os.strerror(e.errno)
    code = re.search(r"os_error_code='(\d+)'", str(e))  # TensorStore's wording of an OSError
    if code and int(code.group(1)) in _IO_ERRNOS:
      return os.strerror(int(code.group(1)))
    for m in _IO_MESSAGES:
      if m in str(e):
        return 'No space left on device' if m in ('No space left', 'RESOURCE_EXHAUSTED') else m
    e = e.__cause__ or e.__context__
  return None


def _save(manager, step, state, **kwargs):
  """A synchronous save; a step already there (a resumed run redoing it) is kept, not re-saved.

  orbax's writer threads log each failed array with its traceback before the save raises; the
  save's own exception is reported once (in one line for a full disk), so they stay quiet.
  """
  if step in manager.all_steps():
    return
  with workdir_lib.quiet_orbax():
    manager.save(step, args=ocp.args.StandardSave(state), **kwargs)
    manager.wait_until_finished()


def _restore_for_training(workdir, config, latest, best, target, mesh):
  """(latest, best, state, best_val): the newest intact checkpoint; damaged newer ones and an
  unreadable best/ are named and moved to W/damaged/ (nothing deleted)."""
  state, step, damaged = restore_newest_intact(latest, target)
  if damaged:
    for s in damaged:
      workdir_lib.move_aside(workdir, str(latest.directory), s)
    latest = open_manager(workdir, config, 'latest')
  if state is not None:
    state = jax.device_put(state, NamedSharding(mesh, P()))
  best_val = _read_best_val(workdir)
  best_dir = os.path.join(workdir, _DIRS['best'])
  why = None
  if best is None:
    why = f'{best_dir} cannot be read'
  elif best.best_step() is not None:
    why = workdir_lib.try_restore(lambda s: restore_state(best, s, target), str(best.directory),
                                  best.best_step())[1]
  if why:
    workdir_lib.warn(f'{why}; the best checkpoint starts anew from this run')
    for s in workdir_lib.step_dirs(best_dir):
      workdir_lib.move_aside(workdir, best_dir, s)
    best = open_manager(workdir, config, 'best')
    if best is None:
      raise utils.UserError(f'{best_dir} cannot be used; move it away or use another --workdir')
    best_val = None
  if best.best_step() is None:
    best_val = None
  return latest, best, state, (best_val if best_val is not None else float('inf'))


def train_and_evaluate(config, workdir, progress=True):
  """Trains (resuming from the latest checkpoint in ``workdir``); returns the final metrics.

  Holds the workdir's lock for its whole life; every config value is checked before anything
  is built or compiled.
  """
  if config.train.get('distributed', False):
    jax.distributed.initialize()
  mesh = make_mesh()
  config_check.validate(config, num_devices=mesh.devices.size)
  lock = workdir_lib.lock(workdir)
  try:
    return _train_locked(config, workdir, mesh, progress)
  finally:
    lock.release()


def _train_locked(config, workdir, mesh, progress):
  save_config(workdir, config)
  sim, model, tx = build(config)
  state = init_state(config, sim, model, tx, mesh)
  latest = open_manager(workdir, config, 'latest')
  if latest is None:
    raise utils.UserError(f'{os.path.join(workdir, _DIRS["latest"])} cannot be read; move it '
                          'away or use another --workdir')
  best = open_manager(workdir, config, 'best')
  latest, best, restored, best_val = _restore_for_training(workdir, config, latest, best, state,
                                                           mesh)
  if restored is not None:
    state = restored
  start = int(state.step)

  train_step = make_train_step(config, sim, model, tx, mesh)
  eval_step = make_eval_step(config, sim, model, mesh)
  root = jax.random.key(config.seed)
  val_key = validation_key(config)
  writer = MetricWriter(workdir, resume_step=start)
  n_params = models.count_params(state.params)

  total = config.train.num_steps
  bar = utils.progress(range(start, total), total=max(total - start, 0), desc='train',
                       disable=not progress)
  last = {}
  t_log, n_log = time.perf_counter(), 0
  done = start
  finished = False
  try:
    if start == 0:
      writer.write(0, {'hparams/num_params': n_params})
    for step in bar:
      state, metrics = train_step(state, root)
      metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
      # The new parameters too: a NaN update leaves a finite loss for this step.
      if not all(np.isfinite(metrics[k]) for k in ('loss', 'grad_norm', 'param_norm')):
        raise errors.Diverged(
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
          _save(best, done, state, metrics={'val_loss': best_val})
          utils.write_json(os.path.join(workdir, 'best.json'),
                           {'step': done, 'val_loss': best_val, 'val_accuracy': val['accuracy']})
        t_log, n_log = time.perf_counter(), 0
      if done % config.ckpt.every == 0 or done == total:
        _save(latest, done, state)
    finished = True
  except Exception as e:  # pylint: disable=broad-except
    why = _io_error(e)
    if why is None:
      raise
    raise utils.UserError(
        f'writing to {workdir} failed at step {done} ({why}); stopped. The last good checkpoint '
        f'(step {latest.latest_step()}) is intact') from e
  finally:
    writer.close(raise_errors=finished)
  last['step'] = int(state.step)
  last['num_params'] = n_params
  return last


def _read_best_val(workdir):
  path = os.path.join(workdir, 'best.json')
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      return float(json.load(f)['val_loss'])
  except (OSError, ValueError, KeyError, TypeError) as e:
    workdir_lib.warn(f'{path} cannot be read ({e}); the best checkpoint counts as unknown')
    return None


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  config = _CONFIG.value
  if config is None:
    raise app.UsageError('--config is required (e.g. --config configs/hits.py:cpu)')
  workdir = _WORKDIR.value or default_workdir(config)
  print(f'workdir: {workdir}  devices: {jax.device_count()} x {jax.default_backend()}')
  final = train_and_evaluate(config, workdir)
  print(json.dumps({k: round(v, 5) if isinstance(v, float) else v for k, v in final.items()}))


if __name__ == '__main__':
  _define_flags()
  utils.run(main)
