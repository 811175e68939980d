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

from absl import app
from absl import flags

from rcnn_jax.core import utils
from rcnn_jax.serving.files import predict_files


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
