"""`explain` from an ONNX bundle (export --onnx) with numpy and onnxruntime, no torch.

The bundle's graph gives a photo's query vector and, beside it, a concept-aware model's image
concept activations (or, for GeoCLIP, the CLIP features); the gallery holds each place's unit
location activations (its embedding) and their norm. That is all the decomposition needs: the
score's per-concept terms, the gap to the runner-up and what the top place is known for are
products of those vectors, said by inference.reasons as the torch explainer says them. The
deletion check (--check) re-runs the model on an edited latent and stays on torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ..concepts.set import ConceptSet, ConceptWeight
from ..errors import GeoconceptError
from ..io.images import load_image
from .onnx_runtime import CONCEPTS, CONCEPTS_JSON, TORCH_ONLY, OnnxPredictor, Scored
from .reasons import (
    POOL,
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


class OnnxExplainer:
    """Explanations of one photo from an ONNX bundle's predictor (module docstring)."""

    def __init__(self, predictor: OnnxPredictor):
        self.predictor = p = predictor
        config = p.config
        outputs = config["graph"].get("outputs", [])
        if len(outputs) < 2 or CONCEPTS_JSON not in config["files"] or not isinstance(
                config.get("logit_scale"), float):  # fmt: skip
            raise GeoconceptError(f"{p.folder}: exported before bundles explained (no concept "
                                  "outputs); export --onnx again")  # fmt: skip
        self.concept_aware = config.get("kind") == "concept-aware"
        self.retrained_geoclip = bool(config.get("retrained_geoclip"))
        self.concepts = ConceptSet(**self._concept_set())
        self.text: npt.NDArray[np.float32] | None = None
        if not self.concept_aware and CONCEPTS in config["files"]:
            self.text = self._text()
        if self.concept_aware and p.place_concept_norms is None:
            raise GeoconceptError(f"{p.folder}: a concept-aware bundle without its places' "
                                  "concept norms; export --onnx again")  # fmt: skip
        self.scale = float(config["logit_scale"])

    def _concept_set(self) -> dict[str, Any]:
        """concepts.json, checked against its hash, as ConceptSet's fields."""
        p = self.predictor
        p.check_file(CONCEPTS_JSON)
        try:
            data = json.loads((p.folder / CONCEPTS_JSON).read_text())
            fields = {k: data[k] for k in ("names", "categories", "subcategories", "regions")}
            if len({len(fields[k]) for k in ("names", "categories", "subcategories")}) != 1:
                raise ValueError("lists of different lengths")
        except (OSError, ValueError, KeyError, TypeError):
            raise GeoconceptError(f"{p.folder / CONCEPTS_JSON}: damaged; export the bundle "
                                  "again") from None  # fmt: skip
        return fields

    def _text(self) -> npt.NDArray[np.float32]:
        """concepts.safetensors' text embeddings, one per concept of concepts.json."""
        from safetensors.numpy import load_file

        p = self.predictor
        p.check_file(CONCEPTS)
        try:
            text = load_file(str(p.folder / CONCEPTS))["text"]
        except Exception:  # safetensors' own errors, or the array missing: damaged
            text = None
        if text is None or text.shape[0] != len(self.concepts.names):
            raise GeoconceptError(f"{p.folder / CONCEPTS}: not the text embeddings of "
                                  f"{CONCEPTS_JSON}'s concepts; export the bundle "
                                  "again")  # fmt: skip
        return text

    @property
    def gallery_points(self) -> npt.NDArray[np.float64]:
        """The bundle's (N, 2) gallery points (for a map)."""
        return self.predictor.gps.astype(np.float64)

    @property
    def mode(self) -> str:
        """Where the concepts come from, as the torch explainer says it."""
        return explanation_mode(self.concept_aware, self.retrained_geoclip)

    def refuse(self, request: Request) -> None:
        """One line for what a bundle cannot explain, before the photo is read."""
        if request.check:
            raise GeoconceptError(f"--check: {TORCH_ONLY}")
        self.predictor.refuse(request)

    def explain(self, photo: str | Path, request: Request = Request()) -> Explanation:
        """Explain one photo file (GeoconceptError on an unreadable file)."""
        self.refuse(request)
        p = self.predictor
        query, second = p.outputs(p.pixels(load_image(photo)))
        return self.explain_outputs(query[0], second[0], request, image=str(photo))

    def explain_outputs(self, query: npt.NDArray[np.float32], second: npt.NDArray[np.float32],
                        request: Request = Request(), image: str | None = None
                        ) -> Explanation:  # fmt: skip
        """:meth:`explain` of one photo's graph outputs: its query vector (D,) and its concept
        activations (k,) or CLIP features."""
        self.refuse(request)
        p, n = self.predictor, request.concepts_shown
        say_if_capped("--concepts-shown", n, len(self.concepts.names), "concepts in the set")
        prediction, scored = p.answer(query, request, image)
        cands = prediction.predictions
        rows = np.asarray([c.gallery_index for c in cands])
        out = Explanation(image=image, mode=self.mode, predictions=cands,
                          merge_km=request.merge_km,
                          spread=spread_km(p.gps[rows][None])[0],
                          probabilities=dict(prediction.probabilities),
                          confidence=prediction.confidence, region=prediction.region,
                          heat=prediction.heat)  # fmt: skip
        if self.concept_aware:
            self._decompose(out, second[None], rows[:1], scored, request)
        else:
            zero_shot_reasons([out], self.concepts, second[None], self.text,
                              zero_shot_note(self.retrained_geoclip), n)  # fmt: skip
        return out

    def _decompose(self, out: Explanation, a_img: npt.NDArray[np.float32],
                   top: npt.NDArray[np.int64], scored: Scored, request: Request
                   ) -> None:  # fmt: skip
        """Fill the concept reasons (reasons.concept_reasons) of the photo's (1, k)
        activations and its top row: its runner-up is the first place RUNNER_UP_MIN_KM away
        among its most probable places inside the limits, as deep as the torch explainer
        looks (its pool: POOL places, or top-k of them per point; then RANKED_DEEP)."""
        p, n = self.predictor, request.concepts_shown
        assert p.place_concept_norms is not None  # __init__ refuses a bundle without
        places = p.places if scored.allowed is None else p.places[scored.allowed[p.places]]
        pool = max(request.top_k, POOL) if request.merge_km <= 0 else POOL
        depth = min(max(pool, RANKED_DEEP), len(places))
        ranked = places[np.argsort(-scored.probs[places], kind="stable")[:depth]]
        runner, found = first_far(p.gps, ranked[None], top)
        top_place = p.place_of_row[top]
        top_loc = p.place_emb[top_place]
        known: list[list[ConceptWeight] | None] = [
            *self.concepts.top_rows(top_loc * p.place_concept_norms[top_place, None], n)
        ]
        concept_reasons([out], self.concepts, a_img, self.scale, top_loc,
                        p.place_emb[p.place_of_row[runner]], runner, p.gps,
                        found.tolist(), known, n)  # fmt: skip
