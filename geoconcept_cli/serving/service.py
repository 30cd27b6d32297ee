"""A warm geo-localization service: models loaded once, then many photos and texts answered.

This is everything `geoconcept serve` answers, with no HTTP in it, so a notebook can hold one
too. A photo's answer is the CLI's own JSON (``Predictor.describe_features`` for predict,
``Explainer.explain_features`` for explain: one schema, one piece of code) plus a ``map`` part
for the page: the most probable places as heatmap points, named, and the true location with
the error when the photo's EXIF records one.

Model calls hold one lock. On a CPU torch already spreads one photo over every core, so
running two at once only makes both slower; decoding and resizing uploads, naming the
heatmap's places and writing JSON stay outside it, so concurrent clients overlap those.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from functools import cached_property
from typing import Any

import torch

from ..errors import GeoconceptError
from ..gallery.store import load_gallery
from ..inference.album import locate_album, name_concepts
from ..inference.explainer import Explainer
from ..inference.locator import Locator
from ..inference.readout import HEAT_POINTS
from ..inference.request import Request
from ..io.images import decode_image
from .photo_answers import DECODING_AT_ONCE, Photo, heat_names, photo_map, world_cells


class GeoService:
    """One explainer (and its predictor) answering photos and texts, one model call at a time."""

    def __init__(self, explainer: Explainer):
        self.explainer = explainer
        self.predictor = explainer.predictor
        self._lock = threading.Lock()
        self._decoding = threading.BoundedSemaphore(DECODING_AT_ONCE)
        self._locator_lock = threading.Lock()
        self._locator: Locator | None = None

    @property
    def locator(self) -> Locator:
        """`where` over the same model; a concept-aware head's gallery activations are computed
        on the first text query, not at start-up, and once however many queries arrive."""
        with self._locator_lock:
            if self._locator is None:
                names = self.explainer.concepts.names if self.explainer.concept_aware else None
                with self._lock:
                    self._locator = Locator(self.predictor, names,
                                            plain_run=self.explainer.retrained_geoclip)  # fmt: skip
            return self._locator

    def health(self) -> dict[str, Any]:
        """What is loaded: the mode, the CLIP model, the gallery and the concept set."""
        p, e = self.predictor, self.explainer
        mode = "concept-aware checkpoint" if e.concept_aware else (
            "GeoCLIP checkpoint" if e.retrained_geoclip else "zero-shot")  # fmt: skip
        clip = p.clip.identity if p.clip is not None else None
        return {
            "status": "ok", "mode": mode,
            "clip_model": clip.model if clip else None,
            "clip_pretrained": clip.pretrained if clip else None,
            "gallery_size": len(p.gallery_gps), "places": len(p.places),
            "concepts": len(e.concepts.names), "calibrated": p.calibration is not None,
            "device": str(p.device), "runtime": "torch",
        }  # fmt: skip

    @cached_property
    def world(self) -> list[list[float]]:
        """GeoCLIP's 100K gallery as the page's world grid (photo_answers.world_cells)."""
        return world_cells(load_gallery().numpy())

    def check(self, request: Request) -> None:
        """What the model cannot answer (a deletion check without concepts, a level without a
        calibration), refused before the upload is read."""
        self.explainer.refuse(request)
        self.predictor.abstain_level(request)

    def check_album(self, request: Request) -> None:
        """Every album the torch runtime is asked is answerable (locate_album refuses what
        is not, such as a limit with no place inside, once the photos are read)."""

    def _features(self, photo: Photo) -> torch.Tensor:
        """CLIP features of a photo: decoded and preprocessed outside the lock (no weights)."""
        clip = self.predictor.clip
        if clip is None:
            raise GeoconceptError("this predictor has no CLIP backbone to read photos with")
        with self._decoding:
            pixels = torch.stack([clip.preprocess(decode_image(photo.data, photo.name))])
        with self._lock:
            return clip.encode_images(pixels)

    def predict(self, photo: Photo, request: Request = Request()) -> dict[str, Any]:
        """``geoconcept predict --json`` of one photo, plus its map."""
        feats = self._features(photo)
        with self._lock:
            answer = self.predictor.predict_features(feats, replace(request, heat=True),
                                                     image=photo.name)  # fmt: skip
        return {**answer.to_json(), "map": photo_map(answer.heat, answer.predictions, photo)}

    def explain(self, photo: Photo, request: Request = Request()) -> dict[str, Any]:
        """``geoconcept explain --json`` of one photo, plus its map."""
        self.check(request)  # before the photo is read
        feats = self._features(photo)
        with self._lock:
            answer = self.explainer.explain_features(feats, replace(request, heat=True),
                                                     image=photo.name)  # fmt: skip
        return {**answer.to_json(), "map": photo_map(answer.heat, answer.predictions, photo)}

    def album(self, photos: list[Photo], request: Request = Request()) -> dict[str, Any]:
        """``geoconcept predict DIR --together --json`` of uploaded photos, plus a map of the
        joint answer and each photo's own top place."""
        feats = torch.cat([self._features(photo) for photo in photos])
        with self._lock:
            answer = name_concepts(locate_album(self.predictor, feats,
                                                [ph.name for ph in photos], request),
                                   self.explainer, feats)  # fmt: skip
        heat = [[ph["lat"], ph["lon"], 1.0] for ph in answer.photos]  # each photo's own answer
        return {**answer.to_json(), "map": {"heat": heat, "names": heat_names(heat)}}

    def where(self, text: str, request: Request = Request(top_k=10)) -> dict[str, Any]:
        """``geoconcept where --json`` of a text, plus its heatmap (scores, not probabilities,
        for a concept axis)."""
        locator = self.locator
        with self._lock:
            answer = locator.where(text, request)
            heat = self.predictor.limited(request.limits).strongest(answer.scores, HEAT_POINTS)
        return {**answer.to_json(), "map": {"heat": heat, "names": heat_names(heat)}}
