"""Appendix A: simulated non-variable stars next to real HiTS ones, under the same conditions.

    python -m rcnn_jax.realism --data ../shared/data/hits2015/real_nonvariable_dev \
        --out experiments/realism [--config configs/hits.py] [--camera camera.csv]

For every real sequence the star's magnitude is measured on the real stamps (median over epochs
of an aperture flux, corrected to total flux with the model PSF's aperture fraction, eq. 1), and
a constant star of that magnitude is rendered by the project's renderer at the same epochs: the
file's sky, zero point, exposure time and seeing (the sequence's median seeing where the table
has NaN) turned into a PSF FWHM as the simulator does (config.sim.psf: seeing_scale,
seeing_offset_arcsec, moffat_beta), at the sub-pixel centre fitted on the real stamp, with a
typical HiTS gain, read noise and saturation. Both are then measured the same way:

* background noise: 1.4826 MAD of the outer 3-pixel ring after a clipped cubic fit in the
  distance to the star (sky and wings), against the expected sqrt(sky / gain + (rn / gain)^2);
* FWHM: least-squares fit of a pixel-integrated circular Gaussian to the central 9 x 9 of the
  sky-subtracted stamp (background fixed at 0), for stars with peak > 20 sigma;
* peak-to-flux: brightest central pixel over the aperture flux (8 px radius).

Writes ``realism.png`` (stamps, pixel distribution, noise, FWHM, peak-to-flux) and
``realism.json`` (summary statistics). ``lcstats`` adds, into ``scatter.png`` and
realism.json's ``jitter_calibration`` / ``constant_star_scatter``, the epoch-to-epoch centroid
and flux scatter of these stars against simulated twins without and with the configured
registration and calibration errors (which it measures), and with ``--variables
../shared/data/hits2015/real_labelled_dev`` the light-curve statistics (amplitude, skewness,
faint-epoch fraction) of real and simulated RR Lyrae and eclipsing binaries
(``variable_stats``). Nothing in the comparison is fitted to make the two agree;
the PSF model itself is calibrated on the same stars by

    python -m rcnn_jax.realism --calibrate --data ../shared/data/hits2015/real_nonvariable_dev

which fits a pixel-integrated Moffat (free beta, FWHM, background) to every bright unsaturated
epoch, relates the FWHM to the table seeing (``psf_calibration.calibrate_psf``) and writes
``psf_calibration.json``, whose ``recommended`` values are configs/hits.py's defaults. Only these
development stars may calibrate the simulator; held-out real classes must not.

Modules: the star measurements are ``stars.py``, the aperture sum ``photometry.py``, the PSF
calibration ``psf_calibration.py``, the figure ``report.plot_realism``; this module renders the
twins (``twins.py``), compares and summarises; ``report.run`` writes the report.
"""

from __future__ import annotations

import os

from absl import flags
from ml_collections import config_flags

from rcnn_jax.core import utils
from rcnn_jax.realism import psf_calibration
from rcnn_jax.realism.report import run
from rcnn_jax.realism.twins import format_table
from rcnn_jax.sim import bands


def _define_flags():
  """Command-line flags, defined only when the module runs as a command."""
  global _CONFIG, _DATA, _OUT, _CAMERA, _SEED, _CALIBRATE, _VARIABLES, _NUM_SIM
  _CONFIG = config_flags.DEFINE_config_file('config', 'configs/hits.py', 'Config file.',
                                            lock_config=True)
  _DATA = flags.DEFINE_multi_string('data', None, 'Real sequences: files or folders.')
  _OUT = flags.DEFINE_string('out', 'workdirs/realism', 'Output folder.')
  _CAMERA = flags.DEFINE_string('camera', None, 'Optional camera.csv: its medians are used '
                                '(default: config.survey.camera_path, else the config model).')
  _SEED = flags.DEFINE_integer('seed', None, 'Noise seed (default: config.seed).')
  _CALIBRATE = flags.DEFINE_bool('calibrate', False, 'Fit the PSF (Moffat beta, FWHM vs table '
                                 'seeing) on the real stamps and write psf_calibration.json '
                                 'instead of the comparison.')
  _VARIABLES = flags.DEFINE_string('variables', None, 'Folder with RRLyrae/ and '
                                   'EclipsingBinary/ real sequences (real_labelled_dev): '
                                   'light-curve statistics, real against simulated.')
  _NUM_SIM = flags.DEFINE_integer('num_sim', 10, 'Simulated curves per real variable.')


def main(argv):
  del argv
  if not _DATA.value:
    raise utils.UserError('--data FOLDER_OR_FILES is required')
  bands.require_one_band(_CONFIG.value, 'the realism check' + (' --calibrate' if
                                                             _CALIBRATE.value else ''))
  if _CALIBRATE.value:
    cal = psf_calibration.calibrate_psf(_DATA.value, _CONFIG.value, _CAMERA.value)
    path = os.path.join(_OUT.value, 'psf_calibration.json')
    utils.write_json(path, cal)
    print(psf_calibration.format_calibration(cal))
    print(f'wrote {path}')
    return
  summary, _ = run(_DATA.value, _OUT.value, _CONFIG.value, _CAMERA.value, _SEED.value,
                   variables_dir=_VARIABLES.value, num_sim=_NUM_SIM.value)
  print(format_table(summary))
  j = summary['jitter_calibration']
  print(f'constant stars ({j["num_stars"]}): registration jitter '
        f'{j["centroid_jitter_px_per_epoch_subpixel"]:.3f} +- '
        f'{j["centroid_jitter_px_per_epoch_subpixel_bootstrap_std"]:.3f} px with per-epoch '
        f'sub-pixel centres (centre kurtosis real {j["centre_offset_kurtosis"]["real"]:.2f}, '
        f'model {j["centre_offset_kurtosis"]["model"]:.2f}), {j["centroid_jitter_px"]:.3f} +- '
        f'{j["centroid_jitter_px_bootstrap_std"]:.3f} px with a fixed one; zero-point rms '
        f'{j["zero_point_rms"]:.4f} +- {j["zero_point_rms_bootstrap_std"]:.4f} (configured '
        f'{j["configured"]["centroid_jitter_px"]:g}, {j["configured"]["zero_point_rms"]:g}); '
        f'median scatter real/noise/model: centroid ' + '/'.join(
            f'{v:.3f}' for v in j['median_centroid_scatter_px'].values()) + ' px, flux ' +
        '/'.join(f'{v:.4f}' for v in j['median_flux_scatter'].values()))
  for cls, d in summary.get('variable_stats', {}).items():
    print(cls + ': ' + '; '.join(f'{n} real {v["real_16_50_84"][1]:.3f} sim '
                                 f'{v["sim_16_50_84"][1]:.3f} (KS p {v["ks_pvalue"]:.2f})'
                                 for n, v in d.items() if isinstance(v, dict)))
  print(f'wrote {os.path.join(_OUT.value, "realism.json")} and '
        f'{os.path.join(_OUT.value, "realism.png")}')


if __name__ == '__main__':
  _define_flags()
  utils.run(main)
