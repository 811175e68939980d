"""The command that classifies real image sequences with a trained RCNN: files to CSV and
figures. The classifier itself is ``classifier.Classifier`` (re-exported here as
``predict.Classifier``), its incremental (alert-broker) mode ``stream.py``.

    python -m rcnn_jax.predict --workdir W INPUT... [--out predictions.csv] [--step S]
        [--plot DIR] [--fail-fast] [--batch N] [--start first|detection] [--full_length]

An INPUT is a sequence file in a ``realdata`` format (``.npz``: ``stamps`` (T, H, W) ADU with
sky and ``mjd`` (T,), optionally ``zero_point`` and ``sky_adu``; or a FITS cube with an MJD
table) or a folder of them. The CSV has one row per object and step: ``object`` (the file's
path as given, a folder argument joined with the path inside it: two inputs never share it),
``step`` (1-based), ``mjd`` (the step's last image) and one probability column per class.
``--plot DIR`` draws the paper's Appendix B figure per object to ``DIR/<object>.png``.

Bad files (unreadable, or with fewer than n_w usable epochs once the seeing cut and the
plausibility rules of ``plausibility`` have dropped theirs) and unusable folder entries
(dangling links, link loops) are reported as one line each on stderr (``error: <path>:
<problem>``); the good ones are still classified and the CSV written, and the exit status is 2.
``--out`` and ``--plot`` are checked before any work (``outputs``: writable, not an existing
folder for the CSV, never inside a model folder). ``--fail-fast`` stops at the
first bad file. With no good file nothing is written (an existing ``--out`` is kept).

Inputs are prepared exactly as in training (``preprocess.prepare``): epochs with seeing above
``config.survey.max_seeing_arcsec`` are dropped, eq. 4 scales to the first kept epoch's zero
point, and the sequence starts at the first kept epoch (``--start first``, the default) or
``sim.pre_detection`` epochs before the photometric first detection (``--start detection``,
for supernovae and asteroids). Sequences are truncated at ``config.sim.max_steps`` steps (the
paper's "after 20 inputs"; the model never saw more). ``--full_length`` (``classify(...,
full_length=True)``) keeps the old behaviour: every step, the LSTM running on with its carry,
an extrapolation.

Only the image model (``model.kind == 'rcnn'``) is supported: the light-curve classifier needs
per-image seeing, gain and read noise for its optimal photometry, which real files lack.
"""

from __future__ import annotations

import csv
import io
import os
import sys

from absl import app
from absl import flags
import numpy as np

from rcnn_jax import bands
from rcnn_jax import checkpoints
from rcnn_jax import outputs
from rcnn_jax import photometry
from rcnn_jax import preprocess
from rcnn_jax import realdata
from rcnn_jax import sequences
from rcnn_jax import utils
from rcnn_jax.classifier import Classifier as Classifier  # re-exported: predict.Classifier
from rcnn_jax.classifier import check_kind
from rcnn_jax.errors import UserError
from rcnn_jax.stream import StreamState as StreamState  # re-exported

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


# ----------------------------------------------------------------------------------------------
# The command


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
    from rcnn_jax import plots  # pylint: disable=g-import-not-at-top  (matplotlib, on demand)
    os.makedirs(plot_dir, exist_ok=True)
    for seq, p, m, path in zip(good, probs, mjds, plot_paths(good, plot_dir)):
      images = eq4_images(seq)
      plots.plot_sequence_prediction(
          path, seq.object_id, seq.mjd,
          photometry.aperture_flux(images, radius=APERTURE_RADIUS_PX), m, p,
          classifier.class_names, images)
    print(f'wrote {len(good)} figures to {outputs.display(plot_dir)}')
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
