"""Same seeds, same numbers: the issue-14 refactor against the code before it (27eda9b).

    python experiments/i14_refactor/compare.py

Compares the rows of before/ and after/ (every logged value but the two speed fields) and the
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


ok = True
for name in ('rcnn_metrics.jsonl', 'lc_metrics.jsonl'):
  same = rows(HERE / 'before' / name) == rows(HERE / 'after' / name)
  print(f'{name}: {"identical" if same else "DIFFERENT"} ({len(rows(HERE / "after" / name))} rows)')
  ok &= same
same = (HERE / 'before' / 'predictions.csv').read_bytes() == (HERE / 'after' /
                                                                'predictions.csv').read_bytes()
print(f'predictions.csv: {"identical" if same else "DIFFERENT"}')
sys.exit(0 if ok and same else 1)
