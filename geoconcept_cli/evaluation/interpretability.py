"""Interpretability over a test set: how faithful, sufficient and sparse a concept-aware
model's explanations are, measured on many photos rather than shown for one.

Per photo, for its top-1 place and the m concepts that add most to its score (among those the
photo shows, as ``explain`` names them):
- deletion: remove them from the photo's latent (their basis directions projected out) and
  recompute the score and the place's rank; the same for ``draws`` random sets of m concepts;
  the photo passes when ``explain --check`` would call it faithful;
- insertion: keep only those m concepts' activations: how much of the score remains, and
  where the place then ranks;
- sparsity: how many concepts carry 50% and 90% of the score's positive terms.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import GeoconceptError
from ..inference.explainer import faithfulness, remove_concepts
from ..inference.predictor import Predictor
from ..inference.request import MIN_DRAWS
from ..model.concept_head import ConceptAwareHead


def _ranks(logits: torch.Tensor, places: torch.Tensor, target: int) -> tuple[torch.Tensor, ...]:
    """Score of ``target`` in each row of ``logits`` and its rank among the distinct places."""
    score = logits[:, target]
    return score, (logits[:, places] > score[:, None]).sum(1) + 1


def _concepts_carrying(terms: torch.Tensor, share: float) -> int:
    """How many of the largest positive terms reach ``share`` of their sum."""
    pos = terms[terms > 0].sort(descending=True).values
    if len(pos) == 0:
        return 0
    return int((pos.cumsum(0) < share * pos.sum()).sum()) + 1


@torch.no_grad()
def explanation_metrics(
    predictor: Predictor, feats: torch.Tensor, m: int = 3, draws: int = 20,
    photos: int = 200, seed: int = 0, progress: Callable[[int], object] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Deletion, insertion and sparsity of a concept-aware head's explanations, averaged over
    at most ``photos`` of ``feats`` (a seeded sample beyond that)."""
    head = predictor.head
    if not isinstance(head, ConceptAwareHead):
        raise GeoconceptError("explanation metrics need a concept-aware model")
    k = head.basis.shape[0]
    if not 1 <= m < k:
        raise GeoconceptError(f"--m must be between 1 and {k - 1}")
    if draws < MIN_DRAWS:
        raise GeoconceptError(f"--draws must be at least {MIN_DRAWS}")
    if len(feats) > photos:
        pick = torch.randperm(len(feats), generator=torch.Generator().manual_seed(seed))[:photos]
        feats = feats[pick.sort().values]
    dev = predictor.device
    basis, scale = head.basis, head.logit_scale.exp()
    gallery, places = predictor.gallery_emb, predictor.places
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(len(feats)):
        z = head.image_latent(feats[i : i + 1].to(dev).float())[0]
        unit = F.normalize(z @ basis.T, dim=0)
        logits = scale * (gallery @ unit)
        target = int(places[logits[places].argmax()])
        terms = scale * unit * gallery[target]
        before = float(terms.sum())
        shown = torch.where(unit > 0, terms, -torch.inf)
        top = shown.argsort(descending=True)[:m]
        sets = [top] + [torch.randperm(k, generator=gen)[:m].to(dev) for _ in range(draws)]
        removed = torch.stack([remove_concepts(z, basis, s) for s in sets]) @ basis.T
        score, rank = _ranks(scale * (F.normalize(removed, dim=1) @ gallery.T), places, target)
        verdict = faithfulness(before - float(score[0]), int(rank[0]),
                               (before - score[1:]).tolist(), rank[1:].tolist())  # fmt: skip
        kept = torch.zeros_like(unit)
        kept[top] = unit[top]
        kept_score, kept_rank = _ranks(scale * (gallery @ F.normalize(kept, dim=0))[None],
                                       places, target)  # fmt: skip
        rows.append({
            "faithful": verdict["faithful"], "drop_top": before - float(score[0]),
            "drop_random": float((before - score[1:]).mean()), "rank_top": int(rank[0]),
            "rank_random": float(rank[1:].float().median()),
            "kept_score_share": float(kept_score[0]) / before if before else float("nan"),
            "kept_rank": int(kept_rank[0]),
            "n50": _concepts_carrying(terms, 0.5), "n90": _concepts_carrying(terms, 0.9),
        })  # fmt: skip
        if progress:
            progress(1)
    return summarize_explanations(rows, m, draws)


def summarize_explanations(rows: list[dict[str, Any]], m: int, draws: int) -> dict[str, Any]:
    """The averages ``evaluate --explanations`` reports (m and draws stated with them)."""

    def mean(key: str) -> float:
        return float(np.nanmean([r[key] for r in rows])) if rows else float("nan")

    return {
        "m": m, "draws": draws, "photos": len(rows),
        "faithful_share": mean("faithful"),
        "deletion": {"score_drop_top": mean("drop_top"), "score_drop_random": mean("drop_random"),
                     "rank_after_top": mean("rank_top"),
                     "rank_after_random_median": mean("rank_random")},
        "insertion": {"score_kept_share": mean("kept_score_share"),
                      "rank_after": mean("kept_rank"),
                      "still_top1_share": float(np.mean([r["kept_rank"] == 1 for r in rows]))
                      if rows else float("nan")},
        "sparsity": {"concepts_for_50pct": mean("n50"), "concepts_for_90pct": mean("n90")},
    }  # fmt: skip
