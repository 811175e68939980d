"""Rubin Observatory LSST (ugrizy, Wide-Fast-Deep-like cadence): the HiTS pipeline on LSST.

    python -m rcnn_jax.simulate --config configs/lsst.py:smoke --num 28 --out /tmp/lsst.npz
    python -m rcnn_jax.train --config configs/lsst.py:cpu --workdir /tmp/lsst_cpu

The ``cpu`` variant cut to 300 steps at a constant rate (the overrides of
experiments/surveys/README.md and ``configs/variants/cpu.py``): ~12 min on the 2-core AMD EPYC
(shared), simulated test accuracy at step 20 0.45 against chance 0.14.

Variants as in ``configs/hits.py`` (``configs/variants/``): ``paper`` (Sec. 3.4's schedule),
``cpu``, ``smoke`` (and ``long``, not run on LSST); append ``,lc`` for the light-curve
classifier. Architecture, training and the simulator's class models are HiTS's
(``configs/common/``); the survey, the PSF, the colours and the magnitude ranges are LSST's.

Sources (numbers in the config below; ``~`` marks approximations):
* Camera and visits: Ivezic et al. (2019, ApJ 873, 111; "LSST: from science drivers to
  reference design"), Sec. 3 and Table 2: 0.2"/px, a visit is 2 x 15 s (30 s here, one
  exposure), read noise <= 9 e- (requirement; 5-9 e- here ~), single-visit 5-sigma depths
  u 23.9, g 25.0, r 24.7, i 24.0, z 23.3, y 22.1, dark-sky brightness u 22.99, g 22.26,
  r 21.20, i 20.48, z 19.60, y 18.61 mag/arcsec^2, and the median delivered seeing (FWHM)
  ~ 0.8" (Table 2's per-band FWHM_eff ~0.92 u to ~0.76 y ~).
* Zero points (1 e-/s, AB): Rubin technical note SMTN-002 (Jones et al., "Calculating LSST
  limiting magnitudes and SNR"): u 26.52, g 28.51, r 28.36, i 28.17, z 27.78, y 26.82 ~,
  converted to ADU with a gain of 1.6 e-/ADU ~ (zp_ADU = zp_e - 2.5 log10 gain). Saturation:
  a full well of ~100 ke- and a 16-bit ADC ~ (55,000-65,000 ADU).
* Cadence (Ivezic et al. 2019 Sec. 3.1 and Table 1; the baseline WFD strategy): pairs of
  visits 15-60 min apart in a night, a field revisited every ~3-4 nights in its season,
  ~825 visits in 10 years over the six bands u 56, g 80, r 184, i 184, z 160, y 160 (the band
  weights here); the pairs' bands are the same or different (same_band_pair 0.3 ~). A season
  of 180 days ~, 20 % of nights lost to weather ~.
* Bandpasses: speclite's ``lsst2016-*`` (shipped offline).
* Stamp: 21 px x 0.2" = 4.2" on a side, ~5 FWHM at the 0.83" median: the same ratio of stamp
  to PSF as HiTS's 21 px x 0.263" = 5.5" at 1.3" (4.2 FWHM), so the same architecture sees the
  same PSF sampling relative to the stamp (a 41 px stamp, 8.2", would hold more of a host
  galaxy for 3.8x the encoder cost). Moffat beta 3 ~; seeing = FWHM (no HiTS calibration).
* Colours (``configs.common.surveys.colours``): see its docstring (mean colours and amplitude
  ratios, ~).
"""

import pathlib
import sys

import ml_collections

try:
  from configs import common
except ModuleNotFoundError as e:  # loaded by path (--config /path/to/configs/lsst.py) elsewhere
  if e.name != 'configs':
    raise
  sys.path.append(str(pathlib.Path(__file__).resolve().parents[1]))
  from configs import common

LSST_BANDS = common.UGRIZY


def survey_block():
  """``config.survey``: the LSST Wide-Fast-Deep survey in ugrizy (sources above)."""
  s = ml_collections.ConfigDict()
  s.name = 'lsst_wfd'
  s.band = 'g'  # the reference band (single-band readers); the survey's bands are below
  s.bands = LSST_BANDS
  s.filters = {b: f'lsst2016-{b}' for b in LSST_BANDS}
  s.conditions_path = ''
  s.camera_path = ''
  s.max_seeing_arcsec = 1.6  # ~2x the median, as HiTS's 2" cut at its 1.3" median ~
  s.pixel_scale_arcsec = 0.2
  s.model_seed = 2025
  s.num_fields = 49
  s.num_ccds = 189  # science CCDs of the LSST camera (Ivezic et al. 2019, Sec. 3.3)
  s.exp_time_s = 30.0
  s.mjd_start = 60800.0
  s.airmass_range = (1.0, 1.5)
  s.gain_range = (1.5, 1.7)  # ~
  s.read_noise_range_e = (5.0, 9.0)
  s.read_noise_median_e = 7.0  # ~
  s.saturation_range_adu = (55000.0, 65000.0)
  gain = 1.6
  s.band_conditions = common.band_conditions(
      LSST_BANDS,
      seeing=dict(zip(LSST_BANDS, (0.92, 0.87, 0.83, 0.80, 0.78, 0.76))),
      sky_dark=dict(zip(LSST_BANDS, (22.99, 22.26, 21.20, 20.48, 19.60, 18.61))),
      zp_e=dict(zip(LSST_BANDS, (26.52, 28.51, 28.36, 28.17, 27.78, 26.82))),
      gain=gain, sky_spread=(-1.2, -0.3, 0.05), zp_spread=(-0.15, 0.03),
      seeing_spread=(0.75, 1.6))
  s.cadence = common.cadence(
      season_days=180.0,
      night_gap_days=(2.0, 3.0, 3.0, 4.0, 5.0),  # ~3.4 nights between revisits
      weather_loss=0.2,
      visits_per_night=2,
      visit_gap_hours=0.55,  # ~33 min between a pair's visits
      night_start_range_days=(0.05, 0.3),
      band_pattern='weighted',
      band_weights=dict(zip(LSST_BANDS, (56.0, 80.0, 184.0, 184.0, 160.0, 160.0))),
      same_band_pair=0.3,
      night_bands=())
  return s


def get_config(arg=None):
  """``arg`` as in configs/hits.py: 'paper' (default), 'cpu' or 'smoke', plus ',lc'."""
  config = common.build(arg, survey_block())
  sim = common.adapt_sim(config.sim, LSST_BANDS)
  sim.calibration.night_boundary_mjd_frac = 0.70  # local noon at Cerro Pachon (70.7 W): 16.7 h UT
  # Magnitude ranges: saturation at r ~ 16 in a 15-s snap (Ivezic et al. 2019, Sec. 3.2) to the
  # ~24.5 single-visit depth; SN Ia reach 24.5 at z ~ 0.9, SN II (M ~ -16.8) at z ~ 0.5.
  sim.lightcurves.bright_range = (16.5, 22.0)
  sim.lightcurves.m_cutoff = 24.8
  sim.lightcurves.m_cutoff_rrlyrae = 24.8
  sim.lightcurves.z_max = 1.1
  sim.lightcurves.z_max_ii = 0.55
  sim.galaxy.mag_range = (17.0, 25.0)
  return config
