"""The rule that picks the `long` recipe of issue 42 from the equal-compute runs (queue.sh).

    python experiments/supernovae/choose.py experiments/supernovae/runs   # prints long or long,wide

Fixed before any run was evaluated on the development files: the best simulated validation
accuracy of each run (its learning_curve.jsonl, validation sets simulated with the survey's own
conditions in both arms), averaged over seeds; `wide` is kept unless it is more than 0.02 below
the plain runs. The randomised conditions are a prior against shortcuts the simulated
validation cannot show; the rule only vetoes them where they clearly cost learning.
"""
import glob
import json
import os
import sys

MARGIN = 0.02


def best_val(path):
  vals = [json.loads(line).get('val_accuracy') for line in open(path)]
  return max(v for v in vals if v is not None)


def main(root):
  arms = {}
  for arm, pattern in (('plain', 'cpu_s*'), ('wide', 'cpu_wide_s*')):
    files = sorted(glob.glob(os.path.join(root, pattern, 'learning_curve.jsonl')))
    if len(files) < 2:
      sys.exit(f'choose.py: {arm} has {len(files)} finished runs, needs 2')
    arms[arm] = sum(best_val(f) for f in files) / len(files)
  choice = 'long,wide' if arms['wide'] >= arms['plain'] - MARGIN else 'long'
  print(f'plain {arms["plain"]:.4f}, wide {arms["wide"]:.4f} -> {choice}', file=sys.stderr)
  print(choice)


if __name__ == '__main__':
  main(sys.argv[1])
