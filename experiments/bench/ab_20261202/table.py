"""The side-by-side table of this folder's runs: python experiments/bench/ab_20261202/table.py"""
import glob
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
rows = {}
for f in sorted(glob.glob(os.path.join(HERE, '*.jsonl'))):
  run = os.path.basename(f)[:-6]
  for l in open(f):
    d = json.loads(l)
    rows.setdefault(d['name'], {})[run] = (d['value'], d.get('best'), d.get('compile_s'))
runs = sorted({r for v in rows.values() for r in v})
print('| benchmark | ' + ' | '.join(runs) + ' |')
print('|---|' + '---|' * len(runs))
for name, v in rows.items():
  cells = []
  for r in runs:
    if r in v:
      val, best, c = v[r]
      cells.append(f'{val:,.4g}' + (f' (best {best:,.4g})' if best else ''))
    else:
      cells.append('')
  print(f'| {name} | ' + ' | '.join(cells) + ' |')
for g in sorted(glob.glob(os.path.join(HERE, 'galsim_*.txt'))):
  print(os.path.basename(g), open(g).read().strip())
