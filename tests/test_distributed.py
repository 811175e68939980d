"""Several processes (jax.distributed, CPU collectives: gloo, JAX's default on the CPU).

Two processes on localhost, one CPU device each, train the smoke config; their metrics and
checkpoint equal a one-process run with two devices (the same SPMD program per device, and
sums of two operands are commutative: bitwise expected). Bad settings end in one line.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

from rcnn_jax.core import errors
from rcnn_jax.training import loop

ROOT = pathlib.Path(__file__).resolve().parents[1]
OVERRIDES = ['--config.train.num_steps=4', '--config.train.eval_every=2', '--config.ckpt.every=2']


def _free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _env(devices=1):
  flags = ' '.join(f for f in os.environ.get('XLA_FLAGS', '').split()
                   if 'force_host_platform_device_count' not in f)
  if devices > 1:
    flags += f' --xla_force_host_platform_device_count={devices}'
  return dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS='cpu', XLA_FLAGS=flags.strip())


def _cmd(workdir, *extra):
  return [sys.executable, '-m', 'rcnn_jax.train', '--config', 'configs/hits.py:smoke',
          '--workdir', str(workdir), *OVERRIDES, *extra]


def _launch(workdir, n=2, port=None, extra=()):
  port = port or _free_port()
  return [subprocess.Popen(
      _cmd(workdir, '--coordinator_address', f'localhost:{port}', '--num_processes', str(n),
           '--process_id', str(i), *extra), cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True) for i in range(n)]


def _rows(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(l) for l in f]


# ------------------------------------------------------------------------------------------
# Settings (no processes)


def test_settings_single_process_by_default():
  assert loop.distributed_settings(environ={}) is None


def test_settings_from_environment_and_slurm():
  s = loop.distributed_settings(environ={'JAX_COORDINATOR_ADDRESS': 'h:1234',
                                          'JAX_NUM_PROCESSES': '2', 'JAX_PROCESS_ID': '1'})
  assert s == {'coordinator_address': 'h:1234', 'num_processes': 2, 'process_id': 1,
               'initialization_timeout': loop.DEFAULT_TIMEOUT_S}
  slurm = {'SLURM_JOB_ID': '7', 'SLURM_STEP_NODELIST': 'n[1-2]', 'SLURM_NTASKS': '2',
           'SLURM_PROCID': '0', 'SLURM_LOCALID': '0'}
  s = loop.distributed_settings(environ=slurm)
  assert s is not None and s['coordinator_address'] is None  # jax.distributed detects it
  assert loop.distributed_settings(environ={**slurm, 'SLURM_NTASKS': '1'}) is None


@pytest.mark.parametrize('kwargs,match', [
    ({'coordinator_address': 'h:1', 'num_processes': 2}, 'missing --process_id'),
    ({'coordinator_address': 'h:1', 'num_processes': 2, 'process_id': 2}, 'process_id=2'),
    ({'coordinator_address': 'h', 'num_processes': 2, 'process_id': 0}, 'host:port'),
    ({'coordinator_address': 'h:1', 'num_processes': 2, 'process_id': 0, 'timeout': 0},
     'initialization_timeout'),
])
def test_bad_settings_are_one_line(kwargs, match):
  with pytest.raises(errors.UserError, match=match):
    loop.distributed_settings(environ={}, **kwargs)


# ------------------------------------------------------------------------------------------
# Real processes


def test_coordinator_that_never_answers_ends_in_one_line(tmp_path):
  """Process 1 alone: nobody listens at the coordinator's port; one line, exit 2, after the
  stated --initialization_timeout (the subprocess timeout only guards against a hang)."""
  r = subprocess.run(_cmd(tmp_path / 'w', '--coordinator_address', f'localhost:{_free_port()}',
                          '--num_processes', '2', '--process_id', '1',
                          '--initialization_timeout', '5'),
                     cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
  assert r.returncode == 2, r.stderr[-2000:]
  lines = [l for l in r.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith('error: ') and 'within 5 s' in lines[0], lines


def test_mismatched_process_counts_end_in_one_line_each(tmp_path):
  port = _free_port()
  procs = [subprocess.Popen(
      _cmd(tmp_path / 'w', '--coordinator_address', f'localhost:{port}', '--num_processes',
           str(n), '--process_id', str(i), '--initialization_timeout', '60'),
      cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i, n in ((0, 2), (1, 3))]
  for p in procs:
    _, err = p.communicate(timeout=180)
    assert p.returncode == 2, err[-2000:]
    lines = [l for l in err.splitlines() if l.strip() and not l.startswith('[Gloo]')]
    assert len(lines) == 1 and '--num_processes' in lines[0], lines


def _restore_numpy(workdir, step):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, 'checkpoints', str(step), 'default')
  meta = ocp.StandardCheckpointer().metadata(path)
  tree = getattr(meta, 'item_metadata', meta)
  import jax  # pylint: disable=g-import-not-at-top
  target = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), tree)
  return ocp.StandardCheckpointer().restore(path, target)


STEPS = ['--config.train.num_steps=12']


def _strip(rows):
  return [{k: v for k, v in r.items() if 'per_s' not in k} for r in rows]


def test_two_processes_killed_and_relaunched_equal_one_process_with_two_devices(tmp_path):
  """Two processes, process 1 killed after the first checkpoint; the other stops (or is
  stopped, as a scheduler would) in one line; both relaunched: the run resumes and finishes,
  one row per step, and its losses, validation, kept checkpoints and arrays equal bitwise a
  one-process run with two devices (the same SPMD program per device; sums of two operands
  are commutative). One two-process run serves both properties (two processes = one with two
  devices; killed and relaunched = uninterrupted): each two-process launch compiles on
  process 1 in full, since only process 0 writes the persistent cache."""
  import signal  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top
  one = tmp_path / 'one'
  ref = subprocess.run(_cmd(one, *STEPS), cwd=ROOT, env=_env(devices=2), capture_output=True,
                       text=True, timeout=900)
  assert ref.returncode == 0, ref.stderr[-3000:]
  w = tmp_path / 'w'
  procs = _launch(w, extra=STEPS)
  killed, deadline = False, time.time() + 900
  while time.time() < deadline and procs[1].poll() is None:
    try:
      steps = [r['step'] for r in _rows(w) if 'train_loss' in r]
    except (OSError, ValueError):
      steps = []
    if steps and max(steps) >= 3:
      procs[1].send_signal(signal.SIGKILL)
      killed = True
      break
    time.sleep(0.02)
  assert killed
  # The survivor sees its collective fail, says so in one line and ends at once (status 2),
  # not after JAX's exit barrier has waited for the dead peer and aborted with a C++ trace.
  _, err = procs[0].communicate(timeout=120)
  procs[1].communicate()
  lines = [l for l in err.splitlines() if l.strip() and not l.startswith(('[Gloo]', 'train:'))]
  assert procs[0].returncode == 2, err[-3000:]
  assert len(lines) == 1 and 'another training process stopped' in lines[0], lines
  assert 'relaunch every process' in lines[0]
  for p in _launch(w, extra=STEPS):
    _, err = p.communicate(timeout=900)
    assert p.returncode == 0, err[-3000:]
  assert [r['step'] for r in _rows(w) if 'train_loss' in r] == list(range(1, 13))
  assert _strip(_rows(w)) == _strip(_rows(one))
  assert sorted(os.listdir(w / 'checkpoints')) == sorted(os.listdir(one / 'checkpoints'))
  import jax  # pylint: disable=g-import-not-at-top
  jax.tree.map(np.testing.assert_array_equal, _restore_numpy(str(w), 12),
               _restore_numpy(str(one), 12))
  assert not os.path.exists(w / 'metrics.jsonl.1')  # one writer: process 0
