"""A broker's side of the ONNX streaming classifier: numpy and onnxruntime only, no rcnn_jax.

    python examples/broker_onnx.py ARTIFACT_DIR SEQUENCE.npz

ARTIFACT_DIR is what ``python -m rcnn_jax.export --format onnx`` wrote (``manifest.json``,
``step.onnx``). SEQUENCE.npz holds one object's epochs in time order: ``stamps`` [E, H, W] raw
ADU (sky included), ``mjd`` [E], and optionally ``zero_point``, ``sky_adu`` (NaN: estimated
from the stamp's outer ring), ``seeing_arcsec`` (NaN: not measured) [E] and ``band`` [E] (names;
required for a model of several bands). Prints one JSON line per epoch: its status
(``dropped``, ``warmup`` before n_w kept images, ``classified``) and the class probabilities.

Copy ``Stream`` into a broker's worker: it is the whole contract of the manifest (its
``preprocessing`` rules in words): the integrity check, the plausibility rules, the seeing cut,
the sky, eq. 4, the window of the last n_w - 1 images and the LSTM carry between calls.
"""

import hashlib
import json
import os
import sys

import numpy as np
import onnxruntime as ort


def load_manifest(folder):
  """The manifest, after both SHA-256 digests are checked (ValueError if either fails)."""
  with open(os.path.join(folder, 'manifest.json')) as f:
    manifest = json.load(f)
  if manifest.get('format') != 'rcnn_jax.streaming_step_onnx':
    raise ValueError(f'{folder}: not an rcnn_jax ONNX streaming artifact')
  # The sealed fields: every field but the two digests, as canonical JSON.
  sealed = {k: v for k, v in manifest.items() if k not in ('model_sha256', 'fields_sha256')}
  text = json.dumps(sealed, sort_keys=True, separators=(',', ':'), ensure_ascii=True)
  if hashlib.sha256(text.encode('utf-8')).hexdigest() != manifest['fields_sha256']:
    raise ValueError(f'{folder}: manifest.json fails its integrity check')
  with open(os.path.join(folder, 'step.onnx'), 'rb') as f:
    blob = f.read()
  if hashlib.sha256(blob).hexdigest() != manifest['model_sha256']:
    raise ValueError(f'{folder}: step.onnx fails its integrity check')
  return manifest, blob


def clipped_median(x, nsigma=3.0, max_iter=10):
  keep = x
  for _ in range(max_iter):
    med = np.median(keep)
    sigma = 1.4826 * np.median(np.abs(keep - med))
    if sigma <= 0:
      break
    new = keep[np.abs(keep - med) <= nsigma * sigma]
    if new.size == keep.size or new.size == 0:
      break
    keep = new
  return np.median(keep)


def ring_sky(stamp, width=3):
  """The sky of a stamp: the clipped median of its outer ``width``-pixel ring (float32)."""
  h, w = stamp.shape
  r, c = np.arange(h)[:, None], np.arange(w)[None, :]
  edge = np.minimum(np.minimum(r, h - 1 - r), np.minimum(c, w - 1 - c))
  return np.float32(clipped_median(stamp.astype(np.float64)[edge < width]))


class Stream:
  """One object's stream: ``update`` one epoch -> (status, probabilities or None)."""

  def __init__(self, folder, threads=1):
    self.m, blob = load_manifest(folder)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads  # one object a call: one thread is enough
    self.session = ort.InferenceSession(blob, opts, providers=['CPUExecutionProvider'])
    self.n_w, self.s = self.m['n_w'], self.m['stamp_size']
    h = self.m['lstm_size']
    self.c, self.h = np.zeros((1, h), np.float32), np.zeros((1, h), np.float32)
    self.images, self.gaps, self.bands = [], [], []  # the kept images, oldest first
    self.mjd0 = self.zp0 = self.last = None
    self.probs = None

  def plausible(self, stamp, zero_point, sky, seeing):
    lim = self.m['plausibility']
    if np.isinf(zero_point) or (lim['zero_point_range'] and np.isfinite(zero_point) and not (
        lim['zero_point_range'][0] <= zero_point <= lim['zero_point_range'][1])):
      return False
    if np.isinf(seeing) or seeing <= 0 or sky <= 0:  # NaN: not given
      return False
    lo, hi = lim['adu_range'] or (-np.inf, np.inf)
    return bool(lo <= np.nanmin(stamp) and np.nanmax(stamp) <= hi)

  def update(self, stamp, mjd, zero_point=np.nan, sky=np.nan, seeing=np.nan, band=None):
    if not self.plausible(stamp, zero_point, sky, seeing):
      return 'dropped', self.probs
    if seeing > self.m['max_seeing_arcsec'] or (np.isnan(seeing)
                                                  and self.m['drop_unknown_seeing']):
      return 'dropped', self.probs
    r0, c0 = (stamp.shape[0] - self.s) // 2, (stamp.shape[1] - self.s) // 2
    raw = np.asarray(stamp, np.float32)[r0:r0 + self.s, c0:c0 + self.s]
    sky = ring_sky(raw) if np.isnan(sky) else np.float32(sky)
    if not (np.isfinite(raw).all() and np.isfinite(mjd) and np.isfinite(sky)):
      raise ValueError(f'MJD {mjd}: NaN or Inf in the image, MJD or sky')
    if self.last is not None and mjd <= self.last:
      raise ValueError(f'MJD {mjd} is not after the previous image')
    if self.mjd0 is None:
      self.mjd0, self.zp0 = mjd, zero_point
    self.last = mjd
    scale = 1.0
    if np.isfinite(zero_point) and np.isfinite(self.zp0):  # eq. 4, in float64
      scale = 10.0**((self.zp0 - zero_point) / 2.5)
    image = ((raw.astype(np.float64) - np.float64(sky)) * scale).astype(np.float32)
    bands = self.m['bands']
    self.images = (self.images + [image])[-self.n_w:]
    self.gaps = (self.gaps + [np.float32(mjd - self.mjd0)])[-self.n_w:]
    self.bands = (self.bands + [bands.index(band) if len(bands) > 1 else 0])[-self.n_w:]
    if len(self.images) < self.n_w:
      return 'warmup', None
    feed = {'images': np.stack(self.images)[None], 'time_gaps': np.array([self.gaps]),
            'mask': np.ones(1, bool), 'c': self.c, 'h': self.h}
    if 'bands' in self.m['inputs']:
      feed['bands'] = np.array([self.bands], np.int32)
    probs, self.c, self.h = self.session.run(['probs', 'c_out', 'h_out'], feed)
    self.probs = probs[0]
    return 'classified', self.probs


def main(argv):
  if len(argv) != 3:
    print('usage: python examples/broker_onnx.py ARTIFACT_DIR SEQUENCE.npz', file=sys.stderr)
    return 2
  stream = Stream(argv[1])
  with np.load(argv[2], allow_pickle=False) as z:
    d = {k: z[k] for k in z.files}
  e = len(d['mjd'])
  get = lambda k: d[k] if k in d else np.full(e, np.nan)
  for i in range(e):
    band = str(d['band'][i]) if 'band' in d else None
    status, p = stream.update(d['stamps'][i], float(d['mjd'][i]), float(get('zero_point')[i]),
                              float(get('sky_adu')[i]), float(get('seeing_arcsec')[i]), band)
    print(json.dumps({'epoch': i, 'status': status, 'class_names': stream.m['class_names'],
                      'probs': None if p is None else [float(x) for x in p]}))
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv))
