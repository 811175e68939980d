"""The ``smoke`` variant: a tiny network and two steps, for tests and for checking a setup.

    python -m rcnn_jax.train --config configs/hits.py:smoke --workdir /tmp/smoke
    python -m rcnn_jax.simulate --config configs/ztf.py:smoke --num 28 --out /tmp/ztf.npz
    python -m rcnn_jax.simulate --config configs/lsst.py:smoke --num 28 --out /tmp/lsst.npz

Expected: training finishes its 2 steps of 14 in a few minutes, almost all of it compiling
(ZTF 157 s, LSST 168 s wall on a shared 2-core AMD EPYC: ``experiments/surveys/README.md``;
16,325 and 17,093 parameters); the accuracy means nothing. Each ``simulate`` takes about a
minute (one compile). Up to 6 steps per sequence; 28 test objects, the same as the
``hits_sim`` smoke dataset's test split.
"""


def apply(config):
  config.sim.max_steps = 6
  config.model.filters = 8
  config.model.dense = 32
  config.model.lstm_size = 16
  config.train.batch_size = 14
  config.train.num_steps = 2
  config.train.log_every = 1
  config.train.eval_every = 1
  config.ckpt.every = 1
  config.eval.val_size = 28
  config.eval.test_size = 28
  config.eval.batch_size = 14
  config.finetune.num_steps = 3
  config.finetune.batch_size = 8
  config.dataset.train_size = 14
  config.dataset.validation_size = 7
  config.dataset.test_size = 28  # = eval.test_size: the same objects as evaluate's test set
  config.dataset.chunk = 14
