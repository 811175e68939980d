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
twins, compares and summarises; ``report.run`` writes the report and ``__main__`` is the command.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from rcnn_jax.inputs import realdata
from rcnn_jax.realism import stars
from rcnn_jax.sim import photometry
from rcnn_jax.sim import render

GOOD_SEEING_ARCSEC = 1.6  # epochs below this also give a scatter less sensitive to the PSF model
SUMMARY_KEYS = ('num_objects', 'num_epochs', 'num_epochs_fwhm', 'num_seeing_fallback',
                'magnitude', 'background_noise', 'fwhm', 'peak_to_flux', 'mag_scatter',
                'pixels', 'sky_offset_adu', 'settings')
_q = stars.quantiles


# --------------------------------------------------------------------------- rendering


@functools.partial(jax.jit, static_argnames=('size', 'kind', 'beta'))
def psf_stamps(fwhm_px, dx, dy, psf_bank=None, *, size=21, kind='moffat', beta=3.0):
  """Unit-flux PSFs [E, S, S] of the epochs (vmap of render.psf_stamp)."""
  return jax.vmap(lambda f, x, y: render.psf_stamp(f, x, y, size, kind, beta, psf_bank))(
      fwhm_px, dx, dy)


@functools.partial(jax.jit, static_argnames=('size', 'kind', 'beta', 'poisson'))
def render_star(key, mag, zero_point, exp_time_s, fwhm_px, dx, dy, sky_adu, gain, read_noise_e,
                saturation_adu, psf_bank=None, *, size=21, kind='moffat', beta=3.0,
                poisson=True):
  """A constant star of magnitude ``mag`` at E epochs: (raw, noiseless) [E, S, S] ADU with sky.

  Per-epoch arrays [E]: zero_point, exp_time_s, fwhm_px, dx, dy (px from the centre pixel,
  dx along columns), sky_adu; camera scalars: gain (e-/ADU), read_noise_e, saturation_adu.
  """
  flux = render.mag_to_adu(mag, zero_point, exp_time_s)
  psf = psf_stamps(fwhm_px, dx, dy, psf_bank, size=size, kind=kind, beta=beta)
  noiseless = flux[:, None, None] * psf + sky_adu[:, None, None]
  keys = jax.random.split(key, zero_point.shape[0])
  raw = render.add_noise_batch(keys, noiseless, gain, read_noise_e, saturation_adu, poisson)
  return raw, noiseless


def _pad(x, n):
  """Pads [E] to [n] by repeating the last value (one compiled shape for every file)."""
  x = np.asarray(x, np.float32)
  return np.concatenate([x, np.repeat(x[-1:], n - len(x))])


# --------------------------------------------------------------------------- comparison


def exposure_times(path, num_epochs, default):
  """Per-epoch exposure times: the npz's ``exp_time_s`` when present, else ``default``."""
  if os.fspath(path).lower().endswith('.npz'):
    with np.load(path, allow_pickle=False) as z:
      if 'exp_time_s' in z.files:
        t = np.asarray(z['exp_time_s'], np.float64)
        if t.shape == (num_epochs,) and np.all(t > 0):
          return t, True
  return np.full(num_epochs, float(default)), False


def psf_seeing_relation(config):
  """(seeing_scale, seeing_offset_arcsec) of config.sim.psf: PSF FWHM = offset + scale seeing."""
  psf = config.sim.psf
  return float(psf.seeing_scale), float(psf.seeing_offset_arcsec)


def compare_sequence(seq: realdata.RealSequence, exp_time_s, key, config, camera, psf_bank=None,
                     pad_to=None):
  """Real and simulated stamps of one object at the same epochs, and their measurements."""
  e = seq.num_epochs
  size = seq.stamps.shape[-1]
  pix = float(config.survey.pixel_scale_arcsec)
  kind, beta = str(config.sim.psf.kind), float(config.sim.psf.moffat_beta)
  gain, rn, sat = camera[:3]
  sky = np.asarray(seq.sky_adu, np.float64)
  zp = (np.asarray(seq.zero_point, np.float64) if seq.zero_point is not None
        else np.full(e, float(np.median(config.survey.zero_point_quantiles))))
  seeing = (np.full(e, np.nan) if seq.seeing_arcsec is None
            else np.asarray(seq.seeing_arcsec, np.float64))
  known = np.isfinite(seeing) & (seeing > 0)
  fallback = (np.median(seeing[known]) if known.any()
              else config.survey.seeing_quantiles_arcsec[1])
  seeing_used = np.where(known, seeing, fallback)
  fwhm_px = np.asarray(render.seeing_to_fwhm_px(seeing_used, pix, *psf_seeing_relation(config)),
                       np.float64)
  sigma = stars.expected_noise(sky, gain, rn)

  real_d = np.asarray(seq.stamps, np.float64) - sky[:, None, None]
  real = stars.measure(real_d, sigma)
  dx = np.where(real['fit_ok'], real['dx'], 0.0)
  dy = np.where(real['fit_ok'], real['dy'], 0.0)

  n = pad_to or e
  args = dict(size=size, kind=kind, beta=beta)
  unit = np.asarray(psf_stamps(jnp.asarray(_pad(fwhm_px, n)), jnp.asarray(_pad(dx, n)),
                               jnp.asarray(_pad(dy, n)), psf_bank, **args))[:e]
  ap_frac = photometry.aperture_flux(unit, dx, dy)
  with np.errstate(invalid='ignore', divide='ignore'):
    mag_epoch = np.asarray(render.adu_to_mag(real['flux'] / ap_frac, zp, exp_time_s))
  mag = float(np.nanmedian(np.where(real['flux'] > 0, mag_epoch, np.nan)))

  raw, noiseless = render_star(
      key, jnp.float32(mag), jnp.asarray(_pad(zp, n)), jnp.asarray(_pad(exp_time_s, n)),
      jnp.asarray(_pad(fwhm_px, n)), jnp.asarray(_pad(dx, n)), jnp.asarray(_pad(dy, n)),
      jnp.asarray(_pad(sky, n)), jnp.float32(gain), jnp.float32(rn), jnp.float32(sat), psf_bank,
      poisson=bool(config.sim.poisson), **args)
  sim_d = np.asarray(raw, np.float64)[:e] - sky[:, None, None]
  sim = stars.measure(sim_d, sigma)
  model_d = np.asarray(noiseless, np.float64)[:e] - sky[:, None, None]
  model_fwhm = np.array([stars.fit_gaussian(x)[0] for x in model_d])
  with np.errstate(invalid='ignore', divide='ignore'):
    sim_mag_epoch = np.asarray(render.adu_to_mag(sim['flux'] / ap_frac, zp, exp_time_s))
  return dict(name=seq.name, mag=mag, sky=sky, zero_point=zp, exp_time_s=np.asarray(exp_time_s),
              seeing=seeing_used, seeing_known=known, sigma=sigma,
              real_stamps=real_d, sim_stamps=sim_d, model_fwhm_px=model_fwhm,
              real=real, sim=sim, real_mag_epoch=mag_epoch, sim_mag_epoch=sim_mag_epoch,
              fwhm_px=fwhm_px, ap_frac=ap_frac)


# --------------------------------------------------------------------------- summary


def column(records, *path):
  """One measurement of every record, concatenated (``path``: keys into each record)."""
  out = []
  for r in records:
    v = r
    for p in path:
      v = v[p]
    out.append(np.asarray(v))
  return np.concatenate(out)


def _ks(a, b):
  """Two-sample Kolmogorov-Smirnov statistic (max distance of the empirical CDFs)."""
  return float(stats.ks_2samp(a, b).statistic)


def summarize(records, settings):
  """JSON-ready summary statistics of compare_sequence outputs."""
  pix = settings['pixel_scale_arcsec']
  g = lambda *p: column(records, *p)
  sigma, seeing, known = g('sigma'), g('seeing'), g('seeing_known')
  nr, ns = g('real', 'noise'), g('sim', 'noise')
  use = (g('real', 'bright') & g('real', 'fit_ok') & g('sim', 'fit_ok') & known)
  fr, fs = g('real', 'fwhm_px')[use] * pix, g('sim', 'fwhm_px')[use] * pix
  fm = g('model_fwhm_px')[use] * pix
  see = seeing[use]
  both = g('real', 'flux') > 0
  pr = g('real', 'peak') / np.where(both, g('real', 'flux'), np.nan)
  ps = g('sim', 'peak') / np.where(g('sim', 'flux') > 0, g('sim', 'flux'), np.nan)
  ring = stars.ring_mask(records[0]['real_stamps'].shape[-1])
  bg_r = np.concatenate([(r['real_stamps'][:, ring] / r['sigma'][:, None]).ravel()
                         for r in records])
  bg_s = np.concatenate([(r['sim_stamps'][:, ring] / r['sigma'][:, None]).ravel()
                         for r in records])
  res_r = np.concatenate([(r['real']['ring_residuals'] / r['sigma'][:, None]).ravel()
                          for r in records])
  res_s = np.concatenate([(r['sim']['ring_residuals'] / r['sigma'][:, None]).ravel()
                          for r in records])
  scat = lambda who, cut=np.inf: float(np.nanmedian(
      [stars.robust_std(r[who + '_mag_epoch'][r['seeing'] < cut]) for r in records]))
  mags = [r['mag'] for r in records]
  qs = (1, 16, 50, 84, 99)
  return {
      'num_objects': len(records),
      'num_epochs': int(sigma.size),
      'num_epochs_fwhm': int(use.sum()),
      'num_seeing_fallback': int((~known).sum()),
      'magnitude': {'min': float(np.min(mags)), 'median': float(np.median(mags)),
                    'max': float(np.max(mags))},
      'background_noise': {
          'real_median_adu': float(np.median(nr)), 'sim_median_adu': float(np.median(ns)),
          'expected_median_adu': float(np.median(sigma)),
          'ratio_real_sim': _q(nr / ns)[1], 'ratio_real_sim_16_84': _q(nr / ns)[::2],
          'real_over_expected': _q(nr / sigma)[1], 'sim_over_expected': _q(ns / sigma)[1]},
      'fwhm': {
          'real_median_arcsec': _q(fr)[1], 'sim_median_arcsec': _q(fs)[1],
          'table_seeing_median_arcsec': _q(see)[1],
          'ratio_real_sim': _q(fr / fs)[1], 'ratio_real_sim_16_84': _q(fr / fs)[::2],
          'real_over_seeing': _q(fr / see)[1], 'sim_over_seeing': _q(fs / see)[1],
          'noiseless_model_over_seeing': _q(fm / see)[1]},
      'peak_to_flux': {'real_median': _q(pr)[1], 'sim_median': _q(ps)[1],
                       'ratio_real_sim': _q(pr / ps)[1],
                       'ratio_real_sim_16_84': _q(pr / ps)[::2]},
      'mag_scatter': {'real_median_mag': scat('real'), 'sim_median_mag': scat('sim'),
                      'good_seeing_max_arcsec': GOOD_SEEING_ARCSEC,
                      'real_median_mag_good_seeing': scat('real', GOOD_SEEING_ARCSEC),
                      'sim_median_mag_good_seeing': scat('sim', GOOD_SEEING_ARCSEC)},
      'pixels': {'quantiles': list(qs), 'ring_real_sigma_units': _q(bg_r, qs),
                 'ring_sim_sigma_units': _q(bg_s, qs), 'ring_ks_statistic': _ks(bg_r, bg_s),
                 'ring_residual_real_sigma_units': _q(res_r, qs),
                 'ring_residual_sim_sigma_units': _q(res_s, qs),
                 'ring_residual_ks_statistic': _ks(res_r, res_s)},
      'sky_offset_adu': {'real_ring_median': float(np.median(g('real', 'ring_median'))),
                         'sim_ring_median': float(np.median(g('sim', 'ring_median')))},
      'settings': settings,
  }


def format_table(s) -> str:
  """A short plain-text table of the summary."""
  b, f, p, m = s['background_noise'], s['fwhm'], s['peak_to_flux'], s['mag_scatter']
  rows = [('background noise [ADU]', b['real_median_adu'], b['sim_median_adu'],
           b['ratio_real_sim']),
          ('  / expected', b['real_over_expected'], b['sim_over_expected'], float('nan')),
          ('FWHM [arcsec]', f['real_median_arcsec'], f['sim_median_arcsec'], f['ratio_real_sim']),
          ('  / table seeing', f['real_over_seeing'], f['sim_over_seeing'], float('nan')),
          ('peak / aperture flux', p['real_median'], p['sim_median'], p['ratio_real_sim']),
          ('mag scatter over epochs', m['real_median_mag'], m['sim_median_mag'],
           m['real_median_mag'] / m['sim_median_mag']),
          (f'  seeing < {m["good_seeing_max_arcsec"]:g}"', m['real_median_mag_good_seeing'],
           m['sim_median_mag_good_seeing'],
           m['real_median_mag_good_seeing'] / m['sim_median_mag_good_seeing'])]
  lines = [f'{s["num_objects"]} objects, {s["num_epochs"]} epochs '
           f'({s["num_epochs_fwhm"]} for FWHM, {s["num_seeing_fallback"]} with seeing fallback), '
           f'mag {s["magnitude"]["min"]:.2f}-{s["magnitude"]["max"]:.2f}',
           f'{"quantity (median)":26s}{"real":>9s}{"sim":>9s}{"real/sim":>10s}']
  for name, r, sm, q in rows:
    lines.append(f'{name:26s}{r:9.3f}{sm:9.3f}' + (f'{q:10.3f}' if np.isfinite(q) else ''))
  return '\n'.join(lines)
