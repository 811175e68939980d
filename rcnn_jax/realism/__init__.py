"""Layer 6, realism (Appendix A; imports the layers below): ``twins`` (simulated twins of real
constant stars, compared), ``stars`` (star measurements), ``psf_calibration``, ``lcstats``
(constant-star scatter and variable statistics), ``report`` (the ``python -m rcnn_jax.realism``
run and its figures)."""
