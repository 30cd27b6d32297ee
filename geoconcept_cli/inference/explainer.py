"""`explain`: where a photo was taken, and why, from the model's own computation.

With a concept-aware checkpoint the retrieval score splits exactly into per-concept terms
(inference.reasons: what is said, shared with an ONNX bundle's explainer). "Why here" lists
the largest terms; "rather than" splits the logit gap to the runner-up. The faithfulness
check removes the top explaining concepts from the photo's representation and compares the
fall of the predicted place's score and rank with removing random concepts (`faithfulness`).

Without a checkpoint (GeoCLIP's 512-d space has no concept axes) the photo's concepts are
CLIP's zero-shot image-text similarities, the place's are the concepts the concept set tags
with its country or continent, ranked by the photo's similarity to each, and no decomposition
is claimed.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from ..concepts.set import ConceptSet, ConceptWeight
from ..errors import GeoconceptError
from ..io.images import load_image
from ..model.concept_head import ConceptAwareHead
from .hints import map_hints
from .predictor import Predictor
from .reasons import (
    RANKED_DEEP,
    concept_reasons,
    explanation_mode,
    first_far,
    spread_km,
    zero_shot_note,
    zero_shot_reasons,
)
from .request import Request, say_if_capped
from .results import Explanation
from .sites import Rank, Ranked

FAITHFUL_SHARE = 0.95  # the explanation's removal must hurt more than 95% of random removals


def refuse_check(request: Request, concepts: int | None, model: str) -> None:
    """The deletion check's refusals, said the same way before anything loads
    (``factory.check_request``) and by the library: it needs a concept-aware run (``concepts``
    its number of concepts; None for ``model``, which has none) and fewer concepts removed."""
    if concepts is None:
        raise GeoconceptError(f"--check tests the concepts of a concept-aware run's score; "
                              f"{model} has no concepts: give a concept-aware "
                              "--checkpoint")  # fmt: skip
    if not 1 <= request.m < concepts:
        raise GeoconceptError(f"--m {request.m}: must be between 1 and {concepts - 1} (the "
                              f"run has {concepts} concepts)")  # fmt: skip


def faithfulness(top_drop: float, top_rank: int, rand_drops: npt.ArrayLike,
                 rand_ranks: npt.ArrayLike) -> dict[str, Any]:  # fmt: skip
    """Verdict of the deletion test: is removing the explaining concepts worse than chance?

    Faithful when the score falls (top_drop > 0), by more than under at least FAITHFUL_SHARE
    of the random draws, *and* the place ends at least as far down the ranking as under the
    median random draw. Beating the random mean is not enough: random removals that raise the
    score pull the mean down, so an explanation that most draws beat could pass it.
    """
    rand_drops, rand_ranks = np.asarray(rand_drops, float), np.asarray(rand_ranks, float)
    share = float(np.mean(top_drop > rand_drops))
    unmet = [why for why, met in (
        ("the score does not fall", top_drop > 0),
        (f"it beats fewer than {FAITHFUL_SHARE:.0%} of the draws", share >= FAITHFUL_SHARE),
        ("the place stays higher in the ranking than under the median draw",
         top_rank >= float(np.median(rand_ranks))),
    ) if not met]  # fmt: skip
    return {
        "random_concepts_removed": {
            "score_drop": float(rand_drops.mean()), "score_drop_std": float(rand_drops.std()),
            "rank_after": float(rand_ranks.mean()),
            "rank_after_median": float(np.median(rand_ranks)),
        },
        "beats_random_share": share,
        "faithful": not unmet,
        "unmet": unmet,
    }  # fmt: skip


def remove_concepts(z: torch.Tensor, basis: torch.Tensor, concepts: torch.Tensor) -> torch.Tensor:
    """``z`` minus its least-squares component in the span of the given basis rows."""
    rows = basis[concepts]
    coef: torch.Tensor = torch.linalg.lstsq(rows.T, z.unsqueeze(1)).solution
    return z - (rows.T @ coef).squeeze(1)


class Explainer:
    """Explanations for one predictor and concept set (see the module docstring)."""

    def __init__(
        self,
        predictor: Predictor,
        concepts: ConceptSet,
        text_embeddings: torch.Tensor | None = None,
        retrained_geoclip: bool = False,
    ):
        self.predictor = predictor
        self.concepts = concepts
        self.concept_aware = isinstance(predictor.head, ConceptAwareHead)
        self.retrained_geoclip = retrained_geoclip  # a `train --concepts none` checkpoint
        self.text = F.normalize(text_embeddings.float(), dim=1) if text_embeddings is not None \
            else None  # fmt: skip

    def steered(self, request: Request) -> Explainer:
        """This explainer as ``request`` steers it (Predictor.steered: its limits and hints):
        a view over the steered predictor (itself where nothing steers)."""
        if request.limits == self.predictor.limits and not request.hints:
            return self
        view = copy.copy(self)
        view.predictor = self.predictor.steered(request)
        return view

    def map_hints(self, request: Request) -> tuple[Request, list[dict[str, Any]] | None]:
        """The request with only the hints that map onto a concept (hints.map_hints), and
        what each maps onto; the request as it is where it has no hints."""
        if not request.hints:
            return request, None
        head = self.predictor.head
        if isinstance(head, ConceptAwareHead):
            directions = head.basis.detach()
        elif self.text is not None:
            directions = self.text
        else:  # no concept embeddings to map onto: the hints are applied as given
            return request, [{"hint": h, "applied": True, "concepts": []} for h in request.hints]
        mapped = map_hints(self.predictor.hint_features(request.hints), request.hints,
                           directions, self.concepts.names)  # fmt: skip
        kept = tuple(m["hint"] for m in mapped if m["applied"])
        return replace(request, hints=kept), mapped

    def refuse(self, request: Request) -> None:
        """Refuse what this explainer cannot answer (:func:`refuse_check`), before any work."""
        if request.check:
            model = "a plain GeoCLIP run" if self.retrained_geoclip else "pretrained GeoCLIP"
            refuse_check(request, len(self.concepts.names) if self.concept_aware else None, model)

    def explain(self, photo: str | Path, request: Request = Request()) -> Explanation:
        """Explain one photo file (GeoconceptError on an unreadable file)."""
        feats = self.predictor.image_features([load_image(photo)])
        return self.explain_features(feats, request, image=str(photo))

    @property
    def gallery_points(self) -> npt.NDArray[np.float64]:
        """The (N, 2) gallery points the explanations are over, as an array (for a map)."""
        return self.predictor.gallery_gps.numpy().astype(np.float64)

    @property
    def mode(self) -> str:
        """Where the concepts come from, as the JSON's ``mode`` says it."""
        return explanation_mode(self.concept_aware, self.retrained_geoclip)

    def explain_features(self, feats: torch.Tensor, request: Request = Request(),
                         image: str | None = None) -> Explanation:  # fmt: skip
        """The full explanation of one photo's CLIP features (1, D), ``image`` naming it: its
        :meth:`explain_batch`, with the confidence and conformal region of a calibrated model
        and, if the request asks, the heatmap."""
        p = self.steered(self.map_hints(request)[0]).predictor
        out = self.explain_batch(feats, request)[0]
        out.image = image
        out.confidence = p.confidence(feats, request)
        if p.calibration is not None:
            out.region = p.regions(feats)[0]
        if request.heat:
            out.heat = p.heat(feats)
        return out

    @torch.no_grad()
    def explain_batch(self, feats: torch.Tensor, request: Request = Request(),
                      rank: Rank | None = None, place_concepts: bool = True
                      ) -> list[Explanation]:  # fmt: skip
        """Explanations of many photos' CLIP features (B, D), each step taken for all of them at
        once (a batch costs about its ranking). ``rank(feats, k)``: their k most probable places
        as (probabilities, gallery rows), each (B, k); ``Predictor.topk`` by default. Without
        ``place_concepts`` a concept-aware explanation leaves out what the top place is known
        for: a location-encoder pass per distinct top place, for rows that do not show it.
        No conformal region: :meth:`explain_features` adds one photo's. Within the request's
        limits, ``rank`` must rank within them too (a limited predictor's or scorer's)."""
        self.refuse(request)
        request, mapped = self.map_hints(request)
        outs = self.steered(request)._explain_batch(feats, request, rank, place_concepts)
        if mapped is not None:
            p = self.steered(request).predictor
            tops = torch.tensor([o.predictions[0].gallery_index for o in outs])
            gains: list[list[dict[str, Any]]] = [[] for _ in outs]  # no hint applied
            if request.hints:
                gains = p.hint_gains(feats, tops, p.hint_features(request.hints), request.hints,
                                     request.hint_weight)  # fmt: skip
            for out, gained in zip(outs, gains, strict=True):
                by_hint = {g["hint"]: g for g in gained}
                out.hints = [{**m, **by_hint.get(m["hint"], {})} for m in mapped]
        return outs

    def _explain_batch(self, feats: torch.Tensor, request: Request, rank: Rank | None,
                       place_concepts: bool) -> list[Explanation]:  # fmt: skip
        """:meth:`explain_batch` by this (steered) explainer."""
        p, top_k = self.predictor, request.top_k
        say_if_capped("--top-k", top_k, p.place_count, "places in the gallery")
        say_if_capped("--concepts-shown", request.concepts_shown, len(self.concepts.names),
                      "concepts in the set")  # fmt: skip
        rank = rank or p.topk
        ranked = p.ranked(feats, top_k, request.merge_km, rank)
        cands = p.candidate_rows(ranked)
        spreads = spread_km(p.gallery_gps[ranked.rows].numpy(), ranked.points.numpy())
        note = p.calibration_note()
        outs = [Explanation(mode=self.mode, predictions=row, merge_km=request.merge_km,
                            spread=spread, probabilities=dict(note))
                for row, spread in zip(cands, spreads, strict=True)]  # fmt: skip
        if self.concept_aware:
            terms, unit = self._decompose(outs, feats, ranked, request.concepts_shown,
                                          place_concepts, rank)  # fmt: skip
            if request.check:
                for i, out in enumerate(outs):
                    out.check = self._check(feats[i : i + 1], terms[i], unit[i],
                                            cands[i][0].gallery_index, request)  # fmt: skip
        else:
            self._zero_shot(outs, feats, request.concepts_shown)
        return outs

    def _decompose(
        self,
        outs: list[Explanation],
        feats: torch.Tensor,
        ranked: Ranked,
        n: int,
        place_concepts: bool,
        rank: Rank,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Fill each photo's explanation of a batch ranked by ``rank`` (``ranked``) with its
        concept reasons (reasons.concept_reasons); returns the per-concept terms and unit
        image activations, (B, k) each."""
        head, p, cs = self.predictor.head, self.predictor, self.concepts
        assert isinstance(head, ConceptAwareHead)  # called for a concept-aware head only
        a_img = head.image_concepts(feats.to(p.device).float()).cpu()
        top = ranked.rows[:, 0]  # the gallery rows of the top candidates
        runner, rivals = self._runner_ups(feats, top, ranked.pool, rank)
        known: list[list[ConceptWeight] | None] = [None] * len(top)
        if place_concepts:
            places, each = top.unique(return_inverse=True)  # photos often share a top place
            gps = p.gallery_gps[places].to(p.device)
            rows = cs.top_rows(head.location_concepts(gps).cpu(), n)
            known = [rows[j] for j in each.tolist()]
        terms, unit = concept_reasons(
            outs, cs, a_img.numpy(), float(head.logit_scale.exp()),
            p.gallery_emb[top].float().cpu().numpy(), p.gallery_emb[runner].float().cpu().numpy(),
            runner.numpy(), p.gallery_gps.numpy(), rivals, known, n)  # fmt: skip
        return torch.from_numpy(terms), torch.from_numpy(unit)

    def _runner_ups(self, feats: torch.Tensor, top: torch.Tensor, idx: torch.Tensor,
                    rank: Rank) -> tuple[torch.Tensor, list[bool]]:  # fmt: skip
        """Each photo's runner-up (reasons.first_far from its top candidate's row ``top``,
        (B,)) in its ranked ``idx`` (B, >= 1) or, for photos with none there (a few: their
        top places are neighbours), among their RANKED_DEEP most probable places by the same
        ``rank``; and whether it has one."""
        gps = self.predictor.gallery_gps.numpy()
        runner, found = first_far(gps, idx.numpy(), top.numpy())
        deeper = min(RANKED_DEEP, self.predictor.place_count) > idx.shape[1]
        if deeper and not found.all():
            rows = np.flatnonzero(~found)
            deep = rank(feats[torch.from_numpy(rows)], RANKED_DEEP)[1]
            runner[rows], found[rows] = first_far(gps, deep.numpy(), top.numpy()[rows])
        return torch.from_numpy(runner), cast(list[bool], found.tolist())

    def _check(self, feats: torch.Tensor, terms: torch.Tensor, unit: torch.Tensor,
               target: int, request: Request) -> dict[str, Any]:  # fmt: skip
        """Deletion test in the photo's latent: project out the concepts' text directions.

        The photo's unit vector z loses its components along the removed concepts' basis
        rows (B_m), then every activation is recomputed: correlated concepts move too, so the
        outcome is not fixed by the decomposition that chose the concepts.
        """
        head, p = self.predictor.head, self.predictor
        assert isinstance(head, ConceptAwareHead)  # called for a concept-aware head only
        k, m, draws = len(unit), request.m, request.draws
        z = head.image_latent(feats.to(p.device).float())[0]
        basis = head.basis
        scale = head.logit_scale.exp()

        def after_removing(concepts: torch.Tensor) -> tuple[float, int]:
            a = remove_concepts(z, basis, concepts) @ basis.T
            logits = p.mask_(scale * p.gallery_cosines(F.normalize(a, dim=0)[None]))[0]
            score = float(logits[target])
            return score, int((logits[p.places] > score).sum()) + 1  # rank among places

        base = float(scale * unit.to(p.device) @ p.gallery_emb[target].float())
        shown_terms = torch.where(unit > 0, terms, torch.tensor(-torch.inf))
        top_score, top_rank = after_removing(shown_terms.argsort(descending=True)[:m])
        gen = torch.Generator().manual_seed(request.seed)
        rand = [after_removing(torch.randperm(k, generator=gen)[:m]) for _ in range(draws)]
        return {
            "m": m, "draws": draws, "score_before": base,
            "top_concepts_removed": {"score_drop": base - top_score, "rank_after": top_rank},
            **faithfulness(base - top_score, top_rank, [base - s for s, _ in rand],
                           [r for _, r in rand]),
        }  # fmt: skip

    def _zero_shot(self, outs: list[Explanation], feats: torch.Tensor, n: int) -> None:
        """Fill each photo's CLIP zero-shot concepts and its top place's region tags
        (reasons.zero_shot_reasons)."""
        text = self.text.numpy() if self.text is not None else None
        zero_shot_reasons(outs, self.concepts, feats.float().cpu().numpy(), text,
                          zero_shot_note(self.retrained_geoclip), n)  # fmt: skip
