"""Workdirs that survive mistakes: the lock, damaged checkpoints, a full disk, crash-cut logs."""

import glob
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import hits
from rcnn_jax.core import utils
from rcnn_jax.evaluation import simulated as sim_eval
from rcnn_jax.training import checkpoints
from rcnn_jax.training import loop
from rcnn_jax.training import steps as steps_lib
from rcnn_jax.training import workdir as workdir_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _env():
  return dict(os.environ, PYTHONPATH=str(ROOT))


# ----------------------------------------------------------------------------------------------
# One run per workdir


_HOLD = '''
import sys, time
from rcnn_jax.training import workdir
lock = workdir.lock(sys.argv[1])
print('locked', flush=True)
time.sleep(300)
'''


def test_second_run_is_refused_while_another_process_holds_the_workdir(tmp_path):
  wd = tmp_path / 'w'
  holder = subprocess.Popen([sys.executable, '-c', _HOLD, str(wd)], env=_env(), cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == 'locked'
    r = subprocess.run([sys.executable, '-m', 'rcnn_jax.train', '--config',
                        'configs/hits.py:smoke', '--workdir', str(wd)], env=_env(), cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr[-2000:]
    assert len(err) == 1 and f'in use by another training run (pid {holder.pid})' in err[0], err
    assert not (wd / 'config.json').exists()  # the refused run wrote nothing
    with pytest.raises(utils.UserError, match=f'pid {holder.pid}'):
      workdir_lib.lock(str(wd))
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  # SIGKILL leaves no stale lock: the OS dropped it with the process.
  workdir_lib.lock(str(wd)).release()


# ----------------------------------------------------------------------------------------------
# A workdir counts as holding a run only once it holds a checkpoint


def test_failed_first_run_does_not_block_a_corrected_one(tmp_path):
  wd = str(tmp_path / 'w')
  config = hits.get_config('smoke')
  os.makedirs(os.path.join(wd, 'checkpoints'))  # what a run that died before step 1 leaves
  os.makedirs(os.path.join(wd, 'best'))
  checkpoints.save_config(wd, config)
  config.train.learning_rate = 1e-2
  checkpoints.save_config(wd, config)  # accepted: no checkpoint yet
  assert checkpoints.load_config(wd).train.learning_rate == 1e-2
  os.makedirs(os.path.join(wd, 'checkpoints', '1'))
  config.train.learning_rate = 1e-3
  with pytest.raises(utils.UserError, match='different config'):
    checkpoints.save_config(wd, config)


# ----------------------------------------------------------------------------------------------
# Damaged checkpoints


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """A 3-step smoke run: checkpoints 1, 2, 3 and a best; copied by each test."""
  config = hits.get_config('smoke')
  config.train.num_steps = 3
  wd = str(tmp_path_factory.mktemp('trained') / 'w')
  loop.train_and_evaluate(config, wd, progress=False)
  mesh = steps_lib.make_mesh()
  target = steps_lib.init_state(config, *steps_lib.build(config), mesh)
  return config, wd, target


def _copy(trained, tmp_path):
  config, wd, target = trained
  dst = str(tmp_path / 'w')
  shutil.copytree(wd, dst)
  if os.path.exists(os.path.join(dst, '.lock')):
    os.remove(os.path.join(dst, '.lock'))
  return config, dst, target


def _truncate_largest_array_file(step_dir):
  files = glob.glob(os.path.join(step_dir, 'default', 'ocdbt.process_0', 'd', '*'))
  f = max(files, key=os.path.getsize)
  os.truncate(f, os.path.getsize(f) // 2)
  return f


def _assert_equal_params(a, b):
  jax.tree.map(np.testing.assert_array_equal, a.params, b.params)


def test_truncated_array_file_falls_back_to_the_previous_checkpoint(trained, tmp_path, capfd):
  config, wd, target = _copy(trained, tmp_path)
  latest = checkpoints.manager(wd, config, read_only=True)
  intact3 = checkpoints.restore_state(latest, 3, target)
  _truncate_largest_array_file(os.path.join(wd, 'checkpoints', '3'))
  state, step, damaged = checkpoints.restore_newest_intact(latest, target)
  assert (step, damaged, int(state.step)) == (2, [3], 2)
  err = capfd.readouterr().err.strip().splitlines()
  assert len(err) == 1 and 'checkpoints/3 is damaged' in err[0] and 'trying step 2' in err[0]
  # Training resumes from step 2, names and moves the damaged step 3 aside (nothing deleted),
  # and redoes step 3 bitwise.
  loop.train_and_evaluate(config, wd, progress=False)
  err = capfd.readouterr().err
  moved = os.path.join(wd, 'damaged', 'checkpoints_3')
  assert os.path.isdir(moved) and moved in err
  latest = checkpoints.manager(wd, config, read_only=True)
  assert latest.all_steps() == [1, 2, 3]
  _assert_equal_params(checkpoints.restore_state(latest, 3, target), intact3)


def test_truncated_metadata_falls_back_and_evaluate_names_it(trained, tmp_path, capfd):
  config, wd, target = _copy(trained, tmp_path)
  meta = os.path.join(wd, 'checkpoints', '3', 'default', '_METADATA')
  os.truncate(meta, 10000)
  latest = checkpoints.manager(wd, config, read_only=True)
  _, step, damaged = checkpoints.restore_newest_intact(latest, target)
  assert (step, damaged) == (2, [3])
  capfd.readouterr()
  # An explicit --step of the damaged checkpoint: one line naming it.
  with pytest.raises(utils.UserError, match='checkpoints/3 is damaged'):
    checkpoints.restore_for_eval(wd, step=3)
  # Everything damaged: one clear line.
  for s in (1, 2):
    os.truncate(os.path.join(wd, 'checkpoints', str(s), 'default', '_METADATA'), 100)
  with pytest.raises(utils.UserError, match='no intact checkpoint'):
    checkpoints.restore_for_eval(wd)


def _garble(step_dir):
  for f in glob.glob(os.path.join(step_dir, 'default', '**'), recursive=True):
    if os.path.isfile(f):
      b = open(f, 'rb').read()
      open(f, 'wb').write(bytes(x ^ 0xA5 for x in b))


def test_one_manager_keeps_the_latest_and_the_best(tmp_path):
  config = hits.get_config('smoke')
  config.train.num_steps, config.ckpt.max_to_keep = 6, 2
  wd = str(tmp_path / 'w')
  loop.train_and_evaluate(config, wd, progress=False)
  rows = workdir_lib.read_jsonl(os.path.join(wd, 'metrics.jsonl'))
  val = {r['step']: r['val_loss'] for r in rows if 'val_loss' in r}
  best = min(val, key=val.get)
  latest = checkpoints.manager(wd, config, read_only=True)
  assert latest.all_steps() == sorted({best, 5, 6})  # the latest two and the best
  assert latest.best_step() == best
  assert [s for _, s in checkpoints.validated(latest)][0] == best
  assert sorted(os.listdir(wd)) == ['.lock', 'checkpoints', 'config.json', 'metrics.jsonl', 'tb']
  _, _, _, state, step = checkpoints.restore_for_eval(wd)
  assert step == best and int(state.step) == best


def test_damaged_best_falls_back_to_the_next_best(trained, tmp_path, capfd):
  config, wd, target = _copy(trained, tmp_path)
  ranked = [s for _, s in checkpoints.validated(checkpoints.manager(wd, config, read_only=True))]
  assert sorted(ranked) == [1, 2, 3]  # every smoke step is validated and kept (3 latest)
  best_step, next_best = ranked[:2]
  _garble(os.path.join(wd, 'checkpoints', str(best_step)))
  capfd.readouterr()
  _, _, _, state, step = checkpoints.restore_for_eval(wd)
  assert step == next_best and int(state.step) == next_best
  latest = checkpoints.manager(wd, config, read_only=True)
  _assert_equal_params(state, checkpoints.restore_state(latest, next_best, target))
  err = capfd.readouterr().err.strip().splitlines()
  assert err and all(l.startswith('warning: ') for l in err) and len(err) <= 2, err
  assert f'checkpoints/{best_step} is damaged' in err[0] and 'next best' in err[0], err
  # Training on: the damaged best is named and moved aside; the best is among the intact ones.
  config.train.num_steps = 4
  loop.train_and_evaluate(config, wd, progress=False)
  err = capfd.readouterr().err
  assert os.path.isdir(os.path.join(wd, 'damaged', f'checkpoints_{best_step}'))
  assert f'checkpoints/{best_step}' in err
  latest = checkpoints.manager(wd, config, read_only=True)
  assert 4 in latest.all_steps()  # (a damaged newest step is redone, so it may be back)
  for s in latest.all_steps():
    assert workdir_lib.try_restore(lambda t: checkpoints.restore_state(latest, t, target),
                                   str(latest.directory), s)[1] is None
  assert latest.best_step() == checkpoints.validated(latest)[0][1]


def test_garbled_metrics_leave_the_checkpoints_readable(trained, tmp_path, capfd):
  """orbax reads every step's metrics when a manager opens; one garbled metrics file must not
  hide the checkpoints from evaluation: the best among the readable ones is used."""
  config, wd, target = _copy(trained, tmp_path)
  ranked = [s for _, s in checkpoints.validated(checkpoints.manager(wd, config, read_only=True))]
  with open(os.path.join(wd, 'checkpoints', str(ranked[0]), 'metrics', 'metrics'), 'w') as f:
    f.write('{"val_loss": 1.')  # cut short
  capfd.readouterr()
  _, _, _, state, step = checkpoints.restore_for_eval(wd)
  assert step == ranked[1] and int(state.step) == ranked[1]
  err = capfd.readouterr().err.strip().splitlines()
  assert len(err) == 1 and 'metrics cannot all be read' in err[0], err


def test_workdir_of_the_older_layout_restores_its_best(trained, tmp_path, capfd):
  """Before one manager, W/best/ (its own orbax manager with metrics) and W/best.json sat
  beside W/checkpoints/ (no metrics): evaluation and training still find the best there."""
  config, wd, target = _copy(trained, tmp_path)
  old = checkpoints.manager(wd, config, read_only=True)
  state2 = checkpoints.restore_state(old, 2, target)
  # The older layout: step 2 the best, in best/; checkpoints/ without metrics.
  legacy = ocp.CheckpointManager(
      os.path.join(wd, 'best'), options=ocp.CheckpointManagerOptions(
          max_to_keep=1, best_fn=lambda m: m['val_loss'], best_mode='min', create=True,
          enable_async_checkpointing=False))
  legacy.save(2, args=ocp.args.StandardSave(state2), metrics={'val_loss': -1.0})
  legacy.wait_until_finished()
  for s in (1, 2, 3):
    shutil.rmtree(os.path.join(wd, 'checkpoints', str(s), 'metrics'))
  utils.write_json(os.path.join(wd, 'best.json'), {'step': 2, 'val_loss': -1.0})
  _, _, _, state, step = checkpoints.restore_for_eval(wd)
  assert step == 2
  _assert_equal_params(state, state2)
  # A garbled best/ falls back to the same step in checkpoints/, named in one line.
  _garble(os.path.join(wd, 'best', '2'))
  capfd.readouterr()
  _, _, _, state, step = checkpoints.restore_for_eval(wd)
  assert step == 2
  _assert_equal_params(state, state2)
  err = capfd.readouterr().err.strip().splitlines()
  assert len(err) == 2 and 'best/2 is damaged' in err[0], err
  # Training resumes from checkpoints/ and keeps its bests in the one manager from now on.
  config.train.num_steps = 4
  loop.train_and_evaluate(config, wd, progress=False)
  assert os.path.isdir(os.path.join(wd, 'damaged', 'best_2'))
  latest = checkpoints.manager(wd, config, read_only=True)
  assert 4 in latest.all_steps() and checkpoints.validated(latest)[0][1] == 4


# ----------------------------------------------------------------------------------------------
# A full disk


def test_full_disk_stops_at_the_failed_save_with_one_line(tmp_path, monkeypatch):
  disk = tmp_path / 'disk'
  disk.mkdir()
  r = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=16m', 'tmpfs', str(disk)],
                     capture_output=True, text=True)
  if r.returncode != 0:
    pytest.skip(f'cannot mount a tmpfs here: {r.stderr.strip()}')
  try:
    wd = str(disk / 'w')
    config = hits.get_config('smoke')
    config.train.num_steps = 5
    real = steps_lib.make_train_step

    def filling(*args, **kwargs):
      step = real(*args, **kwargs)

      def wrapped(state, key):
        new, m = step(state, key)
        if int(new.step) == 2:  # after checkpoint 1: leave room for the logs, not a checkpoint
          st = os.statvfs(disk)
          with open(disk / 'filler', 'wb') as f:
            f.write(b'\0' * (st.f_bavail * st.f_frsize - 64 * 1024))
        return new, m

      return wrapped

    monkeypatch.setattr(steps_lib, 'make_train_step', filling)
    with pytest.raises(utils.UserError) as e:
      loop.train_and_evaluate(config, wd, progress=False)
    msg = str(e.value)
    assert '\n' not in msg and 'No space left on device' in msg and 'at step 2' in msg, msg
    assert 'last good checkpoint (step 1) is intact' in msg
    os.remove(disk / 'filler')
    rows = workdir_lib.read_jsonl(os.path.join(wd, 'metrics.jsonl'))
    assert max(r['step'] for r in rows) <= 2  # it stopped at once
    monkeypatch.setattr(steps_lib, 'make_train_step', real)
    latest = checkpoints.manager(wd, config, read_only=True)
    assert latest.all_steps() == [1]
    target = steps_lib.init_state(config, *steps_lib.build(config), steps_lib.make_mesh())
    state, step, damaged = checkpoints.restore_newest_intact(latest, target)
    assert step == 1 and not damaged
  finally:
    subprocess.run(['umount', '-l', str(disk)], check=False)


# ----------------------------------------------------------------------------------------------
# metrics.jsonl after a crash; file modes


def test_partial_last_line_is_skipped_with_a_warning(tmp_path, capfd):
  path = tmp_path / 'metrics.jsonl'
  path.write_text('{"step": 0, "hparams/num_params": 5.0}\n{"step": 1, "train_loss": 2.0}\n'
                  '{"step": 1, "val_loss": 1.5}\n{"step": 2, "train_lo')
  rows = sim_eval._read_jsonl(str(path))  # pylint: disable=protected-access
  assert [r['step'] for r in rows] == [0, 1, 1]
  err = capfd.readouterr().err
  assert 'skipped 1 unreadable line(s) (line 4' in err


def test_resumed_log_keeps_one_row_per_step(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  rows = [{'step': 0, 'hparams/num_params': 5.0}] + [
      {'step': s, 'train_loss': float(s)} for s in (1, 2, 3, 4)] + [
      {'step': 2, 'val_loss': 0.5}]
  path.write_text(''.join(json.dumps(r) + '\n' for r in rows) + '{"step": 5, "tr')
  assert workdir_lib.truncate_metrics(str(path), 2) == 3  # steps 3, 4 and the partial line
  kept = workdir_lib.read_jsonl(str(path))
  assert [(r['step'], sorted(r)) for r in kept] == [
      (0, ['hparams/num_params', 'step']), (1, ['step', 'train_loss']),
      (2, ['step', 'train_loss']), (2, ['step', 'val_loss'])]
  assert workdir_lib.truncate_metrics(str(path), 0) == 4  # a fresh start keeps nothing
  # An older workdir's duplicated rows read once (the later one wins).
  path.write_text('{"step": 1, "train_loss": 9.0}\n{"step": 1, "train_loss": 2.0}\n')
  assert workdir_lib.read_jsonl(str(path)) == [{'step': 1, 'train_loss': 2.0}]


def test_files_are_written_with_the_users_umask(tmp_path):
  old = os.umask(0o022)
  try:
    p = tmp_path / 'x.json'
    utils.write_json(str(p), {'a': 1})
    assert (os.stat(p).st_mode & 0o777) == 0o644
    os.umask(0o077)
    utils.atomic_write_text(str(tmp_path / 'y.csv'), 'a\n')
    assert (os.stat(tmp_path / 'y.csv').st_mode & 0o777) == 0o600
  finally:
    os.umask(old)
