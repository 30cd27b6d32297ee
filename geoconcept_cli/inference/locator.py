"""`where`: where on Earth a text or a concept points, over the gallery.

Three modes, and the output says which:
- zero-shot (no checkpoint, or a plain GeoCLIP run): the text's CLIP embedding, prompt-
  ensembled as ``embed-concepts`` does, goes through the image MLP as if it were a photo and
  is scored over the gallery (the text query of the GeoCLIP paper). Approximate: CLIP's text
  and image embeddings sit apart (the modality gap), and the MLP was trained on images;
- a concept of a concept-aware run: that concept's location activation over the gallery, the
  model's own concept axis (exact);
- other text with a concept-aware run: the text's similarity to each of the run's concepts
  weights their location activations (the text projected onto the concept basis).
Places are gallery points within the request's ``merge_km`` merged (inference.sites), scored
by their summed probability (zero-shot) or their best point's activation (concept modes);
countries aggregate probability or average activation over their gallery points.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F

from ..errors import GeoconceptError
from ..geo.geocode import place_names
from ..model.concept_head import ConceptAwareHead, location_latents
from .predictor import Predictor
from .request import Request, say_if_capped
from .results import WhereAnswer

ZERO_SHOT_NOTE = ("approximate: the text's CLIP embedding is scored as if it were a photo's, "
                  "and CLIP's text and image embeddings sit apart (the modality gap)")  # fmt: skip


class Locator:
    """Answers `where` queries for one predictor, keeping what every query reuses: the
    gallery's countries and, for a concept-aware head, its concept activations."""

    def __init__(self, predictor: Predictor, concepts: list[str] | None = None,
                 progress: Callable[[int, int], None] | None = None,
                 plain_run: bool = False):  # fmt: skip
        self.predictor = predictor
        self.concepts = concepts if isinstance(predictor.head, ConceptAwareHead) else None
        self.plain_run = plain_run  # a `train --concepts none` head: zero-shot, labelled so
        self.acts = None  # (N, k) every concept over the gallery, for the concept modes
        if self.concepts is not None and isinstance(predictor.head, ConceptAwareHead):
            latents = location_latents(predictor.head, predictor.gallery_gps, progress=progress)
            self.acts = latents @ predictor.head.basis.detach().cpu().T

    @staticmethod
    def _places(p: Predictor, scores: torch.Tensor, request: Request, total: bool
                ) -> list[dict[str, Any]]:  # fmt: skip
        """The top places of (N,) ``scores`` inside ``p``'s limits, points within
        ``request.merge_km`` merged: a place scores its points' sum (``total``, for
        probabilities) or its best point's."""
        ranked = p.rank_scores(scores[None], request.top_k, request.merge_km, total)
        found = ranked.points[0] > 0
        picked, held = ranked.rows[0][found], ranked.points[0][found]
        points = p.gallery_gps[picked].tolist()
        rows_out = zip(ranked.probs[0][found].tolist(), picked.tolist(), points,
                       place_names(points), held.tolist(), strict=True)  # fmt: skip
        return [{"rank": rank, "lat": float(lat), "lon": float(lon), "score": round(value, 6),
                 "gallery_index": int(i), "place": name, "points": n}
                for rank, (value, i, (lat, lon), name, n)
                in enumerate(rows_out, start=1)]  # fmt: skip

    @staticmethod
    def _countries(p: Predictor, scores: torch.Tensor, how: str, k: int
                   ) -> list[dict[str, Any]]:  # fmt: skip
        inside = slice(None) if p.allowed is None else p.allowed.cpu().numpy()
        series = pd.Series(scores.double().numpy()[inside], index=p.gallery_countries[inside])
        agg = series.groupby(level=0).sum() if how == "sum" else series.groupby(level=0).mean()
        agg = agg.drop(index="", errors="ignore").sort_values(ascending=False)
        return [{"country": c, "score": round(float(v), 6)} for c, v in agg.head(k).items()]

    @torch.no_grad()
    def where(self, text: str, request: Request = Request(top_k=10)) -> WhereAnswer:
        """Where ``text`` points: the top ``request.top_k`` places and ``request.countries``
        countries, and the score of every gallery row."""
        text = text.strip()
        if not text:
            raise GeoconceptError('give a text to locate, e.g. geoconcept where "rice terraces"')
        p = self.predictor.limited(request.limits)
        say_if_capped("--top-k", request.top_k, p.place_count, "places in the gallery")
        if self.acts is not None and self.concepts is not None:
            lowered = [c.lower() for c in self.concepts]
            if text.lower() in lowered:
                scores = self.acts[:, lowered.index(text.lower())]
                mode = "concept axis"
                note = "exact: the run's own location activation of this concept"
            else:
                head = p.head
                assert isinstance(head, ConceptAwareHead)  # self.acts: a concept-aware head
                feats = p.text_features(text).to(head.delta.device)
                weights = F.normalize(feats.float(), dim=1)[0] @ F.normalize(head.basis, dim=1).T
                scores = self.acts @ weights.cpu()
                mode = "projected onto the concept basis"
                note = (
                    f"not a concept of this run: its similarity to each of the "
                    f"{len(self.concepts)} concepts weights their activations"
                )
            if p.allowed is not None:  # outside the limits: no score (probabilities are 0)
                scores = scores.masked_fill(~p.allowed.cpu(), -torch.inf)
                note += f"; only places inside {p.limits.describe()}"
            return WhereAnswer(
                query=text,
                mode=mode,
                note=note,
                score="activation",
                merge_km=request.merge_km,
                places=self._places(p, scores, request, total=False),
                scores=scores,
                countries=self._countries(p, scores, "mean", request.countries),
            )
        scores = p.probabilities(p.text_features(text))[0].cpu()
        note = (
            "a plain GeoCLIP run (train --concepts none) has no concept axes; "
            if self.plain_run
            else ""
        ) + ZERO_SHOT_NOTE
        return WhereAnswer(
            query=text,
            mode="zero-shot text as image",
            note=note,
            score="probability",
            probabilities=p.calibration_note(),
            merge_km=request.merge_km,
            places=self._places(p, scores, request, total=True),
            scores=scores,
            countries=self._countries(p, scores, "sum", request.countries),
        )
