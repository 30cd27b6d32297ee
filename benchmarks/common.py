"""Shared helpers of the benchmarks: timing, photo discovery, device choice."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
IM2GPS = ROOT.parent / "shared" / "data" / "im2gps3k"


def median_time(fn, repeats: int, warmup: int = 1, sync: bool = False) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    return median_times({"fn": fn}, repeats, warmup, sync)["fn"]


def median_times(fns: dict, repeats: int, warmup: int = 1, sync: bool = False) -> dict:
    """Median wall time of each ``fns[name]()``, the runs interleaved (one of each in turn), so
    that a slow spell of the machine falls on all of them alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if sync:
                torch.cuda.synchronize()
            t = time.perf_counter()
            fn()
            if sync:
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(t) for name, t in times.items()}


def photos(
    n: int, folder: Path = IM2GPS / "images", tmp: Path = Path("/tmp/geoconcept-bench-photos")
) -> list[Path]:
    """``n`` photos of ``folder`` (Im2GPS3k's by default), its first ones repeated if it holds
    fewer (as on a GPU machine that gets part of them), or generated 340x256 JPEGs where the
    folder is absent."""
    if folder.is_dir():
        files = sorted(folder.resolve().iterdir())
        return [files[i % len(files)] for i in range(n)]
    import numpy as np
    from PIL import Image

    tmp.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        path = tmp / f"{i:05d}.jpg"
        if not path.exists():
            Image.fromarray(rng.integers(0, 255, (256, 340, 3), dtype=np.uint8)).save(path)
        out.append(path)
    return out


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"
