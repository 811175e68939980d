"""Fast CPU formulations of the model's layers, beside the plain Linen model (``models.py``).

``conv``: the 3 x 3 convolutions ('rows', 'im2col', Winograd); ``fused``: encoder layers fused
with their batch norm, ReLU and pool, run over the batch in chunks. All are functions of the
plain model's parameters, chosen by ``config.model.conv_impl`` and ``encoder_chunk``, and
tested equal to the plain layers. A new kernel: a function here, a config value that picks it,
and an equality test in tests/test_models.py.
"""
