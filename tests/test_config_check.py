"""Config validation: every bad value refused in one line before anything is compiled."""

import os
import pathlib
import subprocess
import sys

import pytest

from configs import hits
from configs import hits_lc
from rcnn_jax.core import utils
from rcnn_jax.training import config_check
from rcnn_jax.training import loop
from rcnn_jax.training import steps as steps_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize('arg', ['paper', 'cpu', 'smoke', 'paper,lc', 'cpu,lc', 'smoke,lc'])
def test_every_shipped_config_passes(arg):
  config_check.validate(hits.get_config(arg), num_devices=1)
  config_check.validate(hits_lc.get_config(arg.replace(',lc', '')), num_devices=1)


# The cases first, then the rest of the ranges and enums.
BAD = [
    ('train.learning_rate', -1.0), ('train.learning_rate', 0.0),
    ('train.learning_rate', float('nan')), ('train.num_steps', -5), ('train.num_steps', 0),
    ('train.batch_size', 0), ('ckpt.every', 0), ('train.eval_every', 0), ('eval.val_size', 0),
    ('eval.batch_size', 0), ('train.log_every', 0), ('ckpt.max_to_keep', 0),
    ('eval.test_size', -1), ('eval.test_seed_offset', 1_000_003), ('train.batch_size', 2.5),
    ('train.distributed', 'yes'),
    ('model.kind', 'cnn'), ('model.conv_impl', 'fft'), ('model.dtype', 'float16'),
    ('model.filters', 0), ('model.lstm_size', 0), ('model.dropout', 1.0),
    ('model.bn_momentum', -0.1), ('model.encoder_chunk', -2), ('model.input_asinh_scale', -1.0),
    ('sim.n_w', 0), ('sim.max_steps', 0), ('sim.pre_detection', -1), ('sim.stamp_size', 1),
    ('sim.psf.kind', 'airy'), ('sim.psf.moffat_beta', 1.0), ('sim.max_redraws', 0),
    ('sim.host_fraction_supernova', 1.5), ('sim.lightcurves.ia_fraction', -0.1),
    ('sim.galaxy.mag_range', (23.5, 16.5)), ('survey.pixel_scale_arcsec', 0.0),
    ('survey.num_fields', 0), ('eval.magnitude_bins', (20.0, 19.0)),
    ('survey.conditions_path', '/nonexistent/conditions.csv'),
    ('real.detection_method', 'aperture'), ('real.baseline_epochs', 0),
    ('real.detection_sigma', 0.0), ('real.drop_unknown_seeing', 'yes'),
    ('sim.detection', 'photometry'), ('sim.lightcurves.contact_amp_flat_to', 0.9),
]


def _set(config, name, value):
  *parents, leaf = name.split('.')
  node = config
  for p in parents:
    node = node[p]
  with node.ignore_type():
    node[leaf] = value


@pytest.mark.parametrize('name,value', BAD)
def test_bad_value_is_refused_in_one_line(name, value):
  config = hits.get_config('smoke')
  _set(config, name, value)
  if name == 'survey.conditions_path':
    config.survey.camera_path = '/nonexistent/camera.csv'
  with pytest.raises(utils.UserError) as e:
    config_check.validate(config, num_devices=1)
  msg = str(e.value)
  assert f'config.{name}' in msg and '\n' not in msg, msg


def test_psf_bank_needs_an_existing_file(tmp_path):
  config = hits.get_config('smoke')
  config.sim.psf.kind = 'bank'
  with pytest.raises(utils.UserError, match='bank_path'):
    config_check.validate(config)
  bank = tmp_path / 'bank.npz'
  bank.write_bytes(b'')
  config.sim.psf.bank_path = str(bank)
  config_check.validate(config)


def test_batch_sizes_must_divide_by_the_devices():
  config = hits.get_config('smoke')  # batch 14, eval batch 14
  config_check.validate(config, num_devices=7)
  with pytest.raises(utils.UserError, match=r'train.batch_size=14 is not divisible by the 4'):
    config_check.validate(config, num_devices=4)


def test_unknown_fields_refused_in_train_but_new_sim_fields_pass():
  config = hits.get_config('smoke')
  config.sim.new_feature = 3  # what the simulator's engineers add
  config.sim.psf.new_knob = 'x'
  config_check.validate(config)
  config.train.nope = 1
  with pytest.raises(utils.UserError, match='config.train.nope: unknown field'):
    config_check.validate(config)
  config_check.validate(config, strict=False)  # an older workdir's config.json


def test_bad_config_is_refused_before_anything_is_built(tmp_path, monkeypatch):
  def no_build(*a, **k):
    raise AssertionError('built (and would compile) before validating')

  monkeypatch.setattr(steps_lib, 'build', no_build)
  for name, value in [('train.learning_rate', -1.0), ('train.batch_size', 0),
                      ('eval.val_size', 0)]:
    config = hits.get_config('smoke')
    _set(config, name, value)
    wd = tmp_path / name
    with pytest.raises(utils.UserError, match=name):
      loop.train_and_evaluate(config, str(wd), progress=False)
    assert not wd.exists()  # nothing written either


def _run(args):
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  return subprocess.run([sys.executable, '-m'] + args, cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=300)


def test_cli_unknown_field_missing_file_and_bad_value_are_one_line_exit_2(tmp_path):
  wd = tmp_path / 'w'
  cases = [
      (['--config', 'configs/hits.py:smoke', '--config.train.nope=1'], 'train.nope'),
      (['--config', 'configs/nope.py:smoke'], 'configs/nope.py'),
      (['--config', 'configs/hits.py:smoke', '--config.train.learning_rate=-1'],
       'train.learning_rate'),
      (['--config', 'configs/hits.py:bogus'], "unknown variant 'bogus'"),
  ]
  for args, needle in cases:
    r = _run(['rcnn_jax.train', '--workdir', str(wd)] + args)
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2, (args, r.stderr[-1500:])
    assert len(err) == 1 and err[0].startswith('error: ') and needle in err[0], (args, err)
  assert not wd.exists()
  # evaluate on a missing workdir: one line, and the folder is not created.
  r = _run(['rcnn_jax.evaluate', '--workdir', str(wd)])
  assert r.returncode == 2 and r.stderr.strip().splitlines() == [f'error: {wd}: no such workdir']
  assert not wd.exists()
