"""The ``wide`` modifier (``--config configs/hits.py:long,wide``): training batches drawn with
observing conditions wider than the survey's table, the paper's own future work against the
simulation-to-sky gap (Sec. 6: the relevant features of simulated objects must match the real
ones; a network trained on one survey's few fields and nights can learn their particulars).

Validation and test sets keep the survey's own conditions (``steps.make_eval_step``), so a run
with and without this modifier is measured on the same objects. The widths
(``simulator.randomise_conditions``), against HiTS 2015's table
(``shared/reference/hits2015.md``):

* seeing: x exp(N(0, 0.2^2)) per epoch (the table's 5-95 % range 1.06-2.70" is a log-normal
  of sigma ~0.28; 0.2 more in quadrature widens it by ~20 %), clipped to the 2" cut;
* sky: x exp(N(0, 0.3^2)) per epoch (dark 105-140 ADU, moonlit 560-1750: the dark-sky noise
  of a moonlit-like night and back);
* zero point: + N(0, 0.05^2) mag per epoch (the table's 5-95 % range 24.91-25.11 is ~0.06
  mag of sigma) and + N(0, 0.15^2) mag per object (fields as deep as another survey's:
  DECam's limiting magnitude spreads 22.4-24.9 between epochs);
* the unknown calibration errors (per-epoch 0.93 %, night 3.2 %, PSF width 4.2 %, measured
  on the 40 real constant stars) x U(1, 2) per object: stars no better calibrated than the
  development ones, some worse.

Class-preserving by construction: every change is one a real epoch could have, and the
observer (eq. 4, the seeing cut) knows the changed values as it knows the table's.
"""


def apply(config):
  rc = config.sim.randomise_conditions
  rc.seeing_log_sigma = 0.2
  rc.sky_log_sigma = 0.3
  rc.zero_point_sigma_mag = 0.05
  rc.zero_point_object_sigma_mag = 0.15
  rc.calibration_max_factor = 2.0
