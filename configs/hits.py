"""HiTS 2015 (DECam g band, Forster et al. 2016): the paper's survey, and its variants.

    python -m rcnn_jax.train --config configs/hits.py:ARG --workdir DIR

ARG (``configs/variants/``, each file with its commands and measured results):

* ``paper`` (default): Sec. 3.4 of the paper, batch 256, 30,000 steps, the RCNN of Table 3;
  for a GPU (about 6 h on a GTX 1080 Ti in the paper).
* ``cpu``: the same simulator and architecture, 1,000 steps of 32 on a 2-core CPU (the
  README's main job, ``scripts/run_cpu.sh``): simulated test accuracy at step 20 0.763 for the
  RCNN, 0.582 for the light-curve classifier (chance 0.143).
* ``long``: 6,000 steps of 32 with warm-up and cosine decay, about 2 h on a 2-core CPU; the
  shipped model (``pretrained/hits2015_rcnn``, test accuracy 0.895) comes from it.
* ``smoke``: a tiny network and two steps, for tests.

Append ``,lc`` (e.g. ``configs/hits.py:cpu,lc``) for the light-curve classifier of Sec. 3.3;
``configs/hits_lc.py`` is the same with the light-curve classifier as the default.

This file holds the survey (``config.survey``): the built-in HiTS 2015 g-band model of the
observing conditions, or tables in the format of ``shared/data/hits2015/*.csv``. The simulator
priors, model, training defaults and variants every survey shares are in ``configs/common/``
and ``configs/variants/``.
"""

import pathlib
import sys

import ml_collections

try:
  from configs import common
except ModuleNotFoundError as e:  # loaded by path (--config /path/to/configs/hits.py) elsewhere
  if e.name != 'configs':
    raise
  sys.path.append(str(pathlib.Path(__file__).resolve().parents[1]))
  from configs import common

VARIANTS = common.VARIANTS
CLASS_NAMES = common.CLASS_NAMES


def survey_block():
  """``config.survey``: HiTS 2015 in the g band (DECam: 60 CCDs, 49 fields, 11 nights)."""
  s = ml_collections.ConfigDict()
  s.name = 'hits2015'
  s.band = 'g'
  # Empirical mode: paths to tables in the column format of shared/data/hits2015/*.csv.
  # Empty strings select the built-in HiTS 2015 g-band model, which needs no files.
  s.conditions_path = ''
  s.camera_path = ''
  s.max_seeing_arcsec = 2.0
  s.pixel_scale_arcsec = 0.263
  # Built-in model (used when conditions_path is empty): drawn once, on the host, from this seed.
  s.model_seed = 2015
  s.num_fields = 49
  s.num_ccds = 60
  s.exp_time_s = 86.0
  s.mjd_start = 57070.0
  # Nights (days after mjd_start) and the number of g epochs per night (drawn in [lo, hi]).
  s.nights = (0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 7.0, 8.0, 10.0, 20.0, 25.0)
  s.epochs_per_night = ((3, 4), (4, 6), (4, 7), (0, 2), (1, 3), (4, 6), (1, 2), (0, 1), (1, 2),
                        (0, 1), (0, 1))
  s.epoch_spacing_hours = 1.6
  s.moon_sky_adu = ((10.0, 560.0), (20.0, 1750.0))  # (night, sky ADU) on moonlit nights
  # Quantiles (5, 50, 95 %) that the built-in model reproduces.
  s.seeing_quantiles_arcsec = (1.06, 1.34, 2.70)
  s.sky_quantiles_adu = (105.0, 120.0, 140.0)  # dark nights; moonlit nights come from moon_sky_adu
  s.zero_point_quantiles = (24.91, 25.05, 25.11)
  s.airmass_range = (1.11, 1.83)
  s.gain_range = (3.74, 4.44)
  s.read_noise_range_e = (5.5, 12.7)
  s.read_noise_median_e = 5.97
  s.saturation_range_adu = (33874.0, 51319.0)
  return s


def get_config(arg=None):
  """Returns the configuration; ``arg`` is 'paper' (default), 'cpu', 'long' or 'smoke', plus
  ',lc'."""
  return common.build(arg, survey_block())
