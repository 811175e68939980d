"""Layer 4, serving (imports the layers below): ``classifier`` and ``stream`` (real sequences,
whole or image by image), ``loading`` (one loader for a training workdir or a shipped folder),
``shipped`` (the shipped-model folder format), ``export``/``exported`` (jax.export of the
streaming update and its model-free loader), ``alerts/`` (ZTF and Rubin alert packets, the
per-object SQLite state, the stream engine)."""
