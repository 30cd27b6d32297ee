"""What a person knows in words, as evidence beside the photo: how much each hint gave the
answer, and which concepts it maps onto.

A hint is scored as `where` scores a text (its CLIP text embedding through the image head), and
its log-probabilities, times the request's ``hint_weight``, are added to the photo's tempered
logits (Predictor.hint_prior): a product of experts, renormalised over the places allowed. What
it gave a candidate is its gain there over its mean across the places allowed, beside the
photo's own gain; a hint that works against the answer has a negative share.

A hint maps onto the concepts whose text directions it is most similar to. It is applied only
where it is as close to one of them as the set's concepts are to their nearest other concept
(the median of those similarities): words the vocabulary does not cover are reported, not
silently used. The bar is the set's own, so it holds for any CLIP (its text embeddings sit
in a narrow cone whose width differs by model).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from .predictor import Predictor

MAPPED = 3  # concepts listed per hint


@torch.no_grad()
def hint_gains(p: Predictor, feats: torch.Tensor, rows: torch.Tensor, hints: torch.Tensor,
               texts: tuple[str, ...], weight: float) -> list[list[dict[str, Any]]]:  # fmt: skip
    """Per photo (CLIP features (B, D)) and hint (CLIP text features (H, D) of ``texts``):
    what it gave the answer at gallery ``rows`` (B,), ``weight`` times its log-probability
    there over its mean across the places allowed, beside the photo's own gain (tempered
    logits); and its share of the two."""
    inside = slice(None) if p.allowed is None else p.allowed
    lp = p.hint_logprobs(hints)
    hint = weight * (lp[:, rows] - lp[:, inside].mean(1, keepdim=True))  # (H, B)
    z = p.logits(feats) / p.temperature
    photo = z.gather(1, rows[:, None].to(z.device))[:, 0] - z[:, inside].mean(1)  # (B,)
    total = photo.abs() + hint.abs().sum(0)
    return [[{"hint": text, "weight": weight, "logit_gain": round(float(g), 5),
              "photo_logit_gain": round(float(photo[b]), 5),
              "share": round(float(g / total[b]), 5) if total[b] > 0 else 0.0}
             for text, g in zip(texts, hint[:, b].tolist(), strict=True)]
            for b in range(len(rows))]  # fmt: skip


def nearest_similarity(unit: torch.Tensor) -> torch.Tensor:
    """(k,) each unit row's cosine with its nearest other row."""
    return (unit @ unit.T).fill_diagonal_(-torch.inf).max(1).values


def map_hints(p: Predictor, hints: tuple[str, ...], directions: torch.Tensor,
              names: list[str]) -> list[dict[str, Any]]:  # fmt: skip
    """Each hint's most similar concepts (``directions`` (k, D), one per concept of ``names``)
    and whether it is close enough to one to apply it (module docstring)."""
    unit = F.normalize(directions.float().cpu(), dim=1)
    bar = float(nearest_similarity(unit).median()) if len(unit) > 1 else -1.0
    out = []
    for text in hints:
        sims = F.normalize(p.text_features(text).float(), dim=1)[0].cpu() @ unit.T
        top = sims.topk(min(MAPPED, len(names)))
        out.append({"hint": text, "applied": bool(top.values[0] >= bar),
                    "concepts": [{"concept": names[i], "similarity": round(float(v), 4)}
                                 for v, i in zip(top.values.tolist(), top.indices.tolist(),
                                                 strict=True)]})  # fmt: skip
    return out
