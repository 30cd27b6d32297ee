"""Geodesy helpers: great-circle distance, Im2GPS3k thresholds, coordinate checks.

Distances are haversine on a sphere of the IUGG mean Earth radius (6371.0088 km). GeoCLIP's
own evaluation uses geodesic WGS-84 distances; the two differ by at most ~0.5%, which matters
only for points right at a threshold.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

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


def unit_vectors(latlon: torch.Tensor) -> torch.Tensor:
    """(N, 2) degrees -> (N, 3) points on the unit sphere (dot product ranks by distance)."""
    import torch  # here: geography (names, limits) is read by commands that need no torch

    lat, lon = torch.deg2rad(latlon[:, 0].double()), torch.deg2rad(latlon[:, 1].double())
    return torch.stack((lat.cos() * lon.cos(), lat.cos() * lon.sin(), lat.sin()), dim=1)


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
