"""The options of a training run: one typed dataclass, saved as ``config.json`` beside its
checkpoint, and the source of `train`'s command-line options (defaults, help, checks)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import GeoconceptError


def option(default: Any, help: str | None = None, flag: str | None = None) -> Any:
    """A field of TrainConfig with its command-line ``help`` and, where the option is not
    named after the field, its ``flag``: `train` and `ablate` read their options from these."""
    return field(default=default, metadata={"help": help, "flag": flag})


@dataclass
class TrainConfig:
    """Every option of a run; saved as ``config.json`` beside its checkpoint."""

    features: str
    out: str
    concepts: str | None = None  # concept embeddings file; None trains plain GeoCLIP
    epochs: int = option(10)
    max_steps: int | None = option(None, "Stop after N steps.")
    batch_size: int = option(512, "Global batch (over all ranks).")
    lr: float = option(3e-5)
    weight_decay: float = option(1e-6)
    warmup_steps: int = option(100)
    grad_clip: float = option(1.0)
    queue_size: int = option(4096)
    batch_noise_m: float = option(150.0)
    queue_noise_m: float = option(1000.0)
    divergence: str = option("mmd", "mmd (Gaussian MMD^2) or mean.")
    sigma: float | None = option(None, "Kernel width (default: median).")
    lambda_div: float = option(1.0, "Divergence weight.", flag="--lambda")
    delta_weight: float = option(0.0, "Penalty keeping B near E.")
    train_location: str = option("partial", "none, partial or all.")
    seed: int = option(0)
    save_every: int = option(200)
    log_every: int = option(10)
    amp: bool = option(True, "bfloat16 autocast on GPU.")
    device: str = "cpu"  # cuda for --gpus, which `train` takes with the other launch options

    def checkpoint_path(self) -> Path:
        """Where this run writes its checkpoint (a legacy ``checkpoint.pt`` is only read)."""
        from ..model.checkpoints import CHECKPOINT_NAME  # torch: the CLI reads this module first

        return Path(self.out) / CHECKPOINT_NAME

    def validate(self) -> None:
        """One-line errors for option values that would crash or silently diverge later."""
        from ..model.concept_head import LOCATION_TRAINABLE  # torch: as in checkpoint_path
        from ..model.losses import DIVERGENCES

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
            (self.divergence in DIVERGENCES, f"--divergence must be {' or '.join(DIVERGENCES)}"),
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
