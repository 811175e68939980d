"""Real alert streams (issue 32): ZTF and Rubin packets -> epochs (``reader``), the per-object
state in SQLite (``state``), batched stream updates (``engine``), and the run behind
``python -m rcnn_jax.alerts`` (``pipeline``). See docs/alerts.md."""
