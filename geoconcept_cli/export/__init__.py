"""Export: a trained run as a self-contained model folder with a model card."""
