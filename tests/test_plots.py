"""The figures a user meets first are legible: in ``simulated_examples.png`` (the main job's
first figure) no row of stamps covers its light curve's axis, tick labels or axis label, and no
two classes' panels overlap."""

import matplotlib.pyplot as plt
import numpy as np

from rcnn_jax.core import plots


def _examples(num_classes=3, epochs=12, seed=0):
  rng = np.random.default_rng(seed)
  n = 2 * num_classes
  mjd = np.sort(rng.uniform(0, 20, (n, epochs)), axis=1) + 57070.0
  return {
      'class_names': np.array([f'Class{c}' for c in range(num_classes)]),
      'label': np.repeat(np.arange(num_classes), 2), 'epoch_valid': np.ones((n, epochs), bool),
      'mjd': mjd, 'source_flux_adu': rng.uniform(1e3, 1e5, (n, epochs)),
      'host_flux_adu': rng.uniform(1e3, 1e4, (n, epochs)), 'has_host': np.arange(n) % 2 == 0,
      'magnitude': rng.uniform(18, 23, n), 'mask': np.ones((n, epochs - 2), bool),
      'raw_adu': rng.normal(500, 20, (n, epochs, 21, 21)),
  }


def _boxes(fig):
  """[(kind, row, bbox)] in display units, the light curves with their labels and ticks, the
  stamps with their titles."""
  fig.canvas.draw()
  r = fig.canvas.get_renderer()
  out = []
  for ax in fig.axes:
    kind = 'stamp' if ax.images else 'curve'
    out.append((kind, ax, ax.get_tightbbox(r)))
  return out


def test_stamps_leave_the_light_curves_axis_and_labels_clear():
  fig = plots.examples_figure(_examples())
  boxes = _boxes(fig)
  curves = [b for k, _, b in boxes if k == 'curve']
  stamps = [b for k, _, b in boxes if k == 'stamp']
  assert len(curves) == 3 and len(stamps) == 3 * 11
  overlaps = [(c, s) for c in curves for s in stamps if c.overlaps(s)]
  assert not overlaps, f'{len(overlaps)} stamp(s) over a light curve\'s axis or labels'
  plt.close(fig)


def test_the_check_sees_an_overlap():
  """The overlap test is not vacuous: a stamp moved onto the light curve is caught."""
  fig = plots.examples_figure(_examples())
  boxes = _boxes(fig)
  curve = next(ax for k, ax, _ in boxes if k == 'curve')
  stamp = next(ax for k, ax, _ in boxes if k == 'stamp')
  stamp.set_position(curve.get_position())
  boxes = _boxes(fig)
  curves = [b for k, _, b in boxes if k == 'curve']
  stamps = [b for k, _, b in boxes if k == 'stamp']
  assert any(c.overlaps(s) for c in curves for s in stamps)
  plt.close(fig)


def test_learning_curves_only_from_a_history(tmp_path):
  # A packaged model (pretrained/) has no metrics.jsonl: no empty figure, no legend warning.
  path = tmp_path / 'curves.png'
  assert plots.plot_learning_curves([('rcnn', [])], str(path)) is None and not path.exists()
  rows = [{'step': s, 'train_loss': 20.0 - s, 'val_loss': 21.0 - s, 'val_accuracy': 0.1 * s}
          for s in (1, 2, 3)]
  assert plots.plot_learning_curves([('rcnn', rows)], str(path)) == str(path)
  assert path.stat().st_size > 10_000
