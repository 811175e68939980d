"""Optimal photometry (Naylor 1998) for the light-curve classifier of Sec. 3.3.

Each stamp's flux is the PSF-weighted sum F = sum_i w_i D_i with w = (P / V) / sum(P^2 / V),
where D is the sky-subtracted stamp, V the per-pixel variance (sky and read noise) and P the
epoch's PSF at the stamp centre, averaged over the sub-pixel position (uniform in the central
pixel, as the simulator draws it). Since sum_i w_i <P_i> = 1, F is unbiased for a point source
at an unknown sub-pixel position, and counts the flux beyond the stamp through the PSF model.
Var(F) = sum_i w_i^2 (V_i + max(F, 0) P_i / gain).

``aperture_flux``: the plain aperture sum (numpy) of the realism check and the figures.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from rcnn_jax.sim import render


def mean_psf(fwhm_px, size, kind='moffat', beta=3.0, psf_bank=None):
  """The PSF averaged over a uniform sub-pixel centre: PSF convolved with the 1-px box."""
  if kind == 'bank':
    offs = jnp.linspace(-0.375, 0.375, 4)
    return jnp.mean(jnp.stack([render.bank_psf(psf_bank, fwhm_px, x, y, size)
                               for x in offs for y in offs]), 0)
  w, s = render.psf_mixture(kind, beta)
  sig = jnp.sqrt((jnp.asarray(s) * fwhm_px)**2 + 1.0 / 12.0)
  return render.gaussian_mixture_stamp(jnp.asarray(w), sig, 0.0, 0.0, size)


def optimal_flux(stamp_minus_sky, fwhm_px, sky_adu, gain, read_noise_e, kind='moffat',
                 beta=3.0, psf_bank=None):
  """(flux, variance) in ADU of a centred point source in one sky-subtracted stamp [H, W]."""
  p = mean_psf(fwhm_px, stamp_minus_sky.shape[-1], kind, beta, psf_bank)
  v = jnp.maximum(sky_adu, 0.0) / gain + (read_noise_e / gain)**2
  pv = p / v
  w = pv / jnp.sum(p * pv)
  flux = jnp.sum(w * stamp_minus_sky)
  var = jnp.sum(w * w * (v + jnp.maximum(flux, 0.0) * p / gain))
  return flux, var


APERTURE_PX = 8.0  # px, aperture radius of the realism check's flux


def aperture_flux(img, dx=0.0, dy=0.0, radius=APERTURE_PX):
  """Sum of pixels whose centre lies within ``radius`` of (dx, dy); img [..., S, S]."""
  img = np.asarray(img, np.float64)
  size = img.shape[-1]
  yy, xx = np.indices((size, size)) - (size - 1) / 2.0
  dx, dy = np.asarray(dx, np.float64), np.asarray(dy, np.float64)
  inside = np.hypot(xx - dx[..., None, None], yy - dy[..., None, None]) <= radius
  return (img * inside).sum((-2, -1))
