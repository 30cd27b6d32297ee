"""Where derived files go, and how any file is written so that a crash never leaves half of it:
below every layer that writes (io's artifacts, geo's gazetteer cache)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import GeoconceptError


def default_cache_dir() -> Path:
    """Where derived data (gallery embeddings, source caches, the parsed gazetteer) goes:
    $GEOCONCEPT_CACHE or ~/.cache/geoconcept."""
    env = os.environ.get("GEOCONCEPT_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "geoconcept"


def writable_file(path: str | Path) -> Path:
    """``path`` if a file may be written there (checked before long work, and by atomic_path)."""
    path = Path(path)
    if path.is_dir():
        raise GeoconceptError(f"{path}: is a folder; give a file name to write")
    return path


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; it replaces ``path`` only if the block succeeds.

    A crash mid-write therefore never leaves a half-written artifact under the final name;
    the data is fsynced before the rename and the folder after it, so a node losing power does
    not either.
    """
    path = writable_file(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    umask = current_umask()
    try:
        yield tmp_path
        # mkstemp makes 0600 and some writers recreate the file: ordinary permissions, so that
        # other users and the other nodes of a shared filesystem can read the artifact
        tmp_path.chmod(0o666 & ~umask)
        with tmp_path.open("rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
        folder = os.open(path.parent, os.O_RDONLY)  # and the rename itself
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    finally:
        tmp_path.unlink(missing_ok=True)


def current_umask() -> int:
    """The process's file-creation mask (reading it means setting it, so it is set back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def remove_stale_temporaries(path: str | Path) -> None:
    """Delete what a killed ``atomic_path(path)`` left behind; only for the file's sole writer."""
    path = Path(path)
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        tmp.unlink(missing_ok=True)
