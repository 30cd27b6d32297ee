"""The one exception type that carries a user-facing message (the CLI prints it, exit 2)."""

from __future__ import annotations

from pathlib import Path


class GeoconceptError(Exception):
    """Bad input or a missing resource, explained in one line a user can act on."""


def require_file(path: str | Path, what: str = "file") -> Path:
    """``path`` if it is a file; else a one-line error that says missing or a folder."""
    path = Path(path)
    if path.is_dir():
        article = "an" if what[0] in "aeiou" else "a"
        raise GeoconceptError(f"{path}: is a folder, expected {article} {what}")
    if not path.is_file():
        raise GeoconceptError(f"{path}: no such {what}")
    return path


def first_line(exc: BaseException) -> str:
    """An exception's message cut to its first line (library errors often span many), or to
    two when the first only announces the next ("Error(s) in loading state_dict for CLIP:")."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    text = f"{lines[0]} {lines[1]}" if lines[0].endswith(":") and len(lines) > 1 else lines[0]
    return text if len(text) <= 300 else text[:297] + "..."
