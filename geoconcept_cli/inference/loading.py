"""Which runtime answers a ModelSpec's photos: torch (inference.factory: every command), or an
exported model's ONNX graph (inference.onnx_runtime and onnx_explainer: predict, explain and
serve one photo at a time, with no torch loaded). The choice is the spec's ``runtime``; this
module imports neither runtime until it is chosen."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import numpy.typing as npt

from ..errors import GeoconceptError
from ..model.spec import RUNTIMES, ModelSpec
from ..runtime.progress import Report, silent

if TYPE_CHECKING:
    from .onnx_runtime import OnnxPredictor
    from .request import Request
    from .results import Explanation, Prediction


class PhotoPredictor(Protocol):
    """What `predict` asks of a model: one photo file's answer."""

    def predict(self, photo: str | Path, request: Request = ...) -> Prediction: ...


class PhotoExplainer(Protocol):
    """What `explain` of one photo asks of a model: the explanation, and the (N, 2) gallery
    points it answers over (for a map)."""

    def explain(self, photo: str | Path, request: Request = ...) -> Explanation: ...

    @property
    def gallery_points(self) -> npt.NDArray[np.float64]: ...


def load_predictor(spec: ModelSpec | None = None, report: Report = silent) -> PhotoPredictor:
    """A ready predictor of ``spec`` in its runtime (default: pretrained GeoCLIP, torch)."""
    spec = spec or ModelSpec()
    check_runtime(spec)
    if spec.runtime != "torch":  # onnx, onnx-int8
        return load_onnx_predictor(spec)
    from .factory import load_predictor as load_torch_predictor

    return load_torch_predictor(spec, report)


def load_photo_explainer(spec: ModelSpec | None = None, report: Report = silent
                         ) -> PhotoExplainer:  # fmt: skip
    """A ready explainer of one photo for ``spec`` in its runtime (default: pretrained
    GeoCLIP, torch)."""
    spec = spec or ModelSpec()
    check_runtime(spec)
    if spec.runtime != "torch":
        from .onnx_explainer import OnnxExplainer

        return OnnxExplainer(load_onnx_predictor(spec))
    from .factory import load_explainer

    return load_explainer(spec, report)


def load_onnx_predictor(spec: ModelSpec, prepack: bool = False) -> OnnxPredictor:
    """The ONNX bundle's predictor of an ``onnx`` or ``onnx-int8`` spec (checked); ``prepack``
    for one that answers many photos (OnnxPredictor)."""
    from .onnx_runtime import OnnxPredictor, bundle_folder

    assert spec.checkpoint is not None  # check_runtime says so otherwise
    return OnnxPredictor(
        bundle_folder(spec.checkpoint),
        calibration=spec.calibration,
        int8=spec.runtime == "onnx-int8",
        cache_dir=spec.cache_dir,
        prepack=prepack,
    )


def check_runtime(spec: ModelSpec) -> None:
    """One line for a runtime there is none of, or an ONNX bundle asked for what it cannot
    take (it carries its own gallery, CLIP and concepts, and runs on the CPU)."""
    if spec.runtime not in RUNTIMES:
        raise GeoconceptError(f"--runtime {spec.runtime}: give {', '.join(RUNTIMES)}")
    if spec.runtime == "torch":
        return
    if spec.checkpoint is None:
        raise GeoconceptError(f"--runtime {spec.runtime}: give --checkpoint, a model exported "
                              "with geoconcept export --onnx")  # fmt: skip
    given = [flag for flag, value in (
        ("--gallery", spec.gallery), ("--device", spec.device != "cpu"),
        ("--clip-pretrained", spec.clip_pretrained != ModelSpec.clip_pretrained),
        ("--clip-model", spec.clip_model != ModelSpec.clip_model), ("--concepts", spec.concepts),
        ("--concept-embeddings", spec.concept_embeddings)) if value]  # fmt: skip
    if given:
        raise GeoconceptError(
            f"--runtime {spec.runtime}: {', '.join(given)} cannot be chosen; the "
            "bundle carries its gallery, CLIP and concepts, and runs on the CPU"
        )
