"""Training: the run's options (``TrainConfig``) and the loop, on one process or many."""
