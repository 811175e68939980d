"""Loads and runs the ONNX streaming classifier (``python -m rcnn_jax.export --format onnx``)
with onnxruntime: the same calls as ``exported.py``'s loader, the preparation in numpy.

    from rcnn_jax.serving import onnx_stream
    clf = onnx_stream.load('onnx_artifact/')          # refuses a damaged, edited or unknown one
    state = clf.new_state(num_objects=1024)
    probs, state = clf.update(state, images, mjd, zero_point, sky_adu, seeing_arcsec, active,
                              band=None)

An artifact is a folder with ``manifest.json`` and ``step.onnx`` (the model's streaming step,
``export_onnx.py``). ``update`` does what ``Classifier.update`` (``stream.py``) does, in the
same order and in the same precision (float64 on the host, float32 in the graph): an active
slot whose epoch ``plausibility.epoch_problems`` finds implausible with the manifest's limits
is dropped for this call with one line on stderr (``warning: object slot {i}: epoch MJD {mjd}
dropped: {why}``); so is an image with seeing above ``max_seeing_arcsec`` (or NaN, with
``drop_unknown_seeing``), silently; then, for each kept image, a NaN or Inf pixel or MJD, an
infinite sky, or an MJD not after the slot's previous kept image, raises ``exported.InputError``
(one line naming the slot) before anything is updated (``exported.HostRules``, shared with the
jax.export loader). A NaN sky is estimated from the stamp's
outer ring (``realdata.estimate_sky``), eq. 4 scales to the slot's first kept zero point (none
when either is NaN), and the graph runs on the slots that complete a step (n_w kept images),
in batches of at most ``batch`` rows. The state is numpy: the LSTM carry, the last n_w - 1
eq. 4 images with their days and bands, the probabilities (NaN before the first step), and per
slot the count of kept images, the first MJD and zero point and the last MJD (float64).

Integrity: the manifest's ``model_sha256`` (of step.onnx's bytes) and ``fields_sha256`` (of
``export_onnx.DIGEST_FIELDS`` as canonical JSON, ``exported.fields_digest``) are checked
before the graph is read. ``python -m rcnn_jax.serving.onnx_stream DIR`` prints what the
artifact is, or the one-line refusal (exit status 2). ``examples/broker_onnx.py`` does the same
with numpy and onnxruntime only, for a broker that does not install rcnn_jax.
"""

from __future__ import annotations

import concurrent.futures
import os
import sys

import numpy as np

from rcnn_jax.core.errors import UserError
from rcnn_jax.inputs import realdata
from rcnn_jax.serving import export_onnx
from rcnn_jax.serving import exported
from rcnn_jax.sim import bands as bands_lib
from rcnn_jax.sim import sequences

InputError = exported.InputError
ManifestError = exported.ManifestError
BATCH = 512  # rows per onnxruntime call, at most (experiments/onnx/README.md)
_NEED = export_onnx.DIGEST_FIELDS + export_onnx.DIGESTS


def session_options(threads=1):
  """onnxruntime's CPU settings measured fastest here (experiments/onnx/README.md): every
  graph optimisation (its NCHWc convolution layout included), sequential execution, ``threads``
  in the intra-op pool (1: each call on its caller's thread; the loader runs one call per core
  side by side instead, ``OnnxClassifier.run``)."""
  import onnxruntime as ort  # lazy: optional extra [onnx], only when a session is made
  opts = ort.SessionOptions()
  opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
  opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
  opts.intra_op_num_threads = int(threads)
  opts.inter_op_num_threads = 1
  opts.log_severity_level = 3
  return opts


def check_manifest(path, manifest):
  """ManifestError unless the manifest is an ONNX streaming step's, complete and consistent."""
  if not isinstance(manifest, dict) or manifest.get('format') != export_onnx.FORMAT:
    got = manifest.get('format') if isinstance(manifest, dict) else None
    raise ManifestError(path, f'not an rcnn_jax ONNX streaming artifact (format {got!r}, '
                        f'expected {export_onnx.FORMAT!r})')
  if manifest.get('format_version') != export_onnx.FORMAT_VERSION:
    raise ManifestError(path, f'format version {manifest.get("format_version")!r} is not '
                        f'supported by this loader (reads {export_onnx.FORMAT_VERSION}); '
                        're-export with this rcnn_jax')
  missing = [k for k in _NEED if k not in manifest]
  if missing:
    raise ManifestError(path, f'manifest lacks {", ".join(missing)}')
  ins, outs = export_onnx.io_shapes(manifest)
  for key, want in (('inputs', ins), ('outputs', outs)):
    if manifest[key] != want:
      raise ManifestError(path, f'{key} are {manifest[key]}, but class_names, bands, n_w, '
                          f'stamp_size and lstm_size imply {want}')


def load(path, batch=BATCH, workers=None) -> 'OnnxClassifier':
  """Reads and checks an artifact folder; anything wrong raises ManifestError (one line).
  ``workers``: onnxruntime calls run side by side on parts of a batch (None: one per core),
  each of at most ``batch`` rows, each on one thread."""
  path = os.fspath(path)
  manifest = exported.read_manifest(path)
  check_manifest(path, manifest)
  file = os.path.join(path, export_onnx.ARTIFACT)
  if not os.path.isfile(file):
    raise ManifestError(path, f'no {export_onnx.ARTIFACT} beside the manifest')
  with open(file, 'rb') as f:
    blob = f.read()
  exported.check_digests(path, manifest, blob, export_onnx.DIGEST_FIELDS,
                         export_onnx.ARTIFACT, 'model_sha256',
                         'python -m rcnn_jax.export --format onnx')
  try:
    import onnxruntime as ort  # lazy: optional extra [onnx], only when an artifact is run
  except ImportError:
    raise UserError("running an ONNX artifact needs onnxruntime: pip install -e '.[onnx]'") \
        from None
  try:
    session = ort.InferenceSession(blob, session_options(1), providers=['CPUExecutionProvider'])
  except Exception as e:  # pylint: disable=broad-except
    raise ManifestError(path, f'onnxruntime {ort.__version__} cannot load '
                        f'{export_onnx.ARTIFACT} ({type(e).__name__}: {e})') from None
  got = [i.name for i in session.get_inputs()]
  if got != list(manifest['inputs']):
    raise ManifestError(path, f'the graph takes {got}, the manifest says '
                        f'{list(manifest["inputs"])}')
  return OnnxClassifier(path, manifest, session, batch, workers)


class OnnxClassifier(exported.HostRules):
  """The ONNX streaming step, its manifest and the numpy preparation around it."""
  SEEING_DTYPE = np.float64  # the seeing cut as stream.py compares

  def __init__(self, path, manifest, session, batch=BATCH, workers=None):
    self.path = path
    self.manifest = manifest
    self.session = session
    self.batch = int(batch)
    self.workers = int(workers or os.cpu_count() or 1)
    self._pool = None
    self.class_names = tuple(manifest['class_names'])
    self.bands = tuple(manifest['bands'])
    self.n_w = int(manifest['n_w'])
    self.stamp_size = int(manifest['stamp_size'])
    self.lstm_size = int(manifest['lstm_size'])
    self.max_seeing_arcsec = float(manifest['max_seeing_arcsec'])
    self.drop_unknown_seeing = bool(manifest['drop_unknown_seeing'])
    self.plausibility = manifest['plausibility']

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def new_state(self, num_objects) -> dict:
    """Empty slots: probabilities NaN, no image kept yet (numpy arrays, one row per slot)."""
    n, s, w = int(num_objects), self.stamp_size, self.n_w - 1
    return {
        'c': np.zeros((n, self.lstm_size), np.float32),
        'h': np.zeros((n, self.lstm_size), np.float32),
        'probs': np.full((n, self.num_classes), np.nan, np.float32),
        'window': np.zeros((n, w, s, s), np.float32),
        'window_t': np.zeros((n, w), np.float32),
        'window_band': np.zeros((n, w), np.int32),
        'num_images': np.zeros(n, np.int64),
        'mjd0': np.full(n, np.nan), 'zp0': np.full(n, np.nan), 'last_mjd': np.full(n, -np.inf),
    }

  def reset(self, state, objects) -> dict:
    """The state with slots ``objects`` (indices or a boolean mask) emptied for new objects."""
    n = state['num_images'].shape[0]
    sel = np.zeros(n, bool)
    sel[np.asarray(objects)] = True
    fresh = self.new_state(int(sel.sum()))
    out = {k: v.copy() for k, v in state.items()}
    for k, v in fresh.items():
      out[k][sel] = v
    return out

  def update(self, state, images, mjd, zero_point=None, sky_adu=None, seeing_arcsec=None,
             active=None, band=None):
    """One image per slot for the first N slots (``active`` [N] says which carry one) ->
    (probs [N, C], new state); the module docstring says what is dropped and refused.
    ``band`` [N]: names or indices of ``bands``, required when there are several."""
    slots, s = state['num_images'].shape[0], self.stamp_size
    raw = np.asarray(images)
    n = raw.shape[0] if raw.ndim == 3 else -1
    if raw.ndim != 3 or not 0 < n <= slots or min(raw.shape[1:]) < s:
      raise InputError(f'images must be [N, H, W] with N <= {slots} slots and H, W >= {s}, '
                       f'got {raw.shape}')

    per = lambda x, name, dtype=np.float64: self._per_slot(x, n, name, dtype)
    mjd, zp, sky = per(mjd, 'mjd'), per(zero_point, 'zero_point'), per(sky_adu, 'sky_adu')
    seeing = None if seeing_arcsec is None else per(seeing_arcsec, 'seeing_arcsec')
    act = np.ones(n, bool) if active is None else per(active, 'active', bool)
    kept = self._kept(act, raw, mjd, zp, sky, seeing)  # as stream.py: dropped, seeing cut
    idx = np.flatnonzero(kept)
    if len(self.bands) > 1:
      b_all = np.zeros(n, np.int32)
      if idx.size:
        b_all[idx] = bands_lib.band_indices(None if band is None else np.asarray(band)[idx],
                                            self.bands, idx.size)
    if not idx.size:
      return state['probs'][:n].copy(), state
    r0, c0 = (raw.shape[1] - s) // 2, (raw.shape[2] - s) // 2
    crop = raw[:, r0:r0 + s, c0:c0 + s].astype(np.float32)
    self._check_kept(kept, crop, mjd, sky, state['last_mjd'][:n])
    crop = crop[idx]
    sky_k = sky[idx].astype(np.float32)
    unknown = np.isnan(sky_k)
    if unknown.any():
      sky_k[unknown] = realdata.estimate_sky(crop[unknown])

    new = {k: v.copy() for k, v in state.items()}
    first = new['num_images'][idx] == 0
    new['mjd0'][idx[first]] = mjd[idx[first]]
    new['zp0'][idx[first]] = zp[idx[first]]
    new['last_mjd'][idx] = mjd[idx]
    new['num_images'][idx] += 1
    zp0 = new['zp0'][idx]
    known = np.isfinite(zp[idx]) & np.isfinite(zp0)  # else no scaling (stream.py)
    proc = sequences.preprocess(crop.astype(np.float64), sky_k.astype(np.float64),
                                np.where(known, zp[idx], 0.0),
                                np.where(known, zp0, 0.0)).astype(np.float32)
    t = (mjd[idx] - new['mjd0'][idx]).astype(np.float32)
    ready = new['num_images'][idx] >= self.n_w
    r = idx[ready]
    if r.size:
      feed = {
          'images': np.concatenate([state['window'][r], proc[ready][:, None]], axis=1),
          'time_gaps': np.concatenate([state['window_t'][r], t[ready][:, None]], axis=1),
          'mask': np.ones(r.size, bool), 'c': state['c'][r], 'h': state['h'][r]}
      if len(self.bands) > 1:
        feed['bands'] = np.concatenate([state['window_band'][r], b_all[r][:, None]], axis=1)
      probs, c, h = self.run(feed)
      new['probs'][r], new['c'][r], new['h'][r] = probs, c, h
    if self.n_w > 1:  # the window: oldest out, the new image in
      new['window'][idx] = np.concatenate([state['window'][idx][:, 1:], proc[:, None]], axis=1)
      new['window_t'][idx] = np.concatenate([state['window_t'][idx][:, 1:], t[:, None]], axis=1)
      if len(self.bands) > 1:
        new['window_band'][idx] = np.concatenate([state['window_band'][idx][:, 1:],
                                                  b_all[idx][:, None]], axis=1)
    return new['probs'][:n].copy(), new

  def run(self, feed) -> tuple:
    """The graph on prepared inputs (``manifest['inputs']``): the rows split into one part per
    worker (at most ``batch`` rows a call), the parts run side by side, each on one thread
    (onnxruntime releases the GIL; measured faster than its own intra-op pool of 2 threads)."""
    rows = len(feed['mask'])
    step = min(self.batch, -(-rows // self.workers))
    names = list(export_onnx.OUTPUT_NAMES)
    parts = [{k: np.ascontiguousarray(v[i:i + step]) for k, v in feed.items()
              if k in self.manifest['inputs']} for i in range(0, rows, step)]
    if len(parts) == 1:
      outs = [self.session.run(names, parts[0])]
    else:
      if self._pool is None:
        self._pool = concurrent.futures.ThreadPoolExecutor(self.workers)
      outs = list(self._pool.map(lambda p: self.session.run(names, p), parts))
    return tuple(np.concatenate([o[j] for o in outs]) for j in range(3))


def main(argv) -> int:
  if len(argv) != 2:
    print('usage: python -m rcnn_jax.serving.onnx_stream ARTIFACT_DIR', file=sys.stderr)
    return 2
  try:
    clf = load(argv[1])
  except (ManifestError, UserError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  m = clf.manifest
  print(f'{argv[1]}: rcnn_jax {m["project_version"]} ONNX format {m["format_version"]} '
        f'(opset {m["opset"]}, {m["converter"]}), {clf.num_classes} classes '
        f'({", ".join(clf.class_names)}), bands {", ".join(clf.bands)}, n_w {clf.n_w}, stamps '
        f'{clf.stamp_size}x{clf.stamp_size}, SHA-256 checked')
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv))
