"""The GPS gallery that predictions are retrieved from, and its cached location embeddings.

GeoCLIP re-encodes its 100K gallery at every call (~15 s on a 2-core CPU). Here the
normalised embeddings are computed once and stored as safetensors, keyed by a hash of the
gallery coordinates and of the encoder weights, so a changed gallery or a retrained encoder
never reuses stale embeddings.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .artifacts import atomic_path, default_cache_dir, hash_state_dict, hash_tensors
from .encoders import geoclip_package_dir
from .errors import GeoconceptError, require_file
from .geo import valid_latlon

LAT_NAMES = ("lat", "latitude")
LON_NAMES = ("lon", "lng", "long", "longitude")


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
    """The first column of ``df`` whose lower-cased name is in ``names``."""
    for col in df.columns:
        if str(col).lower() in names:
            return col
    raise GeoconceptError(f"{path}: no {what} column (looked for {', '.join(names)}, any case)")


def latlon_columns(df: pd.DataFrame, path) -> tuple[np.ndarray, np.ndarray]:
    """Latitude and longitude as float arrays; non-numeric cells become NaN (invalid)."""
    cols = (
        find_column(df, LAT_NAMES, "latitude", path),
        find_column(df, LON_NAMES, "longitude", path),
    )
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


@torch.no_grad()
def encode_locations(
    gps: torch.Tensor,
    head: nn.Module,
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


def cached_gallery_embeddings(
    gps: torch.Tensor,
    head: nn.Module,
    cache_dir: str | Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Gallery embeddings under ``head``, computed once per (gallery, weights) pair."""
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    key = hash_tensors(gps, extra=f"{type(head).__name__}:{hash_state_dict(head)}")
    path = cache_dir / "gallery" / f"{key}.safetensors"
    if path.is_file():
        try:
            emb = load_file(path)["embeddings"]
            if emb.shape[0] == len(gps):
                return emb
        except Exception:
            pass  # unreadable cache: recompute and overwrite it
    emb = encode_locations(gps, head, progress=progress)
    with atomic_path(path) as tmp:
        save_file({"embeddings": emb.contiguous(), "gps": gps.contiguous()}, str(tmp))
    return emb
