"""Same seeds, same numbers: the issue-14 refactor against the code before it (27eda9b).

    python experiments/i14_refactor/compare.py [BEFORE AFTER]   (default before/ after/)

Compares the rows of BEFORE and AFTER (every logged value but the two speed fields) and the
prediction CSVs byte for byte; exits 1 on any difference.
"""

import json
import pathlib
import sys

HERE = pathlib.Path(__file__).parent
SPEED = ('train_steps_per_s', 'train_sequences_per_s')


def rows(path):
  return [{k: v for k, v in json.loads(line).items() if k not in SPEED}
          for line in open(path)]


before, after = ((pathlib.Path(a) for a in sys.argv[1:3]) if len(sys.argv) == 3 else
                 (HERE / 'before', HERE / 'after'))
ok = True
for name in ('rcnn_metrics.jsonl', 'lc_metrics.jsonl'):
  same = rows(before / name) == rows(after / name)
  print(f'{name}: {"identical" if same else "DIFFERENT"} ({len(rows(after / name))} rows)')
  ok &= same
csvs = ['predictions.csv'] + (['predictions_old_workdir.csv']
                              if (after / 'predictions_old_workdir.csv').exists() else [])
for name in csvs:
  ref = before / 'predictions.csv'  # a workdir the other tree wrote: the same predictions
  same = ref.read_bytes() == (after / name).read_bytes()
  print(f'{name}: {"identical" if same else "DIFFERENT"} '
        f'(against {ref.parent.name}/predictions.csv)')
  ok &= same
sys.exit(0 if ok else 1)
