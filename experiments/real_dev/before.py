"""Recall per class at step 20 on the 70 dev files with the ORIGINAL real-data path.

    PYTHONPATH=<checkout of c48b2c5> python experiments/real_dev/before.py WORKDIR OUT.json

Runs the original commit's Classifier (all epochs, bad seeing included, zp_ref = the
file's first image, start at the first epoch), taking the step-20 prediction (the last one for
shorter sequences): the "before" column of experiments/real_dev/README.md.
"""
import glob, json, os, sys
import numpy as np
from rcnn_jax.serving.classifier import Classifier
from rcnn_jax.inputs import realdata

wd, out = sys.argv[1], sys.argv[2]
root = os.environ.get('HITS', os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', '..', 'shared', 'data', 'hits2015'))
files = sorted(glob.glob(f'{root}/real_labelled_dev/*/*.npz')) + sorted(
    glob.glob(f'{root}/real_nonvariable_dev/*.npz'))
clf = Classifier.from_workdir(wd)
seqs = [realdata.load_sequence(f, clf.stamp_size, clf.n_w) for f in files]
labels = [os.path.basename(os.path.dirname(f)) if 'labelled' in f else 'NonVariable'
          for f in files]
probs = clf.classify(seqs, max_steps=20)
names = list(clf.class_names)
pred = [names[int(np.argmax(p[min(len(p), 20) - 1]))] for p in probs]
classes = sorted(set(labels), key=names.index)
rec = {c: float(np.mean([p == c for p, l in zip(pred, labels) if l == c])) for c in classes}
res = {'workdir': wd, 'checkpoint_step': clf.checkpoint_step, 'code': 'baseline (original)',
       'recall_at_step_20': rec, 'mean_recall': float(np.mean(list(rec.values()))),
       'count_per_class': {c: labels.count(c) for c in classes},
       'files': [{'path': f, 'label': l, 'predicted': p} for f, l, p in zip(files, labels, pred)]}
json.dump(res, open(out, 'w'), indent=1)
print(json.dumps({k: res[k] for k in ('recall_at_step_20', 'mean_recall', 'checkpoint_step')}))
