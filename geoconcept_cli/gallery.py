"""The GPS gallery that predictions are retrieved from, and its cached location embeddings.

GeoCLIP re-encodes its 100K gallery at every call (~15 s on a 2-core CPU). Here the
normalised embeddings are computed once and stored as safetensors, keyed by a hash of the
gallery coordinates and of the encoder weights, so a changed gallery or a retrained encoder
never reuses stale embeddings. Each trained checkpoint adds an entry (200-260 MB for the 100K
gallery), so the least recently used entries go once the folder passes
$GEOCONCEPT_GALLERY_CACHE_GB (default 4). Galleries of 200K+ points are stored and searched
otherwise (gallery_index), under the same key and bound.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from .artifacts import (
    GALLERY_CACHE_GB,
    atomic_path,
    default_cache_dir,
    hash_state_dict,
    hash_tensors,
)
from .encoders import geoclip_package_dir
from .errors import GeoconceptError, require_file
from .geo import valid_latlon

if TYPE_CHECKING:
    from .model import RetrievalHead

# Column names that label files use as they ship (any case): Im2GPS/Im2GPS3k/YFCC4k's LAT, LON;
# OSV-5M's latitude, longitude; GPS-prefixed exports.
LAT_NAMES = ("lat", "latitude", "gps_lat", "gps_latitude")
LON_NAMES = ("lon", "lng", "long", "longitude", "gps_lon", "gps_lng", "gps_long", "gps_longitude")


def default_gallery_path() -> Path:
    """GeoCLIP's 100K gallery, as shipped in the geoclip wheel."""
    return geoclip_package_dir() / "gps_gallery" / "coordinates_100K.csv"


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


def load_gallery(path: str | Path | None = None) -> torch.Tensor:
    """(N, 2) float32 tensor of (lat, lon) from a CSV/Parquet with lat/lon columns."""
    path = Path(path) if path else default_gallery_path()
    df = read_table(path)
    lat, lon = latlon_columns(df, path)
    ok = valid_latlon(lat, lon)
    if not ok.all():
        raise GeoconceptError(f"{path}: {int((~ok).sum())} rows with invalid coordinates")
    if len(lat) == 0:
        raise GeoconceptError(f"{path}: empty gallery")
    return torch.tensor(np.stack([lat, lon], axis=1), dtype=torch.float32)


def distinct_places(gps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The gallery rows that hold each distinct point once (the first row that holds it,
    ascending) and how many rows hold each: GeoCLIP's 100K gallery repeats 5,900 points, whose
    copies score the same, so top-k lists places, not rows."""
    _, place_of, copies = gps.unique(dim=0, return_inverse=True, return_counts=True)
    first = torch.full((int(place_of.max()) + 1,), len(gps)).scatter_reduce_(
        0, place_of, torch.arange(len(gps)), "amin"
    )
    places = first.sort().values
    return places, copies[place_of[places]]


@torch.no_grad()
def encode_locations(
    gps: torch.Tensor,
    head: RetrievalHead,
    batch_size: int = 8192,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """``head.embed_locations`` over ``gps`` in batches (float32, on the CPU).

    ``progress(done_in_this_batch, total)`` is called after each batch.
    """
    device = next(head.parameters()).device
    out = []
    for start in range(0, len(gps), batch_size):
        chunk = gps[start : start + batch_size].to(device)
        out.append(head.embed_locations(chunk).float().cpu())
        if progress:
            progress(len(chunk), len(gps))
    return torch.cat(out)


def gallery_key(gps: torch.Tensor, head: RetrievalHead) -> str:
    """The cache key of a gallery's embeddings: its coordinates and the encoder's weights."""
    return hash_tensors(gps, extra=f"{type(head).__name__}:{hash_state_dict(head)}")


def cached_gallery_embeddings(
    gps: torch.Tensor,
    head: RetrievalHead,
    cache_dir: str | Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Gallery embeddings under ``head``, computed once per (gallery, weights) pair."""
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    path = cache_dir / "gallery" / f"{gallery_key(gps, head)}.safetensors"
    emb = None
    if path.is_file():
        try:
            emb = load_file(path)["embeddings"]
        except Exception:
            pass  # unreadable cache: recompute and overwrite it
    if emb is not None and emb.shape[0] == len(gps):
        with contextlib.suppress(OSError):  # a read-only shared cache is still a cache
            os.utime(path)  # recently used: the last entry pruning removes
        return emb
    limit = cache_limit_bytes()
    emb = encode_locations(gps, head, progress=progress)
    with atomic_path(path) as tmp:
        save_file({"embeddings": emb.contiguous(), "gps": gps.contiguous()}, str(tmp))
    prune_gallery_cache(path.parent, limit, keep=path)
    return emb


def cache_limit_bytes() -> float:
    """$GEOCONCEPT_GALLERY_CACHE_GB in bytes (a one-line error for a value that is no size)."""
    value = os.environ.get("GEOCONCEPT_GALLERY_CACHE_GB", str(GALLERY_CACHE_GB))
    try:
        gb = float(value)
    except ValueError:
        gb = -1.0
    if not gb >= 0:
        raise GeoconceptError(f"GEOCONCEPT_GALLERY_CACHE_GB={value}: expected a size in GB, "
                              f"e.g. {GALLERY_CACHE_GB:g}")  # fmt: skip
    return gb * 1e9


def prune_gallery_cache(folder: Path, limit_bytes: float, keep: Path | None = None) -> None:
    """Delete the least recently used gallery entries until ``folder`` fits the limit; an
    entry is every file of one key (a large gallery's embeddings and index go together), used
    when its newest file was. ``keep`` (the entry just written) always stays."""
    entries: dict[str, list[tuple[float, int, Path]]] = {}
    for pattern in ("*.safetensors", "*.faiss"):
        for entry in folder.glob(pattern):
            try:
                st = entry.stat()
            except FileNotFoundError:  # pruned by another process meanwhile
                continue
            key = entry.name.split(".")[0]
            entries.setdefault(key, []).append((st.st_mtime, st.st_size, entry))
    total = sum(size for files in entries.values() for _, size, _ in files)
    kept = keep.name.split(".")[0] if keep else None
    for key, files in sorted(entries.items(), key=lambda item: max(f[0] for f in item[1])):
        if total <= limit_bytes:
            break
        if key != kept:
            for _, size, entry in files:
                entry.unlink(missing_ok=True)
                total -= size
