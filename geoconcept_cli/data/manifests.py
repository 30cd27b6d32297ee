"""Manifests: which photos to embed, with their coordinates, from a CSV/Parquet label file
(photos in a folder or in archives) or from WebDataset shards; and seeded subsets of them."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from ..errors import GeoconceptError
from ..geo.distance import valid_latlon
from ..io.archives import (
    COMPRESSED_TAR,
    ArchiveIndex,
    Photo,
    expand,
    read_webdataset,
)
from ..io.artifacts import atomic_path
from ..io.images import photo_gps, photos_in
from ..io.tables import find_column, latlon_columns, latlon_names, read_table

if TYPE_CHECKING:
    pass


# Image columns of label files as they ship: Im2GPS/Im2GPS3k/YFCC4k's IMG_ID, OSV-5M's id
# (file names without their .jpg), img2dataset's key, and common manifest spellings.
ID_NAMES = ("img_id", "id", "image", "image_id", "img", "path", "image_path", "img_path",
            "filename", "file", "file_name", "key", "photo_id")  # fmt: skip


@dataclass
class Manifest:
    """Usable rows of a manifest (or of WebDataset shards), and the ones skipped with why."""

    rows: pd.DataFrame  # id, photo (a file path or a containers.Entry), lat, lon
    skipped: list[tuple[str, str]] = field(default_factory=list)
    sha256: str = ""
    source: str = "column id, coordinates from lat, lon"  # where ids and coordinates came from


LABELS = ("columns", "exif")  # where coordinates come from: a manifest's columns, or the photos


def read_sources(sources: list[Path], images: list[Path] | None = None,
                 labels: str = "columns") -> Manifest:  # fmt: skip
    """The photos to embed: one manifest (CSV/Parquet) whose ids name photos in ``images`` (a
    folder, or archives: .zip, .tar, .msg), or WebDataset .tar shards that carry their own
    coordinates; or, with ``labels`` "exif", a folder of photos located by their EXIF GPS.
    Shell patterns (quoted) are expanded."""
    if labels not in LABELS:
        raise GeoconceptError(f"--labels {labels}: give one of {', '.join(LABELS)}")
    if labels == "exif":
        if len(sources) != 1 or not Path(sources[0]).is_dir() or images:
            raise GeoconceptError("--labels exif takes one folder of photos (their EXIF GPS "
                                  "tags are the coordinates), and no --images")  # fmt: skip
        return read_exif_folder(Path(sources[0]))
    sources, images = expand(sources), expand(images or [])
    if not all(s.name.lower().endswith((".tar", *COMPRESSED_TAR)) for s in sources):
        if len(sources) > 1:
            raise GeoconceptError("give one manifest (CSV/Parquet), or WebDataset .tar shards")
        return read_manifest(sources[0], images)
    if images:
        raise GeoconceptError("--images is for a manifest; WebDataset shards hold their photos")
    found = read_webdataset(sources)
    rows = pd.DataFrame({"id": found.ids, "photo": pd.Series(found.photos, dtype=object),
                         "lat": found.lat, "lon": found.lon})  # fmt: skip
    return Manifest(rows, found.skipped, found.sha256,
                    "sample keys, coordinates from each sample's .json")  # fmt: skip


def read_manifest(path: str | Path, images: str | Path | list[Path] | None = None) -> Manifest:
    """Read a CSV/Parquet manifest (image id/path + LAT/LON); bad rows are skipped, not fatal.

    The ids name files in the ``images`` folder (default: the manifest's), or photos inside
    ``images`` archives (see :mod:`containers`), read in place."""
    df = read_table(path)
    id_col = find_column(df, ID_NAMES, "image id/path", path)
    lat_col, lon_col = latlon_names(df, path)
    lat, lon = latlon_columns(df, path)
    find, skipped = _photo_finder(path, images)
    ids = df[id_col].astype(str).tolist()
    photos = [find(i) for i in ids]
    ok_coords = valid_latlon(lat, lon)
    keep = []
    for n, (i, p) in enumerate(zip(ids, photos, strict=True)):
        if not ok_coords[n]:
            skipped.append((i, "invalid coordinates"))
        elif p is None:
            skipped.append((i, "missing image"))
        else:
            keep.append(n)
    rows = pd.DataFrame(
        {"id": [ids[n] for n in keep], "photo": pd.Series([photos[n] for n in keep], dtype=object),
         "lat": lat[keep], "lon": lon[keep]}
    )  # fmt: skip
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
    return Manifest(rows, skipped, digest,
                    f"column {id_col}, coordinates from {lat_col}, {lon_col}")  # fmt: skip


def read_exif_folder(folder: Path) -> Manifest:
    """The photos of ``folder`` located by their EXIF GPS tags (a phone's collection, with no
    CSV to write); a photo without them is skipped and counted, as "no EXIF GPS"."""
    ids, photos, lat, lon, skipped = [], [], [], [], []
    for path in photos_in(folder):
        found = photo_gps(path)
        if found is None:
            skipped.append((path.name, "no EXIF GPS"))
            continue
        ids.append(path.name)
        photos.append(path)
        lat.append(found[0])
        lon.append(found[1])
    rows = pd.DataFrame({"id": ids, "photo": pd.Series(photos, dtype=object), "lat": lat,
                         "lon": lon})  # fmt: skip
    listing = "\n".join(f"{i},{a!r},{b!r}" for i, a, b in zip(ids, lat, lon, strict=True))
    digest = hashlib.sha256(listing.encode()).hexdigest()[:16]
    return Manifest(rows, skipped, digest, "file names, coordinates from each photo's EXIF GPS")


def _photo_finder(
    manifest: str | Path, images: str | Path | list[Path] | None
) -> tuple[Callable[[str], Photo | None], list[tuple[str, str]]]:
    """(id -> the photo it names or None, [(archive, why it is unreadable)]): photos in a
    folder, or in archives indexed once; a truncated archive keeps what precedes the damage."""
    places = [Path(images)] if isinstance(images, (str, Path)) else list(images or [])
    if not places:
        places = [Path(manifest).parent]
    if len(places) == 1 and places[0].is_dir():
        base = places[0]

        def in_folder(image_id: str) -> Photo | None:
            path = image_path(base, image_id)
            return str(path) if path.is_file() else None

        return in_folder, []
    if any(p.is_dir() for p in places):
        raise GeoconceptError("--images takes one folder, or archives (.zip, .tar, .msg)")
    index = ArchiveIndex(places)
    return index.find, index.unreadable


def image_path(base: Path, image_id: str) -> Path:
    """The photo a manifest id names: the id as a path, or, for an id without a suffix that
    names no file (OSV-5M's), that id with ``.jpg``."""
    path = base / image_id
    if not path.suffix and not path.is_file() and path.with_name(path.name + ".jpg").is_file():
        return path.with_name(path.name + ".jpg")
    return path


def subset_manifest(path: str | Path, fraction: float, out: str | Path, seed: int = 0) -> int:
    """Write a seeded random ``fraction`` of a manifest's rows (e.g. the paper's 5% of MP-16)."""
    if not 0 < fraction <= 1:
        raise GeoconceptError(f"--fraction must be in (0, 1], got {fraction}")
    df = read_table(path)
    part = df.sample(frac=fraction, random_state=seed).sort_index()
    with atomic_path(out) as tmp:
        if Path(out).suffix.lower() in {".parquet", ".pq"}:
            part.to_parquet(tmp, index=False)
        else:
            part.to_csv(tmp, index=False)
    return len(part)
