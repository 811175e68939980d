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
epoch, relates the FWHM to the table seeing (``calibrate_psf``) and writes
``psf_calibration.json``, whose ``recommended`` values are configs/hits.py's defaults. Only these
development stars may calibrate the simulator; held-out real classes must not.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
from scipy import optimize
from scipy import special

from rcnn_jax import realdata
from rcnn_jax import render
from rcnn_jax import utils
from rcnn_jax.errors import UserError

RING_WIDTH = 3          # px, outer ring used for the background noise
FIT_BOX = 9             # px, central box of the Gaussian FWHM fit
APERTURE_PX = 8.0       # px, aperture radius of the flux
MIN_PEAK_SIGMA = 20.0   # peak / expected noise needed to measure a FWHM
GOOD_SEEING_ARCSEC = 1.6  # epochs below this also give a scatter less sensitive to the PSF model
# PSF calibration (--calibrate): epochs used, quadrature of the Moffat pixel integral.
PSF_MIN_PEAK_SIGMA = 50.0     # peak / expected noise of an epoch used to fit beta and FWHM
PSF_MAX_RAW_FRACTION = 0.75   # raw stamp maximum below this fraction of the saturation level
PSF_QUADRATURE_NODES = 4      # Gauss-Legendre nodes per pixel axis: exact to ~1e-5 of the peak
# Table seeing of the HiTS release = FWHM[px] x 0.27"/px rounded to 0.01 px (the units check).
HITS_TABLE_SEEING_STEP_ARCSEC = 0.0027
SUMMARY_KEYS = ('num_objects', 'num_epochs', 'num_epochs_fwhm', 'num_seeing_fallback',
                'magnitude', 'background_noise', 'fwhm', 'peak_to_flux', 'mag_scatter',
                'pixels', 'sky_offset_adu', 'settings')


def _define_flags():
  """Command-line flags, defined only when the module runs as a command."""
  global _CONFIG, _DATA, _OUT, _CAMERA, _SEED, _CALIBRATE, _VARIABLES, _NUM_SIM
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  _CONFIG = config_flags.DEFINE_config_file('config', 'configs/hits.py', 'Config file.',
                                            lock_config=True)
  _DATA = flags.DEFINE_multi_string('data', None, 'Real sequences: files or folders.')
  _OUT = flags.DEFINE_string('out', 'experiments/realism', 'Output folder.')
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


# --------------------------------------------------------------------------- measurements


def ring_mask(size, width=RING_WIDTH):
  """Boolean [size, size]: pixels within ``width`` of the stamp's border."""
  i = np.arange(size)
  d = np.minimum(i, size - 1 - i)
  return np.minimum(d[:, None], d[None, :]) < width


def expected_noise(sky_adu, gain, read_noise_e):
  """Per-pixel sky + read noise in ADU: sqrt(sky / gain + (rn / gain)^2)."""
  return np.sqrt(np.maximum(sky_adu, 0.0) / gain + (read_noise_e / gain)**2)


def ring_residuals(img, dx=0.0, dy=0.0, width=RING_WIDTH, nsigma=3.0, iters=3):
  """Outer-ring pixels [..., N] minus a clipped least-squares cubic in the distance to the star.

  The cubic in r = |pixel - (dx, dy)| (the star's centre, px from the centre pixel) takes out
  the sky level and the star's wings; pixels beyond ``nsigma`` robust sigmas (neighbours,
  cosmic rays) do not enter the fit.
  """
  img = np.asarray(img, np.float64)
  size = img.shape[-1]
  ring = ring_mask(size, width)
  flat = img.reshape((-1, size, size))
  dx = np.broadcast_to(np.asarray(dx, np.float64), img.shape[:-2]).reshape(-1)
  dy = np.broadcast_to(np.asarray(dy, np.float64), img.shape[:-2]).reshape(-1)
  yy, xx = np.indices((size, size)) - (size - 1) / 2.0
  out = np.empty((len(flat), int(ring.sum())))
  for n, v in enumerate(flat[:, ring]):
    r = np.hypot(xx - dx[n], yy - dy[n])[ring] / ((size - 1) / 2.0) - 1.0
    design = np.stack([np.ones_like(r), r, r * r, r**3], 1)
    keep = np.ones(v.shape, bool)
    for _ in range(iters):
      coef = np.linalg.lstsq(design[keep], v[keep], rcond=None)[0]
      res = v - design @ coef
      med = np.median(res)
      sigma = 1.4826 * np.median(np.abs(res - med))
      keep = np.abs(res - med) <= nsigma * max(sigma, 1e-12)
    out[n] = res
  return out.reshape(img.shape[:-2] + (out.shape[-1],))


def background_noise(img, dx=0.0, dy=0.0, width=RING_WIDTH):
  """Robust std (1.4826 MAD) of ``ring_residuals``: ~1 % low on pure Gaussian noise."""
  res = ring_residuals(img, dx, dy, width)
  med = np.median(res, -1, keepdims=True)
  return 1.4826 * np.median(np.abs(res - med), -1)


def _cells(centre, sigma, n):
  """Fraction of a unit 1-D Gaussian N(centre, sigma) in each of n unit pixels (centre at 0)."""
  edges = np.arange(n + 1) - n / 2.0
  c = special.erf((edges - centre) / (np.sqrt(2.0) * sigma))
  return 0.5 * (c[1:] - c[:-1])


def fit_gaussian(img, box=FIT_BOX):
  """Pixel-integrated circular Gaussian fitted to the central ``box`` of a sky-subtracted stamp.

  Returns (fwhm_px, dx, dy, flux, ok); (dx, dy) from the stamp's centre pixel, dx along columns.
  The background is fixed at 0 (the stamp is sky-subtracted), which keeps the fit stable for
  PSFs wider than the box.
  """
  img = np.asarray(img, np.float64)
  size = img.shape[-1]
  o = (size - box) // 2
  d = img[o:o + box, o:o + box]
  pos = np.clip(d, 0.0, None)
  yy, xx = np.indices(d.shape) - (box - 1) / 2.0
  tot = pos.sum()
  if not tot > 0:
    return np.nan, 0.0, 0.0, np.nan, False
  x0, y0 = (pos * xx).sum() / tot, (pos * yy).sum() / tot
  s0 = np.sqrt(max((pos * ((xx - x0)**2 + (yy - y0)**2)).sum() / (2 * tot), 0.5))

  def resid(p):
    flux, x, y, log_s = p
    s = np.exp(log_s)
    return (flux * np.outer(_cells(y, s, box), _cells(x, s, box)) - d).ravel()

  p0 = [d.sum(), x0, y0, np.log(min(s0, 5.0))]
  lo = [-np.inf, -box / 2, -box / 2, np.log(0.2)]
  hi = [np.inf, box / 2, box / 2, np.log(20.0)]
  try:
    r = optimize.least_squares(resid, p0, bounds=(lo, hi), x_scale='jac', max_nfev=200)
  except (ValueError, np.linalg.LinAlgError):
    return np.nan, 0.0, 0.0, np.nan, False
  flux, x, y, log_s = r.x
  fwhm = np.exp(log_s) * render.FWHM_PER_SIGMA
  ok = bool(r.success and flux > 0 and np.log(0.2) + 1e-3 < log_s < np.log(20.0) - 1e-3)
  return float(fwhm), float(x), float(y), float(flux), ok


def aperture_flux(img, dx=0.0, dy=0.0, radius=APERTURE_PX):
  """Sum of pixels whose centre lies within ``radius`` of (dx, dy); img [..., S, S]."""
  img = np.asarray(img, np.float64)
  size = img.shape[-1]
  yy, xx = np.indices((size, size)) - (size - 1) / 2.0
  dx, dy = np.asarray(dx, np.float64), np.asarray(dy, np.float64)
  inside = np.hypot(xx - dx[..., None, None], yy - dy[..., None, None]) <= radius
  return (img * inside).sum((-2, -1))


def central_peak(img, half=2):
  """Brightest pixel of the central (2 half + 1)^2 box; img [..., S, S]."""
  img = np.asarray(img)
  c = img.shape[-1] // 2
  return img[..., c - half:c + half + 1, c - half:c + half + 1].max((-2, -1))


def robust_std(x):
  x = np.asarray(x, np.float64)
  x = x[np.isfinite(x)]
  return float(1.4826 * np.median(np.abs(x - np.median(x)))) if x.size else float('nan')


# --------------------------------------------------------------------------- PSF calibration


def moffat_pixels(fwhm_px, beta, dx=0.0, dy=0.0, size=21, nodes=PSF_QUADRATURE_NODES):
  """Unit-flux circular Moffat(beta) of FWHM ``fwhm_px`` at (dx, dy) px from the centre pixel.

  Each pixel is integrated by nodes x nodes Gauss-Legendre quadrature (float64, [size, size]),
  independently of the renderer's Gaussian-mixture approximation (``render.psf_stamp``), which
  it matches to ~0.1 % of the peak. Flux beyond the stamp is lost.
  """
  t, w = np.polynomial.legendre.leggauss(nodes)
  u = ((np.arange(size) - (size - 1) / 2.0)[:, None] + t[None, :] / 2.0).ravel()
  wt = np.tile(w / 2.0, size)
  alpha2 = (fwhm_px / (2.0 * np.sqrt(2.0**(1.0 / beta) - 1.0)))**2
  r2 = (u[None, :] - dx)**2 + (u[:, None] - dy)**2
  p = (beta - 1.0) / (np.pi * alpha2) * (1.0 + r2 / alpha2)**(-beta)
  return (p * wt[None, :] * wt[:, None]).reshape(size, nodes, size, nodes).sum((1, 3))


def fit_moffat(img, noise_var, gain, beta=None, background=True):
  """Pixel-integrated circular Moffat fitted to a whole sky-subtracted stamp.

  Free: flux, centre, FWHM, beta (unless ``beta`` is given) and a constant background (unless
  ``background`` is False, which trusts the stamp's sky). Residuals are weighted by the
  expected noise, noise_var + model / gain (ADU^2), with a soft-L1 loss beyond 3 sigma so that
  neighbours and cosmic rays do not pull the fit. Returns a dict: fwhm_px, beta, flux (total,
  beyond the stamp too), dx, dy, background (ADU), ok.
  """
  img = np.asarray(img, np.float64)
  size = img.shape[-1]
  fwhm0, x0, y0, _, ok0 = fit_gaussian(img)
  if not ok0:
    fwhm0, x0, y0 = 4.0, 0.0, 0.0
  free_beta = beta is None
  p0 = [np.log(max(float(aperture_flux(img, x0, y0)), 1.0)), float(np.clip(x0, -2.9, 2.9)),
        float(np.clip(y0, -2.9, 2.9)), np.log(np.clip(fwhm0 / 1.05, 1.0, 15.0))]
  lo = [-np.inf, -3.0, -3.0, np.log(0.8)]
  hi = [np.inf, 3.0, 3.0, np.log(20.0)]
  if free_beta:  # log(beta - 1)
    p0.append(np.log(2.0))
    lo.append(np.log(0.2))
    hi.append(np.log(29.0))
  if background:
    p0.append(0.0)
    lo.append(-np.inf)
    hi.append(np.inf)

  def unpack(p):
    b = 1.0 + np.exp(p[4]) if free_beta else float(beta)
    return np.exp(p[0]), p[1], p[2], np.exp(p[3]), b, (p[-1] if background else 0.0)

  def resid(p):
    flux, x, y, fwhm, b, bg = unpack(p)
    m = flux * moffat_pixels(fwhm, b, x, y, size) + bg
    return ((m - img) / np.sqrt(noise_var + np.maximum(m, 0.0) / gain)).ravel()

  nan = float('nan')
  try:
    r = optimize.least_squares(resid, p0, bounds=(lo, hi), x_scale='jac', loss='soft_l1',
                               f_scale=3.0, max_nfev=400)
  except (ValueError, np.linalg.LinAlgError):
    return dict(fwhm_px=nan, beta=nan, flux=nan, dx=nan, dy=nan, background=nan, ok=False)
  flux, x, y, fwhm, b, bg = unpack(r.x)
  bounded = range(1, 5 if free_beta else 4)
  ok = bool(r.success and all(lo[i] + 1e-3 < r.x[i] < hi[i] - 1e-3 for i in bounded))
  return dict(fwhm_px=float(fwhm), beta=float(b), flux=float(flux), dx=float(x), dy=float(y),
              background=float(bg), ok=ok)


def fit_seeing_relation(seeing, fwhm):
  """Robust fits of a measured PSF FWHM to the table seeing (both arcsec).

  Proportional FWHM = s seeing and affine FWHM = a + b seeing, by least squares on relative
  residuals (soft-L1 beyond 10 %). Returns {'scale': s, 'affine': (a, b), and for each the
  robust scatter (1.4826 MAD) and median of model / measured - 1}.
  """
  seeing, fwhm = np.asarray(seeing, np.float64), np.asarray(fwhm, np.float64)

  def fit(model, p0):
    r = optimize.least_squares(lambda p: model(p, seeing) / fwhm - 1.0, p0, loss='soft_l1',
                               f_scale=0.1)
    res = model(r.x, seeing) / fwhm - 1.0
    return [float(v) for v in r.x], robust_std(res), float(np.median(res))

  (s,), sc_s, med_s = fit(lambda p, x: p[0] * x, [0.8])
  ab, sc_a, med_a = fit(lambda p, x: p[0] + p[1] * x, [0.0, 0.8])
  return {'scale': s, 'scale_rel_scatter': sc_s, 'scale_rel_median': med_s,
          'affine': ab, 'affine_rel_scatter': sc_a, 'affine_rel_median': med_a}


def _psf_epochs(files, config, camera):
  """Bright, unsaturated epochs of known table seeing: per-epoch arrays and stamps."""
  gain, rn, sat = camera[:3]
  stamp = int(config.sim.stamp_size)
  out = {k: [] for k in ('object', 'seeing', 'sky', 'snr', 'stamp', 'noise_var')}
  all_seeing, names = [], []
  for i, f in enumerate(files):
    seq = realdata.load_sequence(f, stamp, n_w=1)
    names.append(seq.name)
    if seq.seeing_arcsec is None:
      continue
    see = np.asarray(seq.seeing_arcsec, np.float64)
    all_seeing.append(see[np.isfinite(see)])
    raw = np.asarray(seq.stamps, np.float64)
    sky = np.asarray(seq.sky_adu, np.float64)
    d = raw - sky[:, None, None]
    sigma = expected_noise(sky, gain, rn)
    snr = central_peak(d) / sigma
    use = (np.isfinite(see) & (see > 0) & (snr > PSF_MIN_PEAK_SIGMA)
           & (raw.max((1, 2)) < PSF_MAX_RAW_FRACTION * sat))
    for e in np.flatnonzero(use):
      for k, v in zip(out, (i, see[e], sky[e], snr[e], d[e], sigma[e]**2)):
        out[k].append(v)
  if not out['stamp']:
    raise UserError(f'no epoch with known seeing, peak > {PSF_MIN_PEAK_SIGMA:g} sigma and '
                    'unsaturated: nothing to calibrate the PSF on')
  out = {k: np.asarray(v) for k, v in out.items()}
  out['all_seeing'] = np.concatenate(all_seeing) if all_seeing else np.zeros(0)
  out['names'] = names
  return out


def _binned(x, y, edges):
  rows = []
  for lo, hi in zip(edges[:-1], edges[1:]):
    m = (x >= lo) & (x < hi)
    if m.any():
      rows.append({'range': [float(lo), float(hi)], 'n': int(m.sum()),
                   'median': float(np.median(y[m]))})
  return rows


def calibrate_psf(paths, config, camera_path=None, progress=True, num_bootstrap=200, seed=0):
  """Fits the PSF model to real stamps: a global Moffat beta and FWHM(table seeing).

  1. Every bright (peak > PSF_MIN_PEAK_SIGMA sigma), unsaturated epoch of known seeing gets a
     Moffat fit with free beta, FWHM and background (``fit_moffat``); the global beta is the
     median over epochs. The same fit with the background fixed at the table's sky is a
     diagnostic (a sky offset leaks into beta there).
  2. With beta fixed at that value (rounded to 0.05), each epoch's FWHM is refitted and related
     to the table seeing (``fit_seeing_relation``). The affine relation is recommended over
     the proportional one when it lowers the relative scatter by 10 % or more and its offset
     is beyond 3 bootstrap sigmas (objects resampled).
  Returns a JSON-ready dict; ``recommended`` holds config.sim.psf values.
  """
  files = realdata.expand_inputs(paths)
  camera = camera_params(config, camera_path)
  gain = camera[0]
  pix = float(config.survey.pixel_scale_arcsec)
  ep = _psf_epochs(files, config, camera)
  n = len(ep['stamp'])
  it = lambda desc: utils.progress(range(n), total=n, desc=desc, disable=not progress)

  free = [fit_moffat(ep['stamp'][j], ep['noise_var'][j], gain) for j in it('psf: free beta')]
  fixed_sky = [fit_moffat(ep['stamp'][j], ep['noise_var'][j], gain, background=False)
               for j in it('psf: sky fixed')]
  ok1 = np.array([r['ok'] for r in free])
  beta_e = np.array([r['beta'] for r in free])
  bg_e = np.array([r['background'] for r in free])
  beta_sky = np.array([r['beta'] for r in fixed_sky])
  ok_sky = np.array([r['ok'] for r in fixed_sky])
  beta = float(np.median(beta_e[ok1]))
  beta_used = float(np.round(beta * 20.0) / 20.0)

  second = [fit_moffat(ep['stamp'][j], ep['noise_var'][j], gain, beta=beta_used)
            for j in it(f'psf: beta {beta_used:g}')]
  ok2 = np.array([r['ok'] for r in second])
  fwhm = np.array([r['fwhm_px'] for r in second]) * pix
  gauss = np.array([fit_gaussian(d)[0] for d in ep['stamp']]) * pix
  see, obj, snr, sky = ep['seeing'], ep['object'], ep['snr'], ep['sky']
  rel = fit_seeing_relation(see[ok2], fwhm[ok2])

  # Bootstrap over objects: uncertainties of beta, s, a, b.
  rng = np.random.default_rng(seed)
  objects = np.unique(obj)
  boot = []
  for _ in range(num_bootstrap):
    pick = rng.choice(objects, objects.size)
    idx = np.concatenate([np.flatnonzero(obj == o) for o in pick])
    i1, i2 = idx[ok1[idx]], idx[ok2[idx]]
    r = fit_seeing_relation(see[i2], fwhm[i2])
    boot.append([np.median(beta_e[i1]), r['scale'], *r['affine']])
  boot_std = np.std(np.asarray(boot), 0) if boot else np.full(4, np.nan)
  a, b = rel['affine']
  affine = bool(rel['affine_rel_scatter'] <= 0.9 * rel['scale_rel_scatter']
                and abs(a) > 3.0 * boot_std[2])
  recommended = {'moffat_beta': beta_used,
                 'seeing_scale': round(b if affine else rel['scale'], 3),
                 'seeing_offset_arcsec': round(a, 3) if affine else 0.0}

  # Units: HiTS's seeing column is FWHM[px] x 0.27"/px (the authors' pixel scale).
  alls = ep['all_seeing']
  steps = alls / HITS_TABLE_SEEING_STEP_ARCSEC
  on_grid = float(np.mean(np.abs(steps - np.round(steps)) < 1e-6)) if alls.size else float('nan')
  tertiles = np.percentile(snr, [0, 100 / 3, 200 / 3, 100])
  tertiles[-1] += 1.0
  dark = sky < 200.0
  return {
      'num_objects': int(objects.size), 'num_files': len(files),
      'num_epochs': n, 'num_epochs_ok_free_beta': int(ok1.sum()),
      'num_epochs_ok_fixed_beta': int(ok2.sum()),
      'selection': f'known table seeing, peak > {PSF_MIN_PEAK_SIGMA:g} expected sigma, raw '
                   f'maximum < {PSF_MAX_RAW_FRACTION:g} x saturation',
      'model': 'circular Moffat, pixel-integrated (Gauss-Legendre), whole 21x21 stamp, '
               'noise-weighted, soft-L1 beyond 3 sigma; free flux, centre, FWHM, beta and a '
               'constant background',
      'beta': {'median': beta, 'used': beta_used, 'bootstrap_std': float(boot_std[0]),
               'epochs_16_50_84': _q(beta_e[ok1]),
               'by_peak_snr': _binned(snr[ok1], beta_e[ok1], tertiles),
               'sky_fixed_median': float(np.median(beta_sky[ok_sky])),
               'sky_fixed_by_peak_snr': _binned(snr[ok_sky], beta_sky[ok_sky], tertiles)},
      'fwhm': {'beta': beta_used,
               'scale': rel['scale'], 'scale_bootstrap_std': float(boot_std[1]),
               'scale_rel_scatter': rel['scale_rel_scatter'],
               'affine_offset_arcsec': a, 'affine_scale': b,
               'affine_bootstrap_std': [float(boot_std[2]), float(boot_std[3])],
               'affine_rel_scatter': rel['affine_rel_scatter'],
               'fitted_over_seeing_16_50_84': _q(fwhm[ok2] / see[ok2]),
               'fitted_over_seeing_by_seeing': _binned(
                   see[ok2], fwhm[ok2] / see[ok2], [0.0, 1.1, 1.25, 1.4, 1.6, 2.0, 9.0]),
               'gaussian_9x9_over_seeing_median': float(np.nanmedian(gauss / see))},
      'background': {
          'median_adu': float(np.median(bg_e[ok1])),
          'over_sky_median_dark': float(np.median((bg_e / sky)[ok1 & dark])),
          'over_sky_median_moonlit': (float(np.median((bg_e / sky)[ok1 & ~dark]))
                                      if (ok1 & ~dark).any() else float('nan')),
          'note': 'fitted constant left after subtracting the table sky (dark: sky < 200 ADU)'},
      'units': {
          'table_seeing_on_0.27_arcsec_per_px_grid': on_grid,
          'pixel_scale_arcsec': pix,
          'pixel_scale_ratio': pix / 0.27,
          'fitted_fwhm_px_over_table_px_median': float(np.median(
              fwhm[ok2] / pix / (see[ok2] / 0.27))),
          'note': "fraction of table seeing values that are multiples of 0.0027 arcsec, i.e. "
                  "a FWHM in px (0.01 px steps) times the authors' 0.27 arcsec/px"},
      'affine_recommended': affine,
      'recommended': recommended,
      'pixel_scale_arcsec': pix, 'camera': list(camera),
      'data': [os.fspath(p) for p in ([paths] if isinstance(paths, (str, os.PathLike))
                                      else paths)],
  }


def format_calibration(c) -> str:
  """A few plain-text lines of ``calibrate_psf``'s result."""
  b, f, u, r = c['beta'], c['fwhm'], c['units'], c['recommended']
  lines = [
      f'{c["num_objects"]} objects, {c["num_epochs"]} bright unsaturated epochs '
      f'({c["num_epochs_ok_free_beta"]} free-beta fits, {c["num_epochs_ok_fixed_beta"]} '
      'fixed-beta fits)',
      f'Moffat beta: median {b["median"]:.3f} +- {b["bootstrap_std"]:.3f} (epochs 16-84 %: '
      f'{b["epochs_16_50_84"][0]:.2f}-{b["epochs_16_50_84"][2]:.2f}); with the table sky '
      f'fixed {b["sky_fixed_median"]:.3f}',
      f'FWHM / table seeing (beta {f["beta"]:g}): s = {f["scale"]:.4f} +- '
      f'{f["scale_bootstrap_std"]:.4f} (rel. scatter {f["scale_rel_scatter"]:.3f}); '
      f'affine {f["affine_offset_arcsec"]:+.4f}" + {f["affine_scale"]:.4f} x seeing '
      f'(+- {f["affine_bootstrap_std"][0]:.4f}, {f["affine_bootstrap_std"][1]:.4f}; rel. '
      f'scatter {f["affine_rel_scatter"]:.3f})',
      '  by seeing: ' + ', '.join(f'{x["range"][0]:g}-{x["range"][1]:g}": {x["median"]:.3f}'
                                  for x in f['fitted_over_seeing_by_seeing']),
      f'units: {100 * u["table_seeing_on_0.27_arcsec_per_px_grid"]:.1f} % of table seeings on '
      f'the 0.27"/px grid; pixel scale ratio {u["pixel_scale_ratio"]:.4f}; fitted FWHM / table '
      f'FWHM in px {u["fitted_fwhm_px_over_table_px_median"]:.3f}',
      f'background left after the table sky: median {c["background"]["median_adu"]:.2f} ADU',
      'recommended config.sim.psf: ' + ', '.join(f'{k} = {v:g}' for k, v in r.items())]
  return '\n'.join(lines)


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


def camera_params(config, camera_path=None):
  """(gain, read_noise_e, saturation_adu, source): medians of a camera table, else the config's."""
  path = camera_path or config.survey.camera_path
  if path:
    from rcnn_jax import survey  # pylint: disable=g-import-not-at-top
    cam = survey.read_camera(path)
    return (float(np.median(cam['gain_e_per_adu'])), float(np.median(cam['read_noise_e'])),
            float(np.median(cam['saturation_adu'])), f'median of {path}')
  sc = config.survey
  lo, hi = sc.gain_range
  # The built-in model draws gains as lo + (hi - lo) Beta(2, 5): its mean.
  return (float(lo + (hi - lo) * 2.0 / 7.0), float(sc.read_noise_median_e),
          float(np.mean(sc.saturation_range_adu)), 'config.survey (built-in camera model)')


def exposure_times(path, num_epochs, default):
  """Per-epoch exposure times: the npz's ``exp_time_s`` when present, else ``default``."""
  if os.fspath(path).lower().endswith('.npz'):
    with np.load(path, allow_pickle=False) as z:
      if 'exp_time_s' in z.files:
        t = np.asarray(z['exp_time_s'], np.float64)
        if t.shape == (num_epochs,) and np.all(t > 0):
          return t, True
  return np.full(num_epochs, float(default)), False


def _measure(d, sigma):
  """Per-epoch measurements of sky-subtracted stamps d [E, S, S]."""
  fits = [fit_gaussian(x) for x in d]
  fwhm, dx, dy, _, ok = (np.array(v) for v in zip(*fits))
  cx, cy = np.where(ok, dx, 0.0), np.where(ok, dy, 0.0)
  flux = aperture_flux(d, cx, cy)
  peak = central_peak(d)
  res = ring_residuals(d, cx, cy)
  noise = 1.4826 * np.median(np.abs(res - np.median(res, -1, keepdims=True)), -1)
  return dict(fwhm_px=fwhm, dx=dx, dy=dy, fit_ok=ok.astype(bool), flux=flux, peak=peak,
              noise=noise, ring_residuals=res, bright=peak > MIN_PEAK_SIGMA * sigma,
              ring_median=np.median(d[:, ring_mask(d.shape[-1])], 1))


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
  sigma = expected_noise(sky, gain, rn)

  real_d = np.asarray(seq.stamps, np.float64) - sky[:, None, None]
  real = _measure(real_d, sigma)
  dx = np.where(real['fit_ok'], real['dx'], 0.0)
  dy = np.where(real['fit_ok'], real['dy'], 0.0)

  n = pad_to or e
  args = dict(size=size, kind=kind, beta=beta)
  unit = np.asarray(psf_stamps(jnp.asarray(_pad(fwhm_px, n)), jnp.asarray(_pad(dx, n)),
                               jnp.asarray(_pad(dy, n)), psf_bank, **args))[:e]
  ap_frac = aperture_flux(unit, dx, dy)
  with np.errstate(invalid='ignore', divide='ignore'):
    mag_epoch = np.asarray(render.adu_to_mag(real['flux'] / ap_frac, zp, exp_time_s))
  mag = float(np.nanmedian(np.where(real['flux'] > 0, mag_epoch, np.nan)))

  raw, noiseless = render_star(
      key, jnp.float32(mag), jnp.asarray(_pad(zp, n)), jnp.asarray(_pad(exp_time_s, n)),
      jnp.asarray(_pad(fwhm_px, n)), jnp.asarray(_pad(dx, n)), jnp.asarray(_pad(dy, n)),
      jnp.asarray(_pad(sky, n)), jnp.float32(gain), jnp.float32(rn), jnp.float32(sat), psf_bank,
      poisson=bool(config.sim.poisson), **args)
  sim_d = np.asarray(raw, np.float64)[:e] - sky[:, None, None]
  sim = _measure(sim_d, sigma)
  model_d = np.asarray(noiseless, np.float64)[:e] - sky[:, None, None]
  model_fwhm = np.array([fit_gaussian(x)[0] for x in model_d])
  with np.errstate(invalid='ignore', divide='ignore'):
    sim_mag_epoch = np.asarray(render.adu_to_mag(sim['flux'] / ap_frac, zp, exp_time_s))
  return dict(name=seq.name, mag=mag, sky=sky, zero_point=zp, exp_time_s=np.asarray(exp_time_s),
              seeing=seeing_used, seeing_known=known, sigma=sigma,
              real_stamps=real_d, sim_stamps=sim_d, model_fwhm_px=model_fwhm,
              real=real, sim=sim, real_mag_epoch=mag_epoch, sim_mag_epoch=sim_mag_epoch,
              fwhm_px=fwhm_px, ap_frac=ap_frac)


# --------------------------------------------------------------------------- summary


def _q(x, qs=(16, 50, 84)):
  x = np.asarray(x, np.float64)
  x = x[np.isfinite(x)]
  return [float(v) for v in np.percentile(x, qs)] if x.size else [float('nan')] * len(qs)


def _cat(records, *path):
  out = []
  for r in records:
    v = r
    for p in path:
      v = v[p]
    out.append(np.asarray(v))
  return np.concatenate(out)


def _ks(a, b):
  """Two-sample Kolmogorov-Smirnov statistic (max distance of the empirical CDFs)."""
  a, b = np.sort(a), np.sort(b)
  x = np.concatenate([a, b])
  return float(np.max(np.abs(np.searchsorted(a, x, 'right') / a.size
                             - np.searchsorted(b, x, 'right') / b.size)))


def summarize(records, settings):
  """JSON-ready summary statistics of compare_sequence outputs."""
  pix = settings['pixel_scale_arcsec']
  g = lambda *p: _cat(records, *p)
  sigma, seeing, known = g('sigma'), g('seeing'), g('seeing_known')
  nr, ns = g('real', 'noise'), g('sim', 'noise')
  use = (g('real', 'bright') & g('real', 'fit_ok') & g('sim', 'fit_ok') & known)
  fr, fs = g('real', 'fwhm_px')[use] * pix, g('sim', 'fwhm_px')[use] * pix
  fm = g('model_fwhm_px')[use] * pix
  see = seeing[use]
  both = g('real', 'flux') > 0
  pr = g('real', 'peak') / np.where(both, g('real', 'flux'), np.nan)
  ps = g('sim', 'peak') / np.where(g('sim', 'flux') > 0, g('sim', 'flux'), np.nan)
  ring = ring_mask(records[0]['real_stamps'].shape[-1])
  bg_r = np.concatenate([(r['real_stamps'][:, ring] / r['sigma'][:, None]).ravel()
                         for r in records])
  bg_s = np.concatenate([(r['sim_stamps'][:, ring] / r['sigma'][:, None]).ravel()
                         for r in records])
  res_r = np.concatenate([(r['real']['ring_residuals'] / r['sigma'][:, None]).ravel()
                          for r in records])
  res_s = np.concatenate([(r['sim']['ring_residuals'] / r['sigma'][:, None]).ravel()
                          for r in records])
  scat = lambda who, cut=np.inf: float(np.nanmedian(
      [robust_std(r[who + '_mag_epoch'][r['seeing'] < cut]) for r in records]))
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


# --------------------------------------------------------------------------- figure


def plot_realism(records, summary, path, num_objects=4, num_epochs=4):
  """(a) stamps real | sim, (b) pixel values, (c) background noise, (d) FWHM, (e) peak/flux."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  pix = summary['settings']['pixel_scale_arcsec']
  fig = plt.figure(figsize=(17, 15))
  outer = fig.add_gridspec(2, 1, height_ratios=(1.55, 1), hspace=0.18)
  grid = outer[0].subgridspec(num_objects, 2 * num_epochs, wspace=0.04, hspace=0.28)
  order = np.argsort([r['mag'] for r in records])
  picks = order[np.linspace(0, len(order) - 1, min(num_objects, len(order))).astype(int)]
  for row, i in enumerate(picks):
    r = records[i]
    e_order = np.argsort(r['seeing'])
    eps = np.sort(e_order[np.linspace(0, len(e_order) - 1, num_epochs).astype(int)])
    for j, e in enumerate(eps):
      s = 3.0 * r['sigma'][e]
      pair = [np.arcsinh(r['real_stamps'][e] / s), np.arcsinh(r['sim_stamps'][e] / s)]
      lo, hi = -2.0, max(pair[0].max(), pair[1].max())
      for k, (img, lab) in enumerate(zip(pair, ('real', 'sim'))):
        ax = fig.add_subplot(grid[row, 2 * j + k])
        ax.imshow(img, cmap='gray', origin='lower', vmin=lo, vmax=hi)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f'{lab} {r["seeing"][e]:.2f}"', fontsize=7, pad=2)
        if j == 0 and k == 0:
          ax.set_ylabel(f'{r["name"][9:]}\ng = {r["mag"]:.2f}', fontsize=7)
  fig.text(0.5, 0.905, '(a) real | simulated pairs (same asinh stretch per pair, in units of '
           '3 expected sigma; epochs of low to high seeing)', ha='center', fontsize=10)

  bottom = outer[1].subgridspec(1, 4, wspace=0.38)
  ax = fig.add_subplot(bottom[0])
  vr = np.concatenate([(r['real_stamps'] / r['sigma'][:, None, None]).ravel() for r in records])
  vs = np.concatenate([(r['sim_stamps'] / r['sigma'][:, None, None]).ravel() for r in records])
  edges = np.sinh(np.linspace(np.arcsinh(-8.0), np.arcsinh(max(vr.max(), vs.max())), 90))
  ax.hist(vr, edges, histtype='step', color='k', label='real, all pixels')
  ax.hist(vs, edges, histtype='step', color='tab:red', label='sim, all pixels')
  rr = np.concatenate([(r['real']['ring_residuals'] / r['sigma'][:, None]).ravel()
                       for r in records])
  rs = np.concatenate([(r['sim']['ring_residuals'] / r['sigma'][:, None]).ravel()
                       for r in records])
  ax.hist(rr, edges, histtype='step', color='k', ls='--', label='real, ring - radial fit')
  ax.hist(rs, edges, histtype='step', color='tab:red', ls='--', label='sim, ring - radial fit')
  ax.set_xscale('symlog', linthresh=3.0)
  ax.set_xticks([-10, -3, 0, 3, 10, 100, 1000], ['-10', '-3', '0', '3', '10', '100', '1000'])
  ax.set_yscale('log')
  px = summary['pixels']
  ax.set(xlabel='(pixel - sky) / expected sigma', ylabel='pixels',
         title=f'(b) pixels: KS ring {px["ring_ks_statistic"]:.2f}, '
               f'resid. {px["ring_residual_ks_statistic"]:.3f}')
  ax.legend(fontsize=7, loc='upper right')

  ax = fig.add_subplot(bottom[1])
  sig = _cat(records, 'sigma')
  ax.plot(sig, _cat(records, 'real', 'noise'), 'k.', ms=3, alpha=0.6, label='real')
  ax.plot(sig, _cat(records, 'sim', 'noise'), 'x', color='tab:red', ms=3, alpha=0.6, label='sim')
  lim = np.array([sig.min() * 0.8, sig.max() * 1.25])
  ax.plot(lim, lim, ':', c='gray', label='expected')
  ax.set_xscale('log')
  ax.set_yscale('log')
  b = summary['background_noise']
  ax.set(xlabel='expected sqrt(sky/g + (rn/g)^2) [ADU]', ylabel='ring robust std [ADU]',
         title=f'(c) background noise: real/sim = {b["ratio_real_sim"]:.3f}')
  ax.legend(fontsize=8)

  ax = fig.add_subplot(bottom[2])
  use = (_cat(records, 'real', 'bright') & _cat(records, 'real', 'fit_ok')
         & _cat(records, 'sim', 'fit_ok') & _cat(records, 'seeing_known'))
  see = _cat(records, 'seeing')[use]
  ax.plot(see, _cat(records, 'real', 'fwhm_px')[use] * pix, 'k.', ms=3, alpha=0.6, label='real')
  ax.plot(see, _cat(records, 'sim', 'fwhm_px')[use] * pix, 'x', color='tab:red', ms=3,
          alpha=0.6, label='sim')
  o = np.argsort(see)
  ax.plot(see[o], _cat(records, 'model_fwhm_px')[use][o] * pix, '-', c='tab:red', lw=0.8,
          label='noiseless model')
  lim = np.array([see.min() * 0.9, see.max() * 1.1])
  ax.plot(lim, lim, ':', c='gray', label='1:1')
  f = summary['fwhm']
  ax.set(xlabel='table seeing [arcsec]', ylabel='fitted Gaussian FWHM, 9x9 [arcsec]',
         title=f'(d) PSF width: real/sim = {f["ratio_real_sim"]:.3f}')
  ax.legend(fontsize=8)

  ax = fig.add_subplot(bottom[3])
  seeing = _cat(records, 'seeing')
  for who, style, col in (('real', '.', 'k'), ('sim', 'x', 'tab:red')):
    flux = _cat(records, who, 'flux')
    ok = flux > 0
    ax.plot(seeing[ok], _cat(records, who, 'peak')[ok] / flux[ok], style, color=col, ms=3,
            alpha=0.6, label=who)
  ax.set_yscale('log')
  ax.set(xlabel='seeing used [arcsec]', ylabel=f'peak / flux (r = {APERTURE_PX:g} px)',
         title=f'(e) peak-to-flux: real/sim = {summary["peak_to_flux"]["ratio_real_sim"]:.3f}')
  ax.legend(fontsize=8)
  fig.savefig(path, dpi=100, bbox_inches='tight')
  plt.close(fig)


# --------------------------------------------------------------------------- command


def run(paths, out_dir, config, camera_path=None, seed=None, plot=True, progress=True,
        variables_dir=None, num_sim=10):
  """Compares every real sequence in ``paths`` with its simulated twin; writes JSON (+ PNG).

  Also measures the epoch-to-epoch centroid and flux scatter of the (constant) stars against
  their simulated twins (``lcstats``: 'jitter_calibration' in realism.json) and, with
  ``variables_dir``, the light-curve statistics of real and simulated variables; both go into
  ``scatter.png``.
  """
  from rcnn_jax import lcstats  # pylint: disable=g-import-not-at-top
  files = realdata.expand_inputs(paths)
  camera = camera_params(config, camera_path)
  bank = None
  if config.sim.psf.kind == 'bank':
    bank = render.load_psf_bank(config.sim.psf.bank_path, config.survey.pixel_scale_arcsec)
  stamp = int(config.sim.stamp_size)
  seqs = [(f, realdata.load_sequence(f, stamp, n_w=1)) for f in files]
  pad_to = -(-max(s.num_epochs for _, s in seqs) // 8) * 8
  key = jax.random.key(config.seed if seed is None else seed)
  records, exp_from_file = [], 0
  for i, (f, seq) in enumerate(utils.progress(seqs, total=len(seqs), desc='realism',
                                             disable=not progress)):
    t, from_file = exposure_times(f, seq.num_epochs, config.survey.exp_time_s)
    exp_from_file += from_file
    records.append(compare_sequence(seq, t, jax.random.fold_in(key, i), config, camera, bank,
                                    pad_to))
  settings = {
      'data': [os.fspath(p) for p in ([paths] if isinstance(paths, (str, os.PathLike))
                                      else paths)],
      'psf_kind': str(config.sim.psf.kind), 'moffat_beta': float(config.sim.psf.moffat_beta),
      'seeing_scale': psf_seeing_relation(config)[0],
      'seeing_offset_arcsec': psf_seeing_relation(config)[1],
      'psf_fwhm': 'seeing_offset_arcsec + seeing_scale x table seeing (config.sim.psf)',
      'pixel_scale_arcsec': float(config.survey.pixel_scale_arcsec),
      'gain_e_per_adu': camera[0], 'read_noise_e': camera[1], 'saturation_adu': camera[2],
      'camera_source': camera[3], 'poisson': bool(config.sim.poisson),
      'seed': int(config.seed if seed is None else seed),
      'files_with_exp_time': exp_from_file,
      'seeing_fallback': "the sequence's median table seeing",
      'magnitude': 'median over epochs of eq. 1 applied to the 8 px aperture flux divided by the '
                   "model PSF's aperture fraction at the epoch's PSF FWHM",
      'background_noise': '1.4826 MAD of the outer 3 px ring after a clipped cubic fit in the '
                          'distance to the fitted star centre',
      'fwhm': 'pixel-integrated circular Gaussian fitted to the central 9x9 (background 0), '
              f'epochs with peak > {MIN_PEAK_SIGMA:g} sigma and known seeing',
      'ratios': 'median over epochs of the per-epoch ratio real / sim',
  }
  summary = summarize(records, settings)
  rows = [lcstats.twin_scatter(r, jax.random.fold_in(key, 1_000_000 + i), config, camera, bank,
                               pad_to) for i, r in enumerate(records)]
  summary['jitter_calibration'] = lcstats.calibrate_jitter(rows)
  summary['jitter_calibration']['configured'] = {
      'centroid_jitter_px': float(config.sim.astrometry.centroid_jitter_px),
      'zero_point_rms': float(config.sim.calibration.zero_point_rms)}
  summary['constant_star_scatter'] = [{k: v for k, v in r.items() if not k.endswith('_offsets')}
                                      for r in rows]
  var_stats = {}
  if variables_dir:
    var_stats = lcstats.variable_stats(variables_dir, jax.random.fold_in(key, 2_000_000),
                                       config, camera, bank, num_sim, progress)
    summary['variable_stats'] = lcstats.summarize_variables(var_stats)
    summary['variable_stats_raw'] = var_stats
  os.makedirs(out_dir, exist_ok=True)
  utils.write_json(os.path.join(out_dir, 'realism.json'), summary)
  if plot:
    plot_realism(records, summary, os.path.join(out_dir, 'realism.png'))
    lcstats.plot_scatter_and_variables(rows, summary['jitter_calibration'], var_stats,
                                       os.path.join(out_dir, 'scatter.png'))
  return summary, records


def main(argv):
  del argv
  if not _DATA.value:
    raise utils.UserError('--data FOLDER_OR_FILES is required')
  if _CALIBRATE.value:
    try:
      cal = calibrate_psf(_DATA.value, _CONFIG.value, _CAMERA.value)
    except realdata.BadInput as e:
      raise utils.UserError(str(e)) from None
    path = os.path.join(_OUT.value, 'psf_calibration.json')
    utils.write_json(path, cal)
    print(format_calibration(cal))
    print(f'wrote {path}')
    return
  try:
    summary, _ = run(_DATA.value, _OUT.value, _CONFIG.value, _CAMERA.value, _SEED.value,
                     variables_dir=_VARIABLES.value, num_sim=_NUM_SIM.value)
  except realdata.BadInput as e:
    raise utils.UserError(str(e)) from None
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
