"""Markdown table of experiments/real_dev/NAME/{before,metrics_real,kfold}.json beside the paper.

    python experiments/real_dev/table.py base_rcnn
"""
import json, os, sys

here = os.path.dirname(os.path.abspath(__file__))
name = sys.argv[1] if len(sys.argv) > 1 else 'base_rcnn'
load = lambda f: json.load(open(os.path.join(here, name, f)))
before, after = load('before.json'), load('metrics_real.json')
kf = load('kfold.json') if os.path.exists(os.path.join(here, name, 'kfold.json')) else None
classes = ['Supernova', 'RRLyrae', 'EclipsingBinary', 'NonVariable']
paper = {'Supernova': 0.71, 'RRLyrae': 0.89, 'EclipsingBinary': 0.37, 'NonVariable': 1.00}
cols = [('paper Fig. 8 (real HiTS)', paper, None),
        ('before (original real path), 70 files', before['recall_at_step_20'],
         before['count_per_class']),
        ('after (`evaluate --real`), 70 files', after['recall_at_step'],
         after['count_per_class'])]
if kf:
  cols += [(f'k-fold, before fine-tuning ({kf["per_class"]}/class)', kf['before']['recall_at_step'], None),
           (f'k-fold, after fine-tuning ({kf["folds"]} folds)', kf['after']['recall_at_step'], None)]
mean = lambda d: sum(d[c] for c in classes) / len(classes)
print('| recall at step 20 | ' + ' | '.join(classes) + ' | mean |')
print('|---' * (len(classes) + 2) + '|')
for title, rec, n in cols:
  cells = [f'{rec[c]:.2f}' + (f' ({n[c]})' if n else '') for c in classes]
  print(f'| {title} | ' + ' | '.join(cells) + f' | {mean(rec):.2f} |')
