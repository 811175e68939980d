"""The ``paper`` variant (the default): Sec. 3.4 of Carrasco-Davis et al. (2018), for a GPU.

    python -m rcnn_jax.train --config configs/hits.py --workdir workdirs/paper
    python -m rcnn_jax.train --config configs/hits_lc.py --workdir workdirs/paper_lc
    python -m rcnn_jax.evaluate --workdir workdirs/paper --workdir workdirs/paper_lc

Adam at a constant 1e-3, batch 256, 30,000 steps, the RCNN of Table 3 (batch-norm momentum
0.99), the best checkpoint by validation loss; validation on 8,575 and test on 85,750 seeded
simulated sequences. The values are those of ``configs/common/``: nothing changes here.

Expected: the paper trains each model in about 6 h on a GeForce GTX 1080 Ti (Sec. 3.4) and
reports a real HiTS recall at step 20 of 0.71 (supernovae), 0.89 (RR Lyrae), 0.37 (eclipsing
binaries), 1.00 (non-variables) for the RCNN (Fig. 8). Not run by this project (no GPU was lent
for a full run; ``scripts/gpu_check.sh`` times its first two minutes on one GPU). On a 2-core
CPU it is out of reach (about 240 times the ``cpu`` variant's sequences): use ``cpu`` or ``long``.
"""


def apply(config):
  del config  # the paper's values are the defaults
