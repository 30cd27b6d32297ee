"""Knowing when not to answer: a photo's confidence, the level below which it is not answered,
and how accuracy trades against the share of photos answered.

A photo's **confidence** is the calibrated probability that its top-1 (the most probable
gallery place, as `evaluate` scores it) lies within the calibration's ``radius_km`` of the
truth: the probability mass within that radius of the top-1. A photo whose confidence is below
a level P is "not localizable at this confidence".

``abstention_level`` chooses P for a target accuracy A on held-out photos, with a finite-sample
guarantee (Learn then Test, Angelopoulos et al. 2021): each level of a grid fixed in advance is
tested with a one-sided binomial test of "the accuracy of the photos kept at this level is
below A" (the kept photos are, given how many there are, an i.i.d. sample of the photos that
level keeps), at ``delta`` divided by the grid's size (Bonferroni). Every level that passes is
then safe at once with probability >= 1 - delta over the calibration photos, and the lowest one
(keeping the most photos) is chosen.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from ..errors import GeoconceptError

if TYPE_CHECKING:  # Request checks a level with no torch loaded (the CLI starts without it)
    import torch

LEVELS = tuple(round(0.01 * i, 2) for i in range(1, 100))  # the grid, fixed before the data
DELTA = 0.1  # the chance that the calibration photos mislead: 90% certainty
COVERAGES = (0.5, 0.8, 1.0)  # where evaluate reads the risk-coverage curve
CURVE_POINTS = 101  # of the curve kept in the JSON summary


@dataclass(frozen=True)
class Abstention:
    """A level chosen for a target accuracy (``abstention_level``): below ``level``, no answer.
    On the ``photos`` calibration photos it kept ``kept`` of them at accuracy ``accuracy``;
    with probability >= 1 - ``delta``, the accuracy on photos kept is >= ``target``."""

    level: float
    target: float
    delta: float
    photos: int
    kept: float
    accuracy: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Abstention:
        return cls(level=float(data["level"]), target=float(data["target"]),
                   delta=float(data["delta"]), photos=int(data["photos"]),
                   kept=float(data["kept"]), accuracy=float(data["accuracy"]))  # fmt: skip

    def guarantee(self) -> str:
        """What the level promises, in one sentence."""
        return (f"with {1 - self.delta:.0%} certainty over the {self.photos} calibration "
                f"photos, at least {self.target:.0%} of the answers given are right (top-1 "
                "within the calibration radius); photos below the level get none")  # fmt: skip


def check_target(target: float) -> None:
    """One line for a target accuracy that cannot be asked for."""
    if not 0 < target < 1:
        raise GeoconceptError(f"--target-accuracy {target:g}: give an accuracy between 0 and 1 "
                              "(0.8: 80% of the answers given within the radius)")  # fmt: skip


def check_level(level: float) -> None:
    """One line for an abstention level that is not a probability."""
    if not 0 <= level < 1:
        raise GeoconceptError(f"--abstain-below {level:g}: give a confidence from 0 (always "
                              "answer) to below 1")  # fmt: skip


def mass_near(probs: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """(B,) the probability mass of the (photo ``rows``, gallery ``cols``) pairs of each photo
    (``calibration.pairs_within`` of its top-1: the confidence)."""
    import torch

    return torch.zeros(len(probs), dtype=probs.dtype, device=probs.device).index_add_(
        0, rows, probs[rows, cols]
    )


def abstention_level(confidence: npt.ArrayLike, hit: npt.ArrayLike, target: float,
                     delta: float = DELTA) -> Abstention:  # fmt: skip
    """The lowest level of LEVELS at which the accuracy of the photos kept (``confidence`` >=
    level; ``hit``: their top-1 was right) is certified >= ``target`` (module docstring); one
    line where none is."""
    from scipy.stats import binom

    check_target(target)
    conf = np.asarray(confidence, dtype=np.float64)
    right = np.asarray(hit, dtype=bool)
    for level in LEVELS:
        kept = conf >= level
        n, wrong = int(kept.sum()), int((kept & ~right).sum())
        # p-value of "the error rate is above 1 - target": so few errors or fewer
        if n and binom.cdf(wrong, n, 1 - target) <= delta / len(LEVELS):
            return Abstention(level=level, target=target, delta=delta, photos=len(conf),
                              kept=n / len(conf), accuracy=1 - wrong / n)  # fmt: skip
    best = max(LEVELS, key=lambda lv: right[conf >= lv].mean() if (conf >= lv).any() else 0)
    kept = conf >= best
    raise GeoconceptError(
        f"--target-accuracy {target:g}: no confidence level reaches it with "
        f"{1 - delta:.0%} certainty on these {len(conf)} photos (the best kept "
        f"{int(kept.sum())} at {right[kept].mean() if kept.any() else 0:.0%}); ask for less, "
        "or calibrate on more photos"
    )


def risk_coverage(confidence: npt.ArrayLike, hit: npt.ArrayLike) -> dict[str, Any]:
    """How accuracy trades against the share of photos answered, answering the most confident
    first: the curve (at most CURVE_POINTS points of coverage, accuracy), its area under the
    risk (AURC: the mean error rate over every coverage, lower is better) and the accuracy at
    the COVERAGES. Photos of equal confidence enter together (a coverage inside a tie reads
    the tie's end)."""
    conf = np.asarray(confidence, dtype=np.float64)
    right = np.asarray(hit, dtype=np.float64)
    n = len(conf)
    if n == 0:
        return {"aurc": math.nan, "accuracy_at": {}, "curve": []}
    order = np.argsort(-conf, kind="stable")
    conf, right = conf[order], right[order]
    last_of_tie = np.r_[conf[1:] != conf[:-1], True]  # a tie's photos count at its end
    counts = np.arange(1, n + 1)
    correct = np.cumsum(right)
    ends = np.flatnonzero(last_of_tie)
    # each photo's risk is that of the tie it belongs to, so ties do not depend on their order
    risk_at = 1 - correct[ends] / counts[ends]
    size = np.diff(np.r_[-1, ends])
    risk, reach = np.repeat(risk_at, size), np.repeat(counts[ends], size)  # reach: tie's end
    accuracy_at = {f"{c:.0%}": float(1 - risk[max(0, math.ceil(c * n) - 1)]) for c in COVERAGES}
    pick = np.unique(np.linspace(0, n - 1, min(n, CURVE_POINTS)).round().astype(int))
    curve = [[float(reach[i] / n), float(1 - risk[i])] for i in pick]
    return {"aurc": float(risk.mean()), "accuracy_at": accuracy_at, "curve": curve}
