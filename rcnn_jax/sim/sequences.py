"""Sec. 3.1: first detection, the window of epochs, eq. 4, n_w-image stacks and masks.

All functions are pure JAX on one object's arrays (vmap for batches); shapes are static. They
are the one definition of a model input: the simulator (``simulator._observe``) and real files
(``preprocess.prepare``, used by ``realdata``, ``predict`` and ``evaluate --real``) both call
``reference_zero_point`` and ``observe_steps``; ``preprocess`` adds the host-side rules that only
real files need (the seeing cut, the photometric first detection).
"""

from __future__ import annotations

import jax.numpy as jnp


def detected_epochs(mag, limmag, num_epochs, baseline_epochs=0, band=None, num_bands=1):
  """[E] bool: the real epochs where the transient is detected (``first_detection``'s rule).

  ``baseline_epochs`` 0: its flux is above its 5-sigma limiting flux (``mag < limmag``).
  ``baseline_epochs`` n > 0: what a difference-imaging survey detects (HiTS: new sources on
  the difference against a template from the field's first epochs, Forster et al. 2016, ApJ
  832, 155), and what ``preprocess.detection_start`` measures on a real file: the flux minus
  the median flux of the field's first n epochs above 5 sigma of the difference, sigma^2 =
  sigma_e^2 + (pi / 2) mean(sigma_b^2) / n (the epoch's error and that of the baseline's
  median; sigma = limiting flux / 5). A transient already bright in the first epochs is only
  detected if it brightens by that much more. Fluxes are noiseless (m = inf: none).
  Several bands (``band`` [E] indices < ``num_bands``): each epoch is differenced against the
  first n epochs of its own band, as templates are per band.
  """
  e = mag.shape[-1]
  idx = jnp.arange(e)
  real = idx < num_epochs
  if baseline_epochs:
    nb = int(baseline_epochs)
    flux = 10.0**(-0.4 * mag)
    var = (10.0**(-0.4 * limmag) / 5.0)**2
    if band is None:
      ref = jnp.median(flux[..., :nb], axis=-1, keepdims=True)
      var_b = jnp.mean(var[..., :nb], -1, keepdims=True)
      n_b = nb
    else:
      # [..., B, E]: the first nb real epochs of each band; then each epoch's band's row.
      inb = (band[..., None, :] == jnp.arange(num_bands)[:, None]) & real
      base = inb & (jnp.cumsum(inb, axis=-1) <= nb)
      n_all = jnp.maximum(base.sum(-1), 1)
      ref_all = jnp.nanmedian(jnp.where(base, flux[..., None, :], jnp.nan), axis=-1)
      var_all = jnp.where(base, var[..., None, :], 0.0).sum(-1) / n_all
      pick = lambda a: jnp.take_along_axis(a, band, axis=-1)
      ref, var_b, n_b = pick(ref_all), pick(var_all), pick(n_all)
    sigma = jnp.sqrt(var + 0.5 * jnp.pi * var_b / n_b)
    detected = (flux - ref > 5.0 * sigma) & real
  else:
    detected = (mag < limmag) & real
  return detected


def first_detection(mag, limmag, num_epochs, baseline_epochs=0, band=None, num_bands=1):
  """Index of the first real epoch where the transient is detected (``detected_epochs``), or
  len(mag) if none."""
  return first_index(detected_epochs(mag, limmag, num_epochs, baseline_epochs, band, num_bands))


def first_index(detected):
  """Index of the first True of ``detected`` [E], or E if none."""
  return jnp.where(detected.any(), jnp.argmax(detected), detected.shape[-1]).astype(jnp.int32)


def detections_in_window(detected, start, max_steps, n_w):
  """How many of ``detected`` [E_field] fall inside the sequence window that starts at
  ``start`` (its T + n_w - 1 epochs, ``window``)."""
  e = max_steps + n_w - 1
  idx = jnp.arange(detected.shape[-1])
  inside = (idx >= start) & (idx < start + e)
  return jnp.sum(detected & inside, axis=-1).astype(jnp.int32)


def sequence_start(detection, num_epochs, pre_detection, n_w, clip_early=False):
  """(start, ok): the sequence starts ``pre_detection`` images before the detection.

  ``ok`` is False when the object is never detected or leaves fewer than ``n_w`` images from
  the start (no full step). An object detected before ``pre_detection`` images exist is
  rejected unless ``clip_early``; then its start is clipped to the field's first image, as
  ``preprocess.detection_start`` clips a real transient's (a supernova already bright when the
  survey began: 3 of the 10 real development supernovae start at the first image).
  """
  start = detection - pre_detection
  ok = (detection < num_epochs) & (num_epochs - jnp.maximum(start, 0) >= n_w)
  if not clip_early:
    ok = ok & (start >= 0)
  return jnp.maximum(start, 0).astype(jnp.int32), ok


def window(start, num_epochs, max_steps, n_w):
  """Epoch indices of a sequence and its masks.

  Returns (epoch_index [E], epoch_valid [E], step_mask [T]) with T = max_steps and
  E = T + n_w - 1. Indices past the field's last epoch are clamped (their images are masked);
  N_d = min(num_epochs - start - n_w + 1, max_steps) steps are valid.
  """
  e = max_steps + n_w - 1
  idx = start + jnp.arange(e)
  epoch_valid = idx < num_epochs
  step_mask = (start + jnp.arange(max_steps) + n_w - 1) < num_epochs
  return jnp.minimum(idx, num_epochs - 1).astype(jnp.int32), epoch_valid, step_mask


def num_steps(start, num_epochs, max_steps, n_w):
  """N_d: the number of valid steps of a sequence starting at ``start``."""
  return jnp.clip(num_epochs - start - n_w + 1, 0, max_steps)


def flux_scale(zero_point, zero_point_ref):
  """Eq. 4's factor 10^((zp_ref - zp)/2.5): the same counts for a given magnitude at any zp."""
  return 10.0**((zero_point_ref - zero_point) / 2.5)


def preprocess(raw_adu, sky_adu, zero_point, zero_point_ref):
  """Eq. 4: (image - sky) * 10^((zp_ref - zp)/2.5); raw [..., E, H, W], sky and zp [..., E]."""
  scale = flux_scale(zero_point, zero_point_ref)
  return (raw_adu - sky_adu[..., None, None]) * scale[..., None, None]


def stack_steps(x, n_w):
  """[E, ...] per-epoch values -> [T, ..., n_w] with step t holding epochs t .. t + n_w - 1."""
  t = x.shape[0] - n_w + 1
  return jnp.stack([x[j:j + t] for j in range(n_w)], axis=-1)


def time_gaps(t_days, n_w):
  """[E] epoch times -> [T, n_w]: each stacked image's time since the sequence's first image."""
  return stack_steps(t_days - t_days[0], n_w)


def reference_zero_point(zero_point):
  """Eq. 4's zp_ref: the zero point of the first kept (good-seeing) epoch of the field.

  ``zero_point`` [..., E] holds the kept epochs of a field's (or a real file's) time range in
  time order. The simulator's survey keeps only epochs with seeing <= max_seeing_arcsec, so
  this is its field's first good epoch; a real file passes its epochs after the same cut.
  """
  return zero_point[..., 0]


def observe_steps(raw_adu, sky_adu, zero_point, zero_point_ref, t_days, step_mask, n_w):
  """One sequence's model input from its E raw stamps: (images [T, H, W, n_w], gaps [T, n_w]).

  Eq. 4 on every epoch, then the n_w stacks; padded steps (``step_mask`` False) carry zeros,
  their images and time gaps alike. ``t_days`` [E] are the epochs' times (any origin); the gaps
  are days since the sequence's first image.
  """
  proc = preprocess(raw_adu, sky_adu, zero_point, zero_point_ref)
  images = jnp.where(step_mask[:, None, None, None], stack_steps(proc, n_w), 0.0)
  gaps = jnp.where(step_mask[:, None], time_gaps(t_days, n_w), 0.0)
  return images, gaps
