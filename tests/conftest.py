"""Shared fixtures: configs, the shared HiTS data path (tests skip cleanly without it)."""

import atexit
import os
import pathlib
import shutil
import sys
import tempfile

import pytest

# One persistent XLA cache for the whole run (the xdist workers and subprocesses inherit it):
# the same simulator and training step are compiled by many tests, and compilation dominates
# their time on a CPU. Made once, by the first process, and removed by it at the end.
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  _CACHE = tempfile.mkdtemp(prefix='rcnn_jax_xla_')
  os.environ['JAX_COMPILATION_CACHE_DIR'] = _CACHE
  atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.5')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')
# LLVM at optimisation level 0: the simulator compiles in 16 s instead of 42 s (the smoke
# training step 31 s instead of 46 s) and the tests' small batches run a few times slower,
# which the suite gains back many times. Float32 results move by an ulp (measured 1e-7
# relative), which no test depends on. Users' runs keep XLA's default; set XLA_FLAGS to
# override it here too.
if 'xla_backend_optimization_level' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             ' --xla_backend_optimization_level=0').strip()
# The suite runs in two pytest-xdist workers (README): on a GPU, two processes must not each
# take 75 % of its memory up front.
os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')

# The files that take longest (compiles in subprocesses, several trainings), longest first:
# the README's command gives each pytest-xdist worker whole files in collection order
# (``--dist loadfile``; pyproject's ``--no-loadscope-reorder`` keeps that order instead of
# xdist's most-tests-first), so the two workers start on the long ones and finish together
# (longest-processing-time-first scheduling). Order only; every test still runs.
HEAVY_FIRST = ('test_train.py', 'test_distributed.py', 'test_simulator.py', 'test_workdir.py',
               'test_hostile_inputs.py', 'test_datasets.py', 'test_pretrained.py',
               'test_export.py', 'test_real_eval.py', 'test_alerts.py', 'test_bands.py',
               'test_surveys.py', 'test_config_check.py', 'test_predict.py')


def pytest_collection_modifyitems(config, items):  # pylint: disable=unused-argument
  rank = {name: i for i, name in enumerate(HEAVY_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: files keep order


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


# A throwaway PostgreSQL server (rcnn_jax/serving/alerts/pgserver.py: initdb into a new
# temporary folder, pg_ctl start on 127.0.0.1 and a free port, trust authentication), one per
# test process (each pytest-xdist worker its own cluster), started on first use and stopped at
# the end of the session. Skipped without the server binaries (Debian's postgresql package),
# except under RCNN_JAX_REQUIRE_POSTGRES=1 (.ci/run, which installs the package): a failure.
@pytest.fixture(scope='session')
def postgres_server():
  from rcnn_jax.serving.alerts import pgserver
  if pgserver.find_bin_dir() is None:
    msg = 'PostgreSQL server binaries not found (apt-get install postgresql)'
    if os.environ.get('RCNN_JAX_REQUIRE_POSTGRES') == '1':
      pytest.fail(msg)
    pytest.skip(msg)
  server = pgserver.start(durable=False)
  atexit.register(server.stop)  # also if the session ends without its teardown
  yield server
  server.stop()


@pytest.fixture
def postgres_url(postgres_server):
  """postgresql://rcnn@127.0.0.1:PORT/rcnn_<hex>: a new, empty database per test (dropped
  after it)."""
  url = postgres_server.create_database()
  yield url
  postgres_server.drop_database(url)
