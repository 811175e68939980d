"""Sec. 3.4: training on the simulator's on-the-fly stream (the training job only; the pieces
that evaluation, prediction and the benchmarks share are in ``common.py`` and
``checkpoints.py``).

    python -m rcnn_jax.train --config configs/hits.py:cpu [--workdir DIR] [--config.x.y=v]

The default workdir is ``workdirs/<variant>_<model kind>`` (e.g. ``workdirs/cpu_rcnn``).
Each step simulates its batch from ``fold_in(key, step)`` inside the jitted gradient step (no
stored data, no host round trip). The loss is the cross-entropy summed over each sequence's
valid steps, averaged over the batch; Adam. Validation on a fixed, seeded simulated set every
``train.eval_every`` steps. Logged training metrics are means over the ``train.log_every``
steps since the previous log (``MetricWindow``). One orbax manager in ``checkpoints/``
keeps the latest ``ckpt.max_to_keep`` checkpoints and the best by validation loss
(``checkpoints.py``). A rerun resumes from the newest
intact checkpoint. A run holds its workdir's lock, and every config value is checked before
anything compiles (``workdir.py``, ``config_check.py``; README: "What survives what").
"""

from __future__ import annotations

import errno
import json
import os
import re
import sys
import time

from absl import app
from absl import flags
import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from ml_collections import config_flags
import numpy as np

from rcnn_jax import checkpoints
from rcnn_jax import common
from rcnn_jax import config_check
from rcnn_jax import errors
from rcnn_jax import models
from rcnn_jax import utils
from rcnn_jax import workdir as workdir_lib

def _define_flags():
  """Command-line flags, defined only when the module runs as a command."""
  global _CONFIG, _WORKDIR
  _CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file.', lock_config=True)
  _WORKDIR = flags.DEFINE_string('workdir', None, 'Where checkpoints, metrics and the config go '
                                 '(default: workdirs/<variant>_<model kind>).')


def default_workdir(config) -> str:
  return os.path.join('workdirs', f'{config.get("variant", "run")}_{config.model.kind}')


# ----------------------------------------------------------------------------------------------
# The loop


class MetricWindow:
  """The logged training metrics: the mean over the steps since the last log (the logging
  window) of each step's metrics, except ``param_norm``, the parameters' at the logged step."""

  LAST = ('param_norm',)

  def __init__(self):
    self._sums, self._last, self._n = {}, {}, 0

  def add(self, metrics):
    for k, v in metrics.items():
      self._sums[k] = self._sums.get(k, 0.0) + float(v)
    self._last, self._n = dict(metrics), self._n + 1

  def result(self):
    """Means (and the last param_norm) over the window, which starts anew."""
    out = {k: self._last[k] if k in self.LAST else v / self._n for k, v in self._sums.items()}
    self._sums, self._n = {}, 0
    return out


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


def _restore_for_training(workdir, config, latest, target, mesh):
  """(latest, state, best_val): the newest intact checkpoint and the lowest validation loss of
  an intact checkpoint (inf when none). Damaged checkpoints are named and moved to W/damaged/
  (nothing deleted); a damaged best no longer counts as the best."""
  state, step, damaged = checkpoints.restore_newest_intact(latest, target)
  if damaged:
    for s in damaged:
      workdir_lib.move_aside(workdir, str(latest.directory), s)
    latest = checkpoints.manager(workdir, config)
  if state is not None:
    state = jax.device_put(state, NamedSharding(mesh, P()))
  best_val = float('inf')
  for val_loss, s, mgr in checkpoints.best_candidates(workdir, config, latest):
    if mgr is latest and s == step:  # just restored and verified
      best_val = val_loss
      break
    why = workdir_lib.try_restore(lambda t, m=mgr: checkpoints.restore_state(m, t, target),
                                  str(mgr.directory), s)[1]
    if why is None:
      best_val = val_loss
      break
    workdir_lib.warn(f'{why}; it no longer counts as the best checkpoint')
    workdir_lib.move_aside(workdir, str(mgr.directory), s)
    if mgr is latest:
      latest = checkpoints.manager(workdir, config)
  return latest, state, best_val


def train_and_evaluate(config, workdir, progress=True):
  """Trains (resuming from the latest checkpoint in ``workdir``); returns the final metrics.

  Holds the workdir's lock for its whole life; every config value is checked before anything
  is built or compiled.
  """
  if config.train.get('distributed', False):
    jax.distributed.initialize()
  mesh = common.make_mesh()
  config_check.validate(config, num_devices=mesh.devices.size)
  lock = workdir_lib.lock(workdir)
  try:
    return _train_locked(config, workdir, mesh, progress)
  finally:
    lock.release()


def _train_locked(config, workdir, mesh, progress):
  checkpoints.save_config(workdir, config)
  sim, model, tx = common.build(config)
  state = common.init_state(config, sim, model, tx, mesh)
  latest = checkpoints.manager(workdir, config)
  if latest is None:
    raise utils.UserError(f'{os.path.join(workdir, checkpoints.DIR)} cannot be read; '
                          'move it away or use another --workdir')
  latest, restored, best_val = _restore_for_training(workdir, config, latest, state, mesh)
  if restored is not None:
    state = restored
  start = int(state.step)

  train_step = common.make_train_step(config, sim, model, tx, mesh)
  eval_step = common.make_eval_step(config, sim, model, mesh)
  root = jax.random.key(config.seed)
  val_key = common.validation_key(config)
  writer = MetricWriter(workdir, resume_step=start)
  n_params = models.count_params(state.params)

  total = config.train.num_steps
  lr_at = common.learning_rate_schedule(config.train)  # the rate of the logged step's update
  lr_at = lr_at if callable(lr_at) else (lambda _, v=lr_at: v)
  bar = utils.progress(range(start, total), total=max(total - start, 0), desc='train',
                       disable=not progress)
  last = {}
  t_log, n_log = time.perf_counter(), 0
  window = MetricWindow()
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
      window.add(metrics)
      n_log += 1
      done = step + 1
      if done % config.train.log_every == 0 or done == total:
        dt = time.perf_counter() - t_log
        rate = n_log / dt
        last = {f'train_{k}': v for k, v in window.result().items()}
        last |= {'train_learning_rate': float(lr_at(step)), 'train_steps_per_s': rate,
                 'train_sequences_per_s': rate * config.train.batch_size}
        writer.write(done, last)
        if hasattr(bar, 'set_postfix'):
          bar.set_postfix(loss=f'{metrics["loss"]:.3f}', acc=f'{metrics["accuracy"]:.2f}')
        t_log, n_log = time.perf_counter(), 0
      val_loss, improved = None, False
      if done % config.train.eval_every == 0 or done == total:
        val = common.evaluate_loss(eval_step, state, val_key, config.eval.val_size,
                                  config.eval.batch_size)
        last |= {'val_loss': val['loss'], 'val_accuracy': val['accuracy']}
        writer.write(done, {'val_loss': val['loss'], 'val_accuracy': val['accuracy']})
        val_loss, improved = val['loss'], val['loss'] < best_val
        best_val = min(best_val, val['loss'])
        t_log, n_log = time.perf_counter(), 0
      # One manager: the checkpoint schedule's steps, and each new best (kept by its metrics).
      if improved or done % config.ckpt.every == 0 or done == total:
        checkpoints.save(latest, done, state, val_loss=val_loss)
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
