"""Evaluation: metrics, evaluate, calibrate, interpretability, downstream probes, the atlas
and the concept-set ablation."""
