"""Fine-tuning a trained model on a few real labelled sequences (the published version's protocol).

    python -m rcnn_jax.finetune --workdir W --real DIR [DIR...] --out W2 [--set KEY=VALUE ...]
    python -m rcnn_jax.finetune --workdir W --real DIR [DIR...] --out DIR --kfold

Uses the first ``finetune.per_class`` files of each class (sorted; the published protocol: 10
real examples per class) and continues from W's best checkpoint (the latest when none is best;
W may be a shipped ``pretrained/`` folder) for ``finetune.num_steps``
Adam steps (``finetune.learning_rate``) on batches of ``finetune.batch_size`` sequences, a
``finetune.real_fraction`` share drawn from the real sequences (with replacement, each with a
random symmetry of the square when ``finetune.augment``) and the rest simulated as in training,
so the classes with no real example are not forgotten. The real sequences are prepared as
``evaluate --real`` prepares them (``preprocess.prepare``; transients from their detection).
``--set finetune.num_steps=40`` (repeatable) changes the ``finetune`` section.

W2 is a normal workdir (config.json with the ``finetune`` section and the base workdir,
checkpoints/ at the final step) that ``evaluate``, ``predict`` and the streaming API
read; ``finetune.json`` records the files used and the losses.

``--kfold`` runs the development protocol instead: ``finetune.per_class`` files per class (the
first in sorted order), split into ``finetune.folds`` class-stratified folds; each fold's model
is fine-tuned on the other folds and tests its own, so every file is tested by a model that
never saw it. Writes ``kfold.json`` to ``--out`` with recall per class at step 20 before
(the base model) and after fine-tuning, and per file. One compiled step serves all folds.
"""

from __future__ import annotations

import os
import sys

from absl import app
from absl import flags

from rcnn_jax.core import utils
from rcnn_jax.evaluation.finetune import finetune
from rcnn_jax.evaluation.finetune import kfold


def _define_flags():
  """Command-line flags, defined only when the module runs as a command."""
  global _WORKDIR, _REAL, _OUT, _SET, _KFOLD
  _WORKDIR = flags.DEFINE_string('workdir', None, 'Trained workdir to continue from.')
  _REAL = flags.DEFINE_multi_string('real', None, 'Labelled real folders (as evaluate --real).')
  _OUT = flags.DEFINE_string('out', None, 'New workdir (or, with --kfold, output folder).')
  _SET = flags.DEFINE_multi_string('set', [], 'finetune.KEY=VALUE overrides.')
  _KFOLD = flags.DEFINE_bool('kfold', False, 'k-fold evaluation on the labelled files.')
def _report(errors):
  for e in errors:
    print(f'error: {e}', file=sys.stderr)




def main(argv):
  real = (_REAL.value or []) + argv[1:]  # --real A B: the usage line's DIR [DIR...]
  if len(argv) > 1 and not _REAL.value:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  if not _WORKDIR.value or not real or not _OUT.value:
    raise app.UsageError('--workdir, --real and --out are required')
  errors = []
  if _KFOLD.value:
    r = kfold(_WORKDIR.value, real, _OUT.value, _SET.value, errors=errors)
    _report(errors)
    fmt = lambda d: ', '.join(f'{c} {v:.2f}' for c, v in d['recall_at_step'].items())
    print(f'k-fold ({r["folds"]} folds, step {r["step"]}): before {fmt(r["before"])} '
          f'(mean {r["before"]["mean_recall"]:.3f}); after {fmt(r["after"])} '
          f'(mean {r["after"]["mean_recall"]:.3f})')
    sp = r['spread']
    if sp:
      one = lambda k: (f'{sp[k]["mean"]:.3f} +- {sp[k]["std"]:.3f} '
                       f'[{sp[k]["min"]:.2f}, {sp[k]["max"]:.2f}]')
      print(f'per fold (mean recall of its held-out files; mean +- sd [min, max]): before '
            f'{one("before")}, after {one("after")}, gain {one("gain")}')
    print(f'wrote {os.path.join(_OUT.value, "kfold.json")}')
    return 2 if errors else 0
  finetune(_WORKDIR.value, real, _OUT.value, _SET.value, errors=errors)
  _report(errors)
  print(f'wrote {_OUT.value} (fine-tuned from {_WORKDIR.value}; files in finetune.json)'
        + (f'; {len(errors)} inputs refused' if errors else ''), file=sys.stdout)
  return 2 if errors else 0


if __name__ == '__main__':
  _define_flags()
  utils.run(main)
