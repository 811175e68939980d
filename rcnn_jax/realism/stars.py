"""A star measured on its stamps (Appendix A): background noise, a Gaussian FWHM fit, the
central peak, and the camera those measurements assume.

Shared by the realism comparison (``realism.py``), the PSF calibration (``psf_calibration.py``)
and the constant-star and variable statistics (``lcstats.py``); the aperture sum is in
``photometry.py``. The thresholds below are part of the measurements' definitions (and of the
recorded results in experiments/realism/), not hyperparameters of the simulator or the model.
"""

from __future__ import annotations

from astropy.stats import mad_std
import numpy as np
from scipy import optimize
from scipy import special

from rcnn_jax.sim import photometry
from rcnn_jax.sim import render
from rcnn_jax.sim import survey

RING_WIDTH = 3          # px, outer ring used for the background noise
FIT_BOX = 9             # px, central box of the Gaussian FWHM fit
MIN_PEAK_SIGMA = 20.0   # peak / expected noise needed to measure a FWHM


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
  """Robust std (``astropy.stats.mad_std``) of ``ring_residuals``: ~1 % low on pure Gaussian
  noise."""
  return mad_std(ring_residuals(img, dx, dy, width), axis=-1)


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


def central_peak(img, half=2):
  """Brightest pixel of the central (2 half + 1)^2 box; img [..., S, S]."""
  img = np.asarray(img)
  c = img.shape[-1] // 2
  return img[..., c - half:c + half + 1, c - half:c + half + 1].max((-2, -1))


def robust_std(x):
  """``astropy.stats.mad_std`` of the finite values (NaN when there are none)."""
  x = np.asarray(x, np.float64)
  x = x[np.isfinite(x)]
  return float(mad_std(x)) if x.size else float('nan')


def measure(d, sigma):
  """Per-epoch measurements of sky-subtracted stamps d [E, S, S]."""
  fits = [fit_gaussian(x) for x in d]
  fwhm, dx, dy, _, ok = (np.array(v) for v in zip(*fits))
  cx, cy = np.where(ok, dx, 0.0), np.where(ok, dy, 0.0)
  flux = photometry.aperture_flux(d, cx, cy)
  peak = central_peak(d)
  res = ring_residuals(d, cx, cy)
  noise = mad_std(res, axis=-1)
  return dict(fwhm_px=fwhm, dx=dx, dy=dy, fit_ok=ok.astype(bool), flux=flux, peak=peak,
              noise=noise, ring_residuals=res, bright=peak > MIN_PEAK_SIGMA * sigma,
              ring_median=np.median(d[:, ring_mask(d.shape[-1])], 1))


def quantiles(x, qs=(16, 50, 84)):
  """Percentiles ``qs`` of the finite values (NaN when there are none)."""
  x = np.asarray(x, np.float64)
  x = x[np.isfinite(x)]
  return [float(v) for v in np.percentile(x, qs)] if x.size else [float('nan')] * len(qs)


def camera_params(config, camera_path=None):
  """(gain, read_noise_e, saturation_adu, source): medians of a camera table, else the config's."""
  path = camera_path or config.survey.camera_path
  if path:
    cam = survey.read_camera(path)
    return (float(np.median(cam['gain_e_per_adu'])), float(np.median(cam['read_noise_e'])),
            float(np.median(cam['saturation_adu'])), f'median of {path}')
  sc = config.survey
  lo, hi = sc.gain_range
  # The built-in model draws gains as lo + (hi - lo) Beta(2, 5): its mean.
  return (float(lo + (hi - lo) * 2.0 / 7.0), float(sc.read_noise_median_e),
          float(np.mean(sc.saturation_range_adu)), 'config.survey (built-in camera model)')
