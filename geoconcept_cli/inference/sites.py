"""Candidates a person reads as distinct places: gallery points within a radius merged into one.

GeoCLIP's gallery holds points tens of metres apart (61% of its 94K distinct points have a
neighbour within 1 km), so a plain top-k lists one town several times. Here the ranked points
are walked in order of probability: a point that no earlier candidate took starts a candidate
at its own coordinates, which takes every later point within ``merge_km`` of it. A candidate's
probability is the sum of its points' (a repeated point counted once per gallery row holding
it), and candidates are listed by that sum, so the first one may not hold the single most
probable point (`evaluate` scores that point, as GeoCLIP does). Sums run over the points among
the ``pool`` most probable, deepened until ``k`` candidates are found: a point further down
carries less than any of those.

MERGE_KM = 5: on the 100K gallery, 94% of the points whose nearest neighbour has the same name
(geo.geocode) have it within 5 km, and 87% of the neighbours within 5 km share the name; at
10 km the figures are 97.5% and 83%, at 1 km 75% and 94%.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch

from ..geo.distance import EARTH_RADIUS_KM, unit_vectors
from .request import MERGE_KM as MERGE_KM  # the default radius, chosen as said above

POOL = 32  # ranked points a merge starts from, per photo, at least (as explain ranked before)
DEPTH = 4  # and at least this many per candidate asked for
GROWTH = 4  # a photo with too few candidates in its pool is ranked this many times deeper

Rank = Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]


class Ranked(NamedTuple):
    """The k candidates of each photo, each (B, k): probabilities (or scores), the gallery row
    of each candidate's first point, and how many gallery rows it holds; and ``pool``, the
    ranked gallery rows they were merged from (B, >= k), for a search beyond them."""

    probs: torch.Tensor
    rows: torch.Tensor
    points: torch.Tensor
    pool: torch.Tensor


class Sites:
    """Merges the ranked points of a gallery into candidates (module docstring)."""

    def __init__(self, gallery_gps: torch.Tensor, row_copies: torch.Tensor, places: int):
        self.units = unit_vectors(gallery_gps).float()
        self.row_copies = row_copies  # (N,) rows holding each point (0 for a repeat's later rows)
        self.places = places  # distinct points: no deeper pool exists

    def rank(self, rank: Rank, feats: torch.Tensor, k: int, merge_km: float,
             total: bool = True) -> Ranked:  # fmt: skip
        """The top-``k`` candidates of photos (B, D) ranked by ``rank`` (as Predictor.topk),
        points within ``merge_km`` merged (scored as :meth:`merge` says); ``merge_km`` 0 lists
        gallery points as ranked."""
        k = max(1, min(k, self.places))
        pool = min(max(POOL, k if merge_km <= 0 else DEPTH * k), self.places)
        probs, rows = rank(feats, pool)
        if merge_km <= 0:
            return Ranked(probs[:, :k], rows[:, :k], torch.ones_like(rows[:, :k]), rows)
        out = self.merge(probs, rows, k, merge_km, total)
        short = out.points[:, -1] == 0  # fewer than k candidates in the pool
        while bool(short.any()) and pool < self.places:
            pool = min(GROWTH * pool, self.places)
            at = short.nonzero()[:, 0]
            deeper = self.merge(*rank(feats[at], pool), k, merge_km, total)
            for mine, theirs in zip(out[:3], deeper[:3], strict=True):
                mine[at] = theirs
            short[at] = deeper.points[:, -1] == 0
        return out

    def merge(self, scores: torch.Tensor, rows: torch.Tensor, k: int, merge_km: float,
              total: bool) -> Ranked:  # fmt: skip
        """Merge ranked points (B, M), highest ``scores`` first, into each photo's top ``k``
        candidates: scored by the sum of their points' scores weighted by their rows
        (``total``, for probabilities) or by their first point's (activations). Where fewer
        than ``k`` form, the last columns hold 0 points."""
        scores, rows = scores.cpu(), rows.cpu()
        n, m = rows.shape
        k = min(k, m)
        units = self.units[rows]  # (B, M, 3)
        near = units @ units.transpose(1, 2) >= math.cos(merge_km / EARTH_RADIUS_KM)
        copies = self.row_copies[rows].to(scores.dtype)
        weights = scores * copies
        free = torch.ones(n, m, dtype=torch.bool)
        value = torch.full((n, m), -torch.inf, dtype=scores.dtype)
        count = torch.zeros(n, m, dtype=torch.long)
        for j in range(m):  # in rank order: a point still free starts a candidate
            starts = free[:, j]
            if not bool(starts.any()):
                if not bool(free.any()):
                    break
                continue
            taken = near[:, j] & free & starts[:, None]
            value[:, j] = torch.where(starts, (weights * taken).sum(1) if total else scores[:, j],
                                      -torch.inf)  # fmt: skip
            count[:, j] = (copies * taken).sum(1).long()
            free &= ~taken
        top = value.topk(k, dim=1)
        points = count.gather(1, top.indices)
        found = torch.isfinite(top.values)
        return Ranked(torch.where(found, top.values, 0.0).to(scores.dtype),
                      rows.gather(1, top.indices), torch.where(found, points, 0), rows)  # fmt: skip
