"""Training: end to end, checkpoints, resume, NaN stop, recompilation, multi-device."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import hits
from rcnn_jax.training import checkpoints
from rcnn_jax.training import loop
from rcnn_jax.training import steps as steps_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _losses(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    rows = [json.loads(l) for l in f]
  return {r['step']: r['train_loss'] for r in rows if 'train_loss' in r}


def _params(workdir, step):
  config = checkpoints.load_config(workdir)
  mesh = steps_lib.make_mesh()
  sim, model, tx = steps_lib.build(config)
  target = steps_lib.init_state(config, sim, model, tx, mesh)
  latest = checkpoints.manager(workdir, config)
  return checkpoints.restore_state(latest, step, target)


def test_two_step_run_writes_and_restores_checkpoint(tmp_path):
  config = hits.get_config('smoke')
  wd = str(tmp_path / 'run')
  final = loop.train_and_evaluate(config, wd, progress=False)
  assert final['step'] == 2 and np.isfinite(final['train_loss'])
  assert np.isfinite(final['val_loss']) and 0 <= final['val_accuracy'] <= 1
  assert os.path.exists(os.path.join(wd, 'config.json'))
  # One manager: each validated step carries its validation loss as metrics, lowest first.
  ranked = checkpoints.validated(checkpoints.manager(wd, config, read_only=True))
  assert sorted(s for _, s in ranked) == [1, 2] and ranked[0][0] <= ranked[1][0]
  assert dict((s, v) for v, s in ranked)[2] == pytest.approx(final['val_loss'], rel=1e-5)
  assert not os.path.exists(os.path.join(wd, 'best'))
  assert any(p.name.startswith('events') for p in (tmp_path / 'run' / 'tb').iterdir())
  state = _params(wd, 2)
  assert int(state.step) == 2
  # The restored parameters are the trained ones, not a fresh init.
  fresh = steps_lib.init_state(config, *steps_lib.build(config), steps_lib.make_mesh())
  diff = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()),
                      state.params, fresh.params)
  assert max(jax.tree.leaves(diff)) > 0


def test_resume_equals_uninterrupted(tmp_path):
  config = hits.get_config('smoke')
  config.train.num_steps = 4
  config.train.eval_every = 2
  a = str(tmp_path / 'a')
  loop.train_and_evaluate(config, a, progress=False)
  b = str(tmp_path / 'b')
  config.train.num_steps = 2
  loop.train_and_evaluate(config, b, progress=False)
  config.train.num_steps = 4
  loop.train_and_evaluate(config, b, progress=False)  # resumes at step 2
  la, lb = _losses(a), _losses(b)
  assert sorted(la) == sorted(lb) == [1, 2, 3, 4]
  for s in la:
    assert la[s] == lb[s], (s, la[s], lb[s])
  pa, pb = _params(a, 4), _params(b, 4)
  jax.tree.map(np.testing.assert_array_equal, pa.params, pb.params)
  # Logged every 2 steps, the training metrics are the means over the 2 steps, not the last.
  c = str(tmp_path / 'c')
  config.train.log_every = 2
  loop.train_and_evaluate(config, c, progress=False)
  lc = _losses(c)
  assert sorted(lc) == [2, 4]
  np.testing.assert_allclose(lc[2], (la[1] + la[2]) / 2, rtol=1e-12)
  np.testing.assert_allclose(lc[4], (la[3] + la[4]) / 2, rtol=1e-12)


def test_metric_window_means_and_last_param_norm():
  w = loop.MetricWindow()
  w.add({'loss': 1.0, 'accuracy': 0.5, 'param_norm': 3.0})
  w.add({'loss': 2.0, 'accuracy': 0.0, 'param_norm': 4.0})
  assert w.result() == {'loss': 1.5, 'accuracy': 0.25, 'param_norm': 4.0}
  w.add({'loss': 5.0, 'accuracy': 1.0, 'param_norm': 6.0})  # a new window
  assert w.result() == {'loss': 5.0, 'accuracy': 1.0, 'param_norm': 6.0}


def test_different_config_in_existing_workdir_is_refused(tmp_path):
  config = hits.get_config('smoke')
  config.train.num_steps = 1
  wd = str(tmp_path / 'w')
  loop.train_and_evaluate(config, wd, progress=False)
  config.train.learning_rate = 0.5
  with pytest.raises(Exception, match='different config'):
    loop.train_and_evaluate(config, wd, progress=False)
  assert checkpoints.load_config(wd).train.learning_rate != 0.5


def test_nan_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
  config = hits.get_config('smoke')
  config.train.num_steps = 3
  real = steps_lib.make_train_step

  def poisoned(*args, **kwargs):
    step = real(*args, **kwargs)

    def wrapped(state, key):
      new, m = step(state, key)
      if int(new.step) == 2:  # a diverging update: NaN parameters, finite loss this step
        new = new.replace(params=jax.tree.map(lambda x: x * np.nan, new.params))
        m = dict(m, param_norm=np.nan)
      return new, m

    return wrapped

  monkeypatch.setattr(steps_lib, 'make_train_step', poisoned)
  wd = str(tmp_path / 'nan')
  with pytest.raises(FloatingPointError, match='non-finite training loss or update at step 2'):
    loop.train_and_evaluate(config, wd, progress=False)
  latest = checkpoints.manager(wd, config)
  assert latest.all_steps() == [1]  # the NaN state was never saved
  state = _params(wd, 1)
  leaves = jax.tree.leaves(state.params)
  assert int(state.step) == 1 and all(np.isfinite(np.asarray(x)).all() for x in leaves)


def test_train_step_traces_once():
  config = hits.get_config('smoke')
  mesh = steps_lib.make_mesh()
  sim, model, tx = steps_lib.build(config)
  state = steps_lib.init_state(config, sim, model, tx, mesh)
  step = steps_lib.make_train_step(config, sim, model, tx, mesh)
  key = jax.random.key(0)
  for _ in range(3):
    state, m = step(state, key)
  jax.block_until_ready(m)
  assert step.trace_count[0] == 1


def _run(args, env_extra=None, timeout=600):
  env = dict(os.environ, PYTHONPATH=str(ROOT), **(env_extra or {}))
  return subprocess.run([sys.executable] + args, cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=timeout)


# Two steps of the smoke run from key 0 -> `losses`: run here, and as the body of _MULTI.
_SMOKE_LOSSES = '''
config = hits.get_config('smoke')
mesh = steps_lib.make_mesh()
sim, model, tx = steps_lib.build(config)
state = steps_lib.init_state(config, sim, model, tx, mesh)
step = steps_lib.make_train_step(config, sim, model, tx, mesh)
losses = []
for _ in range(2):
  state, m = step(state, jax.random.key(0))
  losses.append(float(m['loss']))
'''
_MULTI = '''
import json, sys, jax
sys.path.insert(0, '.')
from configs import hits
from rcnn_jax.training import steps as steps_lib
''' + _SMOKE_LOSSES + '''
print(json.dumps({'devices': jax.device_count(), 'losses': losses}))
'''


def test_two_devices_match_one_device():
  """The smoke batch of 14 split over two CPU devices (each simulating its own 7) gives the
  one-device losses; the one-device run is this process's on a CPU (the same program as the
  other smoke tests, so its compilation is cached), a CPU subprocess elsewhere."""
  flags = os.environ.get('XLA_FLAGS', '')

  def in_subprocess(n):
    r = _run(['-c', _MULTI], {'XLA_FLAGS': f'{flags} --xla_force_host_platform_device_count={n}'
                              .strip(), 'JAX_PLATFORMS': 'cpu'})
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out['devices'] == n
    return out['losses']

  if jax.default_backend() == 'cpu' and jax.device_count() == 1:
    here = {'hits': hits, 'steps_lib': steps_lib, 'jax': jax}
    exec(_SMOKE_LOSSES, here)  # pylint: disable=exec-used
    one = here['losses']
  else:
    one = in_subprocess(1)
  np.testing.assert_allclose(in_subprocess(2), one, rtol=2e-4)


def _raw_rows(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(l) for l in f]


def test_kill9_mid_run_resumes_bitwise_with_one_log_row_per_step(tmp_path):
  """SIGKILL between checkpoints, then a rerun: the same final parameters bit for bit as an
  uninterrupted run, one metrics row per step, and the killed run held the workdir's lock.
  The command line's overrides (--config.model.lstm_size among them) reach the model."""
  import signal  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top

  from rcnn_jax.core import utils  # pylint: disable=g-import-not-at-top
  from rcnn_jax.training import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  overrides = {'train.num_steps': 30, 'ckpt.every': 7, 'train.eval_every': 5,
               'model.lstm_size': 12}
  config = hits.get_config('smoke')
  for k, v in overrides.items():
    section, name = k.split('.')
    config[section][name] = v
  a = str(tmp_path / 'a')
  loop.train_and_evaluate(config, a, progress=False)

  b = tmp_path / 'b'
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  proc = subprocess.Popen(
      [sys.executable, '-m', 'rcnn_jax.train', '--config', 'configs/hits.py:smoke', '--workdir',
       str(b)] + [f'--config.{k}={v}' for k, v in overrides.items()],
      cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  killed_at, deadline = None, time.time() + 400
  try:
    while time.time() < deadline and proc.poll() is None:
      try:
        steps = [r['step'] for r in _raw_rows(str(b))]
      except (OSError, ValueError):
        steps = []
      if steps and max(steps) >= 10:
        with pytest.raises(utils.UserError, match=f'pid {proc.pid}'):
          workdir_lib.lock(str(b))  # the running training holds the workdir
        proc.send_signal(signal.SIGKILL)
        killed_at = max(steps)
        break
      time.sleep(0.02)
  finally:
    if proc.poll() is None:
      proc.kill()
    _, err = proc.communicate()
  assert killed_at is not None, err[-2000:]
  assert killed_at < 30
  latest = checkpoints.manager(str(b), config, read_only=True)
  assert latest.latest_step() is not None and latest.latest_step() < 30
  loop.train_and_evaluate(config, str(b), progress=False)  # resumes after the kill
  rows = _raw_rows(str(b))
  train_steps = [r['step'] for r in rows if 'train_loss' in r]
  assert train_steps == list(range(1, 31))  # each step once, in order
  assert [r['step'] for r in rows if 'val_loss' in r] == list(range(5, 31, 5))
  la, lb = _losses(a), _losses(str(b))
  assert la == lb
  jax.tree.map(np.testing.assert_array_equal, _params(a, 30).params, _params(str(b), 30).params)
  assert checkpoints.load_config(str(b)).model.lstm_size == 12
  shapes = [np.shape(x) for x in jax.tree.leaves(_params(str(b), 30).params)]
  assert any(12 in s for s in shapes) and not any(16 in s for s in shapes)  # smoke's is 16


def test_train_step_has_no_host_round_trips():
  """The step (simulation included) runs under transfer_guard('disallow'): no host-to-device
  or device-to-host transfer inside it, as a GPU run needs; its state is donated."""
  config = hits.get_config('smoke')
  mesh = steps_lib.make_mesh()
  sim, model, tx = steps_lib.build(config)
  state = steps_lib.init_state(config, sim, model, tx, mesh)
  step = steps_lib.make_train_step(config, sim, model, tx, mesh)
  key = jax.random.key(0)
  state, m = step(state, key)  # compiled outside the guard
  old = state
  with jax.transfer_guard('disallow'):
    state, m = step(state, key)
    jax.block_until_ready((state, m))
  assert jax.tree.leaves(old.params)[0].is_deleted()  # donated
