"""What a person knows in words, as evidence beside the photo: how much each hint gave the
answer, and which concepts it maps onto.

A hint is scored as `where` scores a text (its CLIP text embedding through the image head), and
its log-probabilities, times the request's ``hint_weight``, are added to the photo's tempered
logits (Predictor.hint_prior): a product of experts, renormalised over the places allowed. What
it gave a candidate is its log-probability there over its log-probability at its rival: the
place at least RIVAL_KM away that the hint itself finds most probable (the explanation's
runner-up rule), beside the photo's logit gap between the two. A hint pointing elsewhere
favours its rival: a negative share.

A hint maps onto the concepts whose text directions it is most similar to. It is applied only
where it is as close to one of them as the set's concepts are to their nearest other concept
(the median of those similarities): words the vocabulary does not cover are reported, not
silently used. The bar is the set's own, so it holds for any CLIP (its text embeddings sit
in a narrow cone whose width differs by model).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..geo.distance import haversine_km

MAPPED = 3  # concepts listed per hint
RIVAL_KM = 200.0  # a rival is another place, not a neighbouring point (explainer's runner-up)


def hint_gains(lp: torch.Tensor, z: torch.Tensor, gps: torch.Tensor, rows: torch.Tensor,
               texts: tuple[str, ...], weight: float) -> list[list[dict[str, Any]]]:  # fmt: skip
    """Per photo and hint: what the hint (log-probabilities ``lp`` (H, N) over the gallery
    ``gps`` (N, 2), -inf outside the limits) gave the answer at gallery ``rows`` (B,) (module
    docstring), in tempered logits, beside the photo's own gap (its tempered logits ``z``
    (B, N)); and its share. Where no place inside is RIVAL_KM away, the hint has no rival:
    no gain, no share, ``rival_gallery_index`` None."""
    lp, z, g = lp.cpu(), z.cpu(), gps.double().numpy()
    out = []
    for b, at in enumerate(rows.cpu().tolist()):  # a photo at a time: (N,) distances
        far = torch.from_numpy(haversine_km(g[at, 0], g[at, 1], g[:, 0], g[:, 1]) >= RIVAL_KM)
        far &= torch.isfinite(lp).all(0)  # inside the limits
        rival = torch.where(far, lp, -torch.inf).argmax(1)  # (H,): each hint's own choice
        parts = []
        for h, text in enumerate(texts):
            r = int(rival[h])
            if not bool(far.any()):
                parts.append({"hint": text, "weight": weight, "logit_gain": 0.0,
                              "photo_logit_gain": 0.0, "rival_gallery_index": None,
                              "share": 0.0})  # fmt: skip
                continue
            gain = weight * float(lp[h, at] - lp[h, r])
            photo = float(z[b, at] - z[b, r])
            total = abs(gain) + abs(photo)
            parts.append({"hint": text, "weight": weight, "logit_gain": round(gain, 5),
                          "photo_logit_gain": round(photo, 5), "rival_gallery_index": r,
                          "share": round(gain / total, 5) if total > 0 else 0.0})  # fmt: skip
        out.append(parts)
    return out


def nearest_similarity(unit: torch.Tensor) -> torch.Tensor:
    """(k,) each unit row's cosine with its nearest other row."""
    return (unit @ unit.T).fill_diagonal_(-torch.inf).max(1).values


def map_hints(features: torch.Tensor, texts: tuple[str, ...], directions: torch.Tensor,
              names: list[str]) -> list[dict[str, Any]]:  # fmt: skip
    """Each hint's (CLIP text ``features`` (H, D) of ``texts``) most similar concepts
    (``directions`` (k, D), one per concept of ``names``) and whether it is close enough to
    one to apply it (module docstring)."""
    unit = F.normalize(directions.float().cpu(), dim=1)
    bar = float(nearest_similarity(unit).median()) if len(unit) > 1 else -1.0
    sims = F.normalize(features.float().cpu(), dim=1) @ unit.T  # (H, k)
    top = sims.topk(min(MAPPED, len(names)), dim=1)
    return [{"hint": text, "applied": bool(values[0] >= bar),
             "concepts": [{"concept": names[i], "similarity": round(float(v), 4)}
                          for v, i in zip(values.tolist(), idx.tolist(), strict=True)]}
            for text, values, idx in zip(texts, top.values, top.indices, strict=True)]  # fmt: skip
