"""Style is checked, not remembered: ruff's lint rules of pyproject.toml on the package, the
configs and the tests (lint only; the code is not reformatted by a tool)."""

import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _ruff():
  here = pathlib.Path(sys.executable).parent / 'ruff'
  return str(here) if here.exists() else shutil.which('ruff')


def test_ruff_check_passes():
  ruff = _ruff()
  if ruff is None:
    pytest.skip("ruff is not installed (pip install -e '.[test]')")
  r = subprocess.run([ruff, 'check', '--no-cache', '.'], cwd=ROOT, capture_output=True,
                     text=True, timeout=120)
  assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
