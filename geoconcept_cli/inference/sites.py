"""Candidates a person reads as distinct places: the gallery's sites (gallery.sites), each
holding the points within ``merge_km`` of its leader, scored by the sum of their probabilities.

A candidate is a site: its probability is the exact sum over every gallery row it holds (a
repeated point once per row), its coordinates are its most probable point's, and candidates are
listed by that sum, so the first may not hold the single most probable point (`evaluate` scores
that point, as GeoCLIP does). For an indexed gallery the sums run over the retrieved places,
over which its probabilities are normalised anyway.

MERGE_KM = 5: on the 100K gallery, 94% of the points whose nearest neighbour has the same name
(geo.geocode) have it within 5 km, and 87% of the neighbours within 5 km share the name; at
10 km the figures are 97.5% and 83%, at 1 km 75% and 94%.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property
from typing import NamedTuple

import torch

from .request import MERGE_KM as MERGE_KM  # the default radius, chosen as said above

CHUNK = 256  # photos whose full gallery probabilities are held at once

Rank = Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]


class Ranked(NamedTuple):
    """The k candidates of each photo, each (B, k): probabilities (or scores), the gallery row
    of each candidate's point, and how many gallery rows it holds (0: no candidate there);
    and ``pool``, each photo's most probable places (B, <= reasons.POOL), for a search beyond
    them."""

    probs: torch.Tensor
    rows: torch.Tensor
    points: torch.Tensor
    pool: torch.Tensor


class Sites:
    """A gallery's sites (``site`` (N,), one id per row), inside ``allowed`` rows (all for
    None); ``row_copies`` (N,): the rows holding each place at its first row (0 elsewhere),
    which weight the places of an indexed gallery's ranking."""

    def __init__(self, site: torch.Tensor, row_copies: torch.Tensor,
                 allowed: torch.Tensor | None = None):  # fmt: skip
        self.site = site
        self.count = int(site.max()) + 1 if len(site) else 0
        self.row_copies = row_copies
        inside = site if allowed is None else site[allowed.cpu()]
        self.size = torch.bincount(inside, minlength=self.count)  # rows of each, inside
        self.sites_inside = int((self.size > 0).sum())

    def merge(self, scores: torch.Tensor, k: int, rows: torch.Tensor | None = None,
              total: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
        """Each photo's top-``k`` sites as (score, gallery row of its best point, rows held),
        each (B, k), from ``scores`` (B, M) of gallery ``rows`` (B, M) (None: every row, M =
        N): summed over a site's rows (``total``, for probabilities; ranked places count their
        copies) or its best row's (activations)."""
        scores = scores.cpu()
        n, m = scores.shape
        site = self.site[None].expand(n, m) if rows is None else self.site[rows.cpu()]
        if total and rows is None:
            value = torch.zeros(n, self.count, dtype=scores.dtype).index_add_(1, self.site,
                                                                               scores)  # fmt: skip
        elif total:
            assert rows is not None  # the branch above takes every row
            weights = scores * self.row_copies[rows.cpu()]
            value = torch.zeros(n, self.count, dtype=scores.dtype).scatter_add_(1, site, weights)
        else:
            value = torch.full((n, self.count), -torch.inf, dtype=scores.dtype)
            value.scatter_reduce_(1, site, scores, "amax")
        k = max(1, min(k, self.sites_inside))
        top = value.masked_fill(self.size[None] == 0, -torch.inf).topk(k, dim=1)
        found = torch.isfinite(top.values)
        if total:
            found &= top.values > 0
        # each chosen site's best point: among the columns of its rows (padded to the widest)
        chosen = top.indices
        if rows is None:
            col = self._best_columns(scores, chosen)
        else:  # ranked places: (B, M, k) is small
            member = site[..., None] == chosen[:, None, :]
            col = torch.where(member, scores[..., None], -torch.inf).argmax(1)
        picked = col if rows is None else rows.cpu().gather(1, col)
        return (torch.where(found, top.values, 0.0), picked,
                torch.where(found, self.size[chosen], 0))  # fmt: skip

    def _best_columns(self, scores: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
        """(B, k) the gallery row with the highest of each photo's (B, N) ``scores`` within
        each of its ``chosen`` (B, k) sites (the first of equal ones), from the sites' rows
        padded to the largest chosen."""
        order, starts, sizes = self._members
        width = int(sizes[chosen].max())
        offsets = torch.arange(width)
        at = starts[chosen][..., None] + offsets  # (B, k, width)
        valid = offsets < sizes[chosen][..., None]
        cols = order[at.clamp_max(len(order) - 1)]
        picked = scores.gather(1, cols.flatten(1)).view(cols.shape)
        best = torch.where(valid, picked, -torch.inf).argmax(2)
        return cols.gather(2, best[..., None])[..., 0]

    @cached_property
    def _members(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Gallery rows ordered by site (stable: by row within one), where each site's rows
        start in that order, and how many there are (inside the limits or not)."""
        order = torch.argsort(self.site, stable=True)
        sizes = torch.bincount(self.site, minlength=self.count)
        return order, torch.cumsum(sizes, 0) - sizes, sizes
