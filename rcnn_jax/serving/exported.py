"""Loads and runs an exported streaming classifier (``python -m rcnn_jax.export``) without the
project's model code: this module imports only the standard library (hashlib, json, os, sys),
numpy, jax and ``rcnn_jax.inputs.plausibility`` (itself numpy only).

    from rcnn_jax.serving import exported
    clf = exported.load('exported/')                 # refuses a damaged, edited or unknown one
    state = clf.new_state(num_objects=1024)
    probs, state = clf.update(state, images, mjd, zero_point, sky_adu, seeing_arcsec, active)

An artifact is a folder with ``manifest.json`` and ``update.jax`` (``jax.export``'s serialized
form, parameters included). The update takes, per object slot, the state, one raw image
[B, S, S] (ADU, sky included), its MJD, zero point, sky (NaN: estimated from the stamp's outer
ring), seeing (None: not given, kept; NaN: not measured, skipped when the manifest's
``drop_unknown_seeing``) and an ``active`` flag, and returns the probabilities [B, C]
(NaN until n_w images are kept; unchanged for inactive or skipped slots) and the new state.
An image whose seeing is above the manifest's ``max_seeing_arcsec`` is skipped: the state stays
as if it had not been given. The batch dimension is symbolic: any number of slots, one compile
per size. Also ``python -m rcnn_jax.serving.exported DIR`` prints the manifest or the one-line
refusal.

Before the compiled function runs, ``update`` does on the host what ``Classifier.update``
(``stream.py``) does, in the same order: an active slot whose epoch is implausible
(``plausibility.epoch_problems`` with the manifest's ``plausibility`` limits: an infinite zero
point or one far outside the survey's, non-positive or infinite seeing, a non-positive sky,
pixels beyond what the camera records) is dropped for this call (its state unchanged, as for bad
seeing) with one line on stderr, ``warning: object slot {i}: epoch MJD {mjd} dropped: {why}``;
then, for each image that is kept, a NaN or Inf pixel, a NaN or Inf MJD, an infinite sky, or an
MJD not after the slot's previous kept image (the same image twice included) raises
``InputError`` (a ``ValueError``, one line naming the slot) and nothing is updated. The state
therefore carries, beside the compiled function's arrays, ``last_mjd``: a float64 numpy array
[B] (NaN: no image yet), kept on the host at full precision.

Integrity (format version 2): the manifest holds ``update_sha256``, the SHA-256 of
``update.jax``'s bytes, and ``fields_sha256``, the SHA-256 of the canonical JSON
(``sort_keys``, no whitespace, ASCII) of the manifest's ``DIGEST_FIELDS`` (every field the
exporter writes besides the two digests: what the compiled function was built with, the
plausibility limits the loader applies, and the provenance). ``load`` recomputes both before
deserializing and refuses a mismatch with one line naming the folder and the check that failed.

Versioning: ``FORMAT_VERSION`` is the manifest layout and the update's calling convention. A
loader reads every format version it knows (now: 1 and 2) and refuses others in one line.
Version 1 (written before the digests) is still loaded, with one warning line on stderr that it
carries no integrity check (re-export to get one); its update applies the plausibility rules
that need no survey limits (infinite zero point, seeing, sky) and the input checks above. The
serialized function itself stays loadable by later jax versions within ``jax.export``'s
compatibility window (about six months of jaxlib releases, see its documentation).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from rcnn_jax.inputs import plausibility as plausibility_lib

FORMAT = 'rcnn_jax.streaming_update'
FORMAT_VERSION = 2
SUPPORTED_FORMAT_VERSIONS = (1, 2)
MANIFEST = 'manifest.json'
ARTIFACT = 'update.jax'
# Positional inputs of the exported function after the state, in order.
INPUT_NAMES = ('image', 'mjd_hi', 'mjd_lo', 'zero_point', 'sky_adu', 'seeing_arcsec', 'active')
STATE_NAMES = ('c', 'h', 'mjd0_hi', 'mjd0_lo', 'num_images', 'probs', 'window', 'window_t',
               'zp0')
# The host-side part of the state: each slot's last kept MJD (float64), for the time order.
HOST_STATE = 'last_mjd'
# Manifest fields sealed by ``fields_sha256`` (format version 2): every field the exporter
# writes besides the two digests. What the compiled function was built with: format,
# format_version, class_names (order: the columns of the probabilities), n_w, stamp_size,
# lstm_size, max_seeing_arcsec, drop_unknown_seeing, conv_impl, batch_multiple, dtype,
# platforms, preprocessing, state, inputs, outputs; what the loader applies: plausibility;
# provenance: project_version, jax_version, checkpoint_step.
DIGEST_FIELDS = ('format', 'format_version', 'project_version', 'jax_version', 'platforms',
                 'checkpoint_step', 'class_names', 'n_w', 'stamp_size', 'lstm_size',
                 'max_seeing_arcsec', 'drop_unknown_seeing', 'conv_impl', 'batch_multiple',
                 'dtype', 'plausibility', 'preprocessing', 'state', 'inputs', 'outputs')
DIGESTS = ('update_sha256', 'fields_sha256')


class ManifestError(ValueError):
  """An artifact that cannot be used; the message is one line naming the folder and why."""

  def __init__(self, path, problem):
    super().__init__(f'{path}: {" ".join(str(problem).split())}')


class InputError(ValueError):
  """Inputs that ``ExportedClassifier.update`` refuses (nothing is updated); one line."""

  def __init__(self, problem):
    super().__init__(' '.join(str(problem).split()))


def fields_digest(manifest, fields=DIGEST_FIELDS) -> str:
  """SHA-256 (hex) of the canonical JSON of the manifest's ``fields`` (``DIGEST_FIELDS``; the
  ONNX artifact's are ``export_onnx.DIGEST_FIELDS``), a missing one as null: ``json.dumps``
  with sort_keys, separators (',', ':') and ASCII, then UTF-8 bytes."""
  sealed = {k: manifest.get(k) for k in fields}
  text = json.dumps(sealed, sort_keys=True, separators=(',', ':'), ensure_ascii=True)
  return hashlib.sha256(text.encode('utf-8')).hexdigest()


def bytes_digest(blob) -> str:
  """SHA-256 (hex) of ``update.jax``'s bytes."""
  return hashlib.sha256(blob).hexdigest()


def batch_dim(manifest) -> str:
  """The symbolic batch dimension: 'b' (any size) or 'M*k' (a multiple of M slots)."""
  m = int(manifest.get('batch_multiple', 1))
  return 'b' if m == 1 else f'{m}*k'


def state_shapes(manifest) -> dict:
  """Name -> (shape with the batch dimension, dtype) of the state, from the manifest's numbers."""
  n_w, s = int(manifest['n_w']), int(manifest['stamp_size'])
  c, h = len(manifest['class_names']), int(manifest['lstm_size'])
  out = {
      'c': (['b', h], 'float32'), 'h': (['b', h], 'float32'),
      'mjd0_hi': (['b'], 'float32'), 'mjd0_lo': (['b'], 'float32'),
      'num_images': (['b'], 'int32'), 'probs': (['b', c], 'float32'),
      'window': (['b', n_w - 1, s, s], 'float32'), 'window_t': (['b', n_w - 1], 'float32'),
      'zp0': (['b'], 'float32'),
  }
  return _with_batch(out, manifest)


def _with_batch(shapes, manifest):
  b = batch_dim(manifest)
  return {k: ([b if d == 'b' else d for d in shape], dtype) for k, (shape, dtype) in shapes.items()}


def input_shapes(manifest) -> dict:
  s = int(manifest['stamp_size'])
  out = {k: (['b'], 'float32') for k in INPUT_NAMES}
  out['image'] = (['b', s, s], 'float32')
  out['active'] = (['b'], 'bool')
  return _with_batch(out, manifest)


def output_shapes(manifest) -> dict:
  return _with_batch({'probs': (['b', len(manifest['class_names'])], 'float32')}, manifest)


def _aval_str(aval) -> tuple:
  return ([d if isinstance(d, int) else str(d) for d in aval.shape], str(aval.dtype))


def _as_list(x):
  shape, dtype = x
  return [list(shape), str(dtype)]


def check_manifest(path, manifest, exp=None):
  """Raises ManifestError unless the manifest is of a known format and agrees with itself (and
  with the deserialized function ``exp``, when given)."""
  if not isinstance(manifest, dict) or manifest.get('format') != FORMAT:
    raise ManifestError(path, f'not an rcnn_jax streaming-update artifact (format '
                        f'{manifest.get("format") if isinstance(manifest, dict) else None!r}, '
                        f'expected {FORMAT!r})')
  version = manifest.get('format_version')
  if version not in SUPPORTED_FORMAT_VERSIONS:
    raise ManifestError(path, f'format version {version!r} is not supported by this loader '
                        f'(reads {", ".join(map(str, SUPPORTED_FORMAT_VERSIONS))}); written by '
                        f'rcnn_jax {manifest.get("project_version", "?")}: use a matching '
                        'rcnn_jax version or re-export')
  need = ('class_names', 'n_w', 'stamp_size', 'lstm_size', 'max_seeing_arcsec', 'state',
          'inputs', 'outputs', 'preprocessing')
  if version >= 2:
    need = tuple(dict.fromkeys(need + DIGEST_FIELDS + DIGESTS))
  missing = [k for k in need if k not in manifest]
  if missing:
    raise ManifestError(path, f'manifest lacks {", ".join(missing)}')
  names = manifest['class_names']
  if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
    raise ManifestError(path, 'class_names must be a non-empty list of names')
  for key, want in (('state', state_shapes(manifest)), ('inputs', input_shapes(manifest)),
                    ('outputs', output_shapes(manifest))):
    got = manifest[key]
    want = {k: _as_list(v) for k, v in want.items()}
    if got != want:
      bad = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))[0]
      raise ManifestError(path, f'{key}.{bad} is {got.get(bad)}, but class_names, n_w, '
                          f'stamp_size and lstm_size imply {want.get(bad)}')
  if exp is None:
    return
  n_state = len(STATE_NAMES)
  in_avals = exp.in_avals
  if len(in_avals) != n_state + len(INPUT_NAMES):
    raise ManifestError(path, f'the function takes {len(in_avals)} arrays, the manifest '
                        f'describes {n_state + len(INPUT_NAMES)}')
  declared = ([manifest['state'][k] for k in STATE_NAMES]
              + [manifest['inputs'][k] for k in INPUT_NAMES])
  names = list(STATE_NAMES) + list(INPUT_NAMES)
  for name, aval, d in zip(names, in_avals, declared):
    if list(_aval_str(aval)) != [d[0], d[1]]:
      raise ManifestError(path, f'input {name} of the function is {list(_aval_str(aval))}, '
                          f'the manifest says {d}')
  probs = exp.out_avals[0]
  if list(_aval_str(probs)) != manifest['outputs']['probs']:
    raise ManifestError(path, f'the function returns probabilities {list(_aval_str(probs))}, '
                        f'the manifest says {manifest["outputs"]["probs"]} '
                        f'({len(manifest["class_names"])} classes)')


def read_manifest(path) -> dict:
  file = os.path.join(path, MANIFEST)
  if not os.path.isfile(file):
    raise ManifestError(path, f'no {MANIFEST} (not an exported classifier folder)')
  try:
    with open(file) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise ManifestError(path, f'cannot read {MANIFEST}: {e}') from None


class HostRules:
  """What a loader does on the host before its function, as ``Classifier.update``: the
  plausibility rules, the seeing cut and the refusals (``ExportedClassifier`` here, the ONNX
  loader's ``onnx_stream.OnnxClassifier``). Needs ``plausibility``, ``max_seeing_arcsec``,
  ``drop_unknown_seeing``; ``SEEING_DTYPE``: the precision of the seeing cut (float32, as the
  exported function compares; float64 for the ONNX loader, as stream.py)."""
  SEEING_DTYPE = np.float32

  @staticmethod
  def _per_slot(x, n, name, dtype=np.float64):
    """[n] values of ``x`` (None: NaN), or InputError naming ``name``."""
    a = np.full(n, np.nan) if x is None else np.asarray(x, dtype).reshape(-1)
    if a.shape != (n,):
      raise InputError(f'{name} must have one value per slot ({n}), got shape {np.shape(x)}')
    return a

  def _kept(self, act, images, mjd, zp, sky, seeing) -> np.ndarray:
    """The slots whose image is kept: active, plausible (else dropped with one line on stderr,
    as stream.py does) and within the seeing cut (which the compiled function applies too)."""
    kept = act.copy()
    idx = np.flatnonzero(act)
    if idx.size:
      why = plausibility_lib.epoch_problems(
          self.plausibility, zero_point=zp[idx], sky_adu=sky[idx], stamps=images[idx],
          seeing_arcsec=None if seeing is None else seeing[idx])
      for j, w in enumerate(why):
        if w:
          kept[idx[j]] = False
          print(f'warning: object slot {idx[j]}: epoch MJD {mjd[idx[j]]:.5f} dropped: {w}',
                file=sys.stderr)
    if seeing is not None:  # in SEEING_DTYPE, as the model's side compares
      s32 = seeing.astype(self.SEEING_DTYPE)
      kept &= ~(s32 > self.SEEING_DTYPE(self.max_seeing_arcsec))
      if self.drop_unknown_seeing:
        kept &= np.isfinite(s32)
    return kept

  @staticmethod
  def _check_kept(kept, images, mjd, sky, last):
    """InputError for the first kept slot that Classifier.update would refuse."""
    checks = (
        (lambda: ~np.isfinite(images).reshape(len(kept), -1).all(axis=1),
         lambda i: 'image contains NaN or Inf'),
        (lambda: ~np.isfinite(mjd), lambda i: f'MJD {mjd[i]} is not finite'),
        (lambda: np.isinf(sky), lambda i: f'sky_adu {sky[i]} is not finite (NaN: estimated)'),
        (lambda: mjd <= last,  # NaN last (no image yet): False
         lambda i: f'MJD {mjd[i]:.5f} is not after its previous image (MJD {last[i]:.5f})'
         + (': the same image twice' if mjd[i] == last[i] else '')),
    )
    for bad, text in checks:
      b = np.flatnonzero(kept & bad())
      if b.size:
        raise InputError(f'object slot {b[0]}: {text(b[0])}')


class ExportedClassifier(HostRules):
  """The deserialized streaming update and its manifest."""

  def __init__(self, path, manifest, exp):
    self.path = path
    self.manifest = manifest
    self.exported = exp
    self.class_names = tuple(manifest['class_names'])
    self.n_w = int(manifest['n_w'])
    self.stamp_size = int(manifest['stamp_size'])
    self.max_seeing_arcsec = float(manifest['max_seeing_arcsec'])
    # Version-1 manifests before the field: the function kept NaN seeing.
    self.drop_unknown_seeing = bool(manifest.get('drop_unknown_seeing', False))
    # Version 1: no limits, only the rules that need none (plausibility.epoch_problems).
    self.plausibility = manifest.get('plausibility')
    self.batch_multiple = int(manifest.get('batch_multiple', 1))
    self._call = jax.jit(exp.call)

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def new_state(self, num_objects) -> dict:
    """Empty slots (probabilities NaN, nothing kept yet): ``num_objects`` rounded up to the
    artifact's batch multiple (the extra slots stay inactive). The compiled function's arrays
    (``STATE_NAMES``) and ``last_mjd``, float64 numpy on the host (NaN: no image yet)."""
    m = self.batch_multiple
    n = -(-int(num_objects) // m) * m
    out = {}
    for k, (shape, dtype) in state_shapes(self.manifest).items():
      shape = [n if isinstance(d, str) else d for d in shape]
      fill = np.nan if k in ('probs', 'mjd0_hi', 'mjd0_lo', 'zp0') else 0
      out[k] = jnp.full(shape, fill, dtype)
    out[HOST_STATE] = np.full(n, np.nan, np.float64)
    return out

  def reset(self, state, objects) -> dict:
    """The state with slots ``objects`` (indices or a boolean mask) emptied for new objects."""
    n = state['num_images'].shape[0]
    sel = np.zeros(n, bool)
    sel[np.asarray(objects)] = True
    fresh = self.new_state(n)
    out = {}
    for k, v in state.items():
      if k == HOST_STATE:
        out[k] = np.where(sel, fresh[k], np.asarray(v, np.float64))
      else:
        out[k] = jnp.where(jnp.reshape(sel, (n,) + (1,) * (v.ndim - 1)), fresh[k], v)
    return out

  def update(self, state, images, mjd, zero_point=None, sky_adu=None, seeing_arcsec=None,
             active=None):
    """One image per slot for the first N slots (``active`` [N] bool says which carry one; the
    state's slots past N, if any, are inactive) -> (probs [N, C] numpy, new state). Larger
    stamps are centre-cropped; None means NaN for zero_point (no eq. 4 scaling) and sky_adu
    (estimated); seeing_arcsec None: not given, every image kept (NaN: not measured, skipped
    when the manifest's ``drop_unknown_seeing``).

    As ``Classifier.update``: an implausible epoch is dropped for this call with one line on
    stderr; a kept image with a NaN or Inf pixel, a NaN or Inf MJD or an infinite sky, or an
    MJD not after its slot's previous kept image (the same image twice), raises ``InputError``
    (one line naming the slot) before anything is updated (module docstring)."""
    slots, s = state['num_images'].shape[0], self.stamp_size
    last = state.get(HOST_STATE)
    if not isinstance(last, np.ndarray) or last.dtype != np.float64 or last.shape != (slots,):
      raise InputError(f"state['{HOST_STATE}'] must be the float64 numpy array [{slots}] that "
                       'new_state and update return (a float32 copy cannot order images '
                       'minutes apart); got '
                       f'{type(last).__name__} {getattr(last, "dtype", "")} '
                       f'{list(np.shape(last)) if last is not None else ""}')
    raw = np.asarray(images)  # as given, for the plausibility rule (as stream.py)
    full = raw.astype(np.float32)
    n = full.shape[0] if full.ndim == 3 else -1
    if full.ndim != 3 or not 0 < n <= slots or min(full.shape[1:]) < s:
      raise InputError(f'images must be [N, H, W] with N <= {slots} slots and H, W >= {s}, '
                       f'got {full.shape}')
    r0, c0 = (full.shape[1] - s) // 2, (full.shape[2] - s) // 2
    crop = full[:, r0:r0 + s, c0:c0 + s]

    per = lambda x, name, dtype=np.float64: self._per_slot(x, n, name, dtype)
    mjd = per(mjd, 'mjd')
    zp, sky = per(zero_point, 'zero_point'), per(sky_adu, 'sky_adu')
    seeing = None if seeing_arcsec is None else per(seeing_arcsec, 'seeing_arcsec')
    act = np.ones(n, bool) if active is None else per(active, 'active', bool)
    kept = self._kept(act, raw, mjd, zp, sky, seeing)
    self._check_kept(kept, crop, mjd, sky, last[:n])
    hi = mjd.astype(np.float32)
    lo = (mjd - hi.astype(np.float64)).astype(np.float32)  # mjd = hi + lo to float64 precision
    inputs = [crop, hi, lo, zp.astype(np.float32), sky.astype(np.float32),
              np.zeros(n, np.float32) if seeing is None else seeing.astype(np.float32), kept]
    if n < slots:  # padding slots: inactive
      inputs = [np.concatenate([a, np.zeros((slots - n,) + a.shape[1:], a.dtype)])
                for a in inputs]
    probs, new = self._call(*[state[k] for k in STATE_NAMES], *inputs)
    new = dict(new)
    new[HOST_STATE] = last.copy()
    new[HOST_STATE][:n][kept] = mjd[kept]
    return np.asarray(probs)[:n], new


def check_digests(path, manifest, blob, fields=DIGEST_FIELDS, artifact=ARTIFACT,
                  digest='update_sha256', command='python -m rcnn_jax.export'):
  """Raises ManifestError unless a version-2 manifest's ``fields_sha256`` matches its sealed
  ``fields`` and its ``digest`` matches ``blob`` (``artifact``'s bytes: update.jax, or the
  ONNX artifact's step.onnx with its own fields, digest name and command)."""
  if fields_digest(manifest, fields) != manifest['fields_sha256']:
    raise ManifestError(path, f'{MANIFEST} fails its integrity check: the SHA-256 of its sealed '
                        'fields (class names, seeing rules, plausibility limits, shapes, ...) '
                        'is not the fields_sha256 written at export, so it was edited or '
                        f'damaged; re-export the model ({command})')
  got = bytes_digest(blob)
  if got != manifest[digest]:
    want = str(manifest[digest])[:16]
    raise ManifestError(path, f'{artifact} fails its integrity check: its SHA-256 is '
                        f"{got[:16]}.., the manifest's {digest} is {want}..; the file is "
                        'damaged or not the one exported with this manifest; re-export the '
                        f'model ({command})')


def load(path) -> ExportedClassifier:
  """Reads and checks an artifact folder; anything wrong raises ManifestError (one line).

  Format version 2: the two SHA-256 digests (module docstring) are checked before the function
  is deserialized. Version 1 (no digests) loads with one warning line on stderr saying it
  carries no integrity check."""
  path = os.fspath(path)
  manifest = read_manifest(path)
  check_manifest(path, manifest)
  file = os.path.join(path, ARTIFACT)
  if not os.path.isfile(file):
    raise ManifestError(path, f'no {ARTIFACT} beside the manifest')
  with open(file, 'rb') as f:
    blob = f.read()
  if manifest['format_version'] >= 2:
    check_digests(path, manifest, blob)
  else:
    print(f'warning: {path}: format version 1 artifact carries no integrity check (no SHA-256 '
          f'of {ARTIFACT} or of its manifest): re-export it with this rcnn_jax to get one',
          file=sys.stderr)
  try:
    exp = jax.export.deserialize(bytearray(blob))
  except Exception as e:  # pylint: disable=broad-except
    raise ManifestError(path, f'cannot deserialize {ARTIFACT} with jax {jax.__version__} '
                        f'({type(e).__name__}: {e})') from None
  check_manifest(path, manifest, exp)
  platform = jax.default_backend()
  platform = 'cuda' if platform == 'gpu' else platform
  if platform not in exp.platforms:
    raise ManifestError(path, f'exported for {", ".join(exp.platforms)}, this process runs on '
                        f'{platform}')
  return ExportedClassifier(path, manifest, exp)


def main(argv) -> int:
  if len(argv) != 2:
    print('usage: python -m rcnn_jax.serving.exported ARTIFACT_DIR', file=sys.stderr)
    return 2
  try:
    clf = load(argv[1])
  except ManifestError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  m = clf.manifest
  print(f'{argv[1]}: rcnn_jax {m.get("project_version")} format {m["format_version"]}, '
        f'{clf.num_classes} classes ({", ".join(clf.class_names)}), n_w {clf.n_w}, stamps '
        f'{clf.stamp_size}x{clf.stamp_size}, platforms {", ".join(clf.exported.platforms)}, '
        + ('SHA-256 checked' if m['format_version'] >= 2 else 'no integrity check'))
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv))
