"""Figures: simulated examples (paper Fig. 2-3)."""

from __future__ import annotations

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np


def _stretch(img):
  """asinh stretch around the median, scaled by a robust noise estimate."""
  med = np.median(img)
  mad = 1.4826 * np.median(np.abs(img - med)) + 1e-6
  return np.arcsinh((img - med) / (3 * mad))


def plot_examples(data, path, num_stamps=11):
  """One example sequence per class: light curve above, raw stamps (sky included) below."""
  fig = examples_figure(data, num_stamps)
  fig.savefig(path, dpi=110, bbox_inches='tight')
  plt.close(fig)


def examples_figure(data, num_stamps=11):
  """The figure of ``plot_examples`` (tests check that its panels do not overlap)."""
  names = [str(n) for n in data['class_names']]
  fig = plt.figure(figsize=(num_stamps * 1.1, len(names) * 3.1))
  outer = fig.add_gridspec(len(names), 1, hspace=0.45)
  for c, name in enumerate(names):
    idx = np.flatnonzero(data['label'] == c)
    if not len(idx):
      continue
    i = idx[0]
    valid = data['epoch_valid'][i]
    t = data['mjd'][i][valid] - data['mjd'][i][0]
    # Row 1 (empty) keeps the light curve's tick labels and axis label clear of the stamps
    # and their titles (row 2).
    inner = outer[c].subgridspec(3, num_stamps, height_ratios=(1.3, 0.95, 1), hspace=0.0,
                                 wspace=0.05)
    ax = fig.add_subplot(inner[0, :])
    ax.plot(t, data['source_flux_adu'][i][valid], 'o-', ms=3, label='point source')
    if data['has_host'][i]:
      ax.plot(t, data['host_flux_adu'][i][valid], 's--', ms=2, label='host in stamp')
    ax.set_ylabel('ADU', fontsize=7)
    ax.tick_params(labelsize=6)
    mag = data['magnitude'][i]
    ax.set_title(f'{name}  (mag {mag:.2f}{", host" if data["has_host"][i] else ""}; '
                 f'{int(data["mask"][i].sum())} steps)', fontsize=8, loc='left')
    ax.legend(fontsize=6, loc='best')
    ax.set_xlabel('days since first image', fontsize=7, labelpad=1)
    epochs = np.flatnonzero(valid)
    pick = epochs[np.linspace(0, len(epochs) - 1, min(num_stamps, len(epochs))).astype(int)]
    for j, e in enumerate(pick):
      a = fig.add_subplot(inner[2, j])
      a.imshow(_stretch(data['raw_adu'][i][e]), cmap='gray', origin='lower')
      a.set_xticks([])
      a.set_yticks([])
      title = f'{data["mjd"][i][e] - data["mjd"][i][0]:.1f} d'
      if 'band' in data and 'band_names' in data:  # several bands: each stamp's band
        title += f' {data["band_names"][data["band"][i][e]]}'
      a.set_title(title, fontsize=6, pad=2)
  return fig


_LABELS = {'rcnn': 'RCNN (images)', 'lc': 'light-curve classifier'}


def plot_evaluation(results, out_dir):
  """Fig. 5 (accuracy/recall vs steps, accuracy vs magnitude) and Fig. 6-7 (confusion) per model,
  side by side when two results are given. Returns the written paths."""
  import os  # pylint: disable=g-import-not-at-top
  n = len(results)
  fig, axes = plt.subplots(n, 3, figsize=(15, 4.2 * n), squeeze=False)
  for r, m in enumerate(results):
    label = _LABELS.get(m['model'], m['model'])
    steps = np.arange(1, len(m['accuracy_by_step']) + 1)
    acc = np.array(m['accuracy_by_step'], dtype=float)
    ax = axes[r, 0]
    ax.plot(steps, acc, 'k-o', ms=3, label='simulated test')
    ax.set(xlabel='number of inputs (steps)', ylabel='accuracy', ylim=(0, 1.02),
           title=f'{label}: accuracy')
    ax.axhline(1 / len(m['class_names']), ls=':', c='gray', label='chance')
    ax.legend(fontsize=7)
    ax = axes[r, 1]
    for name, rec in m['recall_by_step'].items():
      ax.plot(steps, np.array(rec, dtype=float), '-', label=name)
    ax.set(xlabel='number of inputs (steps)', ylabel='recall', ylim=(0, 1.02),
           title=f'{label}: recall per class')
    ax.legend(fontsize=6, ncol=2)
    ax = axes[r, 2]
    mb = m['accuracy_by_magnitude']
    edges = np.array(mb['bin_edges'])
    centres = 0.5 * (edges[1:] + edges[:-1])
    for s, a in zip(mb['steps'], mb['accuracy']):
      ax.plot(centres, np.array(a, dtype=float), '-o', ms=3, label=f'{s} steps')
    ax.set(xlabel='magnitude', ylabel='accuracy', ylim=(0, 1.02),
           title=f'{label}: accuracy vs magnitude')
    ax.legend(fontsize=7)
  fig.tight_layout()
  p1 = os.path.join(out_dir, 'fig5_accuracy.png')
  fig.savefig(p1, dpi=110)
  plt.close(fig)

  fig, axes = plt.subplots(1, n, figsize=(6.5 * n, 5.8), squeeze=False)
  for r, m in enumerate(results):
    ax = axes[0, r]
    conf = np.array(m['confusion'])
    names = m['class_names']
    ax.imshow(conf, cmap='Blues', vmin=0, vmax=1)
    for i in range(len(names)):
      for j in range(len(names)):
        ax.text(j, i, f'{conf[i, j]:.2f}', ha='center', va='center', fontsize=7,
                color='white' if conf[i, j] > 0.6 else 'black')
    ax.set_xticks(range(len(names)), names, rotation=45, ha='right', fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set(xlabel='predicted label', ylabel='true label',
           title=f'{_LABELS.get(m["model"], m["model"])}: step {m["confusion_step"]}')
  fig.tight_layout()
  p2 = os.path.join(out_dir, 'fig6_confusion.png')
  fig.savefig(p2, dpi=110)
  plt.close(fig)
  return [p1, p2]


def plot_sequence_prediction(path, name, mjd, flux, step_mjd, probs, class_names, images,
                             num_stamps=16):
  """Appendix B (Fig. 13-15) for one real sequence: light curve, class probabilities per step
  and the stamps, on a shared time axis (days since the first image).

  ``flux`` [E] per image (e.g. an aperture sum of the eq. 4 images), ``step_mjd`` [T] the MJD of
  each step's last image, ``probs`` [T, C], ``images`` [E, S, S] eq. 4 stamps.
  """
  mjd = np.asarray(mjd, float)
  t = mjd - mjd[0]
  ts = np.asarray(step_mjd, float) - mjd[0]
  probs = np.asarray(probs, float)
  k = min(num_stamps, len(mjd))
  fig = plt.figure(figsize=(max(8.0, 0.8 * k), 7.0))
  grid = fig.add_gridspec(3, k, height_ratios=(1.2, 1.4, 0.8), hspace=0.35, wspace=0.05)
  ax = fig.add_subplot(grid[0, :])
  ax.plot(t, flux, 'ko-', ms=3)
  ax.set_ylabel('counts (ADU, eq. 4)', fontsize=8)
  ax.set_title(f'{name}: {len(probs)} steps, first image MJD {mjd[0]:.4f}', fontsize=9,
               loc='left')
  ax.tick_params(labelsize=7)
  ax2 = fig.add_subplot(grid[1, :], sharex=ax)
  for c, cname in enumerate(class_names):
    ax2.plot(ts, probs[:, c], '-o', ms=3, label=str(cname))
  ax2.set(ylim=(-0.02, 1.02))
  ax2.set_ylabel('class probability', fontsize=8)
  ax2.set_xlabel('days since first image (each point: a step, at its last image)', fontsize=8)
  ax2.tick_params(labelsize=7)
  ax2.legend(fontsize=6, ncol=min(4, len(class_names)), loc='best')
  pick = np.linspace(0, len(mjd) - 1, k).round().astype(int)
  for j, e in enumerate(pick):
    a = fig.add_subplot(grid[2, j])
    a.imshow(_stretch(images[e]), cmap='gray', origin='lower')
    a.set_xticks([])
    a.set_yticks([])
    a.set_title(f'{t[e]:.1f} d', fontsize=6, pad=1)
  fig.savefig(path, dpi=100, bbox_inches='tight')
  plt.close(fig)


def plot_learning_curves(runs, path):
  """Training loss and validation loss/accuracy against step, one line per (label, rows) run.

  ``rows`` are the dicts of a workdir's metrics.jsonl. None, and no file, when no run has a
  row (a packaged model, pretrained/, keeps no training history).
  """
  if not any(rows for _, rows in runs):
    return None
  fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
  for label, rows in runs:
    tr = [(r['step'], r['train_loss']) for r in rows if 'train_loss' in r]
    va = [(r['step'], r['val_loss'], r['val_accuracy']) for r in rows if 'val_loss' in r]
    if tr:
      axes[0].plot(*zip(*tr), '-', alpha=0.6, label=f'{label}: train')
    if va:
      s, l, a = zip(*va)
      axes[0].plot(s, l, 'o-', label=f'{label}: validation')
      axes[1].plot(s, a, 'o-', label=label)
  axes[0].set(xlabel='training step', ylabel='loss (summed over steps)', title='loss')
  axes[1].set(xlabel='training step', ylabel='accuracy at the last step', ylim=(0, 1),
              title='validation accuracy')
  axes[1].axhline(1 / 7, ls=':', c='gray', label='chance')
  for ax in axes:
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def plot_real_recall(m, path):
  """Fig. 8 (RCNN) / Fig. 9 (light-curve classifier): recall per class on real sequences
  against the step, beside the confusion matrix at the last step (``evaluate.real_metrics``)."""
  fig, (ax, axc) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={'width_ratios': (1, 1.3)})
  for name, rec in m['recall_by_step'].items():
    r = np.array([np.nan if v is None else v for v in rec], float)
    ax.plot(np.arange(1, len(r) + 1), r, 'o-', ms=3,
            label=f'{name} ({m["count_per_class"][name]})')
  ax.set_xlabel('step (images - n_w + 1)')
  ax.set_ylabel('recall')
  ax.set_ylim(-0.02, 1.02)
  ax.legend(fontsize=8)
  ax.set_title(f'{m.get("model", "")} on real sequences: mean recall at step '
               f'{m["confusion_step"]} = {m["mean_recall"]:.2f}', fontsize=9)
  conf = np.array(m['confusion'])
  axc.imshow(conf, vmin=0, vmax=1, cmap='Blues')
  for i in range(conf.shape[0]):
    for j in range(conf.shape[1]):
      if conf[i, j] > 0:
        axc.text(j, i, f'{conf[i, j]:.2f}', ha='center', va='center', fontsize=7,
                 color='white' if conf[i, j] > 0.5 else 'black')
  axc.set_xticks(range(conf.shape[1]), m['class_names'], rotation=45, ha='right', fontsize=7)
  axc.set_yticks(range(conf.shape[0]), m['confusion_rows'], fontsize=7)
  axc.set_title(f'confusion at step {m["confusion_step"]} (rows: true)', fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path
