"""The gallery's points grouped into sites: the places a person reads as one.

GeoCLIP's gallery holds points tens of metres apart (61% of its 94K distinct points have a
neighbour within 1 km). A site is a leader point and every later point within ``radius_km`` of
it that no earlier leader took, the points taken in gallery order: each point lies within the
radius of its site's leader (no chaining across a city), and leaders lie at least the radius
apart. The grouping depends on the coordinates alone, so it is made once per gallery and
radius (seconds for 100K points) and cached.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..geo.distance import chord, unit_vectors
from ..io.artifacts import cached_tensor, default_cache_dir, hash_tensors


def site_ids(gps: torch.Tensor, radius_km: float, cache_dir: str | Path | None = None
             ) -> torch.Tensor:  # fmt: skip
    """(N,) the site of each gallery row (0 .. sites - 1, numbered by their leaders' order),
    cached per gallery and radius."""
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    path = root / "sites" / f"{hash_tensors(gps, extra=f'sites:{radius_km}')}.safetensors"
    return cached_tensor(path, lambda: _group(gps, radius_km))


def _group(gps: torch.Tensor, radius_km: float) -> torch.Tensor:
    """:func:`site_ids`, computed: leaders in gallery order, each taking the free points
    within the radius (a ball query of unit vectors)."""
    from scipy.spatial import cKDTree

    unit = unit_vectors(gps).numpy()
    within = chord(radius_km)
    tree = cKDTree(unit)
    site = torch.full((len(gps),), -1, dtype=torch.long)
    taken = site.numpy()
    count = 0
    for i in range(len(unit)):
        if taken[i] >= 0:
            continue
        near = torch.as_tensor(tree.query_ball_point(unit[i], within * (1 + 1e-9)))
        near = near[taken[near.numpy()] < 0]
        taken[near.numpy()] = count
        taken[i] = count
        count += 1
    return site
