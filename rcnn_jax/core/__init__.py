"""Layer 0 (imports nothing of rcnn_jax): ``errors`` (UserError, BadInput: one line, exit 2),
``utils`` (atomic writes, progress bars, the commands' wrapper ``run``), ``outputs`` (where
results may be written: never into a model folder, never over a finished run)."""
