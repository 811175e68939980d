"""Sec. 3.1: first detection, the window of epochs, eq. 4, n_w-image stacks and masks.

All functions are pure JAX on one object's arrays (vmap for batches); shapes are static. They
are the one definition of a model input: the simulator (``simulator._observe``) and real files
(``preprocess.prepare``, used by ``realdata``, ``predict`` and ``evaluate --real``) both call
``reference_zero_point`` and ``observe_steps``; ``preprocess`` adds the host-side rules that only
real files need (the seeing cut, the photometric first detection).
"""

from __future__ import annotations

import jax.numpy as jnp


def first_detection(mag, limmag, num_epochs):
  """Index of the first real epoch brighter than its limiting magnitude, or len(mag) if none."""
  e = mag.shape[-1]
  idx = jnp.arange(e)
  detected = (mag < limmag) & (idx < num_epochs)
  return jnp.where(detected.any(), jnp.argmax(detected), e).astype(jnp.int32)


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
