"""The PSF model calibrated on real stars (``python -m rcnn_jax.realism --calibrate``).

Fits a pixel-integrated Moffat (free beta, FWHM, background) to every bright unsaturated epoch of
the real non-variable development stars, relates the FWHM to the table seeing
(``calibrate_psf``) and gives the ``config.sim.psf`` values (configs/hits.py's defaults come
from experiments/realism/psf_calibration.json). Only these development stars may calibrate the
simulator; held-out real classes must not.
"""

from __future__ import annotations

import os

import numpy as np
from scipy import optimize

from rcnn_jax.core import utils
from rcnn_jax.core.errors import UserError
from rcnn_jax.inputs import realdata
from rcnn_jax.realism import stars
from rcnn_jax.sim import bands
from rcnn_jax.sim import photometry

_q = stars.quantiles

# Epochs used, quadrature of the Moffat pixel integral.
PSF_MIN_PEAK_SIGMA = 50.0     # peak / expected noise of an epoch used to fit beta and FWHM
PSF_MAX_RAW_FRACTION = 0.75   # raw stamp maximum below this fraction of the saturation level
PSF_QUADRATURE_NODES = 4      # Gauss-Legendre nodes per pixel axis: exact to ~1e-5 of the peak
# Table seeing of the HiTS release = FWHM[px] x 0.27"/px rounded to 0.01 px (the units check).
HITS_TABLE_SEEING_STEP_ARCSEC = 0.0027


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
  fwhm0, x0, y0, _, ok0 = stars.fit_gaussian(img)
  if not ok0:
    fwhm0, x0, y0 = 4.0, 0.0, 0.0
  free_beta = beta is None
  flux0 = float(photometry.aperture_flux(img, x0, y0))
  p0 = [np.log(max(flux0, 1.0)), float(np.clip(x0, -2.9, 2.9)),
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
    return [float(v) for v in r.x], stars.robust_std(res), float(np.median(res))

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
    sigma = stars.expected_noise(sky, gain, rn)
    snr = stars.central_peak(d) / sigma
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
  bands.require_one_band(config, 'the PSF calibration (realism --calibrate)')
  files = realdata.expand_inputs(paths)
  camera = stars.camera_params(config, camera_path)
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
  gauss = np.array([stars.fit_gaussian(d)[0] for d in ep['stamp']]) * pix
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
