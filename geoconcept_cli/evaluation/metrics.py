"""The field's geo-localization metrics from per-photo results (OSV-5M's set and more).

- GeoScore: GeoGuessr's 5000 * exp(-d / 1492.7 km) per photo, averaged (OSV-5M);
- mean and median great-circle error, accuracy at the distance thresholds;
- country / first-level region / city accuracy: truth and prediction reverse-geocoded offline
  (``geocode``); a photo whose truth has no place nearby never counts as a match;
- the thresholds per continent of the true location;
- expected calibration error (ECE) of a confidence against a binary outcome.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..geo.distance import accuracy_at_thresholds
from ..geo.geocode import Places

GEOSCORE_SCALE_KM = 1492.7
ECE_BINS = 15


def geoscore(dist_km: np.ndarray) -> np.ndarray:
    """GeoGuessr's score of each guess: 5000 at the spot, 1839 at 1,493 km."""
    return 5000.0 * np.exp(-np.asarray(dist_km, dtype=np.float64) / GEOSCORE_SCALE_KM)


def admin_matches(truth: Places, pred: Places) -> dict[str, np.ndarray]:
    """Per photo, whether prediction and truth share a country, a region and a city."""
    return {level: (getattr(truth, level) != "") & (getattr(truth, level) == getattr(pred, level))
            for level in ("country", "region", "city")}  # fmt: skip


def distance_metrics(dist_km: np.ndarray) -> dict[str, float]:
    """Accuracy at each threshold (%), mean and median error, GeoScore, count."""
    d = np.asarray(dist_km, dtype=np.float64)
    return {**accuracy_at_thresholds(d), "median_km": float(np.median(d)),
            "mean_km": float(d.mean()), "geoscore": float(geoscore(d).mean()),
            "n": int(len(d))}  # fmt: skip


def per_continent(dist_km: np.ndarray, truth: Places) -> dict[str, dict[str, float]]:
    """Accuracy at each threshold (%) and count, per continent of the true location."""
    out = {}
    for continent in sorted(set(truth.continent) - {""}):
        d = np.asarray(dist_km)[truth.continent == continent]
        out[continent] = {**accuracy_at_thresholds(d), "n": int(len(d))}
    return out


def location_metrics(dist_km: np.ndarray, truth: Places, pred: Places) -> dict[str, Any]:
    """Everything evaluate reports for one model that needs no probabilities."""
    matches = admin_matches(truth, pred)
    return {
        **distance_metrics(dist_km),
        **{level: float(100.0 * hit.mean()) for level, hit in matches.items()},
        "per_continent": per_continent(dist_km, truth),
    }


def reliability(confidence: np.ndarray, outcome: np.ndarray, bins: int = ECE_BINS
                ) -> dict[str, Any]:  # fmt: skip
    """Equal-width bins of confidence: per bin the mean confidence, the observed frequency and
    the count; ``ece`` is the count-weighted mean gap |frequency - confidence|."""
    conf = np.clip(np.asarray(confidence, dtype=np.float64), 0.0, 1.0)
    hit = np.asarray(outcome, dtype=np.float64)
    which = np.minimum((conf * bins).astype(int), bins - 1)
    count = np.bincount(which, minlength=bins)
    mean_conf = np.bincount(which, conf, minlength=bins) / np.maximum(count, 1)
    freq = np.bincount(which, hit, minlength=bins) / np.maximum(count, 1)
    ece = float((count * np.abs(freq - mean_conf)).sum() / max(len(conf), 1))
    return {"ece": ece, "confidence": mean_conf.tolist(), "frequency": freq.tolist(),
            "count": count.tolist()}  # fmt: skip
