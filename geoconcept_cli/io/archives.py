"""Photos read in place from the containers datasets ship in, never extracted.

- a folder of image files (as today);
- ``.zip`` archives (OSV-5M's images), read member by member;
- uncompressed ``.tar`` archives (an MP-16 tarball), indexed once by their headers, then each
  photo read at its offset;
- ``.msg`` shards of msgpack records ``{"id": ..., "image": <bytes>}`` (GeoEstimation's MP-16),
  indexed by one pass over the records;
- WebDataset ``.tar`` shards (img2dataset's output, OSV-5M's copy), where each sample ``KEY.jpg``
  has a ``KEY.json`` that holds its coordinates: no manifest needed.

Each photo becomes a :class:`Entry` (or a file path), which a DataLoader worker reads with its
own file handles, so archives are split across workers and ranks like a folder.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import tarfile
import zipfile
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import msgpack
import numpy as np

from ..errors import GeoconceptError
from ..geo.distance import valid_latlon
from .images import IMAGE_SUFFIXES, decode_image, load_image
from .tables import LAT_NAMES, LON_NAMES

if TYPE_CHECKING:
    from PIL import Image

ARCHIVE_SUFFIXES = (".zip", ".tar", ".msg")
COMPRESSED_TAR = (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar.zst")


@dataclass(frozen=True)
class Entry:
    """One photo inside an archive: the archive, its member name (zip, tar) or record id
    (msgpack), and where its bytes lie (tar: the member's data; msgpack: the whole record)."""

    archive: str
    name: str
    offset: int = -1
    size: int = -1

    def __str__(self) -> str:
        return f"{self.archive}:{self.name}"


Photo = str | Entry  # a file path, or a photo inside an archive


def expand(paths: list[Path]) -> list[Path]:
    """Paths with shell-style patterns (``'shards/*.msg'``, quoted) expanded, in sorted order;
    a pattern that matches nothing is an error."""
    out: list[Path] = []
    for path in paths:
        if glob.has_magic(str(path)):
            found = sorted(glob.glob(str(path)))
            if not found:
                raise GeoconceptError(f"{path}: no file matches this pattern")
            out += map(Path, found)
        else:
            out.append(path)
    return out


def is_archive(path: Path) -> bool:
    return path.suffix.lower() in ARCHIVE_SUFFIXES


def check_archive(path: Path) -> None:
    """A one-line error for what cannot be read in place: a missing file, a compressed tar."""
    if str(path).lower().endswith(COMPRESSED_TAR):
        raise GeoconceptError(f"{path}: a compressed tar cannot be read in place (each photo "
                              "needs its offset); decompress it once to .tar")  # fmt: skip
    if not path.is_file():
        raise GeoconceptError(f"{path}: no such folder or archive")
    if not is_archive(path):
        raise GeoconceptError(f"{path}: not a folder, .zip, .tar or .msg of photos")


class ArchiveIndex:
    """Where each photo of a set of archives lies, by name; ``unreadable`` lists the archives
    whose end could not be read (a truncated download), with what was indexed before it."""

    def __init__(self, archives: list[Path]):
        self.entries: dict[str, Entry] = {}
        self.unreadable: list[tuple[str, str]] = []
        for path in archives:
            check_archive(path)
            for entry in _index(path, self.unreadable):
                self.entries.setdefault(entry.name, entry)
        # Archives often wrap their photos in one top folder that manifests do not name.
        tops = {name.split("/", 1)[0] for name in self.entries}
        self.stripped = (
            {name.split("/", 1)[1]: e for name, e in self.entries.items()}
            if len(tops) == 1 and all("/" in name for name in self.entries)
            else {}
        )

    def find(self, image_id: str) -> Entry | None:
        """The entry a manifest id names: the name itself, or the id + ``.jpg`` (OSV-5M's ids),
        with or without the archive's common top folder."""
        for table in (self.entries, self.stripped):
            for name in (image_id, image_id + ".jpg"):
                if name in table:
                    return table[name]
        return None


def _index(path: Path, unreadable: list[tuple[str, str]]) -> Iterator[Entry]:
    suffix = path.suffix.lower()
    try:
        if suffix == ".zip":
            with zipfile.ZipFile(path) as zf:
                for info in zf.infolist():
                    if not info.is_dir():
                        yield Entry(str(path), info.filename)
        elif suffix == ".tar":
            for member in _tar_members(path):
                yield Entry(str(path), member.name, member.offset_data, member.size)
        else:
            yield from _msgpack_entries(path)
    except (OSError, EOFError, zipfile.BadZipFile, tarfile.TarError, ValueError,
            msgpack.UnpackException) as exc:  # fmt: skip
        unreadable.append((str(path), f"unreadable archive ({type(exc).__name__}: {exc})"))


def _tar_members(path: Path) -> Iterator[tarfile.TarInfo]:
    """Regular-file members of an uncompressed tar, reading headers only (data is skipped).

    The TarFile's own member list (untyped in typeshed) is emptied as it goes, so a 4.7M-photo
    tarball does not keep millions of headers in memory."""
    with tarfile.open(path, "r:") as tf:
        while (member := tf.next()) is not None:
            cast(Any, tf).members.clear()
            if member.isfile():
                yield member


def _msgpack_entries(path: Path) -> Iterator[Entry]:
    """One entry per ``{"id", "image"}`` record of a msgpack shard (one pass over the file)."""
    with open(path, "rb") as f:
        unpacker = msgpack.Unpacker(f, raw=False, max_buffer_size=1 << 30)
        start = 0
        for record in unpacker:
            end = unpacker.tell()
            if (isinstance(record, dict) and isinstance(record.get("image"), bytes)
                    and isinstance(record.get("id"), str)):  # fmt: skip
                yield Entry(str(path), record["id"], start, end - start)
            start = end


# Open archives, per process (workers never share a file offset), the most recently used
# last; bounded, so thousands of shards do not exhaust the file descriptors.
_handles: OrderedDict[tuple[int, str], Any] = OrderedDict()
MAX_OPEN = 128


def _handle(archive: str) -> Any:
    key = (os.getpid(), archive)
    if key in _handles:
        _handles.move_to_end(key)
        return _handles[key]
    while len(_handles) >= MAX_OPEN:
        (pid, _), old = _handles.popitem(last=False)
        if pid != os.getpid():  # a parent's handles are the parent's to close
            continue
        if isinstance(old, zipfile.ZipFile):
            old.close()
        else:
            os.close(old)
    handle = zipfile.ZipFile(archive) if archive.lower().endswith(".zip") else os.open(
        archive, os.O_RDONLY)  # fmt: skip
    _handles[key] = handle
    return handle


def read_bytes(entry: Entry) -> bytes:
    """The bytes of one photo in an archive (the process keeps the archive open)."""
    try:
        if entry.archive.lower().endswith(".zip"):
            return bytes(_handle(entry.archive).read(entry.name))
        data = os.pread(_handle(entry.archive), entry.size, entry.offset)
        if len(data) != entry.size:
            raise EOFError(f"archive ends {entry.size - len(data)} bytes early")
        if entry.archive.lower().endswith(".msg"):
            return bytes(msgpack.unpackb(data, raw=False)["image"])
        return data
    except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile,
            msgpack.UnpackException) as exc:  # fmt: skip
        raise GeoconceptError(f"{entry}: cannot read it from the archive ({exc})") from None


def open_photo(photo: Photo) -> Image.Image:
    """Decode a photo wherever it lies into an upright RGB image (or a one-line error)."""
    if isinstance(photo, Entry):
        return decode_image(read_bytes(photo), str(photo))
    return load_image(photo)


@dataclass
class Samples:
    """The photos of WebDataset shards with their coordinates, and the samples skipped."""

    ids: list[str]
    photos: list[Entry]
    lat: np.ndarray
    lon: np.ndarray
    skipped: list[tuple[str, str]]
    sha256: str


def read_webdataset(shards: list[Path]) -> Samples:
    """Index WebDataset ``.tar`` shards: each sample's key is its id, its image member the
    photo, and its ``.json`` member's lat/lon fields (any common spelling) its location."""
    ids: list[str] = []
    photos: list[Entry] = []
    lat: list[float] = []
    lon: list[float] = []
    skipped: list[tuple[str, str]] = []
    digest = hashlib.sha256()
    for shard in shards:
        check_archive(shard)
        digest.update(f"{shard.name}:{shard.stat().st_size}\n".encode())
        samples: dict[str, dict[str, Any]] = {}
        try:
            with open(shard, "rb") as f:
                for member in _tar_members(shard):
                    key, ext = _split_key(member.name)
                    ext = ext.rsplit(".", 1)[-1]
                    sample = samples.setdefault(key, {})
                    if ext == "json":
                        f.seek(member.offset_data)
                        sample["json"] = f.read(member.size)
                    elif "." + ext in IMAGE_SUFFIXES and "image" not in sample:
                        sample["image"] = Entry(str(shard), member.name, member.offset_data,
                                                member.size)  # fmt: skip
        except (OSError, EOFError, tarfile.TarError) as exc:
            skipped.append((str(shard), f"unreadable after {len(samples)} samples ({exc})"))
        for key, sample in samples.items():
            coords = _coordinates(sample.get("json"))
            if "image" not in sample:
                skipped.append((key, "no image in the sample"))
            elif isinstance(coords, str):
                skipped.append((key, coords))
            else:
                ids.append(key)
                photos.append(sample["image"])
                lat.append(coords[0])
                lon.append(coords[1])
    return Samples(ids, photos, np.array(lat, dtype=np.float64), np.array(lon, dtype=np.float64),
                   skipped, digest.hexdigest()[:16])  # fmt: skip


def _split_key(name: str) -> tuple[str, str]:
    """WebDataset's (key, extension) of a member name: the key ends at the base name's first
    dot, so ``a/b.c.jpg`` is sample ``a/b``'s ``c.jpg``."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def _coordinates(raw: bytes | None) -> tuple[float, float] | str:
    """(lat, lon) from a sample's JSON, or why there are none."""
    if raw is None:
        return "no .json with coordinates in the sample"
    try:
        record = json.load(io.BytesIO(raw))
    except ValueError:
        return "unreadable .json"
    if not isinstance(record, dict):
        return "the .json is not an object"
    fields = {str(k).lower(): v for k, v in record.items()}
    lat_key = next((k for k in LAT_NAMES if k in fields), None)
    lon_key = next((k for k in LON_NAMES if k in fields), None)
    if lat_key is None or lon_key is None:
        return f"no latitude/longitude in the .json (looked for {LAT_NAMES[0]}, {LON_NAMES[0]}...)"
    try:
        lat, lon = float(fields[lat_key]), float(fields[lon_key])
    except (TypeError, ValueError):
        return "invalid coordinates"
    if not valid_latlon(np.array([lat]), np.array([lon]))[0]:
        return "invalid coordinates"
    return lat, lon
