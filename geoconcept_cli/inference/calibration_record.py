"""A fitted calibration as stored (``calibration.json``): the record of a temperature, a
conformal threshold (and per-group ones), an abstention level and what they were fitted for;
its checks, reading and writing. Torch-free, so that an ONNX bundle's runtime reads it too
(the fitting and the kernels are inference.calibration's)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import GeoconceptError
from ..geo.distance import EARTH_RADIUS_KM
from ..io.artifacts import default_cache_dir, write_json
from .abstention import Abstention

if TYPE_CHECKING:
    import torch

    from ..model.clip_id import ClipId
    from ..model.concept_head import RetrievalHead

TOLERANCE = 1e-9  # mass comparisons: sums in another order may differ in the last bits
CALIBRATION_FORMAT = "geoconcept-calibration/1"
MAX_RADIUS_KM = math.pi * EARTH_RADIUS_KM  # half the Earth's circumference


@dataclass(frozen=True)
class Calibration:
    """A fitted temperature and conformal threshold, with what they were fitted for."""

    temperature: float
    alpha: float
    radius_km: float
    threshold: float  # probability mass above a place that keeps it in the region; inf: all
    photos: int
    nll_before: float
    nll_after: float
    model: str  # hash of the head's weights
    gallery: str  # hash of the gallery's coordinates
    clip: dict[str, Any]  # ClipId of the calibration features (model, pretrained, config)
    # Mondrian thresholds (inference.mondrian): grouped by ``by`` (continent, country), each
    # group with enough photos its own; the others keep ``threshold``
    by: str | None = None
    groups: dict[str, float] = field(default_factory=dict)
    abstention: Abstention | None = None  # the level chosen for a target accuracy
    format: str = CALIBRATION_FORMAT

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in vars(self).items() if k not in ("abstention", "format")}
        out["threshold"] = _finite_or_none(self.threshold)
        out["groups"] = {g: _finite_or_none(t) for g, t in self.groups.items()}
        out["abstention"] = self.abstention.to_json() if self.abstention else None
        return out | {"format": self.format}

    @classmethod
    def from_json(cls, data: object, source: object) -> Calibration:
        """Read a stored calibration; one line for anything malformed."""
        if not isinstance(data, dict) or data.get("format") != CALIBRATION_FORMAT:
            raise GeoconceptError(f"{source}: not a geoconcept calibration ({CALIBRATION_FORMAT})")
        try:
            abstention = data.get("abstention")
            cal = cls(
                temperature=float(data["temperature"]), alpha=float(data["alpha"]),
                radius_km=float(data["radius_km"]), threshold=_inf_if_none(data["threshold"]),
                photos=int(data["photos"]), nll_before=float(data["nll_before"]),
                nll_after=float(data["nll_after"]), model=str(data["model"]),
                gallery=str(data["gallery"]), clip=dict(data["clip"]),
                by=None if data.get("by") is None else str(data["by"]),
                groups={str(g): _inf_if_none(t) for g, t in (data.get("groups") or {}).items()},
                abstention=None if abstention is None else Abstention.from_json(abstention),
            )  # fmt: skip
        except (KeyError, TypeError, ValueError, AttributeError):
            raise GeoconceptError(f"{source}: damaged calibration (fields missing)") from None
        thresholds = [cal.threshold, *cal.groups.values()]
        if not (cal.temperature > 0 and 0 < cal.alpha < 1 and 0 < cal.radius_km <= MAX_RADIUS_KM
                and min(thresholds) >= 0 and (cal.by is not None or not cal.groups)
                and (cal.abstention is None or 0 <= cal.abstention.level < 1)):  # fmt: skip
            raise GeoconceptError(f"{source}: damaged calibration (values out of range)")
        return cal

    def check_for(self, head: RetrievalHead, gps: torch.Tensor, clip: ClipId,
                  source: object) -> None:  # fmt: skip
        """Refuse a calibration made for another model, gallery or CLIP backbone."""
        from ..io.artifacts import hash_state_dict, hash_tensors
        from ..model.clip_id import ClipId, check_same_clip

        fix = "rerun geoconcept calibrate"
        if self.model != hash_state_dict(head):
            raise GeoconceptError(f"{source} was made for another model's weights; {fix}")
        if self.gallery != hash_tensors(gps):
            raise GeoconceptError(f"{source} was made for another gallery; {fix} with this "
                                  "--gallery (or use the one it was made for)")  # fmt: skip
        check_same_clip(ClipId.from_meta(self.clip, prefix=""), clip, f"{source} was made with",
                        fix=fix)  # fmt: skip


def _finite_or_none(x: float) -> float | None:
    return None if math.isinf(x) else x  # JSON has no infinity: a region of everything


def _inf_if_none(x: Any) -> float:
    return math.inf if x is None else float(x)


def save_calibration(path: str | Path, cal: Calibration) -> None:
    write_json(path, cal.to_json())


def read_calibration(path: str | Path) -> Calibration | None:
    """A stored calibration, or None if there is none at ``path``."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise GeoconceptError(f"{path}: damaged calibration (not JSON)") from None
    return Calibration.from_json(data, path)


def stored_geoclip_calibrations(cache_dir: str | Path | None = None
                                ) -> list[tuple[Path, Calibration | str]]:  # fmt: skip
    """Pretrained GeoCLIP's calibrations in the cache (each for one gallery and CLIP), or why
    one cannot be read: what `geoconcept cache` lists, since every later answer uses them."""
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    found: list[tuple[Path, Calibration | str]] = []
    for path in sorted((root / "calibration").glob("geoclip-*.json")):
        try:
            found.append((path, read_calibration(path) or "gone"))
        except GeoconceptError as exc:
            found.append((path, str(exc)))
    return found
