"""On-disk artifacts: atomic writes, content hashes and the config sidecar stored beside them."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING

# the cache's place and atomic writes live below geo, whose gazetteer cache uses them too;
# they are io's API all the same
from .._files import atomic_path as atomic_path
from .._files import current_umask as current_umask
from .._files import default_cache_dir as default_cache_dir
from .._files import remove_stale_temporaries as remove_stale_temporaries
from .._files import writable_file as writable_file

if TYPE_CHECKING:  # torch loads only where tensors are hashed: `geoconcept cache` stays quick
    import torch


# embeddings and the parsed gazetteer (geo.geocode), recomputed locally when missing
DERIVED_CACHES = ("gallery", "concepts", "gazetteer")
GALLERY_CACHE_GB = 4.0  # default bound of the gallery embeddings ($GEOCONCEPT_GALLERY_CACHE_GB)


def cache_usage(cache_dir: str | Path | None = None) -> dict[str, tuple[int, int]]:
    """(files, bytes) under each top-level folder of the cache."""
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    usage = {}
    for part in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        sizes = []
        for f in part.rglob("*"):
            with suppress(FileNotFoundError):  # pruned meanwhile
                if f.is_file():
                    sizes.append(f.stat().st_size)
        usage[part.name] = (len(sizes), sum(sizes))
    return usage


def clear_cache(cache_dir: str | Path | None = None) -> tuple[int, int]:
    """Delete the derived caches (gallery and concept embeddings, the parsed gazetteer);
    returns (files, bytes).
    Fetched concept sources stay: refetching them needs the network."""
    import shutil

    root = Path(cache_dir) if cache_dir else default_cache_dir()
    usage = cache_usage(root)
    for part in DERIVED_CACHES:
        if (root / part).is_dir():
            shutil.rmtree(root / part)  # a failure is an OSError the CLI reports in one line
    gone = [usage[p] for p in DERIVED_CACHES if p in usage]
    return sum(n for n, _ in gone), sum(b for _, b in gone)


def write_json(path: str | Path, data: object, sort_keys: bool = True) -> None:
    """Write ``data`` as pretty JSON, atomically; keys sorted unless their order means something."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=sort_keys, default=str) + "\n")


def cached_tensor(path: Path, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    """The tensor stored at ``path`` (safetensors), or ``compute()``'s, stored there atomically
    first (also over an unreadable file): a cache entry of something slow to make."""
    from safetensors.torch import load_file, save_file

    if path.is_file():
        with suppress(Exception):  # unreadable: recomputed and overwritten
            return load_file(path)["tensor"]
    tensor = compute().contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file({"tensor": tensor}, str(tmp))
    return tensor


def hash_tensors(*tensors: torch.Tensor, extra: str = "") -> str:
    """A short, stable content hash of tensors (dtype, shape and bytes) plus a string."""
    import torch

    h = hashlib.sha256(extra.encode())
    for t in tensors:
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def hash_state_dict(module: torch.nn.Module) -> str:
    """Fingerprint a module's weights, so caches derived from them invalidate when they change."""
    sd = module.state_dict()
    return hash_tensors(*(sd[k] for k in sorted(sd)), extra=",".join(sorted(sd)))


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file's bytes, read a megabyte at a time."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
