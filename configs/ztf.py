"""Zwicky Transient Facility (g and r, a 3-night public-survey cadence): the HiTS pipeline on ZTF.

    python -m rcnn_jax.simulate --config configs/ztf.py:smoke --num 28 --out /tmp/ztf.npz
    python -m rcnn_jax.train --config configs/ztf.py:cpu --workdir /tmp/ztf_cpu

The ``cpu`` variant cut to 300 steps at a constant rate (the overrides of
experiments/surveys/README.md and ``configs/variants/cpu.py``): ~12 min on the 2-core AMD EPYC
(shared), simulated test accuracy at step 20 0.51 against chance 0.14.

Variants as in ``configs/hits.py`` (``configs/variants/``): ``paper``, ``cpu``, ``smoke``,
``long`` (run for 5,000 steps: the shipped ``pretrained/ztf_rcnn``, 0.850 on its 7,000 simulated
test objects; experiments/alerts/README.md); append ``,lc`` for the light-curve classifier.
Architecture, training and class models are HiTS's (``configs/common/``); survey, PSF, colours
(the ugrizy tables of ``configs.common.surveys.colours``, g and r) and magnitude ranges are
ZTF's.

Sources (``~`` marks approximations):
* Camera: Dekany et al. (2020, PASP 132, 038001): 16 CCDs of 4 read-out quadrants (64
  amplifiers: num_ccds), 1.01"/px, gain ~6.2 e-/ADU (5.8-6.6 here ~), read noise ~8-10 e- ~,
  saturation ~ 45,000-60,000 ADU ~ (16-bit).
* Exposures and image quality: Bellm et al. (2019a, PASP 131, 018002): 30-s exposures, median
  delivered FWHM ~2.0" in r and ~2.1" in g, median 5-sigma depths 20.8 (g) and 20.6 (r).
* Zero points: Masci et al. (2019, PASP 131, 018003): photometric zero points MAGZP ~26.3 (g),
  ~26.2 (r) for counts in a 30-s image ~, i.e. 22.6 and 22.5 for 1 ADU/s (eq. 1: minus
  2.5 log10 30). Sky: its median (mag / arcsec^2, with moonlight) is set so that the built-in
  model's median 5-sigma depth is Bellm et al.'s 20.8 / 20.6 (tests/test_bands.py checks it):
  an effective sky, ~1 mag brighter than a dark Palomar sky (~21.5 / 21.0 ~): with that sky
  these zero points and the aperture noise model would give ~0.5 mag deeper limits (~).
* Cadence: Bellm et al. (2019b, PASP 131, 068003, the ZTF scheduler): the public (MSIP)
  survey visits its fields every 3 nights in g and in r, the two visits of a night >= 30 min
  apart (45 min here); 25 % of nights lost to weather ~; a 180-day season ~.
* Bandpasses: speclite ships no ZTF curves. ZTF photometry is calibrated against Pan-STARRS1
  (Masci et al. 2019, Sec. 5, with colour terms of a few 0.01 mag per mag of g - r), and the
  ZTF g and r passbands (~410-550 and ~560-730 nm) are close to PS1's g and r: the SN Ia
  template goes through speclite's ``panstarrs-g`` / ``panstarrs-r`` as an approximation (~).
* Stamp: 21 px = 21.2" (~10 FWHM at 2"; ZTF's alert cutouts are 63 px): the HiTS architecture
  unchanged; a 9 px stamp (HiTS's 4 FWHM) would undersample everything beyond the core.
"""

import pathlib
import sys

import ml_collections

try:
  from configs import common
except ModuleNotFoundError as e:  # loaded by path (--config /path/to/configs/ztf.py) elsewhere
  if e.name != 'configs':
    raise
  sys.path.append(str(pathlib.Path(__file__).resolve().parents[1]))
  from configs import common

ZTF_BANDS = ('g', 'r')


def survey_block():
  """``config.survey``: the ZTF public (MSIP) survey in g and r (sources above)."""
  s = ml_collections.ConfigDict()
  s.name = 'ztf_msip'
  s.band = 'g'
  s.bands = ZTF_BANDS
  s.filters = {'g': 'panstarrs-g', 'r': 'panstarrs-r'}
  s.conditions_path = ''
  s.camera_path = ''
  s.max_seeing_arcsec = 4.0  # ~2x the median, as HiTS's 2" cut at its 1.3" median ~
  s.pixel_scale_arcsec = 1.01
  s.model_seed = 2018
  s.num_fields = 49
  s.num_ccds = 64
  s.exp_time_s = 30.0
  s.mjd_start = 58300.0
  s.airmass_range = (1.0, 1.8)
  s.gain_range = (5.8, 6.6)
  s.read_noise_range_e = (8.0, 10.0)
  s.read_noise_median_e = 9.0
  s.saturation_range_adu = (45000.0, 60000.0)
  s.band_conditions = common.band_conditions(
      ZTF_BANDS, seeing={'g': 2.1, 'r': 2.0}, sky_dark={'g': 20.5, 'r': 20.1},
      zp_e={'g': 26.3 - 3.693, 'r': 26.2 - 3.693}, gain=1.0,
      sky_spread=(-1.3, -0.35, 0.1), zp_spread=(-0.2, 0.05), seeing_spread=(0.75, 1.55))
  s.cadence = common.cadence(
      season_days=180.0,
      night_gap_days=(3.0,),
      weather_loss=0.25,
      visits_per_night=2,
      visit_gap_hours=0.75,
      night_start_range_days=(0.05, 0.25),
      band_pattern='sequence',
      band_weights={'g': 1.0, 'r': 1.0},
      same_band_pair=0.0,
      night_bands=('g', 'r'))
  return s


def get_config(arg=None):
  """``arg`` as in configs/hits.py: 'paper' (default), 'cpu' or 'smoke', plus ',lc'."""
  config = common.build(arg, survey_block())
  sim = common.adapt_sim(config.sim, ZTF_BANDS)
  sim.calibration.night_boundary_mjd_frac = 0.82  # local noon at Palomar (116.9 W): 19.8 h UT
  # Magnitude ranges: saturation near 12.5-13 (Masci et al. 2019) to the ~20.7 depth; SN Ia
  # (M_B -19.3) reach 20.7 at z ~ 0.1, SN II (M ~ -16.8 +- 1) at z ~ 0.03-0.06.
  sim.lightcurves.bright_range = (13.0, 19.0)
  sim.lightcurves.m_cutoff = 20.8
  sim.lightcurves.m_cutoff_rrlyrae = 20.8
  sim.lightcurves.mag_range = (11.0, 24.0)
  sim.lightcurves.z_max = 0.25
  sim.lightcurves.z_max_ii = 0.08
  sim.galaxy.mag_range = (14.0, 20.5)
  return config
