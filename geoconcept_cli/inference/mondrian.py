"""Conformal regions per group of places (Mondrian, label-conditional): coverage that holds on
each continent (or country) where a user stands, not only on average over the world.

Each calibration photo belongs to the group of its true location; its score is the probability
mass above the most probable gallery place within the radius of the truth **in that group**,
and each group with MIN_GROUP_PHOTOS such photos gets its own conformal threshold. A gallery
place is in a photo's region when the mass above it is at most its own group's threshold (the
pooled one for a group without enough photos). Then, for a photo of a group with its own
threshold, the truth lies within the radius of a region place with probability >= 1 - alpha
*given that group*: its best place of that group has a score within the threshold, and that
place is then in the region.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from ..errors import GeoconceptError

if TYPE_CHECKING:  # the CLI reads the groupings for its help, with no torch loaded
    import torch

    from ..geo.geocode import Places
    from ..runtime.scratch import Scratch

GROUPINGS = ("continent", "country")
MIN_GROUP_PHOTOS = 50  # fewer: the group's threshold would be its largest score, or infinite


def check_grouping(by: str) -> None:
    """One line for a grouping there is none of."""
    if by not in GROUPINGS:
        raise GeoconceptError(f"--by {by}: give {' or '.join(GROUPINGS)}")


def group_keys(places: Places, by: str) -> npt.NDArray[np.str_]:
    """Each place's group ('' where the gazetteer has none: at sea)."""
    check_grouping(by)
    return np.asarray(getattr(places, by)).astype(str)


def group_scores(probs: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
                 photo_group: torch.Tensor, place_group: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """Each photo's score (``calibration.mass_above``) against the places of its own group
    among the (photo, gallery row) pairs near its truth (``calibration.pairs_within``); group
    numbers (B,) and (N,) index one list of groups."""
    from .calibration import best_near, mass_above

    same = place_group[cols] == photo_group[rows]
    return mass_above(probs, best_near(probs, rows[same], cols[same]))


def group_thresholds(scores: npt.ArrayLike, groups: npt.ArrayLike, alpha: float,
                     min_photos: int = MIN_GROUP_PHOTOS) -> dict[str, float]:  # fmt: skip
    """The conformal threshold of each group with ``min_photos`` calibration photos (a photo's
    group: its truth's); one line when no group has so many."""
    from .calibration import conformal_threshold

    scores, groups = np.asarray(scores, dtype=np.float64), np.asarray(groups).astype(str)
    names, counts = np.unique(groups[groups != ""], return_counts=True)
    out = {str(g): conformal_threshold(scores[groups == g], alpha)
           for g, c in zip(names, counts, strict=True) if c >= min_photos}  # fmt: skip
    if not out:
        largest = f"largest: {names[counts.argmax()]}, {counts.max()}" if len(names) else "none"
        raise GeoconceptError(f"--by: no group has {min_photos} calibration photos ({largest}); "
                              "give more photos, or calibrate without --by")  # fmt: skip
    return out


def place_slots(keys: npt.NDArray[np.str_], groups: list[str]) -> torch.Tensor:
    """(N,) each place's threshold slot: its group's index in ``groups``, or len(groups) (the
    pooled threshold) for a group without its own."""
    import torch

    slot = {g: i for i, g in enumerate(groups)}
    return torch.tensor([slot.get(k, len(groups)) for k in keys.tolist()], dtype=torch.long)


def grouped_mask(probs: torch.Tensor, cuts: torch.Tensor, slots: torch.Tensor,
                 scratch: Scratch | None = None, out: torch.Tensor | None = None
                 ) -> torch.Tensor:  # fmt: skip
    """(B, N) membership of the per-group region: each place against its slot's cut of
    (B, G) ``cuts`` (``calibration.region_cuts`` of the slots' thresholds), as bool or into
    ``out`` (1.0 inside, for a product with areas); the (B, N) temporaries in ``scratch``
    where a loop over blocks keeps them."""
    import torch

    from ..runtime.scratch import Scratch

    scratch = scratch or Scratch()
    b, n = probs.shape
    per_place = torch.index_select(
        cuts, 1, slots.to(cuts.device), out=scratch("slot_cuts", (b, n), cuts.dtype, cuts.device)
    )
    if out is None:
        out = scratch("grouped", (b, n), torch.bool, probs.device)
    return torch.ge(probs, per_place, out=out)


def grouped_covered(probs: torch.Tensor, cuts: torch.Tensor, slots: torch.Tensor,
                    rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """(B,) whether a place of the per-group region lies among each photo's (photo, row)
    pairs near its truth."""
    import torch

    inside = probs[rows, cols] >= cuts[rows, slots.to(cols.device)[cols]]
    hit = torch.zeros(len(probs), dtype=torch.bool, device=probs.device)
    return hit.index_put_((rows[inside],), torch.ones((), dtype=torch.bool, device=hit.device))
