"""What every service shares, with no model in it: an uploaded photo, the map part of a
photo's answer (heatmap points named, and the EXIF truth with the error), the page's world
grid, and what the HTTP layer asks of a service (``Service``: the torch GeoService or an ONNX
bundle's OnnxService)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt

from ..geo.distance import haversine_km
from ..geo.geocode import place_name, place_names
from ..io.images import photo_gps

if TYPE_CHECKING:
    from ..inference.request import Request
    from ..inference.results import Candidate

DECODING_AT_ONCE = 2  # a photo at PIL's 89 Mpx limit takes ~1 GB to decode: bound how many
WORLD_CELL_DEG = 0.5  # the page draws the world as a gallery on this grid


@dataclass(frozen=True)
class Photo:
    """An uploaded photo: its bytes and the name its errors and answers use."""

    data: bytes
    name: str = "upload"


class Service(Protocol):
    """What `serve` answers, each a JSON-ready dict (GeoconceptError: a 400)."""

    def health(self) -> dict[str, Any]: ...

    @property
    def world(self) -> list[list[float]]: ...

    def check(self, request: Request) -> None:
        """Refuse a question this model cannot answer, before its upload is read."""

    def check_album(self, request: Request) -> None:
        """Refuse an album this model cannot answer, before its uploads are read."""

    def predict(self, photo: Photo, request: Request) -> dict[str, Any]: ...

    def explain(self, photo: Photo, request: Request) -> dict[str, Any]: ...

    def album(self, photos: list[Photo], request: Request) -> dict[str, Any]: ...

    def where(self, text: str, request: Request) -> dict[str, Any]: ...


def world_cells(gps: npt.NDArray[np.floating[Any]]) -> list[list[float]]:
    """A gallery's points on a WORLD_CELL_DEG grid, one [lat, lon] per inhabited cell: the
    page's offline world map, as the PNG maps draw it."""
    cells = np.unique(np.round(np.asarray(gps, dtype=np.float64) / WORLD_CELL_DEG), axis=0)
    out: list[list[float]] = (cells * WORLD_CELL_DEG).tolist()
    return out


def photo_map(heat: list[list[float]] | None, candidates: list[Candidate], photo: Photo
              ) -> dict[str, Any]:  # fmt: skip
    """The heatmap points, their names, and the EXIF truth (with the error of the top
    candidate) when there is one."""
    heat = heat or []
    out: dict[str, Any] = {"heat": heat, "names": heat_names(heat),
                           "heat_mass": float(sum(h[2] for h in heat))}  # fmt: skip
    truth = photo_gps(photo.data)
    if truth is not None:
        top = candidates[0]
        out["truth"] = {
            "lat": truth[0],
            "lon": truth[1],
            "place": place_name(*truth),
            "error_km": float(haversine_km(top.lat, top.lon, *truth)),
        }
    return out


def heat_names(heat: list[list[float]]) -> list[str]:
    """The place name of each [lat, lon, value] heat point, in one search."""
    return place_names([p[:2] for p in heat])
