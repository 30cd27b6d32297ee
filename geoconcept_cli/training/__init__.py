"""Training: the run's options (``TrainConfig``) and the loop, on one process or many."""

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:
    from .config import TrainConfig as TrainConfig
    from .loop import train as train

__getattr__ = lazy_exports(__name__, {"TrainConfig": "config", "train": "loop"})
