"""Sec. 4 metrics against hand-computed values on fixed logits."""

import numpy as np

from rcnn_jax.evaluation import metrics as metrics_lib


def _onehot(pred, c=3):
  return np.eye(c)[np.asarray(pred)] * 5.0


def test_metrics_on_fixed_logits():
  # 4 sequences, 3 steps, 3 classes; the last sequence has only 2 valid steps.
  pred = [[0, 0, 0], [1, 2, 2], [2, 2, 1], [1, 0, 2]]
  labels = np.array([0, 2, 1, 0])
  mask = np.array([[1, 1, 1], [1, 1, 1], [1, 1, 1], [1, 1, 0]], bool)
  m = metrics_lib.compute_metrics(_onehot(pred), labels, mask, np.array([18., 20., 22., 25.]),
                               ['a', 'b', 'c'], magnitude_bins=(17, 19, 21, 23),
                               confusion_step=3)
  assert m['num_examples'] == 4
  # step 1: correct = [T, F, F, F] -> 1/4; step 2: [T, T, F, T] -> 3/4; step 3: 3 seqs [T,T,T]
  np.testing.assert_allclose(m['accuracy_by_step'], [0.25, 0.75, 1.0])
  assert m['sequences_by_step'] == [4, 4, 3]
  np.testing.assert_allclose(m['recall_by_step']['a'], [0.5, 1.0, 1.0])
  np.testing.assert_allclose(m['recall_by_step']['c'], [0.0, 1.0, 1.0])
  # confusion at step 3 (sequence 4 at its last valid step 2, predicted 0 = correct)
  np.testing.assert_allclose(m['confusion'], [[1, 0, 0], [0, 1, 0], [0, 0, 1]])
  assert m['accuracy_at_confusion_step'] == 1.0
  mb = m['accuracy_by_magnitude']
  assert mb['count'] == [1, 1, 1]  # magnitude 25 is outside the bins
  i1 = mb['steps'].index(1)
  assert mb['accuracy'][i1] == [1.0, 0.0, 0.0]


def test_confusion_rows_are_true_labels_and_normalised():
  pred = np.array([[1], [1], [0], [2]])
  labels = np.array([0, 0, 0, 2])
  conf, counts = metrics_lib.confusion_at_step(pred, labels, np.ones((4, 1), bool), 3, 1)
  np.testing.assert_allclose(conf[0], [1 / 3, 2 / 3, 0])
  np.testing.assert_allclose(conf[1], [0, 0, 0])  # no true examples
  np.testing.assert_allclose(conf[2], [0, 0, 1])
  assert counts.sum() == 4


def test_padded_steps_never_count():
  pred = np.array([[0, 1, 1]])
  labels = np.array([0])
  mask = np.array([[True, False, False]])
  acc = metrics_lib.accuracy_by_step(pred, labels, mask)
  assert acc[0] == 1.0 and np.isnan(acc[1]) and np.isnan(acc[2])
  conf, _ = metrics_lib.confusion_at_step(pred, labels, mask, 2, 3)
  assert conf[0, 0] == 1.0


def test_recall_by_magnitude_on_fixed_predictions():
  # At step 2: predictions [0, 2, 2, 0, 1]; labels [0, 2, 1, 0, 1]; magnitudes in bins 0, 1, 1,
  # 1, outside.
  pred = np.array([[0, 0], [1, 2], [2, 2], [1, 0], [1, 1]])
  labels = np.array([0, 2, 1, 0, 1])
  mask = np.ones((5, 2), bool)
  mag = np.array([18.0, 20.0, 20.5, 19.5, 30.0])
  r = metrics_lib.recall_by_magnitude(pred, labels, mask, mag, (17, 19, 21), 3, step=2)
  assert r['count'] == [[1, 1], [0, 1], [0, 1]]
  np.testing.assert_allclose(np.asarray(r['recall'], float),
                             [[1.0, 1.0], [np.nan, 0.0], [np.nan, 1.0]])
  m = metrics_lib.compute_metrics(np.eye(3)[pred] * 5.0, labels, mask, mag, ['a', 'b', 'c'],
                               magnitude_bins=(17, 19, 21), confusion_step=1)
  # at step 1 object 1 (label 2, predicted 1) is wrong and object 3 (label 0, predicted 1) too
  assert m['recall_by_magnitude']['recall'] == [[1.0, 0.0], [None, 0.0], [None, 0.0]]
  assert m['recall_by_magnitude']['class_names'] == ['a', 'b', 'c']
