"""The options of a training run: one typed dataclass, saved as ``config.json`` beside its
checkpoint, and the source of `train`'s command-line options (defaults, help, checks)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import GeoconceptError
from ..model.checkpoints import (
    CHECKPOINT_NAME,
)
from ..model.concept_head import (
    LOCATION_TRAINABLE,
)
from ..model.losses import DIVERGENCES


@dataclass
class TrainConfig:
    """Every option of a run; saved as ``config.json`` beside its checkpoint."""

    features: str
    out: str
    concepts: str | None = None  # concept embeddings file; None trains plain GeoCLIP
    epochs: int = 10
    max_steps: int | None = None
    batch_size: int = 512  # global, over all ranks
    lr: float = 3e-5
    weight_decay: float = 1e-6
    warmup_steps: int = 100
    grad_clip: float = 1.0
    queue_size: int = 4096
    batch_noise_m: float = 150.0
    queue_noise_m: float = 1000.0
    divergence: str = "mmd"  # mmd | mean
    sigma: float | None = None  # None: median heuristic
    lambda_div: float = 1.0
    delta_weight: float = 0.0
    train_location: str = "partial"
    seed: int = 0
    save_every: int = 200
    log_every: int = 10
    amp: bool = True
    device: str = "cpu"

    def checkpoint_path(self) -> Path:
        """Where this run writes its checkpoint (a legacy ``checkpoint.pt`` is only read)."""
        return Path(self.out) / CHECKPOINT_NAME

    def validate(self) -> None:
        """One-line errors for option values that would crash or silently diverge later."""
        checks = [
            (self.batch_size >= 1, "--batch-size must be >= 1"),
            (self.epochs >= 0, "--epochs must be >= 0"),
            (self.max_steps is None or self.max_steps >= 1, "--max-steps must be >= 1"),
            (self.lr > 0, "--lr must be > 0"),
            (self.queue_size >= 0, "--queue-size must be >= 0"),
            (self.warmup_steps >= 0, "--warmup-steps must be >= 0"),
            (self.sigma is None or self.sigma > 0, "--sigma must be > 0"),
            (self.lambda_div >= 0, "--lambda must be >= 0 (a negative one widens the gap)"),
            (min(self.weight_decay, self.grad_clip, self.delta_weight) >= 0,
             "--weight-decay, --grad-clip and --delta-weight must be >= 0"),
            (min(self.batch_noise_m, self.queue_noise_m) >= 0, "GPS noise must be >= 0 m"),
            (self.log_every >= 1, "--log-every must be >= 1"),
            (self.save_every >= 1, "--save-every must be >= 1"),
            (self.divergence in DIVERGENCES, f"--divergence must be one of {list(DIVERGENCES)}"),
            (self.train_location in LOCATION_TRAINABLE,
             f"--train-location must be one of {list(LOCATION_TRAINABLE)}"),
        ]  # fmt: skip
        for ok, message in checks:
            if not ok:
                raise GeoconceptError(message)

    def total_steps(self, n: int) -> int:
        """Steps of the run: the epochs over ``n`` samples, capped by --max-steps."""
        total = self.epochs * (n // self.batch_size)
        total = min(total, self.max_steps) if self.max_steps else total
        if total < 1:
            raise GeoconceptError(f"nothing to train: {n} samples, --epochs {self.epochs}")
        return total
