"""`calibrate`: a temperature for the gallery softmax and a conformal confidence region.

Temperature scaling: GeoCLIP-style probabilities ``softmax(logits)`` over the gallery are known
to be over- or under-confident. A single temperature T (``softmax(logits / T)``) is fitted on
held-out photos by minimising the negative log-likelihood of each photo's nearest gallery row.
The loss is convex in 1/T, so a few Newton steps on stored logits find it exactly.

Confidence region (split conformal prediction): a photo's region is the set of gallery places
ranked by probability, kept while the probability mass ranked strictly above a place is at most
a threshold q. A calibration photo's score is that mass above the most probable gallery place
within ``radius_km`` of its true location (infinite if none is); q is the ceil((n+1)(1-alpha))-th
smallest score. Then, for a new photo exchangeable with the calibration ones, the true location
lies within ``radius_km`` of a place of its region with probability >= 1 - alpha.

A region's area counts, for each of its places, the ground within ``radius_km`` that is nearer
to it than to any other gallery place (so neighbouring places do not count the same ground
twice): per-place areas are measured once per gallery on an equal-area lattice and cached.
It is a lower bound of the area of the union of the places' discs.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import torch

from ..geo.distance import EARTH_RADIUS_KM, chord, unit_vectors
from ..io.artifacts import (
    cached_tensor,
    default_cache_dir,
    hash_state_dict,
    hash_tensors,
)
from ..model.clip_id import ClipId
from ..runtime.scratch import Scratch
from .abstention import mass_near
from .calibration_record import TOLERANCE

if TYPE_CHECKING:
    from scipy.spatial import cKDTree

    from ..model.concept_head import RetrievalHead

LATTICE_POINTS = 1 << 22  # ~122 km² per lattice point: a 25 km disc holds ~16
MAX_CALIBRATION_PHOTOS = 5000  # logits kept in memory: 5000 x 100K float32 is 2 GB


# ------------------------------------------------------------------------------ fitting
def _nll_derivatives(logits: torch.Tensor, target: torch.Tensor, beta: float
                     ) -> tuple[float, float, float]:  # fmt: skip
    """Mean NLL of ``softmax(beta * logits)`` at ``target`` and its first two derivatives in
    beta (the second is the mean variance of the logits under the softmax: >= 0, convex)."""
    z = logits.double()
    p = (beta * z).softmax(dim=1)
    zt = z.gather(1, target[:, None])[:, 0]
    ez = (p * z).sum(1)
    nll = torch.logsumexp(beta * z, dim=1) - beta * zt
    var = (p * z * z).sum(1) - ez**2
    return float(nll.mean()), float((ez - zt).mean()), float(var.mean())


def fit_temperature(logits: torch.Tensor, target: torch.Tensor, chunk: int = 512) -> float:
    """The T minimising the mean NLL of ``softmax(logits / T)`` at ``target`` (Newton in 1/T,
    on the convex loss, with step halving)."""

    def f(beta: float) -> tuple[float, ...]:  # (loss, gradient, hessian)
        parts = [_nll_derivatives(logits[s : s + chunk], target[s : s + chunk], beta)
                 for s in range(0, len(logits), chunk)]  # fmt: skip
        w = [min(chunk, len(logits) - s) / len(logits) for s in range(0, len(logits), chunk)]
        return tuple(sum(wi * p[k] for wi, p in zip(w, parts, strict=True)) for k in range(3))

    beta = 1.0
    loss, grad, hess = f(beta)
    for _ in range(100):
        step = grad / max(hess, 1e-12)
        new = beta - step
        while new <= 1e-6 or new > 1e6:  # stay in a sane range
            step /= 2
            new = beta - step
        new_loss, new_grad, new_hess = f(new)
        while new_loss > loss + 1e-12 and abs(step) > 1e-12:  # damped: never go uphill
            step /= 2
            new = beta - step
            new_loss, new_grad, new_hess = f(new)
        if abs(new - beta) <= 1e-9 * max(1.0, beta):
            beta = new
            break
        beta, loss, grad, hess = new, new_loss, new_grad, new_hess
    return 1.0 / beta


def gallery_tree(gps: torch.Tensor) -> cKDTree:
    """A KD-tree of the gallery's unit vectors (float64: exact great-circle neighbourhoods)."""
    from scipy.spatial import cKDTree

    return cKDTree(unit_vectors(gps).numpy())


def pairs_within(tree: cKDTree, points: torch.Tensor, radius_km: float
                 ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(query index, gallery row) of every gallery row within ``radius_km`` of each point."""
    lists = tree.query_ball_point(unit_vectors(points).numpy(), chord(radius_km))
    rows = np.repeat(np.arange(len(lists)), [len(x) for x in lists])
    cols: npt.NDArray[np.int64] | list[int] = (
        np.concatenate([np.asarray(x, dtype=np.int64) for x in lists]) if len(lists) else []
    )
    return torch.from_numpy(rows), torch.as_tensor(cols, dtype=torch.int64)


def top_confidence(probs: torch.Tensor, gps: torch.Tensor, tree: cKDTree, radius_km: float
                   ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(confidence, top-1 row) of each row of (B, N) ``probs``: the mass within ``radius_km``
    of its most probable gallery row (inference.abstention)."""
    top = probs.argmax(dim=1).cpu()
    rows, cols = pairs_within(tree, gps.cpu()[top], radius_km)
    return mass_near(probs, rows.to(probs.device), cols.to(probs.device)), top


def best_near(probs: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Per photo, the probability of its most probable gallery row among the (photo, row)
    pairs ``pairs_within`` gave for the true locations (-inf where a photo has none)."""
    best = torch.full((len(probs),), -torch.inf, dtype=probs.dtype, device=probs.device)
    return best.scatter_reduce_(0, rows, probs[rows, cols], "amax")


def mass_above(probs: torch.Tensor, best: torch.Tensor) -> torch.Tensor:
    """The probability mass strictly above ``best`` in each row (inf where best is -inf):
    with ``best_near``, the conformal score."""
    above = torch.where(probs > best[:, None], probs, 0).sum(1, dtype=torch.float64)
    return torch.where(torch.isfinite(best), above, torch.inf)


def covered(best: torch.Tensor, cut: torch.Tensor) -> torch.Tensor:
    """Whether the region (``probs >= cut``, see ``region_cut``) holds a place within the
    radius of the truth, that is its most probable one, ``best`` (never where none is)."""
    return torch.isfinite(best) & (best >= cut)


def conformal_threshold(scores: npt.ArrayLike, alpha: float) -> float:
    """Split conformal quantile: the ceil((n+1)(1-alpha))-th smallest score (inf if past n)."""
    scores = np.sort(np.asarray(scores, dtype=np.float64))
    k = math.ceil((len(scores) + 1) * (1 - alpha))
    return float(scores[k - 1]) if k <= len(scores) else math.inf


def region_cut(probs: torch.Tensor, threshold: float, keys: torch.Tensor | None = None,
               bins: int = 2048, scratch: Scratch | None = None) -> torch.Tensor:  # fmt: skip
    """Per row, the lowest probability still in the conformal region (rows whose mass
    strictly above is at most ``threshold``), so that the region is ``probs >= cut``: the
    one column of :func:`region_cuts`."""
    return region_cuts(probs, [threshold], keys, bins, scratch)[:, 0]


def region_cuts(probs: torch.Tensor, thresholds: Sequence[float],
                keys: torch.Tensor | None = None, bins: int = 2048,
                scratch: Scratch | None = None) -> torch.Tensor:  # fmt: skip
    """(B, T) :func:`region_cut` under each of T thresholds (a region per group of places:
    inference.mondrian), the rows' histogram made once.

    Exact without sorting whole rows: a histogram over ``keys`` (any values that order each
    row as ``probs`` does, such as the logits the softmax made them from; log-probabilities
    by default) locates the one bin where the mass from the top crosses a threshold, and
    only that bin's values are sorted. A loop over blocks passes its ``scratch``, where the
    (B, N) temporaries are kept from one block to the next."""
    b, n = probs.shape
    limits = {t: t + TOLERANCE for t in thresholds if not (math.isinf(t) or t + TOLERANCE >= 1)}
    found = {}  # threshold -> (B,) cut
    if len(limits) < len(set(thresholds)):  # a region of every place: cut at the least
        found[math.inf] = probs.min(dim=1).values
    if not limits:
        return torch.stack([found[math.inf]] * len(thresholds), dim=1)
    scratch = scratch or Scratch()
    dev = probs.device
    if keys is None:
        at_least_32 = torch.promote_types(probs.dtype, torch.float32)  # 1e-38 is 0 in halves
        keys = scratch("keys", (b, n), at_least_32, dev).copy_(probs).clamp_min_(1e-38).log_()
    lo, hi = keys.amin(dim=1, keepdim=True), keys.amax(dim=1, keepdim=True)
    scale = (bins - 1) / (hi - lo).clamp_min(1e-30)  # (keys - lo) * scale lies in [0, bins)
    spread = torch.sub(keys, lo, out=scratch("spread", (b, n), keys.dtype, dev)).mul_(scale)
    which = scratch("which", (b, n), torch.long, dev).copy_(spread)  # monotone in keys
    mass = torch.zeros(b, bins, dtype=torch.float64, device=dev)
    mass.scatter_add_(1, which, scratch("wide", (b, n), torch.float64, dev).copy_(probs))
    upto = mass.flip(1).cumsum(1).flip(1)  # mass in bins >= each bin
    above = upto - mass  # mass in bins strictly above
    # each threshold's crossing bin (where upto falls past it; bin 0 if nowhere): the values
    # of every crossing bin are found in one pass, then each threshold takes its own
    crossings = torch.stack([((upto > limit).sum(dim=1) - 1).clamp_min_(0)
                             for limit in limits.values()], dim=1)  # fmt: skip
    table = torch.zeros(b, bins, dtype=torch.bool, device=dev).scatter_(1, crossings, True)
    in_bin = torch.gather(table, 1, which, out=scratch("in_bin", (b, n), torch.bool, dev))
    all_rows, all_cols = in_bin.nonzero(as_tuple=True)
    all_values, all_bins = probs[all_rows, all_cols], which[all_rows, all_cols]
    for i, (threshold, limit) in enumerate(limits.items()):
        crossing = crossings[:, i]
        mine = all_bins == crossing[all_rows]
        rows, values = all_rows[mine], all_values[mine]  # its rows' bins (never empty), in order
        order = values.sort(descending=True, stable=True).indices
        order = order[rows[order].sort(stable=True).indices]  # by row, then falling value
        values, wide = values[order], values[order].double()
        count = torch.bincount(rows, minlength=b)
        first = count.cumsum(0) - count
        run = wide.cumsum(0) - wide  # mass before each value, from its row's first one on
        before = run + (above.gather(1, crossing[:, None])[:, 0] - run[first])[rows]
        inside = torch.bincount(rows, weights=(before <= limit).double(), minlength=b).long()
        found[threshold] = values[first + inside.clamp_min(1) - 1]  # a prefix of each row
    return torch.stack([found[t if t in limits else math.inf] for t in thresholds], dim=1)


def region_mask(probs: torch.Tensor, threshold: float) -> torch.Tensor:
    """(B, N) membership of the conformal region (see ``region_cut``)."""
    return probs >= region_cut(probs, threshold)[:, None]


# ------------------------------------------------------------------------------ areas
def fibonacci_lattice(n: int) -> npt.NDArray[np.float64]:
    """(n, 3) unit vectors spread evenly over the sphere: each stands for 4 pi R^2 / n."""
    i = np.arange(n, dtype=np.float64) + 0.5
    z = 1 - 2 * i / n
    phi = math.pi * (1 + math.sqrt(5)) * i
    r = np.sqrt(1 - z * z)
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


def place_areas(
    gps: torch.Tensor, radius_km: float, cache_dir: str | Path | None = None
) -> torch.Tensor:
    """(N,) km² of ground within ``radius_km`` of each gallery row and nearer to it than to
    any other (repeated rows share their place's area once); cached per gallery and radius."""
    from scipy.spatial import cKDTree

    def compute() -> torch.Tensor:
        unit = unit_vectors(gps).numpy()
        lattice = fibonacci_lattice(LATTICE_POINTS)
        found, nearest = cKDTree(unit).query(lattice, k=1,
                                             distance_upper_bound=chord(radius_km))  # fmt: skip
        hit = np.isfinite(found)
        cell_km2 = 4 * math.pi * EARTH_RADIUS_KM**2 / LATTICE_POINTS
        return torch.from_numpy(np.bincount(nearest[hit], minlength=len(gps)) * cell_km2).float()

    root = Path(cache_dir) if cache_dir else default_cache_dir()
    key = hash_tensors(gps, extra=f"areas:{radius_km}:{LATTICE_POINTS}")
    return cached_tensor(root / "areas" / f"{key}.safetensors", compute)


def geoclip_calibration_path(gps: torch.Tensor, head: RetrievalHead, clip: ClipId,
                             cache_dir: str | Path | None = None) -> Path:  # fmt: skip
    """Pretrained GeoCLIP's calibration in the cache, keyed by its weights, the gallery and
    the CLIP backbone of the features."""
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    ident = f"{clip.model}:{clip.pretrained}"  # a config hash, where recorded, is checked on load
    key = hashlib.sha256(f"{hash_state_dict(head)}:{hash_tensors(gps)}:{ident}".encode())
    digest = key.hexdigest()
    return root / "calibration" / f"geoclip-{digest[:16]}.json"
