"""A warm service over an ONNX bundle (export --onnx): `serve --runtime onnx` with no torch.

It answers /predict and /explain as the torch GeoService does (the CLI's JSON plus the map),
from inference.onnx_runtime and onnx_explainer; albums, `where` and hints need CLIP's text
tower or joint scoring and stay on torch, refused in one line (a 400). Only the graph's run
holds the lock: onnxruntime spreads one photo over the cores, and the scoring after it is
numpy over the gallery, which concurrent requests can share.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from functools import cached_property
from typing import Any, NoReturn

import numpy as np
import numpy.typing as npt

from ..errors import GeoconceptError
from ..inference.onnx_explainer import OnnxExplainer
from ..inference.onnx_runtime import TORCH_ONLY
from ..inference.request import Request
from ..io.images import decode_image
from .photo_answers import DECODING_AT_ONCE, Photo, photo_map, world_cells


class OnnxService:
    """One ONNX bundle's explainer (and its predictor) answering photos."""

    def __init__(self, explainer: OnnxExplainer):
        self.explainer = explainer
        self.predictor = explainer.predictor
        self._lock = threading.Lock()
        self._decoding = threading.BoundedSemaphore(DECODING_AT_ONCE)

    def health(self) -> dict[str, Any]:
        """What is loaded, as GeoService.health says it, with the runtime."""
        p, e = self.predictor, self.explainer
        clip = p.config.get("clip") or {}
        return {
            "status": "ok", "mode": e.mode, "clip_model": clip.get("model"),
            "clip_pretrained": clip.get("pretrained"), "gallery_size": len(p.gps),
            "places": len(p.places), "concepts": len(e.concepts.names),
            "calibrated": p.calibration is not None, "device": "cpu",
            "runtime": "onnx-int8" if p.int8 else "onnx",
        }  # fmt: skip

    @cached_property
    def world(self) -> list[list[float]]:
        """The bundle's gallery as the page's world grid (photo_answers.world_cells)."""
        return world_cells(self.predictor.gps)

    def check(self, request: Request) -> None:
        """What the bundle cannot answer, refused before the upload is read."""
        self.explainer.refuse(request)

    def _outputs(self, photo: Photo) -> list[npt.NDArray[np.float32]]:
        """The graph's outputs for one photo: decoded and preprocessed outside the lock."""
        with self._decoding:
            pixels = self.predictor.pixels(decode_image(photo.data, photo.name))
        with self._lock:
            return self.predictor.outputs(pixels)

    def predict(self, photo: Photo, request: Request = Request()) -> dict[str, Any]:
        """``geoconcept predict --json`` of one photo, plus its map."""
        self.predictor.refuse(request)
        query = self._outputs(photo)[0][0]
        answer = self.predictor.predict_query(query, replace(request, heat=True), photo.name)
        return {**answer.to_json(), "map": photo_map(answer.heat, answer.predictions, photo)}

    def explain(self, photo: Photo, request: Request = Request()) -> dict[str, Any]:
        """``geoconcept explain --json`` of one photo, plus its map."""
        self.check(request)
        query, second = (out[0] for out in self._outputs(photo))
        answer = self.explainer.explain_outputs(query, second, replace(request, heat=True),
                                                photo.name)  # fmt: skip
        return {**answer.to_json(), "map": photo_map(answer.heat, answer.predictions, photo)}

    def check_album(self, request: Request) -> NoReturn:
        """Albums stay on torch: refused before the uploads are read."""
        raise GeoconceptError(f"albums: {TORCH_ONLY}")

    def album(self, photos: list[Photo], request: Request = Request()) -> NoReturn:
        self.check_album(request)

    def where(self, text: str, request: Request = Request()) -> NoReturn:
        raise GeoconceptError("where: CLIP's text tower is not in the bundle; the torch runtime "
                              "answers it (leave out --runtime)")  # fmt: skip
