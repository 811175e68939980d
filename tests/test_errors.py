"""Only a UserError (bad input, bad config) is a one-line error with exit status 2; any other
exception, ValueError included, keeps its traceback (a bug must not look like bad input)."""

import os
import pathlib
import subprocess
import sys

from rcnn_jax.core import errors
from rcnn_jax.core import utils
from rcnn_jax.inputs import realdata

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _command(body):
  """A command run through utils.run whose main does ``body``."""
  code = ('from rcnn_jax.core import errors, utils\n'
          'def main(argv):\n'
          f'  {body}\n'
          'utils.run(main)\n')
  env = dict(os.environ, PYTHONPATH=str(ROOT), RCNN_JAX_HUGEPAGES='0')
  return subprocess.run([sys.executable, '-c', code], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=120)


def test_user_error_is_one_line_and_exit_2():
  r = _command("raise errors.UserError('config.x=1 is invalid: must be 2')")
  assert r.returncode == 2
  assert r.stderr.strip().splitlines() == ['error: config.x=1 is invalid: must be 2']


def test_an_internal_value_error_keeps_its_traceback():
  r = _command("raise ValueError('a bug in the model')")
  assert r.returncode not in (0, 2)
  assert 'Traceback (most recent call last)' in r.stderr
  assert 'ValueError: a bug in the model' in r.stderr


def test_an_internal_file_not_found_keeps_its_traceback():
  r = _command("open('/nonexistent/file')")
  assert r.returncode not in (0, 2) and 'Traceback' in r.stderr


def test_user_errors_are_value_errors_and_their_kinds_keep_their_bases():
  assert issubclass(errors.UserError, ValueError)
  assert issubclass(realdata.BadInput, errors.UserError)
  assert issubclass(errors.MissingFile, FileNotFoundError)
  assert issubclass(errors.Diverged, FloatingPointError)
  assert utils.UserError is errors.UserError


def test_bad_config_on_the_command_line_is_one_line_exit_2(tmp_path):
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  r = subprocess.run([sys.executable, '-m', 'rcnn_jax.simulate', '--config',
                      'configs/hits.py:smoke', '--config.sim.psf.kind=nope', '--out',
                      str(tmp_path / 'x.npz')], cwd=ROOT, env=env, capture_output=True,
                     text=True, timeout=300)
  assert r.returncode == 2, r.stderr[-2000:]
  err = r.stderr.strip().splitlines()
  assert len(err) == 1 and err[0].startswith('error: config.sim.psf.kind'), err
