"""Classifying sequence files (the library behind ``python -m rcnn_jax.predict``): one CSV row per
object and step, the paper's Appendix B figure per object.
"""

from __future__ import annotations

import csv
import io
import os
import sys

import numpy as np

from rcnn_jax.core import outputs
from rcnn_jax.core import utils
from rcnn_jax.core.errors import UserError
from rcnn_jax.inputs import preprocess
from rcnn_jax.inputs import realdata
from rcnn_jax.serving.classifier import Classifier as Classifier  # re-exported: predict.Classifier
from rcnn_jax.serving.classifier import check_kind
from rcnn_jax.serving.stream import StreamState as StreamState  # re-exported
from rcnn_jax.sim import bands
from rcnn_jax.sim import photometry
from rcnn_jax.sim import sequences
from rcnn_jax.training import checkpoints

APERTURE_RADIUS_PX = 3.0  # light curve of the figures: sum of eq. 4 counts within this radius


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
      out.writerow([seq.object_id, j + 1, f'{m:.6f}'] + [f'{v:.7g}' for v in row])
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


def predict_files(workdir, inputs, out, step=None, plot_dir=None, fail_fast=False,
                  batch_size=64, classifier=None, stderr=None, start='first',
                  full_length=False) -> int:
  """Classifies files and folders into a CSV (and figures); returns the exit status (0 or 2).

  ``classifier`` reuses an already restored model (``workdir`` and ``step`` are then unused).
  ``start`` and ``full_length`` as in ``Classifier.classify``. Every output location is
  checked before anything is read (``outputs``); each file that cannot be read or prepared
  (too few usable epochs after the seeing cut, say) is one line naming its path, and the
  others are classified and written.
  """
  stderr = stderr or sys.stderr
  outputs.check_file(out)
  if plot_dir:
    outputs.check_dir(plot_dir, '--plot')
  config = classifier.config if classifier is not None else checkpoints.load_config(workdir)
  check_kind(config)
  bands.require_one_band(config, 'predict on whole real sequences')
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
    print(f'error: no valid input sequence ({len(errors)} bad); {outputs.display(out)} not '
          'written', file=stderr)
    return 2
  if classifier is None:
    classifier = Classifier.from_workdir(workdir, step)
  warn = preprocess.Warnings(stderr)
  limit = None if full_length else classifier.max_steps
  good, preps = [], []
  for seq in seqs:
    try:
      preps.append(classifier.prepare(seq, limit, start, warn))
      good.append(seq)
    except UserError as e:  # BadInput and the other per-file problems of preparation
      if fail_fast:
        raise
      print(f'error: {e}', file=stderr)
      errors.append(str(e))
  if not good:
    print(f'error: no input sequence could be prepared ({len(errors)} bad); '
          f'{outputs.display(out)} not written', file=stderr)
    return 2
  probs = classifier.classify_prepared(preps, batch_size=batch_size)
  mjds = [d['mjd_last'][:len(p)] for d, p in zip(preps, probs)]
  utils.atomic_write_text(out, predictions_csv(good, probs, classifier.n_w,
                                               classifier.class_names, mjds))
  print(f'wrote {outputs.display(out)}: {len(good)} objects, {sum(len(p) for p in probs)} steps'
        + (f'; {len(errors)} bad inputs skipped' if errors else ''))
  if plot_dir:
    from rcnn_jax.core import plots  # lazy: matplotlib, only with --plot
    os.makedirs(plot_dir, exist_ok=True)
    for seq, p, m, path in zip(good, probs, mjds, plot_paths(good, plot_dir)):
      images = eq4_images(seq)
      plots.plot_sequence_prediction(
          path, seq.object_id, seq.mjd,
          photometry.aperture_flux(images, radius=APERTURE_RADIUS_PX), m, p,
          classifier.class_names, images)
    print(f'wrote {len(good)} figures to {outputs.display(plot_dir)}')
  return 2 if errors else 0
