"""Every config value checked in one place, before anything is built or compiled.

``validate(config, num_devices)`` raises ``utils.UserError`` with one line naming the first
bad field, its value and what it must be. It knows the fields of ``configs/hits.py`` (all
variants, and ``configs/hits_lc.py``); fields it does not know pass in the sections other
modules grow (``sim``, ``survey``, ``eval``), and are refused in ``train``, ``ckpt`` and
``model``, whose every field it knows (a typo there would otherwise be silently ignored).
Fields a config lacks are skipped (older workdirs' configs), except the ones training needs.
"""

from __future__ import annotations

import math
import numbers
import os

from rcnn_jax import models
from rcnn_jax.core import utils
from rcnn_jax.sim import cadence
from rcnn_jax.sim import simulator

PSF_KINDS = ('moffat', 'gaussian', 'bank')
DETECTION_METHODS = ('difference', 'photometry')  # preprocess.detection_start
SCHEDULES = ('constant', 'warmup_cosine')

# The fields of config.train and config.ckpt (read by training/loop.py and checkpoints.py);
# config.model's are the registered models' own (``models.config_fields``).
_KNOWN = {
    'train': {'batch_size', 'num_steps', 'learning_rate', 'log_every', 'eval_every',
              'distributed', 'schedule', 'warmup_steps', 'final_lr_fraction'},
    'ckpt': {'max_to_keep', 'every'},
    'model': {'kind'} | {f for kind in models.MODELS for f in models.config_fields(kind)},
}
_REQUIRED = ('seed', 'train.batch_size', 'train.num_steps', 'train.learning_rate',
             'train.log_every', 'train.eval_every', 'eval.val_size', 'eval.batch_size',
             'ckpt.every', 'ckpt.max_to_keep', 'model.kind', 'sim.n_w', 'sim.max_steps')


def _bad(name, value, must):
  raise utils.UserError(f'config.{name}={value!r} is invalid: must be {must}')


class _Checker:

  def __init__(self, config):
    self.config = config

  def get(self, name):
    node = self.config
    for part in name.split('.'):
      if not hasattr(node, 'keys') or part not in node:
        return _MISSING
      node = node[part]
    return node

  def int(self, name, lo=None, hi=None, must=None):
    v = self.get(name)
    if v is _MISSING:
      return v
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
      _bad(name, v, must or 'an integer')
    if (lo is not None and v < lo) or (hi is not None and v > hi):
      _bad(name, v, must or _range(lo, hi))
    return int(v)

  def float(self, name, lo=None, hi=None, lo_open=False, hi_open=False, must=None):
    v = self.get(name)
    if v is _MISSING:
      return v
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
      _bad(name, v, must or 'a finite number')
    if lo is not None and (v < lo or (lo_open and v == lo)):
      _bad(name, v, must or _range(lo, hi, lo_open, hi_open))
    if hi is not None and (v > hi or (hi_open and v == hi)):
      _bad(name, v, must or _range(lo, hi, lo_open, hi_open))
    return float(v)

  def bool(self, name):
    v = self.get(name)
    if v is not _MISSING and not isinstance(v, bool):
      _bad(name, v, 'True or False')
    return v

  def choice(self, name, options):
    v = self.get(name)
    if v is not _MISSING and v not in options:
      _bad(name, v, 'one of ' + ', '.join(repr(o) for o in options))
    return v

  def pair(self, name, lo=None, increasing=True):
    v = self.get(name)
    if v is _MISSING:
      return v
    ok = (isinstance(v, (tuple, list)) and len(v) == 2 and
          all(isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)
              for x in v))
    if ok and lo is not None:
      ok = min(v) >= lo
    if ok and increasing:
      ok = v[0] <= v[1]
    if not ok:
      _bad(name, v, 'a pair (low, high) of finite numbers with low <= high'
           + (f' and both >= {lo}' if lo is not None else ''))
    return v

  def path(self, name, required=False):
    v = self.get(name)
    if v is _MISSING:
      return v
    if not isinstance(v, str):
      _bad(name, v, 'a path (string)')
    if (v or required) and not os.path.exists(v):
      raise utils.UserError(f'config.{name}={v!r}: no such file')
    return v


_MISSING = object()


def _range(lo, hi, lo_open=False, hi_open=False):
  if hi is None:
    return f'> {lo}' if lo_open else f'>= {lo}'
  if lo is None:
    return f'< {hi}' if hi_open else f'<= {hi}'
  return f'in {"(" if lo_open else "["}{lo}, {hi}{")" if hi_open else "]"}'


def validate(config, num_devices: int | None = None, strict: bool = True):
  """Raises UserError (one line) at the first bad value; ``strict`` refuses unknown fields
  in train/ckpt/model and missing required ones (training; evaluation of older workdirs
  passes ``strict=False``)."""
  c = _Checker(config)
  if strict:
    for name in _REQUIRED:
      if c.get(name) is _MISSING:
        raise utils.UserError(f'config.{name} is missing')
    for section, known in _KNOWN.items():
      node = c.get(section)
      if node is _MISSING:
        continue
      unknown = sorted(set(node.keys()) - known)
      if unknown:
        raise utils.UserError(f'config.{section}.{unknown[0]}: unknown field (known: '
                              f'{", ".join(sorted(known))})')

  c.int('seed', must='an integer')
  # train
  c.int('train.batch_size', 1)
  c.int('train.num_steps', 1)
  c.float('train.learning_rate', 0.0, lo_open=True)
  c.int('train.log_every', 1)
  c.int('train.eval_every', 1)
  c.bool('train.distributed')
  schedule = c.get('train.schedule')
  if schedule is not _MISSING and schedule not in SCHEDULES:
    _bad('train.schedule', schedule, 'one of ' + ', '.join(SCHEDULES))
  if schedule == 'warmup_cosine':
    for name in ('train.warmup_steps', 'train.final_lr_fraction'):
      if c.get(name) is _MISSING:
        raise utils.UserError(f'config.{name} is missing (needed by schedule warmup_cosine)')
    c.int('train.warmup_steps', 0, c.get('train.num_steps') - 1)
    c.float('train.final_lr_fraction', 0.0, 1.0)
  # eval
  c.int('eval.val_size', 1)
  c.int('eval.test_size', 1)
  c.int('eval.batch_size', 1)
  c.int('eval.val_seed_offset')
  c.int('eval.test_seed_offset')
  if c.get('eval.test_seed_offset') == c.get('eval.val_seed_offset'):
    _bad('eval.test_seed_offset', c.get('eval.test_seed_offset'),
         'not eval.val_seed_offset (the test set would be the validation set)')
  # real (preprocess.Rules)
  c.int('real.baseline_epochs', 1)
  c.float('real.detection_sigma', 0.0, lo_open=True)
  c.choice('real.detection_method', DETECTION_METHODS)
  c.bool('real.drop_unknown_seeing')
  bins = c.get('eval.magnitude_bins')
  if bins is not _MISSING:
    try:
      ok = len(bins) >= 2 and all(math.isfinite(float(b)) for b in bins) and all(
          float(a) < float(b) for a, b in zip(bins[:-1], bins[1:]))
    except (TypeError, ValueError):
      ok = False
    if not ok:
      _bad('eval.magnitude_bins', bins, 'at least two increasing finite magnitudes')
  # ckpt
  c.int('ckpt.every', 1)
  c.int('ckpt.max_to_keep', 1)
  if num_devices:
    for name in ('train.batch_size', 'eval.batch_size'):
      v = c.get(name)
      if v is not _MISSING and v % num_devices:
        raise utils.UserError(f'config.{name}={v} is not divisible by the {num_devices} devices')

  # model
  c.choice('model.kind', tuple(models.MODELS))
  for name in ('filters', 'convs_per_block', 'num_blocks', 'dense', 'lstm_size'):
    c.int(f'model.{name}', 1)
  c.float('model.dropout', 0.0, 1.0, hi_open=True)
  c.float('model.bn_momentum', 0.0, 1.0, hi_open=True)
  c.float('model.input_asinh_scale', 0.0)
  c.choice('model.conv_impl', ('auto',) + models.CONV_IMPLS)
  c.int('model.encoder_chunk', -1, must='-1 (auto), 0 (off) or a positive integer')
  c.choice('model.dtype', tuple(models.DTYPES))

  # sim (fields known today; new ones pass)
  names = c.get('sim.class_names')
  if names is not _MISSING:
    if (not isinstance(names, (tuple, list)) or not names or
        not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names)):
      _bad('sim.class_names', names, 'distinct non-empty class names')
    for required in ('Supernova', 'Galaxy', 'Asteroid'):
      if required not in names:
        _bad('sim.class_names', names, f'a list that includes {required!r}')
    trans = c.get('sim.transient_classes')
    if trans is not _MISSING:
      unknown = [t for t in trans if t not in names]
      if unknown:
        _bad('sim.transient_classes', trans, f'classes of sim.class_names ({unknown[0]!r} is not)')
  c.int('sim.stamp_size', 3)
  c.int('sim.n_w', 1)
  c.int('sim.max_steps', 1)
  c.int('sim.pre_detection', 0)
  c.bool('sim.clip_early_start')
  c.int('sim.supernova_min_detections', 1)  # absent (saved before 2026-12-07): 1
  for name in ('seeing_log_sigma', 'sky_log_sigma', 'zero_point_sigma_mag',
               'zero_point_object_sigma_mag'):
    c.float(f'sim.randomise_conditions.{name}', 0.0)
  c.float('sim.randomise_conditions.calibration_max_factor', 1.0)
  c.choice('sim.detection', simulator.SIM_DETECTIONS)
  c.float('sim.host_fraction_supernova', 0.0, 1.0)
  c.float('sim.host_fraction_other', 0.0, 1.0)
  c.int('sim.max_redraws', 1)
  c.int('sim.redraw_batch', 1)
  c.bool('sim.poisson')
  kind = c.choice('sim.psf.kind', PSF_KINDS)
  c.float('sim.psf.moffat_beta', 1.0, lo_open=True)
  c.float('sim.psf.seeing_scale', 0.0, lo_open=True)
  c.float('sim.psf.seeing_offset_arcsec')
  if kind == 'bank':
    c.path('sim.psf.bank_path', required=True)
  c.pair('sim.galaxy.mag_range')
  c.pair('sim.galaxy.r_disk_clip_arcsec', lo=0.0)
  c.pair('sim.galaxy.q_disk_range', lo=0.0)
  c.pair('sim.galaxy.q_bulge_range', lo=0.0)
  c.float('sim.galaxy.r_disk_arcsec_at_19', 0.0, lo_open=True)
  c.float('sim.galaxy.r_disk_scatter_dex', 0.0)
  c.float('sim.galaxy.bulge_to_disk_radius', 0.0, lo_open=True)
  c.pair('sim.galaxy.bulge_frac_beta', lo=0.0, increasing=False)
  c.pair('sim.lightcurves.mag_range')
  c.float('sim.lightcurves.ia_fraction', 0.0, 1.0)
  c.float('sim.lightcurves.ia_absmag_sigma', 0.0)
  c.float('sim.lightcurves.z_max', 0.0, lo_open=True)
  c.float('sim.lightcurves.z_max_ii', 0.0, lo_open=True)
  c.int('sim.lightcurves.num_z', 1)
  c.float('sim.lightcurves.phase_step', 0.0, lo_open=True)
  c.float('sim.lightcurves.rrc_fraction', 0.0, 1.0)
  c.float('sim.lightcurves.contact_fraction', 0.0, 1.0)
  amp = c.pair('sim.lightcurves.contact_amp', lo=0.0)
  flat_to = c.float('sim.lightcurves.contact_amp_flat_to', 0.0)  # absent: uniform (before #31)
  if amp is not _MISSING and flat_to is not _MISSING and not amp[0] <= flat_to < amp[1]:
    _bad('sim.lightcurves.contact_amp_flat_to', flat_to,
         f'in [{amp[0]}, {amp[1]}) (sim.lightcurves.contact_amp)')
  rrab = c.get('sim.lightcurves.rrab_minimum')
  if rrab is not _MISSING and (len(rrab) != 3 or not (rrab[1] > 0 and 0 <= rrab[2] < 1)):
    _bad('sim.lightcurves.rrab_minimum', rrab, '(centre, width > 0, strength in [0, 1))')
  c.float('sim.calibration.sky_rms_adu', 0.0)
  c.float('sim.calibration.sky_rms_fraction', 0.0)

  # survey
  cond, cam = c.path('survey.conditions_path'), c.path('survey.camera_path')
  if cond is not _MISSING and cam is not _MISSING and bool(cond) != bool(cam):
    raise utils.UserError('config.survey: set both conditions_path and camera_path, or neither')
  for name in ('max_seeing_arcsec', 'pixel_scale_arcsec', 'exp_time_s'):
    c.float(f'survey.{name}', 0.0, lo_open=True)
  c.int('survey.num_fields', 1)
  c.int('survey.num_ccds', 1)
  c.int('survey.model_seed')
  nights, epochs = c.get('survey.nights'), c.get('survey.epochs_per_night')
  if nights is not _MISSING and epochs is not _MISSING and len(nights) != len(epochs):
    raise utils.UserError(f'config.survey.nights ({len(nights)}) and '
                          f'config.survey.epochs_per_night ({len(epochs)}) differ in length')
  for name in ('seeing_quantiles_arcsec', 'sky_quantiles_adu', 'zero_point_quantiles'):
    q = c.get(f'survey.{name}')
    if q is not _MISSING and (len(q) != 3 or not q[0] <= q[1] <= q[2]):
      _bad(f'survey.{name}', q, 'three increasing quantiles (5, 50, 95 %)')
  for name in ('airmass_range', 'gain_range', 'read_noise_range_e', 'saturation_range_adu'):
    c.pair(f'survey.{name}', lo=0.0)
  if c.get('survey.cadence') is not _MISSING:  # several bands (configs/ztf.py, lsst.py)
    cadence.check(config.survey)
    for band in cadence.band_names(config.survey):
      for name in ('seeing_quantiles_arcsec', 'sky_mag_quantiles', 'zero_point_quantiles'):
        q = c.get(f'survey.band_conditions.{band}.{name}')
        if q is _MISSING or len(q) != 3 or not q[0] <= q[1] <= q[2]:
          _bad(f'survey.band_conditions.{band}.{name}', None if q is _MISSING else q,
               'three increasing quantiles (5, 50, 95 %)')
  return config
