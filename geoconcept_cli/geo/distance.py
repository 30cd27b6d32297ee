"""Geodesy helpers: great-circle distance, Im2GPS3k thresholds, coordinate checks.

Distances are haversine on a sphere of the IUGG mean Earth radius (6371.0088 km). GeoCLIP's
own evaluation uses geodesic WGS-84 distances; the two differ by at most ~0.5%, which matters
only for points right at a threshold.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, cast, overload

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    import torch

EARTH_RADIUS_KM = 6371.0088
THRESHOLDS_KM = (1, 25, 200, 750, 2500)


def haversine_km(lat1: npt.ArrayLike, lon1: npt.ArrayLike, lat2: npt.ArrayLike,
                 lon2: npt.ArrayLike) -> npt.NDArray[np.float64]:  # fmt: skip
    """Great-circle distance in km between points given in degrees (numpy broadcasting)."""
    lat1, lon1, lat2, lon2 = (
        np.radians(np.asarray(a, dtype=np.float64)) for a in (lat1, lon1, lat2, lon2)
    )
    a = (
        np.sin((lat2 - lat1) / 2) ** 2
        + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2
    )
    return cast(
        npt.NDArray[np.float64],  # numpy's stubs lose the dtype of a rebound argument
        2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0))),
    )


@overload
def unit_vectors(latlon: torch.Tensor) -> torch.Tensor: ...
@overload
def unit_vectors(latlon: npt.NDArray[Any]) -> npt.NDArray[np.float64]: ...
def unit_vectors(latlon: torch.Tensor | npt.NDArray[Any]) -> torch.Tensor | npt.NDArray[Any]:
    """(N, 2) degrees -> (N, 3) points on the unit sphere (dot product ranks by distance), in
    float64, as the array given: numpy (an ONNX bundle's runtime) or torch."""
    if isinstance(latlon, np.ndarray):
        lat, lon = np.radians(latlon[:, 0].astype(np.float64)), np.radians(latlon[:, 1])
        return np.stack((np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)), 1)
    import torch  # here: geography (names, limits) is read by commands that need no torch

    phi, lam = torch.deg2rad(latlon[:, 0].double()), torch.deg2rad(latlon[:, 1].double())
    return torch.stack((phi.cos() * lam.cos(), phi.cos() * lam.sin(), phi.sin()), dim=1)


def chord(radius_km: float) -> float:
    """The straight-line distance between unit vectors ``radius_km`` apart on the Earth (a
    KD-tree's radius for them; at most the sphere's diameter)."""
    return 2 * math.sin(min(radius_km / EARTH_RADIUS_KM, math.pi) / 2)


def accuracy_at_thresholds(dist_km: np.ndarray, thresholds: tuple[float, ...] = THRESHOLDS_KM
                           ) -> dict[str, float]:  # fmt: skip
    """Percentage of distances within each threshold, keyed like '25km'."""
    dist_km = np.asarray(dist_km)
    return {f"{t}km": float(100.0 * np.mean(dist_km <= t)) for t in thresholds}


def valid_latlon(lat: npt.ArrayLike, lon: npt.ArrayLike) -> npt.NDArray[np.bool_]:
    """Mask of finite coordinates inside [-90, 90] x [-180, 180]."""
    lat, lon = np.asarray(lat, dtype=np.float64), np.asarray(lon, dtype=np.float64)
    return cast(
        npt.NDArray[np.bool_],  # numpy's stubs lose the dtype of a rebound argument
        np.isfinite(lat) & np.isfinite(lon) & (np.abs(lat) <= 90) & (np.abs(lon) <= 180),
    )
