"""Small shared helpers for the commands: progress bars, atomic writes, clean CLI errors."""

from __future__ import annotations

import json
import os
import sys
import tempfile

import numpy as np


class UserError(Exception):
  """Bad input from the user: reported as one line, exit status 2."""


def progress(iterable, total=None, desc='', disable=False):
  """A tqdm progress bar with ETA on stderr (plain iteration when disabled)."""
  if disable:
    return iterable
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  return tqdm(iterable, total=total, desc=desc, dynamic_ncols=True, mininterval=2.0,
              file=sys.stderr)


def _atomic_write(path, write):
  path = os.path.abspath(path)
  d = os.path.dirname(path)
  os.makedirs(d, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=d, prefix='.' + os.path.basename(path) + '.', suffix='.tmp')
  try:
    with os.fdopen(fd, 'wb') as f:
      write(f)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def atomic_savez(path, **arrays):
  """np.savez_compressed to a temporary file, then renamed: an old file is never half-written."""
  _atomic_write(path, lambda f: np.savez_compressed(f, **arrays))


def atomic_write_text(path, text: str):
  _atomic_write(path, lambda f: f.write(text.encode()))


def write_json(path, obj):
  atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_to_builtin) + '\n')


def _to_builtin(x):
  if isinstance(x, np.ndarray):
    return x.tolist()
  if isinstance(x, (np.floating, np.integer, np.bool_)):
    return x.item()
  if isinstance(x, (tuple, set)):
    return list(x)
  raise TypeError(f'not JSON serialisable: {type(x).__name__}')


def run(main):
  """absl.app.run with user errors turned into one line on stderr and exit status 2."""
  from absl import app  # pylint: disable=g-import-not-at-top

  def wrapped(argv):
    from absl import logging  # pylint: disable=g-import-not-at-top
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    try:
      return main(argv)
    except (UserError, ValueError, FileNotFoundError, FloatingPointError) as e:
      print(f'error: {e}', file=sys.stderr)
      sys.exit(2)

  app.run(wrapped)
