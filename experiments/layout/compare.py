"""Compares two folders written by fingerprint.sh: prints each artefact's verdict and exits 1 if
any differs. Left out: timing fields (steps/s, sequences/s) and the workdir path an evaluation records;
NaN equals NaN (the redshift of objects that have none).

    python experiments/layout/compare.py BEFORE AFTER
"""
import csv
import json
import pathlib
import sys

import numpy as np

TIMING = {'train_steps_per_s', 'train_sequences_per_s'}


def _jsonl(path):
  rows = [json.loads(l) for l in path.read_text().splitlines() if l.strip()]
  return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def main(a, b):
  a, b = pathlib.Path(a), pathlib.Path(b)
  ok = True

  def say(name, same, detail=''):
    nonlocal ok
    ok &= bool(same)
    print(f'{"identical" if same else "DIFFERENT"}  {name}  {detail}')

  with np.load(a / 'sim.npz') as x, np.load(b / 'sim.npz') as y:
    keys = sorted(x.files)
    same = keys == sorted(y.files) and all(np.array_equal(x[k], y[k], equal_nan=x[k].dtype.kind == 'f')
                                               for k in keys)
    say('simulator batch (sim.npz)', same, f'{len(keys)} arrays, {x["label"].size} objects')
  ma, mb = _jsonl(a / 'wd' / 'metrics.jsonl'), _jsonl(b / 'wd' / 'metrics.jsonl')
  say('smoke training metrics (wd/metrics.jsonl)', ma == mb,
      'losses ' + ', '.join(f"{r['train_loss']:.6f}" for r in ma if 'train_loss' in r))
  for name in ('eval_sim/metrics.json', 'eval/metrics_real.json'):
    pa, pb = a / name, b / name
    drop = lambda d: {k: v for k, v in d.items() if k != 'workdir'}  # the path given
    say(f'evaluation ({name})', pa.exists() and pb.exists() and
        drop(json.loads(pa.read_text())) == drop(json.loads(pb.read_text())))
  ra = list(csv.reader((a / 'predict.csv').open()))
  rb = list(csv.reader((b / 'predict.csv').open()))
  say('predict on the 70 development files (predict.csv)', ra == rb,
      f'{len(ra) - 1} rows, {len({r[0] for r in ra[1:]})} objects')
  return 0 if ok else 1


if __name__ == '__main__':
  sys.exit(main(*sys.argv[1:3]))
