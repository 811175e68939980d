"""Layer 3, training (imports ``core``, ``sim``, ``models``): ``steps`` (model inputs, loss,
mesh, train and eval steps), ``loop`` (``train_and_evaluate``, single- and multi-process),
``checkpoints`` (the workdir's orbax manager and saved config), ``workdir`` (lock, verified
restores, metrics files), ``config_check`` (the config validator)."""
