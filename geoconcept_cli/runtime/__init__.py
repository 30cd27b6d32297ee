"""Runtime: torch.distributed setup, where workers run, progress reports and reused buffers."""
