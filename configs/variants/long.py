"""The ``long`` variant: the longest CPU training of the project; the shipped model comes from it.

    python -m rcnn_jax.train --config configs/hits.py:long --workdir workdirs/long_rcnn
    python -m rcnn_jax.train --config configs/hits_lc.py:long --workdir workdirs/long_lc
    bash scripts/release.sh workdirs/long_rcnn   # evaluate, package, fine-tune, package

6,000 steps of 32 (6x ``cpu``), Adam 1e-3 with a 200-step warm-up and a cosine decay to 2 %,
the paper's batch-norm momentum 0.99; validation on 1,400 sequences and a checkpoint every 250
steps; test on 7,000.

Expected, HiTS (seed 0; ``experiments/long/README.md``, ``docs/results.md``, 2026-12-01, at
commit 6a6de80, a simulator before the difference-detection rules and issue 31's binaries):
the RCNN (``pretrained/hits2015_rcnn/``) took 98 min on a 2-core AMD EPYC (AVX-512) shared with
two low-priority jobs; best checkpoint the last (validation accuracy 0.901), simulated test
accuracy at step 20 0.895 (recall Supernova 0.94, RRLyrae 0.73, Cepheid 0.84, EclipsingBinary
0.89, NonVariable 0.94, Galaxy 0.95, Asteroid 0.98); on the 70 real development files recall
Supernova 0.60, RRLyrae 0.70, EclipsingBinary 0.90, NonVariable 0.85 (mean 0.76; the paper's
Fig. 8: 0.74). The light-curve classifier: 23 min, test accuracy 0.863 (best step 5,750), real
mean recall 0.78. The retraining on today's simulator: ``experiments/hits2015_rcnn/README.md``.
"""


def apply(config):
  # About 2 h alone on the 2-core AMD EPYC (1,000 steps of 32 take 20 min), 6x the cpu
  # variant's steps. The same batch as cpu (its learning curve is the reference); warm-up then
  # cosine decay, so that the run ends at a low rate rather than at the fixed-rate noise floor;
  # the paper's batch-norm momentum (0.99: a 100-step memory is short against 6,000 steps).
  # Checkpoints every 250 steps, so a stopped run loses at most 5 min; a larger validation set
  # for the best checkpoint.
  config.train.batch_size = 32
  config.train.num_steps = 6_000
  config.train.schedule = 'warmup_cosine'
  config.train.warmup_steps = 200
  config.train.final_lr_fraction = 0.02
  config.train.log_every = 10
  config.train.eval_every = 250
  config.ckpt.every = 250
  config.eval.val_size = 1_400
  config.eval.test_size = 7_000
  config.eval.batch_size = 350
