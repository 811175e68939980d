"""Shared fixtures: configs, the shared HiTS data path (tests skip cleanly without it)."""

import os
import pathlib
import sys
import tempfile

import pytest

# One persistent XLA cache for the whole run (subprocesses inherit it): the same simulator and
# training step are compiled by many tests, and compilation dominates their time on a CPU.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', tempfile.mkdtemp(prefix='rcnn_jax_xla_'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.5')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')
# The suite runs in two pytest-xdist workers (README): on a GPU, two processes must not each
# take 75 % of its memory up front.
os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED_HITS = ROOT.parent / 'shared' / 'data' / 'hits2015'


@pytest.fixture
def smoke_config():
  from configs import hits
  return hits.get_config('smoke')


@pytest.fixture
def hits_data():
  if not (SHARED_HITS / 'conditions.csv').exists():
    pytest.skip(f'shared HiTS data not found at {SHARED_HITS}')
  return SHARED_HITS
