"""The reasons of one answer, from arrays either runtime gives (numpy, no torch): the concepts
a photo shows and its top place is known for, the exact per-concept split of its score and
of its logit gap to the runner-up, and how far apart its candidates lie. The torch explainer
(inference.explainer) and an ONNX bundle's (inference.onnx_explainer) both fill their
explanations here, so that they say the same thing in the same words.

With a concept-aware model the retrieval score is s * cos(a_img, a_loc) over k concepts, so
it splits exactly into per-concept terms s * â_img[c] * â_loc[c] (â: unit-normalised
activations); the gap to the runner-up, s * â_img[c] * (â_loc1[c] - â_loc2[c]), sums exactly
too. Reasons only name concepts the photo shows (positive image activation): a term is also
positive when both activations are negative, which is no reason to name it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from ..geo.distance import haversine_km
from ..geo.geocode import place_names

if TYPE_CHECKING:
    from ..concepts.set import ConceptSet, ConceptWeight
    from .results import Candidate, Explanation, Spread

POOL = 32  # ranked places kept per photo beyond its candidates (the runner-up's first pool)
RUNNER_UP_MIN_KM = 200.0  # the runner-up is the best *other place*, not a neighbouring point
RANKED_DEEP = 200  # photos with no runner-up in their ranked pool have this many ranked (then none)
ZERO_SHOT_PLACE = (
    "concepts the concept set tags with the place's country or continent, "
    "ranked by CLIP similarity to the photo"
)
CONCEPT_AWARE_MODE = "concept-aware checkpoint"


def explanation_mode(concept_aware: bool, retrained_geoclip: bool) -> str:
    """Where the concepts come from, as an explanation's ``mode`` says it."""
    if concept_aware:
        return CONCEPT_AWARE_MODE
    return "GeoCLIP checkpoint, zero-shot concepts" if retrained_geoclip else "zero-shot"


def zero_shot_note(retrained_geoclip: bool) -> str:
    """Why a GeoCLIP model's explanation has no decomposition (a plain run's, or pretrained)."""
    why = ("a plain GeoCLIP checkpoint (train --concepts none)" if retrained_geoclip
           else "no concept-aware checkpoint")  # fmt: skip
    return (
        f"{why}: GeoCLIP's score has no concept decomposition (pass a concept-aware "
        "--checkpoint for why-here, rather-than and --check)"
    )


Floats = npt.NDArray[np.floating[Any]]
Rows = npt.NDArray[np.integer[Any]]


def spread_km(latlon: Floats, held: npt.ArrayLike | None = None) -> list[Spread]:
    """How far apart each photo's top-k candidates (B, k, 2) are: a confidence cue (small =
    consistent); ``held`` (B, k): where 0, no candidate (fewer sites than asked), left out."""
    lat, lon = latlon[..., 0], latlon[..., 1]
    there = np.ones(lat.shape, dtype=bool) if held is None else np.asarray(held) > 0
    pair = haversine_km(lat[:, :, None], lon[:, :, None], lat[:, None], lon[:, None])
    pair = np.where(there[:, :, None] & there[:, None], pair, 0.0)  # distances: 0 is neutral
    others = there[:, 1:].sum(1)
    to_first = pair[:, 0, 1:].sum(1) / np.maximum(others, 1)
    return [{"max_pairwise_km": float(most), "mean_to_top1_km": float(first)}
            for most, first in zip(pair.max((1, 2)), to_first, strict=True)]  # fmt: skip


def first_far(gps: Floats, ranked: Rows, top: Rows) -> tuple[Rows, npt.NDArray[np.bool_]]:
    """Each photo's first gallery row of ``ranked`` (B, m) at least RUNNER_UP_MIN_KM from its
    ``top`` row (B,), and whether it has one (where not, its first ranked row)."""
    top = np.asarray(top)[:, None]
    km = haversine_km(gps[top, 0], gps[top, 1], gps[ranked, 0], gps[ranked, 1])
    far = np.asarray(km) >= RUNNER_UP_MIN_KM
    runner: Rows = np.asarray(ranked)[np.arange(len(ranked)), far.argmax(1)]
    return runner, np.asarray(far.any(1))


def concept_reasons(outs: list[Explanation], concepts: ConceptSet, a_img: Floats, scale: float,
                    top_loc: Floats, runner_loc: Floats, runner: Rows, gps: Floats,
                    rivals: list[bool], known: list[list[ConceptWeight] | None], n: int
                    ) -> tuple[Floats, Floats]:  # fmt: skip
    """Fill each photo's concept-aware reasons: from its (B, k) image activations, the
    logit scale, its top place's and runner-up's unit location activations (B, k each),
    the runner-up's gallery row (``rivals``: whether it has one) and what the top place is
    known for (``known``, None: left out). Returns the per-concept score terms and the
    unit image activations, (B, k) each."""
    unit = a_img / unit_norm(a_img)
    shown = unit > 0
    terms = scale * unit * top_loc
    gap = scale * unit * (top_loc - runner_loc)
    runner_gps = gps[runner].tolist()
    runners = [{"lat": lat, "lon": lon, "place": name, "gallery_index": j, "logit_gap": g}
               for (lat, lon), name, j, g in zip(runner_gps, place_names(runner_gps),
                                                 np.asarray(runner).tolist(),
                                                 gap.sum(1).tolist(), strict=True)]  # fmt: skip
    lists = zip(outs, concepts.top_rows(a_img, n), known,
                concepts.top_rows(terms, n, where=shown),
                concepts.top_rows(gap, 3, where=shown), concepts.top_rows(-gap, 2, where=shown),
                terms.sum(1).tolist(), rivals, runners, strict=True)  # fmt: skip
    for out, photo, place, why, pro, con, score, rival, runner_up in lists:
        out.photo_concepts = photo
        out.photo_concepts_source = "image activations in the learned concept space"
        if place is not None:
            out.place_concepts = place
            out.place_concepts_source = ("location-encoder activations in the learned "
                                         "concept space")  # fmt: skip
        out.score_logit, out.why_here = score, why
        if rival:
            out.rather_than, out.rule = rather_than(out.predictions[0], runner_up, pro, con)
    return terms, unit


def rather_than(top: Candidate, runner: dict[str, Any], pro: list[ConceptWeight],
                con: list[ConceptWeight]) -> tuple[dict[str, Any], str]:  # fmt: skip
    """The contrast with the runner-up, and its IF-THEN rule."""
    gap = runner["logit_gap"]
    for e in con:
        e["weight"] = -e["weight"]
    if pro:
        names = " + ".join(e["concept"] for e in pro[:2])
        rule = (f"IF the photo shows {names} THEN {top.place} rather than "
                f"{runner['place']} (logit gap {gap:+.3g})")  # fmt: skip
    else:
        rule = f"no concept shown in the photo favours {top.place} over {runner['place']}"
    return {"runner_up": runner, "for": pro, "against": con}, rule


def zero_shot_reasons(outs: list[Explanation], concepts: ConceptSet, features: Floats | None,
                      text: Floats | None, note: str, n: int) -> None:  # fmt: skip
    """Fill each photo's CLIP zero-shot concepts, from its (B, D) CLIP features and the
    concepts' unit text embeddings (k, D), and its top place's region tags, ranked by the
    photo (so the list ranks; it is correlational, not the score's reason); ``note`` says
    why there is no decomposition. Without text embeddings only the note."""
    for out in outs:
        out.note = note
    if text is None or features is None:
        return
    photo = (features / unit_norm(features)) @ text.T
    for out, shown in zip(outs, concepts.top_rows(photo, n), strict=True):
        out.photo_concepts = shown
        out.photo_concepts_source = "CLIP zero-shot image-text similarity"
    if concepts.regions:  # the place's region tags, ranked by how much the photo shows each
        tops: list[Candidate] = [out.predictions[0] for out in outs]
        w = np.stack([concepts.place_weights(t.lat, t.lon) for t in tops])
        tagged = np.where(w > 0, photo, -np.inf)
        for out, known in zip(outs, concepts.top_rows(tagged, n), strict=True):
            out.place_concepts = known
            out.place_concepts_source = ZERO_SHOT_PLACE


def unit_norm(rows: Floats) -> Floats:
    """(B, 1) norms of (B, D) rows, at least 1e-12 (as torch's F.normalize): a zero row stays
    zero, not NaN."""
    norm: Floats = np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
    return norm
