"""A training workdir's safety: one run at a time, restores that skip damaged checkpoints,
metrics that stay one line per step across kills.

* ``lock(workdir)``: an exclusive ``flock`` on ``W/.lock`` for the run's life. The OS drops it
  when the process ends, however it ends (SIGKILL included), so no stale lock is ever left.
  A run of several processes: ``lock_processes`` (process 0 holds it, the others check it).
  ``evaluate`` and ``predict`` only read and never take it.
* ``restore_newest_intact``: tries the steps newest first; each damaged one is named in one
  line on stderr, with the reason, and the next older one is tried.
* ``read_jsonl`` skips a partial or garbled line with a warning; ``truncate_metrics`` drops the
  lines a killed run wrote after its last checkpoint, so the resumed run writes them once.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import uuid

from absl import logging as absl_logging
import jax
import numpy as np

from rcnn_jax.core import utils

LOCK_NAME = '.lock'


@contextlib.contextmanager
def quiet_orbax():
  """orbax logs (at ERROR, with tracebacks) what it then raises or works around; the caller
  reports it in one line instead."""
  verbosity = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.FATAL)
  try:
    yield
  finally:
    absl_logging.set_verbosity(verbosity)


def warn(msg: str):
  print(f'warning: {msg}', file=sys.stderr, flush=True)


class WorkdirLock:
  """Holds the exclusive lock of a workdir until ``release()`` (or the process's end)."""

  def __init__(self, workdir: str):
    self.workdir = workdir
    self.path = os.path.join(workdir, LOCK_NAME)
    self._fd = None

  def acquire(self, token: str | None = None) -> 'WorkdirLock':
    """``token`` (several processes): a second line, by which the others recognise the lock."""
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
        os.close(fd)
        raise
      holder = (os.read(fd, 64).decode(errors='replace').strip().splitlines() or
                ['unknown'])[0]
      os.close(fd)
      raise utils.UserError(f'{self.workdir} is in use by another training run (pid {holder}); '
                            'wait for it to finish or use another --workdir') from None
    os.ftruncate(fd, 0)
    os.write(fd, f'{os.getpid()}\n{token}\n'.encode() if token else f'{os.getpid()}\n'.encode())
    self._fd = fd
    return self

  def release(self):
    if self._fd is not None:
      os.close(self._fd)  # closing drops the flock
      self._fd = None

  def __enter__(self):
    return self.acquire() if self._fd is None else self

  def __exit__(self, *exc):
    self.release()


def lock(workdir: str, token: str | None = None) -> WorkdirLock:
  """Creates ``workdir`` if needed and takes its lock; UserError naming the holder's pid."""
  os.makedirs(workdir, exist_ok=True)
  return WorkdirLock(workdir).acquire(token)


def lock_processes(workdir: str, process_index: int, exchange) -> WorkdirLock:
  """The lock of a run of several processes: "one run" across them.

  Process 0 takes W/.lock as one process does (its pid, and a token naming this run on the
  second line); every other process waits for the outcome and then checks that its W/.lock
  holds that token, i.e. that the workdir is the same folder for all (orbax's collective
  checkpoints need one shared folder). Any failure stops every process with one line.
  ``exchange(tag, value) -> [value of each process]`` (train.exchange).
  """
  held, error, token = None, None, None
  if process_index == 0:
    token = f'run {socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}'
    try:
      held = lock(workdir, token)
    except utils.UserError as e:
      error = str(e)
  first = json.loads(exchange('lock', json.dumps({'token': token, 'error': error}))[0])
  if first['error']:
    raise utils.UserError(first['error'] if process_index == 0 else
                          f'process 0 could not take the lock: {first["error"]}')
  seen = 'ok'
  if process_index != 0:
    try:
      with open(os.path.join(workdir, LOCK_NAME)) as f:
        lines = f.read().splitlines()
    except OSError as e:
      lines = [f'{e.strerror}']
    if first['token'] not in lines:
      seen = (f'{os.path.join(workdir, LOCK_NAME)} as process {process_index} sees it does not '
              'hold process 0\'s lock: the workdir must be one folder that every process '
              'shares (the same path on a shared file system)')
  verdicts = exchange('lock_seen', seen)
  bad = next((v for v in verdicts if v != 'ok'), None)
  if bad is not None:
    if held is not None:
      held.release()
    raise utils.UserError(bad)
  return held if held is not None else WorkdirLock(workdir)  # others: release() does nothing


# ----------------------------------------------------------------------------------------------
# Checkpoints


def step_dirs(path: str) -> list[int]:
  """The committed-looking step folders of an orbax manager directory (digits only)."""
  if not os.path.isdir(path):
    return []
  return sorted(int(n) for n in os.listdir(path)
                if n.isdigit() and os.path.isdir(os.path.join(path, n)))


def has_checkpoint(workdir: str) -> bool:
  """A workdir holds a run once it holds a checkpoint, not merely a config or empty folders."""
  return bool(step_dirs(os.path.join(workdir, 'checkpoints')) or
              step_dirs(os.path.join(workdir, 'best')))  # best/: the older layout


def reason(e: BaseException) -> str:
  lines = [l.strip() for l in str(e).strip().splitlines() if l.strip()]
  msg = lines[0] if lines else ''
  if len(msg) > 160:
    msg = msg[:157] + '...'
  return f'{type(e).__name__}: {msg}' if msg else type(e).__name__


def verify_state(state, step: int):
  """What a restored state must satisfy: its own step, finite values everywhere."""
  got = int(np.asarray(jax.device_get(state.step)))
  if got != step:
    raise ValueError(f'holds step {got}, not {step}')
  for path, leaf in jax.tree_util.tree_leaves_with_path(state):
    a = np.asarray(jax.device_get(leaf))
    if a.dtype.kind == 'f' and not np.isfinite(a).all():
      raise ValueError(f'non-finite values in {jax.tree_util.keystr(path)}')


def try_restore(restore, directory: str, step: int):
  """``restore(step)`` verified, or (None, one-line reason) when the checkpoint is damaged."""
  try:
    with quiet_orbax():
      state = restore(step)
    verify_state(state, step)
    return state, None
  except Exception as e:  # pylint: disable=broad-except
    # Damage reaches us as TensorStore, JSON, Unicode or orbax errors of many types; a bug in
    # our target would fail for every step and end in the error below with its reason.
    where = os.path.join(directory, str(step))
    if 'tree structures do not match' in str(e):  # intact, but another model or optimizer
      return None, (f'checkpoint {where} does not fit the model and optimizer that this code '
                    'and config build (saved by another version?)')
    return None, f'checkpoint {where} is damaged ({reason(e)})'


def restore_newest_intact(restore, directory: str, steps, what: str = 'checkpoint'):
  """(state, step, damaged steps) from the newest step that restores and verifies.

  Returns (None, None, []) when there are no steps; raises UserError when none is intact.
  """
  steps = sorted(steps, reverse=True)
  damaged, reasons = [], []
  for step in steps:
    state, why = try_restore(restore, directory, step)
    if state is not None:
      return state, step, damaged
    damaged.append(step)
    reasons.append(why)
    older = [s for s in steps if s < step]
    warn(why + (f'; trying step {older[0]}' if older else ''))
  if not steps:
    return None, None, []
  raise utils.UserError(f'no intact {what} in {directory} (tried steps '
                        f'{", ".join(map(str, steps))}; newest: {reasons[0]})')


def move_aside(workdir: str, directory: str, step: int) -> str:
  """Moves a damaged step folder to W/damaged/ (named, never deleted) so it can be re-saved."""
  src = os.path.join(directory, str(step))
  dst_dir = os.path.join(workdir, 'damaged')
  os.makedirs(dst_dir, exist_ok=True)
  base = os.path.join(dst_dir, f'{os.path.basename(os.path.normpath(directory))}_{step}')
  dst, i = base, 1
  while os.path.exists(dst):
    dst, i = f'{base}.{i}', i + 1
  os.rename(src, dst)
  warn(f'moved the damaged {src} to {dst}')
  return dst


# ----------------------------------------------------------------------------------------------
# metrics.jsonl


def _parse_lines(path):
  rows, bad = [], []
  with open(path, 'rb') as f:
    data = f.read()
  lines = data.split(b'\n')
  for i, raw in enumerate(lines, 1):
    if not raw.strip():
      continue
    try:
      row = json.loads(raw.decode())
      if not isinstance(row, dict) or 'step' not in row:
        raise ValueError('not a metrics row')
      rows.append(row)
    except ValueError:
      bad.append(i)
  return rows, bad, len(lines)


def read_jsonl(path: str, dedupe: bool = True) -> list[dict]:
  """Rows of metrics.jsonl; partial or garbled lines skipped with a warning.

  With ``dedupe``, a row whose (step, metric names) repeats an earlier one replaces it: a
  workdir written before runs truncated their log on resume then reads one row per step.
  """
  if not os.path.exists(path):
    return []
  rows, bad, _ = _parse_lines(path)
  if bad:
    warn(f'{path}: skipped {len(bad)} unreadable line(s) (line {", ".join(map(str, bad[:5]))}'
         f'{", ..." if len(bad) > 5 else ""}), e.g. a write cut short by a kill or a full disk')
  if not dedupe:
    return rows
  order, seen = [], {}
  for row in rows:
    key = (row['step'], tuple(sorted(k for k in row if k != 'step')))
    if key not in seen:
      order.append(key)
    seen[key] = row
  return [seen[k] for k in order]


def truncate_metrics(path: str, step: int) -> int:
  """Keeps the rows up to the restored ``step`` (none for a fresh start); returns rows dropped.

  Rows at ``step`` itself were written before its checkpoint, so they belong to the state that
  resumes; later rows (and partial lines) belong to work the resumed run does again.
  """
  if not os.path.exists(path):
    return 0
  rows, bad, _ = _parse_lines(path)
  keep = [r for r in rows if step > 0 and r['step'] <= step]
  dropped = len(rows) - len(keep) + len(bad)
  if dropped:
    utils.atomic_write_text(path, ''.join(json.dumps(r) + '\n' for r in keep))
  return dropped
