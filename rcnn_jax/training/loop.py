"""Sec. 3.4: training on the simulator's on-the-fly stream (the loop behind
``python -m rcnn_jax.train``; the pieces that evaluation, prediction and the benchmarks share
are in ``steps.py`` and ``checkpoints.py``).

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

Several processes (hosts) train one run with ``jax.distributed`` (docs/distributed.md):

    python -m rcnn_jax.train --config ... --workdir SHARED_DIR \
        --coordinator_address HOST0:PORT --num_processes N --process_id I

(or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID; under a SLURM job step of
several tasks, nothing: jax.distributed finds them). One mesh over every process's devices;
each device simulates its own consecutive slice of the global batch by global object index, so
the batch, and the run, is the same for any layout. Process 0 holds the workdir's lock and
writes the logs; every process takes part in each checkpoint save (orbax).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import sys
import threading
import time

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

from rcnn_jax import models
from rcnn_jax.core import errors
from rcnn_jax.core import utils
from rcnn_jax.training import checkpoints
from rcnn_jax.training import config_check
from rcnn_jax.training import steps as steps_lib
from rcnn_jax.training import workdir as workdir_lib

# ----------------------------------------------------------------------------------------------
# Several processes (jax.distributed)

DEFAULT_TIMEOUT_S = 300
ENV = {'coordinator_address': 'JAX_COORDINATOR_ADDRESS', 'num_processes': 'JAX_NUM_PROCESSES',
       'process_id': 'JAX_PROCESS_ID', 'timeout': 'JAX_INITIALIZATION_TIMEOUT'}


def _env_int(environ, name):
  v = environ.get(ENV[name])
  if v is None or v == '':
    return None
  try:
    return int(v)
  except ValueError:
    raise utils.UserError(f'{ENV[name]}={v!r} is invalid: must be an integer') from None


def _slurm_tasks(environ) -> int:
  """The task count of a SLURM job step (the variables jax.distributed's own detection reads),
  0 outside one."""
  if not all(k in environ for k in ('SLURM_JOB_ID', 'SLURM_STEP_NODELIST', 'SLURM_NTASKS',
                                    'SLURM_PROCID', 'SLURM_LOCALID')):
    return 0
  try:
    return int(environ['SLURM_NTASKS'])
  except ValueError:
    return 0


def distributed_settings(config=None, coordinator_address=None, num_processes=None,
                         process_id=None, timeout=None, environ=None):
  """The ``jax.distributed.initialize`` arguments of this process, or None for one process.

  Flags first, then the environment (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
  JAX_PROCESS_ID, JAX_INITIALIZATION_TIMEOUT); with none of them, a SLURM job step of several
  tasks (or ``config.train.distributed``) leaves everything to jax.distributed's detection.
  A setting that cannot work raises UserError (one line) before anything starts.
  """
  environ = os.environ if environ is None else environ
  address = coordinator_address or environ.get(ENV['coordinator_address']) or None
  n = num_processes if num_processes is not None else _env_int(environ, 'num_processes')
  pid = process_id if process_id is not None else _env_int(environ, 'process_id')
  t = timeout if timeout is not None else _env_int(environ, 'timeout')
  t = DEFAULT_TIMEOUT_S if t is None else t
  if t < 1:
    raise utils.UserError(f'--initialization_timeout={t} is invalid: must be at least 1 (s)')
  explicit = (address, n, pid) != (None, None, None)
  auto = _slurm_tasks(environ) > 1 or bool(config is not None and
                                           config.train.get('distributed', False))
  if not explicit and not auto:
    return None
  if n is not None and n < 1:
    raise utils.UserError(f'--num_processes={n} is invalid: must be at least 1')
  if pid is not None and (pid < 0 or (n is not None and pid >= n)):
    raise utils.UserError(f'--process_id={pid} is invalid: must be 0 .. num_processes - 1'
                          + (f' = {n - 1}' if n is not None else ''))
  if explicit and not auto and None in (address, n, pid):
    missing = [f'--{k} ({ENV[k]})' for k, v in (('coordinator_address', address),
                                                 ('num_processes', n), ('process_id', pid))
               if v is None]
    raise utils.UserError('several processes need --coordinator_address, --num_processes and '
                          f'--process_id (or their environment variables); missing '
                          f'{", ".join(missing)}')
  if address is not None and not re.fullmatch(r'.+:\d+', address):
    raise utils.UserError(f'--coordinator_address={address!r} is invalid: must be host:port')
  return {'coordinator_address': address, 'num_processes': n, 'process_id': pid,
          'initialization_timeout': t}


class _Deadline:
  """Ends the process with one line (exit status 2) unless left within ``seconds``: a joining
  that never completes (jax.distributed's own timeouts abort with a C++ stack trace)."""

  def __init__(self, seconds, message):
    self._seconds, self._message = seconds, message
    self._done = threading.Event()

  def _watch(self):
    if not self._done.wait(self._seconds):
      print(f'error: {self._message}', file=sys.stderr, flush=True)
      os._exit(2)  # pylint: disable=protected-access  (the main thread is blocked in C++)

  def __enter__(self):
    threading.Thread(target=self._watch, daemon=True, name='rcnn_jax_join_deadline').start()
    return self

  def __exit__(self, *exc):
    self._done.set()


def initialize_distributed(settings, config):
  """Joins the processes of ``settings`` (``distributed_settings``; nothing for None or when
  already joined), checks that they were all given the same config and process count, and
  starts the backend (the processes exchange their devices there).

  Whatever does not work (a coordinator that never answers, a process that never comes,
  mismatched counts or configs) ends every process in one line within
  ``initialization_timeout`` seconds (a little more for the processes' start).
  """
  if settings is None or jax.distributed.is_initialized():
    return
  t = settings['initialization_timeout']
  where = settings['coordinator_address'] or 'the address jax.distributed detected'
  n = settings['num_processes'] or 'the detected number of'
  with _Deadline(t, f'the {n} training processes did not all join at {where} within {t} s; '
                 'check that process 0 runs, that every process has the same '
                 '--coordinator_address and --num_processes and its own --process_id, and '
                 'that the port is reachable (--initialization_timeout sets the wait)'):
    try:
      # jax's own timeouts later than the deadline's (they abort); the exit's barrier waits
      # as long for peers that died.
      jax.distributed.initialize(**{**settings, 'initialization_timeout': t + 60},
                                 shutdown_timeout_seconds=t)
    except (RuntimeError, ValueError, TypeError) as e:  # XlaRuntimeError; jax's own checks
      raise utils.UserError(f'could not join the training processes at {where} '
                            f'({workdir_lib.reason(e)})') from e
    _check_same_run(config, t)
    jax.devices()  # every process starts its backend now: they exchange their devices there


def process_layout() -> tuple[int, int]:
  """(this process's index, the process count) as this process was told (before any device
  exists; jax.process_index() would start the backend)."""
  from jax._src import distributed  # pylint: disable=g-import-not-at-top
  g = distributed.global_state
  if g.client is None:
    return 0, 1
  return g.process_id, g.num_processes


def exchange(tag: str, value: str, timeout_s: int, check=None) -> list[str]:
  """Every process's ``value`` for ``tag``, in process order, through the coordination
  service's key-value store (no device, no compilation); UserError naming the process that did
  not answer within ``timeout_s``. ``check(i, value)``, if given, sees each as it comes."""
  from jax._src import distributed  # pylint: disable=g-import-not-at-top
  client = distributed.global_state.client
  me, n = process_layout()
  if client is None:
    return [value]
  client.key_value_set(f'rcnn_jax/{tag}/{me}', value)
  out = []
  for i in range(n):  # process 0 first
    try:
      out.append(client.blocking_key_value_get(f'rcnn_jax/{tag}/{i}', int(timeout_s * 1000)))
    except Exception as e:  # pylint: disable=broad-except  (XlaRuntimeError: deadline exceeded)
      raise utils.UserError(f'process {i} of {n} did not answer within {timeout_s} s '
                            f'({tag}: {workdir_lib.reason(e)}); did it stop?') from e
    if check is not None:
      check(i, out[-1])
  return out


def _check_same_run(config, timeout_s):
  """Every process was given the same config and process count as process 0; else one line
  in each (process 0's answer is read first: a process told of more processes than there are
  would wait for one that never comes)."""
  me, n = process_layout()
  mine = {'config': hashlib.sha256(config.to_json_best_effort(sort_keys=True).encode())
                    .hexdigest()[:16], 'num_processes': n}

  def check(i, value):
    other = json.loads(value)
    if other['num_processes'] != n:
      raise utils.UserError(f'process {i} was started with --num_processes '
                            f'{other["num_processes"]}, process {me} with {n}; give every '
                            'process the same')
    if other['config'] != mine['config']:
      raise utils.UserError(f'process {i} was given another config than process {me} (its '
                            'fields or --config overrides differ); give every process the same')

  exchange('settings', json.dumps(mine), timeout_s, check)


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


# What a collective or the coordination service says when a peer process is gone.
_PEER_MESSAGES = ('Gloo', 'Connection reset by peer', 'Connection closed', 'Socket closed',
                  'coordination service', 'UNAVAILABLE')


def _peer_lost(e: BaseException) -> str | None:
  """The first line of a JAX runtime error saying that another process is gone (a failed
  collective: Gloo on the CPU; the coordination service), or None for other errors."""
  if not isinstance(e, jax.errors.JaxRuntimeError):
    return None
  text = str(e)
  if not any(m in text for m in _PEER_MESSAGES):
    return None
  return ' '.join(text.splitlines()[0].split())[:300]


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


def _move_aside(workdir, directory, step):
  """workdir.move_aside by process 0 alone; the others wait until it is done."""
  if jax.process_index() == 0:
    workdir_lib.move_aside(workdir, directory, step)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(f'rcnn_jax_move_aside_{step}')


def _restore_for_training(workdir, config, latest, target, mesh):
  """(latest, state, best_val): the newest intact checkpoint and the lowest validation loss of
  an intact checkpoint (inf when none). Damaged checkpoints are named and moved to W/damaged/
  (nothing deleted; by process 0 of several, the others waiting); a damaged best no longer
  counts as the best."""
  state, step, damaged = checkpoints.restore_newest_intact(latest, target)
  if damaged:
    for s in damaged:
      _move_aside(workdir, str(latest.directory), s)
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
    _move_aside(workdir, str(mgr.directory), s)
    if mgr is latest:
      latest = checkpoints.manager(workdir, config)
  return latest, state, best_val


def train_and_evaluate(config, workdir, progress=True, distributed=None):
  """Trains (resuming from the latest checkpoint in ``workdir``); returns the final metrics.

  Holds the workdir's lock for its whole life; every config value is checked before anything
  is built or compiled. ``distributed``: ``distributed_settings`` for several processes
  (default: from the environment); each process calls this, process 0 holding the lock and
  writing the logs, and each returns the same metrics.
  """
  settings = distributed if distributed is not None else distributed_settings(config)
  initialize_distributed(settings, config)
  mesh = steps_lib.make_mesh()
  config_check.validate(config, num_devices=mesh.devices.size)
  if process_layout()[1] > 1:
    me, _ = process_layout()
    t = settings['initialization_timeout']
    lock = workdir_lib.lock_processes(workdir, me, lambda tag, v: exchange(tag, v, t))
  else:
    lock = workdir_lib.lock(workdir)
  try:
    return _train_locked(config, workdir, mesh, progress and process_layout()[0] == 0)
  finally:
    lock.release()


class _NoWriter:
  """The logs of processes other than 0: nothing written."""

  def write(self, step, scalars):
    pass

  def close(self, raise_errors=True):
    pass


def _train_locked(config, workdir, mesh, progress):
  main_process = jax.process_index() == 0
  multi = jax.process_count() > 1
  checkpoints.save_config(workdir, config, write=main_process)
  sim, model, tx = steps_lib.build(config)
  state = steps_lib.init_state(config, sim, model, tx, mesh)
  latest = checkpoints.manager(workdir, config)
  if latest is None:
    raise utils.UserError(f'{os.path.join(workdir, checkpoints.DIR)} cannot be read; '
                          'move it away or use another --workdir')
  latest, restored, best_val = _restore_for_training(workdir, config, latest, state, mesh)
  if restored is not None:
    state = restored
  start = int(state.step)

  train_step = steps_lib.make_train_step(config, sim, model, tx, mesh)
  eval_step = steps_lib.make_eval_step(config, sim, model, mesh)
  root = jax.random.key(config.seed)
  val_key = steps_lib.validation_key(config)
  if multi:  # the same keys, as arrays over the global mesh (made by each process's program)
    root, val_key = jax.jit(lambda: (jax.random.key(config.seed), steps_lib.validation_key(config)),
                            out_shardings=NamedSharding(mesh, P()))()
  writer = MetricWriter(workdir, resume_step=start) if main_process else _NoWriter()
  n_params = models.count_params(state.params)

  total = config.train.num_steps
  lr_at = steps_lib.learning_rate_schedule(config.train)  # the rate of the logged step's update
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
        val = steps_lib.evaluate_loss(eval_step, state, val_key, config.eval.val_size,
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
    lost = _peer_lost(e) if multi and why is None else None
    if lost is not None:
      raise errors.PeerLost(
          f'another training process stopped during step {done + 1} ({lost}); this one stops '
          f'too. The last checkpoint (step {latest.latest_step()}) in {workdir} is intact: '
          'relaunch every process with the same command to resume') from e
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
