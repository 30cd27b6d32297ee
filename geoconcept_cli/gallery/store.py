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
import torch
from safetensors.torch import load_file, save_file

from ..errors import GeoconceptError
from ..geo.distance import valid_latlon
from ..io.artifacts import (
    GALLERY_CACHE_GB,
    atomic_path,
    default_cache_dir,
    hash_state_dict,
    hash_tensors,
)
from ..io.tables import latlon_columns, read_table
from ..model.geoclip import geoclip_package_dir

if TYPE_CHECKING:
    from ..model.concept_head import RetrievalHead


def default_gallery_path() -> Path:
    """GeoCLIP's 100K gallery, as shipped in the geoclip wheel."""
    return geoclip_package_dir() / "gps_gallery" / "coordinates_100K.csv"


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
