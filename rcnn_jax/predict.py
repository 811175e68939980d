"""Classifying real image sequences with a trained RCNN: files to CSV and figures, or streamed.

    python -m rcnn_jax.predict --workdir W INPUT... [--out predictions.csv] [--step S]
        [--plot DIR] [--fail-fast] [--batch N] [--start first|detection] [--full_length]

An INPUT is a sequence file in a ``realdata`` format (``.npz``: ``stamps`` (T, H, W) ADU with
sky and ``mjd`` (T,), optionally ``zero_point`` and ``sky_adu``; or a FITS cube with an MJD
table) or a folder of them. The CSV has one row per object and step: ``object`` (file stem),
``step`` (1-based), ``mjd`` (the step's last image) and one probability column per class.
``--plot DIR`` draws the paper's Appendix B figure per object to ``DIR/<object>.png``.

Bad files are reported as one line each on stderr (``error: <path>: <problem>``); the good ones
are still classified and the CSV written, and the exit status is 2. ``--fail-fast`` stops at the
first bad file. With no good file nothing is written (an existing ``--out`` is kept).

Inputs are prepared exactly as in training (``preprocess.prepare``): epochs with seeing above
``config.survey.max_seeing_arcsec`` are dropped, eq. 4 scales to the first kept epoch's zero
point, and the sequence starts at the first kept epoch (``--start first``, the default) or
``sim.pre_detection`` epochs before the photometric first detection (``--start detection``,
for supernovae and asteroids). Sequences are truncated at ``config.sim.max_steps`` steps (the
paper's "after 20 inputs"; the model never saw more). ``--full_length`` (``classify(...,
full_length=True)``) keeps the old behaviour: every step, the LSTM running on with its carry,
an extrapolation. The incremental mode (``Classifier.new_state`` / ``update``) keeps each
object's LSTM carry, its last n_w - 1 eq. 4 images, and its first MJD and zero point, drops
images whose seeing is above the cut, and gives the same probabilities as ``classify(...,
full_length=True)`` on the whole sequence; it starts at an object's first image (a broker
starts the stream where it wants the sequence to start) and does not truncate.

Only the image model (``model.kind == 'rcnn'``) is supported: the light-curve classifier needs
per-image seeing, gain and read noise for its optimal photometry, which real files lack.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import sys

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from rcnn_jax import bands as bands_lib
from rcnn_jax import models
from rcnn_jax import preprocess
from rcnn_jax import realdata
from rcnn_jax import realism
from rcnn_jax import sequences
from rcnn_jax import utils

APERTURE_RADIUS_PX = 3.0  # light curve of the figures: sum of eq. 4 counts within this radius


def _define_flags():
  """Command-line flags, defined only when the module runs as a command."""
  global _WORKDIR, _STEP, _OUT, _PLOT, _FAIL_FAST, _BATCH, _START, _FULL
  _WORKDIR = flags.DEFINE_string('workdir', None, 'Training workdir of an RCNN.')
  _STEP = flags.DEFINE_integer('step', None, 'Checkpoint step (default: the best by val loss).')
  _OUT = flags.DEFINE_string('out', 'predictions.csv', 'Where the CSV goes.')
  _PLOT = flags.DEFINE_string('plot', None, 'Folder for one Appendix B figure per object.')
  _FAIL_FAST = flags.DEFINE_bool('fail-fast', False, 'Stop at the first bad file.')
  _BATCH = flags.DEFINE_integer('batch', 64, 'Objects per model call.')
  _START = flags.DEFINE_enum('start', 'first', ['first', 'detection'],
                             'Sequence start: first kept epoch, or pre_detection epochs before '
                             'the first 5-sigma detection (transients).')
  _FULL = flags.DEFINE_bool('full_length', False, 'Classify past config.sim.max_steps (an '
                            'extrapolation) instead of truncating there.')


# ----------------------------------------------------------------------------------------------
# The classifier: whole sequences and the incremental mode


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


class Classifier:
  """A trained RCNN for real sequences: whole ones (``classify``) or image by image (``update``)."""

  def __init__(self, config, params, batch_stats, dtype=None):
    """``dtype`` ('float32' or 'bfloat16') overrides config.model.dtype for conv and dense layers;
    the LSTM and its state stay in float32 either way."""
    _check_kind(config)
    model_config = ml_collections.ConfigDict(config.model.to_dict())
    if dtype is not None:
      model_config.dtype = dtype
    self.config = config
    self.class_names = tuple(str(c) for c in config.sim.class_names)
    self.n_w = int(config.sim.n_w)
    self.max_steps = int(config.sim.max_steps)
    self.stamp_size = int(config.sim.stamp_size)
    self.bands = bands_lib.survey_bands(config.get('survey', None))
    self.rules = preprocess.Rules.from_config(config)
    self.dtype = str(model_config.dtype)
    self.model = models.build_model(model_config, len(self.class_names), self.n_w)
    self.params = params
    self.batch_stats = batch_stats
    self.checkpoint_step = None  # set by from_workdir
    self._chunk = jax.jit(self._chunk_fn)
    self._update = jax.jit(self._update_fn)

  @classmethod
  def from_workdir(cls, workdir, step=None, dtype=None) -> 'Classifier':
    """The best checkpoint of a training workdir (or ``step``)."""
    # Training and simulator modules only when a workdir is read (not for bench or a broker).
    from rcnn_jax import evaluate  # pylint: disable=g-import-not-at-top
    from rcnn_jax import train  # pylint: disable=g-import-not-at-top
    config = train.load_config(workdir)
    _check_kind(config)
    config, _, _, state, step = evaluate.restore_for_eval(workdir, step)
    out = cls(config, state.params, state.batch_stats, dtype)
    out.checkpoint_step = int(step)
    return out

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def _variables(self):
    return {'params': self.params, 'batch_stats': self.batch_stats}

  def _initial_carry(self, n):
    z = jnp.zeros((n, self.model.lstm_size), jnp.float32)
    return (z, z)

  # Whole sequences ----------------------------------------------------------------------------

  def _chunk_fn(self, variables, x, time_gaps, mask, carry):
    logits, carry = self.model.apply(variables, x, time_gaps, mask, carry, method='step')
    return jax.nn.softmax(logits.astype(jnp.float32), axis=-1), carry

  def classify(self, seqs, batch_size=64, max_steps=None, start='first',
               full_length=False, warn=None) -> list[np.ndarray]:
    """Per sequence, probabilities [num_steps, C] over its first ``config.sim.max_steps`` steps.

    ``max_steps`` overrides that limit; ``full_length`` classifies every step instead.
    ``start``: 'first', 'detection' or a list of either per sequence (``preprocess.prepare``).
    Sequences are batched by length into [batch, config.sim.max_steps] chunks (zero-padded,
    masked) run one after another with the LSTM carry, so every call has the same shapes.
    """
    seqs = list(seqs)
    if not seqs:
      return []
    starts = start if isinstance(start, (list, tuple)) else [start] * len(seqs)
    limit = None if full_length else (self.max_steps if max_steps is None else int(max_steps))
    inputs = [self._inputs(s, limit, st, warn) for s, st in zip(seqs, starts)]
    lengths = np.array([len(m) for _, _, m in inputs])
    order = np.argsort(-lengths, kind='stable')  # similar lengths share a batch: less padding
    b = int(min(batch_size, _next_pow2(len(seqs))))
    t = self.max_steps
    s, n_w = self.stamp_size, self.n_w
    out = [None] * len(seqs)
    variables = self._variables()
    for start in range(0, len(seqs), b):
      idx = order[start:start + b]
      total = -(-int(lengths[idx].max()) // t) * t
      x = np.zeros((b, total, s, s, n_w), np.float32)
      gaps = np.zeros((b, total, n_w), np.float32)
      mask = np.zeros((b, total), bool)
      for row, i in enumerate(idx):
        images, g, m = inputs[i]
        x[row, :len(m)], gaps[row, :len(m)], mask[row, :len(m)] = images, g, m
      carry = self._initial_carry(b)
      probs = []
      for c in range(0, total, t):
        p, carry = self._chunk(variables, x[:, c:c + t], gaps[:, c:c + t], mask[:, c:c + t],
                               carry)
        probs.append(p)
      probs = np.concatenate(jax.device_get(probs), axis=1)
      for row, i in enumerate(idx):
        out[i] = probs[row, :lengths[i]]
    return out

  def prepare(self, seq, max_steps='config', start='first', warn=None) -> dict:
    """``preprocess.prepare`` with this model's rules (seeing cut, zp_ref, start, window)."""
    if seq.stamps.shape[1:] != (self.stamp_size, self.stamp_size):
      raise ValueError(f'{seq.name}: stamps are {seq.stamps.shape[1]}x{seq.stamps.shape[2]}, '
                       f'the model takes {self.stamp_size}x{self.stamp_size}')
    return preprocess.prepare(seq, self.rules, start=start, max_steps=max_steps, warn=warn)

  def _inputs(self, seq, max_steps, start='first', warn=None):
    """(images [T, S, S, n_w], time gaps [T, n_w], mask [T]) of a sequence's valid steps."""
    d = self.prepare(seq, max_steps, start, warn)
    n = d['num_steps']
    return d['images'][:n], d['time_gaps'][:n], d['mask'][:n]

  # Incremental (alert-broker) mode --------------------------------------------------------------

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
    if self.n_w > 1:
      window = jnp.where(active[:, None, None, None],
                         jnp.concatenate([window[:, 1:], image[:, None]], axis=1), window)
      window_t = jnp.where(active[:, None],
                           jnp.concatenate([window_t[:, 1:], t[:, None]], axis=1), window_t)
      if window_band is not None:
        window_band = jnp.where(active[:, None], jnp.concatenate(
            [window_band[:, 1:], band[:, None]], axis=1), window_band)
    return carry, window, window_t, probs, window_band

  def update(self, state: StreamState, images, mjd, zero_point=None, sky_adu=None,
             objects=None, seeing_arcsec=None, band=None):
    """One new image for each of some objects -> (probs [N, C], new state).

    ``objects``: None (all N slots), K distinct slot indices, or a boolean mask [N]; ``images``
    [K, H, W] raw ADU (sky included, centre-cropped to the stamp size like ``realdata``), ``mjd``
    [K]; ``zero_point`` [K] (None or NaN: no eq. 4 scaling, as ``realdata`` without zero
    points) and ``sky_adu`` [K] (None or NaN: the outer-ring estimate of ``realdata``).
    ``seeing_arcsec`` [K] (None or NaN: unknown, kept): an image whose seeing is above
    ``config.survey.max_seeing_arcsec`` is dropped, as training never contains one (its object
    is left as if it had no new image).
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
      raise ValueError(f'images must be [{k}, H, W] for {k} objects, got {images.shape}')
    if seeing_arcsec is not None and self.rules.max_seeing_arcsec is not None:
      seeing = _per_object(seeing_arcsec, k, 'seeing_arcsec')
      good = ~(seeing > self.rules.max_seeing_arcsec)  # NaN: unknown, kept
      if not good.all():
        sub = lambda x: None if x is None else _per_object(x, k, 'value')[good]
        bsub = None if band is None else np.asarray(band).reshape(-1)[good]
        return self.update(state, images[good], sub(mjd), sub(zero_point), sub(sky_adu),
                           idx[good], band=bsub)
    h, w = images.shape[1:]
    if h < s or w < s:
      raise ValueError(f'stamps are {h}x{w}, smaller than the stamp size {s}')
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
        raise ValueError(f'{name} contains NaN or Inf')
    if np.any(mjd <= state.last_mjd[idx]):
      bad = idx[np.argmax(mjd <= state.last_mjd[idx])]
      raise ValueError(f'object {bad}: mjd is not after its previous image')

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
    carry, window, window_t, probs, window_band = self._update(
        self._variables(), state.carry, state.window, state.window_t, state.probs, image, t,
        active, ready, state.window_band, band_all)
    new = StreamState(carry=carry, window=window, window_t=window_t, probs=probs,
                      num_images=num_images, mjd0=mjd0, zp0=zp0, last_mjd=last_mjd, n_w=self.n_w,
                      window_band=window_band)
    return np.asarray(probs), new


def _check_kind(config):
  if config.model.kind != 'rcnn':
    raise utils.UserError(f"prediction needs the image model (model.kind 'rcnn'), got "
                          f"{config.model.kind!r}: the light-curve classifier's photometry "
                          'needs per-image seeing, gain and read noise')


def _next_pow2(n):
  return 1 << max(int(n) - 1, 0).bit_length()


def _indices(objects, n) -> np.ndarray:
  """Slot indices from None (all), an index array or a boolean mask [n]."""
  if objects is None:
    return np.arange(n)
  a = np.asarray(objects)
  if a.dtype == bool:
    if a.shape != (n,):
      raise ValueError(f'object mask has shape {a.shape}, expected ({n},)')
    return np.flatnonzero(a)
  a = a.reshape(-1).astype(np.int64)
  if a.size and (a.min() < 0 or a.max() >= n):
    raise ValueError(f'object indices must be in [0, {n}), got {a.min()}..{a.max()}')
  if len(np.unique(a)) != len(a):
    raise ValueError('object indices must be distinct (one new image per object per update)')
  return a


def _per_object(x, k, name) -> np.ndarray:
  a = np.asarray(x, np.float64).reshape(-1)
  if a.shape != (k,):
    raise ValueError(f'{name} must have one value per object ({k}), got shape {np.shape(x)}')
  return a


# ----------------------------------------------------------------------------------------------
# CSV and figures


def step_mjd(seq, n_w, num_steps) -> np.ndarray:
  """MJD of each step's last image."""
  return np.asarray(seq.mjd[n_w - 1:n_w - 1 + num_steps], np.float64)


def predictions_csv(seqs, probs, n_w, class_names, step_mjds=None) -> str:
  """CSV text: object, step (1-based), mjd of the step's last image, one column per class.

  ``step_mjds``: per sequence, its steps' last-image MJDs (``prepare``'s ``mjd_last``); by
  default the file's epochs from the first (no epoch dropped).
  """
  buf = io.StringIO()
  out = csv.writer(buf, lineterminator='\n')
  out.writerow(['object', 'step', 'mjd'] + list(class_names))
  if step_mjds is None:
    step_mjds = [step_mjd(seq, n_w, len(p)) for seq, p in zip(seqs, probs)]
  for seq, p, mjds in zip(seqs, probs, step_mjds):
    for j, (m, row) in enumerate(zip(mjds, p)):
      out.writerow([seq.name, j + 1, f'{m:.6f}'] + [f'{v:.7g}' for v in row])
  return buf.getvalue()


def eq4_images(seq) -> np.ndarray:
  """[E, S, S] sky-subtracted stamps scaled to the first image's zero point (eq. 4)."""
  zp = np.zeros(seq.num_epochs) if seq.zero_point is None else seq.zero_point
  return sequences.preprocess(np.asarray(seq.stamps, np.float64),
                              np.asarray(seq.sky_adu, np.float64), zp, zp[0])


def plot_paths(seqs, plot_dir) -> list[str]:
  """DIR/<object>.png per sequence; repeated names get _2, _3, ... instead of overwriting."""
  seen, out = {}, []
  for s in seqs:
    seen[s.name] = seen.get(s.name, 0) + 1
    suffix = '' if seen[s.name] == 1 else f'_{seen[s.name]}'
    out.append(os.path.join(plot_dir, f'{s.name}{suffix}.png'))
  return out


# ----------------------------------------------------------------------------------------------
# The command


def predict_files(workdir, inputs, out, step=None, plot_dir=None, fail_fast=False,
                  batch_size=64, classifier=None, stderr=None, start='first',
                  full_length=False) -> int:
  """Classifies files and folders into a CSV (and figures); returns the exit status (0 or 2).

  ``classifier`` reuses an already restored model (``workdir`` and ``step`` are then unused).
  ``start`` and ``full_length`` as in ``Classifier.classify``.
  """
  from rcnn_jax import train  # pylint: disable=g-import-not-at-top
  stderr = stderr or sys.stderr
  config = classifier.config if classifier is not None else train.load_config(workdir)
  _check_kind(config)
  try:
    seqs, errors = realdata.load_many(inputs, int(config.sim.stamp_size), int(config.sim.n_w),
                                      fail_fast=fail_fast)
  except realdata.BadInput as e:
    print(f'error: {e}', file=stderr)
    print('stopped at the first bad file (--fail-fast); nothing classified', file=stderr)
    return 2
  for e in errors:
    print(f'error: {e}', file=stderr)
  if not seqs:
    print(f'error: no valid input sequence ({len(errors)} bad); {out} not written', file=stderr)
    return 2
  if classifier is None:
    classifier = Classifier.from_workdir(workdir, step)
  warn = preprocess.Warnings(stderr)
  probs = classifier.classify(seqs, batch_size=batch_size, start=start,
                              full_length=full_length, warn=warn)
  limit = None if full_length else classifier.max_steps
  mjds = [classifier.prepare(s, limit, start, warn)['mjd_last'][:len(p)]
          for s, p in zip(seqs, probs)]
  utils.atomic_write_text(out, predictions_csv(seqs, probs, classifier.n_w,
                                               classifier.class_names, mjds))
  print(f'wrote {out}: {len(seqs)} objects, {sum(len(p) for p in probs)} steps'
        + (f'; {len(errors)} bad files skipped' if errors else ''))
  if plot_dir:
    from rcnn_jax import plots  # pylint: disable=g-import-not-at-top
    os.makedirs(plot_dir, exist_ok=True)
    for seq, p, m, path in zip(seqs, probs, mjds, plot_paths(seqs, plot_dir)):
      images = eq4_images(seq)
      plots.plot_sequence_prediction(
          path, seq.name, seq.mjd, realism.aperture_flux(images, radius=APERTURE_RADIUS_PX),
          m, p, classifier.class_names, images)
    print(f'wrote {len(seqs)} figures to {plot_dir}')
  return 2 if errors else 0


def main(argv):
  if len(argv) < 2:
    raise app.UsageError('give at least one input file or folder')
  if not _WORKDIR.value:
    raise app.UsageError('--workdir is required')
  if _BATCH.value < 1:
    raise app.UsageError('--batch must be >= 1')
  return predict_files(_WORKDIR.value, argv[1:], _OUT.value, step=_STEP.value,
                       plot_dir=_PLOT.value, fail_fast=_FAIL_FAST.value, batch_size=_BATCH.value,
                       start=_START.value, full_length=_FULL.value)


if __name__ == '__main__':
  _define_flags()
  utils.run(main)
