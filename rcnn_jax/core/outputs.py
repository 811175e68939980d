"""Where a command may write: every output location is checked before any work starts.

A command that would fail to write its results after minutes of classifying, evaluating or
training checks its ``--out`` first (``check_file``, ``check_dir``, ``check_new_workdir``):

* the location must be creatable and writable: the nearest existing ancestor is a folder in
  which a probe file can be created and removed (so a path below a regular file, a read-only
  file system or a folder without write permission is refused before the work, in one line);
* a file's location must not be an existing folder, a folder's not an existing file;
* nothing goes into a model folder: a shipped one (``pretrained.json``) is never written by any
  command, and a training workdir (``config.json`` beside ``checkpoints/`` or ``best/``) only
  in its own ``eval/`` by ``evaluate`` (``allow_eval_of``). Paths are compared after resolving
  symbolic links (``os.path.realpath``), so a link to a model folder is that folder.
"""

from __future__ import annotations

import errno
import os
import uuid

from rcnn_jax.core.errors import UserError
from rcnn_jax.core.errors import printable

SHIPPED_MANIFEST = 'pretrained.json'  # pretrained.MANIFEST (this module imports no model code)


def real(path) -> str:
  """The absolute path with every symbolic link resolved."""
  return os.path.realpath(os.path.abspath(os.fspath(path)))


def display(path) -> str:
  """A path as text that can always be printed or written (undecodable bytes as \\xNN)."""
  return printable(os.fspath(path))


def is_shipped(path) -> bool:
  return os.path.isfile(os.path.join(path, SHIPPED_MANIFEST))


def is_training_workdir(path) -> bool:
  return (os.path.isfile(os.path.join(path, 'config.json'))
          and (os.path.isdir(os.path.join(path, 'checkpoints'))
               or os.path.isdir(os.path.join(path, 'best'))))


def is_model_folder(path) -> bool:
  """A shipped model folder or a training workdir (one that holds a config and checkpoints)."""
  return os.path.isdir(path) and (is_shipped(path) or is_training_workdir(path))


def model_folder_above(path) -> str | None:
  """The model folder that ``path`` (resolved) is, or lies inside; None when there is none."""
  p = real(path)
  while True:
    if is_model_folder(p):
      return p
    parent = os.path.dirname(p)
    if parent == p:
      return None
    p = parent


def _nearest_existing(path) -> str:
  p = os.path.abspath(os.fspath(path))
  while not os.path.lexists(p):
    parent = os.path.dirname(p)
    if parent == p:
      break
    p = parent
  return p


def _probe_writable(path, what):
  """Refuses ``path`` unless the folder it would be created in accepts a new file."""
  base = _nearest_existing(os.path.dirname(os.path.abspath(os.fspath(path))))
  if not os.path.isdir(base):
    kind = 'a file' if os.path.exists(base) else 'not a folder'
    raise UserError(f'{what} {display(path)}: cannot be created: {display(base)} is {kind}')
  probe = os.path.join(base, f'.rcnn_jax_write_probe_{uuid.uuid4().hex}')
  try:
    fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    os.close(fd)
    os.remove(probe)
  except OSError as e:
    reason = os.strerror(e.errno) if e.errno else str(e)
    if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
      reason += ' (nothing written there)'
    raise UserError(f'{what} {display(path)}: not writable: {display(base)}: {reason}') from None


def _refuse_model_folder(path, what, allow_eval_of=None):
  owner = model_folder_above(path)
  if owner is None:
    return
  if allow_eval_of is not None and not is_shipped(owner) and owner == real(allow_eval_of):
    target = real(path)
    eval_dir = os.path.join(owner, 'eval')
    if target == eval_dir or target.startswith(eval_dir + os.sep):
      return
  kind = 'a shipped model folder' if is_shipped(owner) else 'a training workdir'
  raise UserError(f'{what} {display(path)}: is inside {kind} ({display(owner)}), which this '
                  'command never writes into; choose another location')


def check_file(path, what='--out'):
  """A file to be written (created or replaced): refuses, before any work, an existing folder,
  an unwritable location, or a place inside a model folder."""
  if os.path.isdir(path):
    raise UserError(f'{what} {display(path)}: is an existing folder; give a file name')
  _refuse_model_folder(path, what)
  _probe_writable(path, what)


def check_dir(path, what='--out', allow_eval_of=None):
  """A folder to be created (or written into): refuses an existing file, an unwritable location
  or a model folder (``allow_eval_of``: a training workdir whose own ``eval/`` is allowed)."""
  if os.path.lexists(path) and not os.path.isdir(path):
    raise UserError(f'{what} {display(path)}: is an existing file, not a folder')
  _refuse_model_folder(path, what, allow_eval_of)
  _probe_writable(os.path.join(path, 'x'), what)


def check_new_workdir(path, base, what='--out'):
  """A new workdir (a fine-tuned model): not the base (links resolved), not any existing model
  folder or a place inside one, and writable."""
  if real(path) == real(base):
    raise UserError(f'{what} {display(path)}: is the base model folder {display(base)}; give '
                    'a new folder')
  if os.path.lexists(path) and not os.path.isdir(path):
    raise UserError(f'{what} {display(path)}: is an existing file, not a folder')
  owner = model_folder_above(path)
  if owner is not None:
    kind = 'a shipped model folder' if is_shipped(owner) else 'a training workdir'
    where = 'is' if owner == real(path) else 'is inside'
    raise UserError(f'{what} {display(path)}: {where} {kind} ({display(owner)}), which is never '
                    'overwritten; give a new folder')
  if os.path.isdir(path) and os.listdir(path):
    raise UserError(f'{what} {display(path)}: exists and is not empty; give a new folder')
  _probe_writable(os.path.join(path, 'x'), what)
