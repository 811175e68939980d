"""Small shared helpers for the commands: progress bars, atomic writes, the CLI wrapper.

``run(main)`` is how every command starts: it re-runs the process once with huge pages for
malloc (``hugepage_env``; the only place that does), then reports ``errors.UserError`` as one
line and exit status 2; any other exception keeps its traceback.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

import numpy as np

from rcnn_jax.core.errors import UserError  # pylint: disable=unused-import  (re-exported)


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
    os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 would hide results from the group
    with os.fdopen(fd, 'wb') as f:
      write(f)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


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


HUGEPAGE_TUNABLE = 'glibc.malloc.hugetlb=1'


def hugepage_env(environ, thp_mode: str | None, libc: str):
  """The environment to re-run a command in so that glibc's malloc asks for transparent huge
  pages, or None when it does not apply (not glibc, THP off, already set, or opted out with
  RCNN_JAX_HUGEPAGES=0).

  Why: XLA on the CPU maps a fresh temporary buffer for every call of a jitted function (2.4
  GB for a paper training step), and touching it 4 KiB page by page cost 580,000 page faults,
  about a quarter of the step (measured: experiments/speed/README.md). With huge pages it is
  1,000 faults. The tunable is read when a process starts, hence the re-run.
  """
  if libc != 'glibc' or environ.get('RCNN_JAX_HUGEPAGES') == '0':
    return None
  if thp_mode is None or '[never]' in thp_mode:
    return None
  tunables = environ.get('GLIBC_TUNABLES', '')
  if 'glibc.malloc.hugetlb' in tunables:
    return None
  return {**environ, 'GLIBC_TUNABLES': ':'.join(t for t in (tunables, HUGEPAGE_TUNABLE) if t),
          'RCNN_JAX_HUGEPAGES': '0'}


def thp_mode() -> str | None:
  """The kernel's transparent-huge-page setting, or None where there is none."""
  try:
    with open('/sys/kernel/mm/transparent_hugepage/enabled') as f:
      return f.read()
  except OSError:
    return None


def _rerun_with_hugepages():
  import platform  # pylint: disable=g-import-not-at-top
  env = hugepage_env(os.environ, thp_mode(), platform.libc_ver()[0])
  orig = getattr(sys, 'orig_argv', None)
  if env is None or not orig:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  try:
    os.execve(sys.executable, [sys.executable] + list(orig[1:]), env)
  except OSError:
    pass  # run as we are


def run(main):
  """absl.app.run with ``UserError`` (bad input, bad config) as one line on stderr and exit
  status 2; any other exception (a bug) propagates with its traceback.

  On Linux with glibc the command first re-runs itself once with huge pages for malloc
  (``hugepage_env``): the one place where a command re-executes itself.
  """
  from absl import app  # pylint: disable=g-import-not-at-top

  _rerun_with_hugepages()

  def wrapped(argv):
    from absl import logging  # pylint: disable=g-import-not-at-top
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    try:
      return main(argv)
    except UserError as e:
      print(f'error: {e}', file=sys.stderr)
      _quiet_exit()
      if getattr(e, 'exit_at_once', False):  # errors.PeerLost: no exit handlers
        sys.stdout.flush()
        os._exit(2)  # pylint: disable=protected-access
      sys.exit(2)

  app.run(wrapped, flags_parser=_parse_flags)


def _quiet_exit():
  """After a one-line error, no second report at exit: orbax's failed write futures (a full
  disk) otherwise print each failed array again when they are collected."""
  import logging as std_logging  # pylint: disable=g-import-not-at-top
  std_logging.getLogger('asyncio').setLevel(std_logging.CRITICAL)
  sys.unraisablehook = lambda *_: None
  import threading  # pylint: disable=g-import-not-at-top
  threading.excepthook = lambda *_: None  # a writer thread whose file the error closed
  sys.stderr.flush()


def _parse_flags(argv):
  """absl's flag parsing with every bad flag, unknown config field and unreadable config file
  as one line on stderr and exit status 2 (absl and ml_collections raise tracebacks for the
  last two)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  try:
    rest = flags.FLAGS(argv)
    for name in list(flags.FLAGS):
      flag = flags.FLAGS[name]
      if type(flag).__name__ == '_ConfigFlag':
        value = flag.value
        if type(value).__name__ == '_ErrorConfig':  # a config file that failed to load
          value.seed  # noqa: B018  (raises its error)
    return rest
  except flags.Error as e:
    lines = [l.strip() for l in str(e).splitlines() if l.strip()] or [type(e).__name__]
    if any(l.startswith('Traceback') for l in lines):  # a config file's own error, at the end
      lines = [lines[0], lines[-1]]
    _fail(' '.join(lines)[:400])
  except (AttributeError, KeyError) as e:
    _fail(_unknown_field_message(argv, e))
  except (OSError, SyntaxError, ImportError, ValueError, TypeError) as e:
    _fail(_config_file_message(e))


def _fail(msg):
  print(f'error: {msg}', file=sys.stderr)
  sys.exit(2)


def _unknown_field_message(argv, e):
  key = str(e).strip('"\'')
  for arg in argv[1:]:
    if arg.startswith('--') and '.' in arg.split('=', 1)[0]:
      path = arg[2:].split('=', 1)[0]
      if key in path.split('.')[1:]:
        return f'unknown config field {path} (in {arg}); the config has no field {key!r}'
  return f'unknown config field {key!r} on the command line'


def _config_file_message(e):
  lines = [l.strip() for l in str(e).splitlines() if l.strip()]
  errno_lines = [l for l in lines if l.startswith('[Errno')]
  if errno_lines:
    return 'config file: ' + errno_lines[0]
  return f'config file: {type(e).__name__}: {" ".join(lines)[:300]}'

