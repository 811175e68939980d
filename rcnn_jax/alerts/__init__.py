"""Real alert streams (issue 32): ZTF and Rubin packets -> epochs (``reader``), the per-object
state in SQLite (``state``), batched stream updates (``engine``), the command (``command``,
``python -m rcnn_jax.alerts``). See docs/alerts.md."""
