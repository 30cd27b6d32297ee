"""Inference: predict, explain and `where` over a gallery, calibrated probabilities and
regions, the factory of ready models from a ``ModelSpec``, and batch runs (``batch/``)."""
