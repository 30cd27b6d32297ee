"""Which model answers: one frozen value that the CLI, the server and a notebook build once.

``inference.factory`` builds a predictor, an explainer or a locator from it; nothing else takes
these choices one by one. The default backbone, GeoCLIP's, is named here and only here.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .clip_id import ClipId

DEFAULT_CLIP_MODEL = "ViT-L-14"  # GeoCLIP's image MLP learned on this CLIP's features
DEFAULT_CLIP_PRETRAINED = "openai"
RUN_PATHS = "run folder, checkpoint file or exported model folder"  # what --checkpoint takes
RUNTIMES = ("torch", "onnx", "onnx-int8")  # what runs the model (inference.loading)
CALIBRATION_NAME = "calibration.json"  # a run's or an exported model's, in its folder


def _option(default: Any, help: str) -> Any:
    """A field with the help of its command-line option (the CLI reads options from here);
    a field that defaults to None names a file or folder."""
    return field(default=default, metadata={"help": help} | (
        {"type": Path | None} if default is None else {}))  # fmt: skip


@dataclass(frozen=True)
class StoredFeatures:
    """Image features embedded before (an ``embed-images`` folder): the CLIP that made them
    and their width. A model that reads them loads no CLIP weights."""

    clip: ClipId
    dim: int


@dataclass(frozen=True)
class ModelSpec:
    """A model: a trained run (``checkpoint``: a run folder, checkpoint file or exported
    bundle; None is pretrained GeoCLIP); for zero-shot concepts, the concept set and its text
    embeddings (None: the shipped set, embedded once with the backbone and cached); the CLIP
    backbone that reads photos; the GPS gallery (None: GeoCLIP's 100K); the torch device; the
    cache folder (None: ``$GEOCONCEPT_CACHE``); whether its stored calibration is used; the
    runtime (inference.loading)."""

    checkpoint: str | Path | None = _option(None, f"Trained run: {RUN_PATHS} (default: GeoCLIP).")
    concepts: str | Path | None = _option(None, "concepts.parquet (default: the shipped set).")
    concept_embeddings: str | Path | None = _option(
        None, "embed-concepts output (default: computed and cached)."
    )
    clip_model: str = _option(
        DEFAULT_CLIP_MODEL,
        (
            f"open_clip architecture (GeoCLIP uses {DEFAULT_CLIP_MODEL}), or a JSON model config "
            "path."
        ),
    )
    clip_pretrained: str = _option(
        DEFAULT_CLIP_PRETRAINED,
        (
            "open_clip pretrained tag, a local .pt/.safetensors checkpoint, or 'none' (random "
            "weights: meaningless predictions, for tests)."
        ),
    )
    gallery: str | Path | None = _option(
        None,
        (
            "CSV/Parquet of lat/lon gallery points (default: GeoCLIP's 100K); from 200K points "
            "indexed (predict, explain; evaluate/calibrate refuse it)."
        ),
    )
    device: str = _option("cpu", "torch device, e.g. cpu or cuda.")
    cache_dir: str | Path | None = _option(
        None, ("cache for gallery embeddings (default: $GEOCONCEPT_CACHE or ~/.cache/geoconcept).")
    )
    calibration: bool = _option(
        True,
        (
            "Use the model's stored calibration where there is one (calibrate makes it; "
            "--no-calibration: the raw softmax)."
        ),
    )
    runtime: str = _option(
        "torch",
        "torch, or onnx (onnx-int8: its quantized graph): the ONNX graph of a model exported "
        "with --onnx, run with no torch (a cold start in seconds; one photo at a time).",
    )
    features: StoredFeatures | None = None  # set for stored features: no CLIP is loaded

    def reading(self, features: StoredFeatures) -> ModelSpec:
        """This model reading stored features instead of photos."""
        return replace(self, features=features)
