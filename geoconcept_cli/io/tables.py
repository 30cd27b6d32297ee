"""CSV/Parquet tables as label files ship them: reading, and finding their columns (image id,
latitude, longitude) by name in any case."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import pandas as pd

from ..errors import GeoconceptError, require_file

if TYPE_CHECKING:
    pass


# Column names that label files use as they ship (any case): Im2GPS/Im2GPS3k/YFCC4k's LAT, LON;
# OSV-5M's latitude, longitude; GPS-prefixed exports.
LAT_NAMES = ("lat", "latitude", "gps_lat", "gps_latitude")


LON_NAMES = ("lon", "lng", "long", "longitude", "gps_lon", "gps_lng", "gps_long", "gps_longitude")


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV or Parquet table, with a one-line error for anything else."""
    path = require_file(path, "CSV or Parquet table")
    try:
        if path.suffix.lower() in {".parquet", ".pq"}:
            return pd.read_parquet(path)
        return pd.read_csv(path)
    except Exception as exc:
        raise GeoconceptError(f"{path}: cannot read table ({exc})") from None


def find_column(df: pd.DataFrame, names: tuple[str, ...], what: str, path: str | Path) -> str:
    """The one column of ``df`` whose lower-cased name is in ``names``; two are ambiguous."""
    found: list[str] = [col for col in df.columns if str(col).lower() in names]
    if len(found) > 1:
        raise GeoconceptError(f"{path}: columns {' and '.join(map(str, found))} could each be "
                              f"the {what}; keep one (rename the others)")  # fmt: skip
    if not found:
        raise GeoconceptError(f"{path}: no {what} column (looked for {', '.join(names)}, any case)")
    return found[0]


def latlon_names(df: pd.DataFrame, path: str | Path) -> tuple[str, str]:
    """The latitude and longitude columns of a table."""
    lat = find_column(df, LAT_NAMES, "latitude", path)
    return lat, find_column(df, LON_NAMES, "longitude", path)


def latlon_columns(df: pd.DataFrame, path: str | Path
                   ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:  # fmt: skip
    """Latitude and longitude as float arrays; non-numeric cells become NaN (invalid)."""
    cols = latlon_names(df, path)
    lat, lon = (pd.to_numeric(df[c], errors="coerce").to_numpy(dtype=np.float64) for c in cols)
    return lat, lon
