"""Shared fixtures: configs, the shared HiTS data path (tests skip cleanly without it)."""

import os
import pathlib
import sys

import pytest

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
