"""The config files: every variant loads (by import and by path) and passes the validator, the
paper's numbers stay pinned, and no config reaches into another config module's private names.
Fast: no JAX computation, nothing compiled."""

import ast
import importlib
import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = ROOT / 'configs'
SURVEY_FILES = ('hits', 'hits_lc', 'lsst', 'ztf')
VARIANTS = ('paper', 'cpu', 'long', 'smoke')
ARGS = [None] + [v + lc for v in VARIANTS for lc in ('', ',lc')]


def _module(name):
  return importlib.import_module(f'configs.{name}')


def _config_modules():
  return sorted(p for p in CONFIGS.rglob('*.py') if '__pycache__' not in p.parts)


def _private_references(source, filename='<config>'):
  """``(line, text)`` of every use of a ``_``-prefixed (not dunder) name of a configs module."""
  tree = ast.parse(source, filename)
  aliases = set()  # local names bound to configs modules (or to names imported from them)
  found = []
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and (node.module or '').split('.')[0] == 'configs':
      for a in node.names:
        if a.name.startswith('_') and not a.name.startswith('__'):
          found.append((node.lineno, f'from {node.module} import {a.name}'))
        aliases.add(a.asname or a.name)
    elif isinstance(node, ast.Import):
      for a in node.names:
        if a.name.split('.')[0] == 'configs':
          aliases.add(a.asname or a.name.split('.')[0])
  for node in ast.walk(tree):
    if isinstance(node, ast.Attribute):
      base = node.value
      while isinstance(base, ast.Attribute):
        base = base.value
      private = node.attr.startswith('_') and not node.attr.startswith('__')
      if private and isinstance(base, ast.Name) and base.id in aliases:
        found.append((node.lineno, ast.unparse(node)))
    elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
          and node.func.id == 'getattr' and len(node.args) >= 2
          and isinstance(node.args[0], ast.Name) and node.args[0].id in aliases
          and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)
          and node.args[1].value.startswith('_')):
      found.append((node.lineno, ast.unparse(node)))
  return found


def test_the_private_name_check_finds_what_it_should():
  bad = ('from configs import lsst\nfrom configs.common import _x\nimport configs.ztf as z\n'
         'lsst._survey()\nz._band_conditions.y\ngetattr(lsst, "_adapt_sim")\n')
  assert sorted(line for line, _ in _private_references(bad)) == [2, 4, 5, 6]
  assert _private_references('from configs import lsst\nlsst.get_config(lsst.__doc__)\n') == []


@pytest.mark.parametrize('path', _config_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_config_uses_private_names_of_another(path):
  source = path.read_text()
  assert _private_references(source, str(path)) == []
  assert 'protected-access' not in source


@pytest.mark.parametrize('name', SURVEY_FILES)
@pytest.mark.parametrize('arg', ARGS)
def test_every_variant_loads(name, arg):
  config = _module(name).get_config(arg)
  parts = (arg or 'paper').split(',')
  assert config.variant == parts[0]
  assert config.model.kind == ('lc' if 'lc' in parts or name == 'hits_lc' else 'rcnn')
  assert tuple(config.sim.class_names) == _module('hits').CLASS_NAMES
  assert not config.is_locked  # config_flags locks it (lock_config=True), not the file


@pytest.mark.parametrize('name', SURVEY_FILES)
def test_loaded_by_path_as_config_flags_does(name):
  """``--config configs/NAME.py:ARG`` loads the file as a module of its own, by path."""
  spec = importlib.util.spec_from_file_location(f'_by_path_{name}', CONFIGS / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  for arg in ARGS:
    assert module.get_config(arg).to_dict() == _module(name).get_config(arg).to_dict()


def test_loaded_by_path_from_another_folder(tmp_path):
  """By absolute path from outside the repository, with nothing on PYTHONPATH."""
  code = ('import importlib.util, sys\n'
          'for name, arg in (("hits", "cpu"), ("hits_lc", "smoke"), ("lsst", "long,lc"), '
          '("ztf", None)):\n'
          '  s = importlib.util.spec_from_file_location("config", sys.argv[1] + f"/{name}.py")\n'
          '  m = importlib.util.module_from_spec(s)\n'
          '  s.loader.exec_module(m)\n'
          '  c = m.get_config(arg)\n'
          '  print(name, c.variant, c.model.kind, c.survey.name)\n')
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  r = subprocess.run([sys.executable, '-c', code, str(CONFIGS)], cwd=tmp_path, env=env,
                     capture_output=True, text=True, timeout=120)
  assert r.returncode == 0, r.stderr[-3000:]
  assert r.stdout.split('\n')[:4] == ['hits cpu rcnn hits2015', 'hits_lc smoke lc hits2015',
                                      'lsst long lc lsst_wfd', 'ztf paper rcnn ztf_msip']


@pytest.mark.parametrize('name', SURVEY_FILES)
@pytest.mark.parametrize('arg', ['bogus', 'cpu,bogus', 'CPU'])
def test_an_unknown_variant_is_refused(name, arg):
  with pytest.raises(ValueError, match=f"unknown variant '{arg.split(',')[-1]}'"):
    _module(name).get_config(arg)


@pytest.mark.parametrize('name', SURVEY_FILES)
def test_the_paper_values(name):
  """What Carrasco-Davis et al. (2018) state, for every survey's default (paper) variant."""
  c = _module(name).get_config('paper')
  assert c.sim.stamp_size == 21  # "a movie of 21x21 pixels" (Sec. 2)
  assert c.sim.n_w == 3  # images stacked per step (Sec. 3.1)
  assert c.sim.pre_detection == 5  # the five images before the alert (Sec. 3.1)
  assert c.real.detection_sigma == 5.0  # first detection at 5 sigma (Sec. 4)
  assert len(c.sim.class_names) == 7  # Table 2
  assert (c.sim.host_fraction_supernova, c.sim.host_fraction_other) == (0.5, 0.05)  # Sec. 2.4
  m = c.model  # Table 3 and Fig. 4
  assert (m.filters, m.convs_per_block, m.num_blocks, m.dense, m.lstm_size) == (
      64, 3, 2, 1024, 512)
  assert m.kind == ('lc' if name == 'hits_lc' else 'rcnn')
  t = c.train  # Sec. 3.4: Adam, batch 256, 30,000 iterations
  assert (t.batch_size, t.num_steps, t.schedule) == (256, 30_000, 'constant')
  assert tuple(c.dataset.full_size) == (686_000, 85_750, 85_750)  # train / validation / test
  assert c.eval.test_size == 85_750


# The variants' numbers that the docs and the measured results quote (configs/variants/*.py,
# docs/results.md): (train batch, steps, schedule, warm-up, eval val / test sizes).
DOCUMENTED = {
    'cpu': (32, 1_000, 'warmup_cosine', 50, 700, 2_100),
    'long': (32, 6_000, 'warmup_cosine', 200, 1_400, 7_000),
    'smoke': (14, 2, 'constant', 0, 28, 28),
}


@pytest.mark.parametrize('name', SURVEY_FILES)
@pytest.mark.parametrize('variant', sorted(DOCUMENTED))
def test_the_documented_variant_values(name, variant):
  c = _module(name).get_config(variant)
  t = c.train
  assert (t.batch_size, t.num_steps, t.schedule, t.warmup_steps, c.eval.val_size,
          c.eval.test_size) == DOCUMENTED[variant]
  if variant == 'smoke':
    assert c.dataset.test_size == c.eval.test_size  # the same objects as evaluate's test set


def test_the_surveys():
  from configs import hits  # pylint: disable=g-import-not-at-top
  from configs import lsst  # pylint: disable=g-import-not-at-top
  from configs import ztf  # pylint: disable=g-import-not-at-top
  h, l, z = (m.get_config('paper') for m in (hits, lsst, ztf))
  assert (h.survey.name, h.survey.band, h.survey.pixel_scale_arcsec) == ('hits2015', 'g', 0.263)
  assert 'bands' not in h.survey and 'colours' not in h.sim
  assert tuple(l.survey.bands) == lsst.LSST_BANDS == ('u', 'g', 'r', 'i', 'z', 'y')
  assert tuple(z.survey.bands) == ztf.ZTF_BANDS == ('g', 'r')
  assert sorted(l.survey.band_conditions) == sorted(lsst.LSST_BANDS)
  assert sorted(z.sim.colours.host) == ['g', 'r']
  # The HiTS-calibrated PSF relation is HiTS's only.
  assert (h.sim.psf.seeing_scale, l.sim.psf.seeing_scale, z.sim.psf.seeing_scale) == (
      0.92, 1.0, 1.0)


def _config_check():
  try:
    from rcnn_jax import config_check  # pylint: disable=g-import-not-at-top
  except ImportError:
    from rcnn_jax.training import config_check  # pylint: disable=g-import-not-at-top
  return config_check


@pytest.mark.parametrize('name', SURVEY_FILES)
def test_the_validator_accepts_every_variant(name):
  config_check = _config_check()
  for arg in ARGS:
    config_check.validate(_module(name).get_config(arg), num_devices=1)
