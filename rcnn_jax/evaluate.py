"""Sec. 4 on simulated data: accuracy and recall against steps, against magnitude, confusion.

    python -m rcnn_jax.evaluate --workdir W [--workdir W2] [--step S] [--out DIR]
        [--tfds PREPARED_DATASET_DIR [--tfds_split SPLIT]]

Restores the best checkpoint of each workdir (or ``--step``), rebuilds simulator and model
from the workdir's config.json, and evaluates on a fixed, seeded, class-balanced simulated test
set (``eval.test_size``; distinct seed from validation). Writes ``metrics.json`` and figures in
the style of the paper's Fig. 5-9 to ``--out`` (default: ``W/eval``); with two workdirs (RCNN
and light-curve classifier) the figures show them side by side. ``--tfds`` evaluates on a
prepared ``hits_sim`` split (default 'test') or ``hits_real`` split (default 'dev') instead
(``evaluate_tfds``).

Sec. 4 on real labelled sequences (the paper's Fig. 8 and 9):

    python -m rcnn_jax.evaluate --workdir W --real DIR [DIR...] [--out DIR]

A DIR is a folder of labelled files, a folder of class folders (``real_labelled_dev``), or
``DIR=Class`` to label every file in it (``realdata.labelled_files``). A file's class is its
``label`` key, else its folder's name when that is exactly a class name (case and punctuation
ignored: ``rr_lyrae`` -> RRLyrae; ``real_nonvariable_dev`` names no class: give
``real_nonvariable_dev=NonVariable``). A folder with files beside class folders is refused, not
guessed. A file that cannot be read, labelled or prepared (too few usable epochs) is one line
on stderr; the others are evaluated and written, and the exit status is 2. ``--out`` is checked
before any work; a shipped model folder needs one (no command writes into it).

Inputs are prepared as in training (``preprocess.prepare``): supernovae and asteroids start
``sim.pre_detection`` epochs before their first detection, the other classes at their first
epoch; sequences stop at ``sim.max_steps`` (20, the paper's "after 20 inputs"). Writes
``metrics_real.json`` (recall per class by step, confusion at step 20 over the classes
present, mean recall over them, counts, which file went where, the refused inputs) and
``real_recall.png`` (Fig. 8; Fig. 9 for the light-curve classifier, which measures optimal
photometry on the real stamps with the file's seeing and the camera's median gain and read
noise, ``preprocess.camera_gain_read_noise``).
"""

from __future__ import annotations

import os

from absl import app
from absl import flags

from rcnn_jax.core import outputs
from rcnn_jax.core import plots
from rcnn_jax.core import utils
from rcnn_jax.evaluation.real import default_out
from rcnn_jax.evaluation.real import main_real
from rcnn_jax.evaluation.real import require_real_compatible
from rcnn_jax.evaluation.simulated import _read_jsonl
from rcnn_jax.evaluation.simulated import evaluate_tfds
from rcnn_jax.evaluation.simulated import evaluate_workdir


def _define_flags():
  """Command-line flags, defined only when the module runs as a command."""
  global _WORKDIR, _STEP, _OUT, _REAL, _DETECTION, _TFDS, _TFDS_SPLIT
  _WORKDIR = flags.DEFINE_multi_string('workdir', None,
                                       'Training workdir(s); two for side by side.')
  _STEP = flags.DEFINE_integer('step', None, 'Checkpoint step (default: the best by val loss).')
  _OUT = flags.DEFINE_string('out', None, 'Output directory (default: first workdir/eval).')
  _REAL = flags.DEFINE_multi_string('real', None, 'Folders of real labelled sequences '
                                    '(DIR or DIR=Class); evaluates on them instead.')
  _DETECTION = flags.DEFINE_enum('detection_method', None, ['difference', 'photometry'],
                                 "With --real: the transients' first-detection rule (default: "
                                 "the workdir config's config.real.detection_method).")
  _TFDS = flags.DEFINE_string('tfds', None, 'Evaluate on a prepared hits_sim or hits_real '
                              'dataset folder (DATA_DIR/<name>/<config>/<version>) instead.')
  _TFDS_SPLIT = flags.DEFINE_string('tfds_split', None, "With --tfds: the split (default: "
                                    "'test' for hits_sim, 'dev' for hits_real).")


def main(argv):
  if len(argv) > 1 and not _REAL.value:  # --real A B: the usage line's DIR [DIR...]
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  workdirs = _WORKDIR.value or []
  if not workdirs:
    raise app.UsageError('--workdir is required')
  if len(workdirs) > 2:
    raise app.UsageError('at most two --workdir (RCNN and light-curve classifier)')
  for w in workdirs:
    if not os.path.isdir(w):
      raise utils.UserError(f'{w}: no such workdir')
  out = _OUT.value or default_out(workdirs[0])
  outputs.check_dir(out, allow_eval_of=workdirs[0])
  if _DETECTION.value and not _REAL.value:
    raise app.UsageError('--detection_method needs --real')
  if _REAL.value:
    if len(workdirs) != 1:
      raise app.UsageError('--real takes one --workdir')
    require_real_compatible(workdirs[0])
    return main_real(workdirs[0], _REAL.value + argv[1:], _STEP.value, out, _DETECTION.value)
  if _TFDS.value:
    results = [evaluate_tfds(w, _TFDS.value, _TFDS_SPLIT.value, _STEP.value) for w in workdirs]
  else:
    results = [evaluate_workdir(w, _STEP.value) for w in workdirs]
  os.makedirs(out, exist_ok=True)
  name = lambda m: f'metrics_{m["model"]}.json' if len(results) > 1 else 'metrics.json'
  for m in results:
    utils.write_json(os.path.join(out, name(m)), m)
    print(f'{m["workdir"]} ({m["model"]}, step {m["checkpoint_step"]}): accuracy at step '
          f'{m["confusion_step"]} = {m["accuracy_at_confusion_step"]:.3f} on '
          f'{m["num_examples"]} ' + (m['data'] if 'data' in m else 'simulated test objects'))
  paths = plots.plot_evaluation(results, out)
  runs = [(m['model'], _read_jsonl(os.path.join(w, 'metrics.jsonl')))
          for m, w in zip(results, workdirs)]
  curves = plots.plot_learning_curves(runs, os.path.join(out, 'learning_curves.png'))
  paths += [curves] if curves else []
  print('wrote ' + ', '.join([os.path.join(out, name(m)) for m in results] + paths))


if __name__ == '__main__':
  _define_flags()
  utils.run(main)
