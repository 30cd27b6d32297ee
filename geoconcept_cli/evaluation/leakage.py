"""Leakage between training and test photos: a test photo that is a near-duplicate of a
training photo, or taken within SAME_SPOT_KM of one, is scored on what the model saw, not on
what it learned (GeoSearch, SIGIR 2026: 1 km accuracy drops from 24-33% to 17.5% on YFCC4k
once such photos are checked).

The training features are read a shard at a time, so that millions of them never sit in
memory: per shard, faiss's exact inner-product search (``IndexFlatIP``, the library predict's
large galleries are searched with) gives each test photo's highest cosine to the shard's unit
features, and a KD-tree of the shard's locations each test photo's nearest training location.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from ..errors import GeoconceptError
from ..geo.distance import EARTH_RADIUS_KM, unit_vectors
from ..runtime.progress import Report, silent

if TYPE_CHECKING:  # evaluate's help reads the rule's defaults with no torch (or pandas) loaded
    import pandas as pd
    import torch

    from ..model.clip_id import ClipId

DUPLICATE_COSINE = 0.95  # README: "Leakage" says how it was chosen
SAME_SPOT_KM = 1.0


@dataclass
class Leakage:
    """Per test photo: its highest cosine to a training photo (and that photo's id), the
    distance to the nearest training location, and which of those count as leakage at
    ``cosine`` and ``same_spot_km``."""

    cosine: npt.NDArray[np.float64]
    duplicate_of: list[str]
    nearest_train_km: npt.NDArray[np.float64]
    threshold: float
    same_spot_km: float
    train_photos: int

    @property
    def duplicate(self) -> npt.NDArray[np.bool_]:
        return self.cosine >= self.threshold

    @property
    def same_spot(self) -> npt.NDArray[np.bool_]:
        return self.nearest_train_km <= self.same_spot_km

    @property
    def leaked(self) -> npt.NDArray[np.bool_]:
        return self.duplicate | self.same_spot

    def summary(self) -> dict[str, Any]:
        """How many test photos leak, and by what rule."""
        return {"train_photos": self.train_photos, "duplicate_cosine": self.threshold,
                "same_spot_km": self.same_spot_km, "photos": len(self.cosine),
                "near_duplicates": int(self.duplicate.sum()),
                "same_spot": int(self.same_spot.sum()), "leaked": int(self.leaked.sum()),
                "kept": int((~self.leaked).sum())}  # fmt: skip

    def frame(self) -> pd.DataFrame:
        """The per-photo columns evaluate's rows get (README: schema)."""
        import pandas as pd

        dup = self.duplicate
        return pd.DataFrame({
            "train_cosine": self.cosine,
            "duplicate_of": [d if k else None for d, k in zip(self.duplicate_of, dup,
                                                              strict=True)],
            "nearest_train_km": self.nearest_train_km, "near_duplicate": dup,
            "same_spot": self.same_spot, "leaked": self.leaked,
        })  # fmt: skip


def check_rule(cosine: float, same_spot_km: float) -> None:
    """One line for a rule that flags nothing or everything."""
    if not 0 < cosine <= 1:
        raise GeoconceptError(f"--duplicate-cosine {cosine:g}: give a cosine above 0 and at "
                              f"most 1 ({DUPLICATE_COSINE:g}: near-duplicates)")  # fmt: skip
    if not 0 <= same_spot_km <= 100:
        raise GeoconceptError(f"--same-spot-km {same_spot_km:g}: give 0 to 100 km")


def find_leakage(
    features: torch.Tensor, latlon: torch.Tensor, clip: ClipId, train: str | Path,
    cosine: float = DUPLICATE_COSINE, same_spot_km: float = SAME_SPOT_KM,
    report: Report = silent,
) -> Leakage:  # fmt: skip
    """Compare test photos (CLIP ``features`` of ``clip``, true ``latlon``) with every photo
    of the ``embed-images`` folder ``train`` (module docstring); one line for a folder made by
    another CLIP."""
    import faiss
    import torch.nn.functional as F
    from scipy.spatial import cKDTree

    from ..data.features import read_meta, read_shard
    from ..model.clip_id import ClipId, check_same_clip

    check_rule(cosine, same_spot_km)
    meta = read_meta(train)
    check_same_clip(ClipId.from_meta(meta), clip, f"--train-features {train} holds features of",
                    fix="embed the training photos with the test photos' CLIP")  # fmt: skip
    if meta.get("rows", 0) == 0:
        raise GeoconceptError(f"--train-features {train}: no training photos in it")
    test = F.normalize(features.float(), dim=1).numpy()
    unit = unit_vectors(latlon).numpy()
    best = np.full(len(test), -np.inf, dtype=np.float32)
    best_id = np.full(len(test), "", dtype=object)
    chord = np.full(len(test), np.inf)
    with report("searching the training photos for leakage", "photos") as advance:
        for s in range(meta["shards"]):
            ids, feats, where = read_shard(train, s)
            if feats.shape[1] != test.shape[1]:
                raise GeoconceptError(f"--train-features {train}: {feats.shape[1]}-d features, "
                                      f"the test photos' are {test.shape[1]}-d")  # fmt: skip
            if not len(ids):
                continue
            index = faiss.IndexFlatIP(test.shape[1])  # exact: the shard's unit features
            index.add(F.normalize(feats.float(), dim=1).numpy())
            value, at = index.search(test, 1)
            better = value[:, 0] > best
            best[better] = value[better, 0]
            best_id[better] = np.asarray(ids, dtype=object)[at[better, 0]]
            chord = np.minimum(chord, cKDTree(unit_vectors(where).numpy()).query(unit)[0])
            if advance:
                advance(len(ids), int(meta["rows"]))
    km = 2 * EARTH_RADIUS_KM * np.arcsin(np.clip(chord / 2, 0, 1))
    return Leakage(best.astype(np.float64), best_id.tolist(), km, cosine, same_spot_km,
                   int(meta["rows"]))  # fmt: skip
