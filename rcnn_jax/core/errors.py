"""The project's user-facing errors: bad input and bad config.

Only these become one line on stderr and exit status 2 in the commands (``utils.run``); every
other exception, ``ValueError`` included, keeps its traceback, so that a broken edit of the code
does not look like bad input. ``UserError`` is a ``ValueError`` so that library callers that
catch ``ValueError`` for bad values keep doing so.
"""

import os


class UserError(ValueError):
  """Bad input or configuration from the user: reported as one line, exit status 2."""


class MissingFile(UserError, FileNotFoundError):
  """A file the user named (a survey table, a PSF bank) does not exist."""


class Diverged(UserError, FloatingPointError):
  """Training produced a non-finite loss or update (a learning rate too high for the run)."""


class PeerLost(UserError):
  """Another process of a several-process run stopped (killed, crashed, its host lost) while
  this one trained: one line, then the process ends at once (``exit_at_once``), since JAX's
  exit would wait ``shutdown_timeout`` for the lost peer at its shutdown barrier and then abort
  with a C++ stack trace."""

  exit_at_once = True


class BadInput(UserError):
  """An input (a file, a packet, an epoch) that cannot be used; the message is one line:
  '{path}: {problem}'. Commands that take many inputs report it and go on with the others."""

  def __init__(self, path, problem):
    self.path = str(path)
    self.problem = ' '.join(str(problem).split())
    super().__init__(f'{printable(self.path)}: {self.problem}')


def printable(path: str) -> str:
  """A path that can always be printed or written (undecodable bytes as \\xNN)."""
  return os.fsencode(path).decode('utf-8', 'backslashreplace')
