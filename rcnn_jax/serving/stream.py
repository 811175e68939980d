"""The incremental (alert-broker) mode: one new image per object per call, each object's state
kept between calls.

``Classifier.new_state`` / ``update`` / ``reset`` (``classifier.py``) come from ``Streaming``
here. The state keeps each object's LSTM carry, its last n_w - 1 eq. 4 images, and its first MJD
and zero point, drops images whose seeing is above the cut, and gives the same probabilities as
``Classifier.classify(..., full_length=True)`` on the whole sequence; it starts at an object's
first image (a broker starts the stream where it wants the sequence to start) and does not
truncate.
"""

from __future__ import annotations

import dataclasses
import sys

import jax
import jax.numpy as jnp
import numpy as np

from rcnn_jax.core.errors import UserError
from rcnn_jax.inputs import plausibility
from rcnn_jax.inputs import realdata
from rcnn_jax.sim import bands as bands_lib
from rcnn_jax.sim import sequences


@dataclasses.dataclass(frozen=True)
class StreamState:
  """Per-object state of the incremental mode, one slot per object; opaque, never mutated.

  Device: LSTM ``carry`` (c, h) [N, H] float32, ``window`` [N, n_w - 1, S, S] eq. 4 images of
  the last n_w - 1 epochs, ``window_t`` [N, n_w - 1] their days since the object's first image
  and ``probs`` [N, C] the latest probabilities (NaN before the first step). Host (float64, as
  the time gaps and eq. 4 need them exactly): ``num_images``, ``mjd0``, ``zp0``, ``last_mjd``.
  """
  carry: tuple
  window: jax.Array
  window_t: jax.Array
  probs: jax.Array
  num_images: np.ndarray
  mjd0: np.ndarray
  zp0: np.ndarray
  last_mjd: np.ndarray
  n_w: int
  window_band: jax.Array = None  # [N, n_w - 1] int32 bands of the window (several bands only)

  @property
  def num_objects(self) -> int:
    return int(self.num_images.shape[0])

  @property
  def num_steps(self) -> np.ndarray:
    """[N] complete steps seen per object (0 until n_w images have arrived)."""
    return np.maximum(self.num_images - self.n_w + 1, 0)


class Streaming:
  """The incremental mode of a classifier (a mixin of ``classifier.Classifier``), which gives
  ``model``, ``n_w``, ``stamp_size``, ``num_classes``, ``rules``, ``bands``, ``_variables()``,
  ``_initial_carry(n)``, ``_update`` (``jax.jit(self._update_fn)``) and ``_shift``
  (``jax.jit(self._shift_fn)``)."""

  def new_state(self, num_objects) -> StreamState:
    """Empty slots for ``num_objects`` objects; each starts at its first ``update``."""
    n, s = int(num_objects), self.stamp_size
    return StreamState(
        carry=self._initial_carry(n),
        window=jnp.zeros((n, self.n_w - 1, s, s), jnp.float32),
        window_t=jnp.zeros((n, self.n_w - 1), jnp.float32),
        probs=jnp.full((n, self.num_classes), jnp.nan, jnp.float32),
        num_images=np.zeros(n, np.int64), mjd0=np.full(n, np.nan), zp0=np.full(n, np.nan),
        last_mjd=np.full(n, -np.inf), n_w=self.n_w,
        window_band=jnp.zeros((n, self.n_w - 1), jnp.int32) if len(self.bands) > 1 else None)

  def reset(self, state: StreamState, objects) -> StreamState:
    """The state with the given slots emptied, to be reused by new objects."""
    idx = _indices(objects, state.num_objects)
    fresh = self.new_state(len(idx))

    def put(old, new):
      if isinstance(old, np.ndarray):
        old = old.copy()
        old[idx] = new
        return old
      return old.at[idx].set(new)

    fields = ('carry', 'window', 'window_t', 'probs', 'num_images', 'mjd0', 'zp0', 'last_mjd')
    fields += ('window_band',) if state.window_band is not None else ()
    return dataclasses.replace(state, **{
        f: jax.tree.map(put, getattr(state, f), getattr(fresh, f)) for f in fields})

  def _update_fn(self, variables, carry, window, window_t, probs, image, t, active, ready,
                 window_band=None, band=None):
    x = jnp.moveaxis(jnp.concatenate([window, image[:, None]], axis=1), 1, -1)[:, None]
    gaps = jnp.concatenate([window_t, t[:, None]], axis=1)[:, None]
    if window_band is not None:  # several bands: the images' one-hots after the gaps
      wb = jnp.concatenate([window_band, band[:, None]], axis=1)  # [N, n_w]
      oh = jax.nn.one_hot(wb, len(self.bands), dtype=jnp.float32).reshape(wb.shape[0], 1, -1)
      gaps = jnp.concatenate([gaps, oh], axis=-1)
    logits, carry = self.model.apply(variables, x, gaps, ready[:, None], carry, method='step')
    p = jax.nn.softmax(logits[:, 0].astype(jnp.float32), axis=-1)
    probs = jnp.where(ready[:, None], p, probs)
    return (carry,) + self._shift_fn(window, window_t, image, t, active, window_band, band) + (
        probs,)

  def _shift_fn(self, window, window_t, image, t, active, window_band=None, band=None):
    """The active objects' windows with the new image, time and band appended (oldest out)."""
    if self.n_w > 1:
      window = jnp.where(active[:, None, None, None],
                         jnp.concatenate([window[:, 1:], image[:, None]], axis=1), window)
      window_t = jnp.where(active[:, None],
                           jnp.concatenate([window_t[:, 1:], t[:, None]], axis=1), window_t)
      if window_band is not None:
        window_band = jnp.where(active[:, None], jnp.concatenate(
            [window_band[:, 1:], band[:, None]], axis=1), window_band)
    return window, window_t, window_band

  def compiled_count(self) -> int:
    """How many shapes ``_update`` and ``_shift`` have compiled so far (0 where jax does not
    say): a call that raised it paid a compile."""
    sizes = [getattr(f, '_cache_size', None) for f in (self._update, self._shift)]
    return sum(size() for size in sizes if callable(size))

  def update(self, state: StreamState, images, mjd, zero_point=None, sky_adu=None,
             objects=None, seeing_arcsec=None, band=None):
    """One new image for each of some objects -> (probs [N, C], new state).

    ``objects``: None (all N slots), K distinct slot indices, or a boolean mask [N]; ``images``
    [K, H, W] raw ADU (sky included, centre-cropped to the stamp size like ``realdata``), ``mjd``
    [K]; ``zero_point`` [K] (None or NaN: no eq. 4 scaling, as ``realdata`` without zero
    points) and ``sky_adu`` [K] (None or NaN: the outer-ring estimate of ``realdata``).
    ``seeing_arcsec`` [K] (None: not given, every image kept): an image whose seeing is above
    ``config.survey.max_seeing_arcsec``, or NaN (conditions not measured, with
    ``config.real.drop_unknown_seeing``, as ``preprocess`` drops a file's), is dropped, as
    training never contains one (its object is left as if it had no new image); so is an
    implausible epoch (``plausibility.epoch_problems``: an infinite zero point or one far
    outside the survey's, non-positive seeing or sky, pixels beyond what the camera records),
    with one line on stderr naming the slot and the MJD.
    ``probs`` holds every object's latest probabilities: NaN until it has n_w images, unchanged
    for objects without a new image. All N slots go through one jitted call of fixed shape.
    ``band`` [K]: each image's band (a name of ``config.survey.bands`` or its index); required
    when the model's survey has several bands, ignored with one.
    """
    n, s = state.num_objects, self.stamp_size
    idx = _indices(objects, n)
    k = len(idx)
    images = np.asarray(images)
    if images.ndim != 3 or images.shape[0] != k:
      raise UserError(f'images must be [{k}, H, W] for {k} objects, got {images.shape}')
    if k == 0:  # no image (e.g. every one dropped by the rules): nothing changes
      return np.asarray(state.probs), state
    good = np.ones(k, bool)
    if self.rules.plausibility is not None:
      opt = lambda x, name: None if x is None else _per_object(x, k, name)
      why = plausibility.epoch_problems(
          self.rules.plausibility, zero_point=opt(zero_point, 'zero_point'),
          seeing_arcsec=opt(seeing_arcsec, 'seeing_arcsec'), sky_adu=opt(sky_adu, 'sky_adu'),
          stamps=images)
      m = _per_object(mjd, k, 'mjd')
      for j, w in enumerate(why):
        if w:
          good[j] = False
          print(f'warning: object slot {idx[j]}: epoch MJD {m[j]:.5f} dropped: {w}',
                file=sys.stderr)
    if seeing_arcsec is not None and self.rules.max_seeing_arcsec is not None:
      seeing = _per_object(seeing_arcsec, k, 'seeing_arcsec')
      good &= ~(seeing > self.rules.max_seeing_arcsec)
      if self.rules.drop_unknown_seeing:
        good &= np.isfinite(seeing)
    if not good.all():
      sub = lambda x: None if x is None else _per_object(x, k, 'value')[good]
      bsub = None if band is None else np.asarray(band).reshape(-1)[good]
      return self.update(state, images[good], sub(mjd), sub(zero_point), sub(sky_adu),
                         idx[good], band=bsub)
    h, w = images.shape[1:]
    if h < s or w < s:
      raise UserError(f'stamps are {h}x{w}, smaller than the stamp size {s}')
    r0, c0 = (h - s) // 2, (w - s) // 2
    raw = images[:, r0:r0 + s, c0:c0 + s].astype(np.float32)
    mjd = _per_object(mjd, k, 'mjd')
    zp = np.full(k, np.nan) if zero_point is None else _per_object(zero_point, k, 'zero_point')
    sky = (np.full(k, np.nan, np.float32) if sky_adu is None else
           _per_object(sky_adu, k, 'sky_adu').astype(np.float32))
    unknown = np.isnan(sky)
    if unknown.any():
      sky[unknown] = realdata.estimate_sky(raw[unknown])
    for name, a in (('images', raw), ('mjd', mjd), ('sky_adu', sky)):
      if not np.all(np.isfinite(a)):
        raise UserError(f'{name} contains NaN or Inf')
    if np.any(mjd <= state.last_mjd[idx]):
      bad = idx[np.argmax(mjd <= state.last_mjd[idx])]
      raise UserError(f'object {bad}: mjd is not after its previous image')

    first = state.num_images[idx] == 0
    mjd0, zp0 = state.mjd0.copy(), state.zp0.copy()
    mjd0[idx[first]], zp0[idx[first]] = mjd[first], zp[first]
    last_mjd, num_images = state.last_mjd.copy(), state.num_images.copy()
    last_mjd[idx] = mjd
    num_images[idx] += 1
    known = np.isfinite(zp) & np.isfinite(zp0[idx])  # else no scaling, as realdata without zp
    proc = sequences.preprocess(raw.astype(np.float64), sky.astype(np.float64),
                                np.where(known, zp, 0.0), np.where(known, zp0[idx], 0.0))

    image = np.zeros((n, s, s), np.float32)
    image[idx] = proc
    t = np.zeros(n, np.float32)
    t[idx] = (mjd - mjd0[idx]).astype(np.float32)
    active = np.zeros(n, bool)
    active[idx] = True
    ready = active & (num_images >= self.n_w)
    band_all = None
    if state.window_band is not None:
      band_all = np.zeros(n, np.int32)
      band_all[idx] = bands_lib.band_indices(band, self.bands, k)
    if ready.any():
      carry, window, window_t, window_band, probs = self._update(
          self._variables(), state.carry, state.window, state.window_t, state.probs, image, t,
          active, ready, state.window_band, band_all)
    else:  # no object completes a step: no model call (the LSTM keeps a masked step's state)
      carry, probs = state.carry, state.probs
      window, window_t, window_band = self._shift(state.window, state.window_t, image, t,
                                                  active, state.window_band, band_all)
    new = StreamState(carry=carry, window=window, window_t=window_t, probs=probs,
                      num_images=num_images, mjd0=mjd0, zp0=zp0, last_mjd=last_mjd, n_w=self.n_w,
                      window_band=window_band)
    return np.asarray(probs), new


def _indices(objects, n) -> np.ndarray:
  """Slot indices from None (all), an index array or a boolean mask [n]."""
  if objects is None:
    return np.arange(n)
  a = np.asarray(objects)
  if a.dtype == bool:
    if a.shape != (n,):
      raise UserError(f'object mask has shape {a.shape}, expected ({n},)')
    return np.flatnonzero(a)
  a = a.reshape(-1).astype(np.int64)
  if a.size and (a.min() < 0 or a.max() >= n):
    raise UserError(f'object indices must be in [0, {n}), got {a.min()}..{a.max()}')
  if len(np.unique(a)) != len(a):
    raise UserError('object indices must be distinct (one new image per object per update)')
  return a


def _per_object(x, k, name) -> np.ndarray:
  a = np.asarray(x, np.float64).reshape(-1)
  if a.shape != (k,):
    raise UserError(f'{name} must have one value per object ({k}), got shape {np.shape(x)}')
  return a
