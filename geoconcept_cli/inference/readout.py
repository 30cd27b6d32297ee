"""From one photo's probabilities (numpy arrays) to the parts of its answer that say what they
are: the note on the probabilities, the conformal region's summary, the confidence and whether
the photo is answered. Torch-free, so that the torch predictor and an ONNX bundle's runtime
(inference.onnx_runtime) read their numbers out alike."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from ..errors import GeoconceptError

if TYPE_CHECKING:
    from ..geo.limits import Limits
    from .calibration_record import Calibration
    from .request import Request
    from .results import Confidence, ConfidenceRegion

REGION_POINTS = 500  # a region's most probable points sent for a map
HEAT_POINTS = 2000  # most probable places of a heatmap (the rest carry little mass)


def probabilities_note(cal: Calibration | None, limits: Limits, inside: int, places: int,
                       normalised_over: str | None = None) -> dict[str, Any]:  # fmt: skip
    """What the probabilities are: calibrated (by what) or not, over which places (``inside``
    of ``places`` distinct ones within the limits; an index's own note)."""
    over = {"normalised_over": normalised_over} if normalised_over else {}
    if limits:
        over["limited_to"] = (f"{limits.describe()}: renormalised over the {inside:,} places "
                              f"inside, of {places:,}")  # fmt: skip
    if cal is None:
        return {
            "calibrated": False,
            "note": "probabilities uncalibrated (geoconcept calibrate fits them)",
            **over,
        }
    return {**over, "calibrated": True, "temperature": cal.temperature, "photos": cal.photos,
            "note": f"probabilities calibrated (temperature {cal.temperature:.3g}, "
                    f"fitted on {cal.photos} photos; --no-calibration ignores it)"}  # fmt: skip


def region_summary(probs: npt.NDArray[np.floating[Any]], inside: npt.NDArray[np.bool_],
                   cal: Calibration, is_place: npt.NDArray[np.bool_],
                   gps: npt.NDArray[np.floating[Any]], countries: npt.NDArray[np.str_],
                   areas: npt.NDArray[np.floating[Any]],
                   max_points: int = REGION_POINTS) -> ConfidenceRegion:  # fmt: skip
    """One photo's conformal region from its (N,) probabilities and (N,) membership: its
    coverage, area (km²), distinct places (``is_place``: a place's first row), the countries
    it spans by probability mass, and its most probable points (at most ``max_points``)."""
    rows = np.flatnonzero(inside)
    distinct = rows[is_place[rows]]  # repeated points once
    order = distinct[np.argsort(-probs[distinct], kind="stable")]
    names, each = np.unique(countries[rows], return_inverse=True)
    mass = np.bincount(each.ravel(), weights=probs[rows].astype(np.float64), minlength=len(names))
    by_country = [(names[i], mass[i]) for i in np.argsort(-mass, kind="stable")]
    return {
        "coverage": 1 - cal.alpha, "radius_km": cal.radius_km,
        "area_km2": float(areas[rows].sum()), "places": len(distinct),
        "mass": float(probs[rows].sum()),
        "countries": [{"country": c or "(none)", "mass": round(float(v), 5)}
                      for c, v in by_country],
        "points": [[round(float(a), 5), round(float(b), 5)]
                   for a, b in gps[order[:max_points]].tolist()],
    }  # fmt: skip


def abstain_level(cal: Calibration | None, request: Request) -> float | None:
    """The confidence below which ``request`` gets no answer: its own ``abstain_below``,
    else the calibration's (calibrate --target-accuracy); None: the model is not calibrated
    and none was asked for. A level without a calibration is one line."""
    if cal is None:
        if request.abstain_below:
            raise GeoconceptError("--abstain-below: the level is a calibrated probability and "
                                  "this model has no calibration; run geoconcept calibrate "
                                  "first (or leave --abstain-below out)")  # fmt: skip
        return None
    if request.abstain_below is not None:
        return request.abstain_below
    return cal.abstention.level if cal.abstention else 0.0


def confidence_answer(probability: float, cal: Calibration, level: float, steered: bool
                      ) -> Confidence:  # fmt: skip
    """A photo's confidence and whether it is answered at ``level``; the guarantee stated
    where it holds: at the level calibrate chose, for an answer not ``steered`` by limits or
    hints (they change the distribution the level was chosen on)."""
    chosen = cal.abstention
    holds = chosen is not None and level == chosen.level and not steered
    return {"probability": round(probability, 6), "radius_km": cal.radius_km, "level": level,
            "answered": probability >= level,
            "guarantee": chosen.guarantee() if holds and chosen else None}  # fmt: skip


def strongest(scores: npt.NDArray[np.floating[Any]], rows: npt.NDArray[np.integer[Any]],
              gps: npt.NDArray[np.floating[Any]], n: int) -> list[list[float]]:  # fmt: skip
    """The ``n`` of gallery ``rows`` (distinct places) with the highest of (N,) ``scores`` (a
    probability or an activation per gallery row) as [lat, lon, score] rows, highest first: a
    heatmap's points, small enough to send to a browser."""
    top = rows[np.argsort(-scores[rows], kind="stable")[: max(1, min(n, len(rows)))]]
    return [[round(a, 5), round(b, 5), float(v)]
            for (a, b), v in zip(gps[top].tolist(), scores[top].tolist(), strict=True)]  # fmt: skip
