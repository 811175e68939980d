"""The learning-rate schedule of config.train, the long CPU variant, and resuming older runs."""

import json

import numpy as np
import pytest

from configs import hits
from rcnn_jax.core import utils
from rcnn_jax.training import checkpoints
from rcnn_jax.training import config_check
from rcnn_jax.training import steps as steps_lib


def test_constant_schedule_is_the_paper_rate():
  c = hits.get_config('paper')
  assert c.train.schedule == 'constant'
  assert steps_lib.learning_rate_schedule(c.train) == c.train.learning_rate == 1e-3


def test_warmup_cosine_shape():
  t = hits.get_config('long').train
  f = steps_lib.learning_rate_schedule(t)
  lr, n, w = t.learning_rate, t.num_steps, t.warmup_steps
  assert float(f(0)) == 0.0
  np.testing.assert_allclose(float(f(w // 2)), lr / 2, rtol=1e-5)  # linear warm-up
  np.testing.assert_allclose(float(f(w)), lr, rtol=1e-6)  # peak
  mid = w + (n - w) // 2
  end = lr * t.final_lr_fraction
  np.testing.assert_allclose(float(f(mid)), end + (lr - end) / 2, rtol=1e-3)  # cosine midpoint
  np.testing.assert_allclose(float(f(n)), end, rtol=1e-5)
  after = np.array([float(f(s)) for s in range(w, n + 1, 50)])
  assert (np.diff(after) <= 0).all()


def test_long_variant_validates():
  for arg in ('long', 'long,lc'):
    c = hits.get_config(arg)
    config_check.validate(c)
    assert c.train.num_steps == 6 * hits.get_config('cpu').train.num_steps
    assert c.train.batch_size == hits.get_config('cpu').train.batch_size
  assert hits.get_config('long,lc').model.kind == 'lc'


@pytest.mark.parametrize('field, value, says', [
    ('schedule', 'linear', 'config.train.schedule'),
    ('warmup_steps', 6_000, 'config.train.warmup_steps'),
    ('final_lr_fraction', 1.5, 'config.train.final_lr_fraction'),
])
def test_bad_schedule_is_one_line(field, value, says):
  c = hits.get_config('long')
  c.train[field] = value
  with pytest.raises(utils.UserError) as e:
    config_check.validate(c)
  assert says in str(e.value) and '\n' not in str(e.value)


def test_older_run_without_schedule_resumes():
  """A run saved before config.train.schedule existed meant a constant rate: same training."""
  new = json.loads(hits.get_config('paper').to_json_best_effort())
  old = json.loads(json.dumps(new))
  for k in ('schedule', 'warmup_steps', 'final_lr_fraction'):
    del old['train'][k]
  del old['real']['drop_unknown_seeing']  # a section training never reads
  assert checkpoints._config_differences(old, new) == []  # pylint: disable=protected-access
  long = json.loads(hits.get_config('paper').to_json_best_effort())
  long['train']['schedule'] = 'warmup_cosine'
  assert checkpoints._config_differences(old, long) == ['train.schedule']  # pylint: disable=protected-access
