"""rcnn_jax: image-sequence classification of astronomical events (Carrasco-Davis et al. 2018).

Data flow, one module per stage:
  survey.py      Table 1: camera and exposures (built-in HiTS 2015 model or real tables)
  lightcurves.py Table 2, Fig. 1: magnitudes over time for the seven classes
  render.py      Sec. 2.3: PSF, host galaxies, sky, noise, saturation
  sequences.py   Sec. 3.1: first detection, windows, eq. 4, n_w stacks, masks
  simulator.py   composes them: (key, simulator) -> batch, inside jit
  photometry.py  optimal photometry for the light-curve classifier (Sec. 3.3)
  models.py      Table 3 and Sec. 3.3 (the model registry, config.model.kind)
  common.py      shared by the commands: inputs, loss, mesh, train and eval steps
  checkpoints.py a workdir's checkpoints and saved config
  classifier.py, stream.py: real sequences, whole or image by image
  train.py, evaluate.py, predict.py, finetune.py, simulate.py, bench.py, realism.py: commands

ARCHITECTURE.md draws the data flow and says which file to open for a change.

The class names, like every hyperparameter, are the config's (``config.sim.class_names``).
"""
