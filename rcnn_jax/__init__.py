"""rcnn_jax: image-sequence classification of astronomical events (Carrasco-Davis et al. 2018).

Packages by role, imports running down the list (tests/test_layering.py checks it):

  core/        errors (one-line UserError), utils (atomic writes, progress, the commands'
               wrapper), outputs (where results may go), plots (the paper's figures)
  sim/         the simulator: survey, cadence, bands (Table 1), lightcurves (Table 2, Fig. 1),
               render (Sec. 2.3), sequences (Sec. 3.1), photometry, simulator (composes them)
  inputs/      real sequence files (realdata), their preparation as in training (preprocess),
               the plausibility rules of one epoch
  datasets/    tensorflow-datasets builders: hits_sim, hits_real
  models/      Table 3 and Sec. 3.3: layers, networks (the registry), kernels/ (CPU forms)
  training/    steps (inputs, loss, mesh, train/eval steps), loop (train_and_evaluate,
               multi-process), checkpoints, workdir, config_check
  serving/     loading (a workdir or a shipped folder), classifier and stream, shipped (the
               shipped-model format), packaging, files (CSV and figures), export and exported,
               alerts/ (ZTF and Rubin packets, SQLite state, the engine)
  evaluation/  metrics, simulated (the test set), real (labelled files), finetune
  realism/     Appendix A: twins, stars, psf_calibration, lcstats, report

Commands, thin on top (flags, then one library call): ``python -m rcnn_jax.<command>`` with
train, evaluate, predict, finetune, simulate, export, pretrained, bench, alerts, realism and
datasets.build. ARCHITECTURE.md draws the data flow and says which file to open for a change.

The class names, like every hyperparameter, are the config's (``config.sim.class_names``).
"""
