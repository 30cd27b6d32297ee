"""The one factory of ready models: a predictor, an explainer or a locator from a ModelSpec.

A spec names a trained run (or none: pretrained GeoCLIP), the CLIP backbone, the gallery, the
device and the cache; this is where they are checked against each other (a run trained on
another CLIP, a calibration made for another gallery...) and loaded, once. ``report`` shows
one-off work (encoding a gallery, embedding concepts) as ``runtime.progress`` reports it.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import torch

from ..concepts.set import ConceptSet, default_concepts_path
from ..errors import GeoconceptError
from ..gallery.index import indexed_gallery, is_large
from ..gallery.store import cached_gallery_embeddings, load_gallery
from ..io.artifacts import default_cache_dir
from ..model.checkpoints import check_trained_on, load_head, read_model, run_calibration_path
from ..model.clip import ClipBackbone, clip_embed_dim, load_clip, warn_if_random
from ..model.clip_id import ClipId
from ..model.concept_embeddings import embed_concepts, load_concept_embeddings, sidecar
from ..model.concept_head import RetrievalHead, check_head_takes
from ..model.geoclip import (
    GEOCLIP_FEATURE_DIM,
    check_geoclip_width,
    load_geoclip_head,
    warn_unless_geoclip_clip,
)
from ..model.spec import ModelSpec, StoredFeatures
from ..runtime.progress import Report, silent
from .calibration import geoclip_calibration_path
from .calibration_record import read_calibration
from .explainer import Explainer, refuse_check
from .locator import Locator
from .onnx_runtime import TORCH_ONLY
from .predictor import Predictor
from .request import Request


def load_predictor(spec: ModelSpec | None = None, report: Report = silent) -> Predictor:
    """A ready predictor of ``spec`` (default: pretrained GeoCLIP over its 100K gallery)."""
    return _load(spec or ModelSpec(), report)[0]


def load_explainer(spec: ModelSpec | None = None, report: Report = silent) -> Explainer:
    """A ready explainer: a concept-aware run's own concept space, or zero-shot concepts
    (the spec's concept set, embedded once with its CLIP's text tower and cached, or its
    ``concept_embeddings``). Stored features, which come with no CLIP, need those embeddings
    given or cached."""
    spec = spec or ModelSpec()
    predictor, ckpt = _load(spec, report)
    if ckpt.get("kind") == "concept":
        if spec.concepts or spec.concept_embeddings:
            warnings.warn(
                "--concepts and --concept-embeddings are ignored: the concept-aware "
                f"checkpoint {spec.checkpoint} carries its own concept basis",
                stacklevel=2,
            )
        return Explainer(predictor, ConceptSet.from_meta(ckpt["concepts"]))
    concepts = Path(spec.concepts) if spec.concepts else default_concepts_path()
    cset = ConceptSet.from_parquet(concepts)
    clip = spec.features.clip if spec.features else cast(ClipBackbone, predictor.clip).identity
    if spec.concept_embeddings:
        emb = load_concept_embeddings(spec.concept_embeddings, clip)
    elif predictor.clip is None:  # stored features: their CLIP's embeddings, if cached
        cached = concept_cache_path(clip, cset.names, spec.cache_dir)
        if not sidecar(cached).is_file():
            raise GeoconceptError(
                "explaining stored features without a concept-aware --checkpoint needs the "
                f"concepts embedded by their CLIP, {clip}: give --concept-embeddings "
                "(embed-concepts), or explain one photo zero-shot with that CLIP first, which "
                f"caches them in {cached.parent}"
            )
        emb = load_concept_embeddings(cached, clip)
    else:
        out = concept_cache_path(clip, cset.names, spec.cache_dir)
        with report("embedding concepts (once; cached)", "concepts") as advance:
            total = len(cset.names)
            progress = (lambda n: advance(n, total)) if advance else None
            emb, _ = embed_concepts(concepts, predictor.clip, out, progress=progress)
    if emb.concepts != cset.names:
        raise GeoconceptError(f"{spec.concept_embeddings} was made for another concept set")
    retrained = ckpt.get("kind") == "geoclip"
    return Explainer(predictor, cset, emb.embeddings, retrained_geoclip=retrained)


def load_locator(spec: ModelSpec | None = None, report: Report = silent) -> Locator:
    """A ready locator (`where`): a concept-aware run's concept axes, else zero-shot text (a
    plain GeoCLIP run answers zero-shot, and says so)."""
    predictor, ckpt = _load(spec or ModelSpec(), report)
    concepts = ckpt["concepts"]["concepts"] if ckpt.get("kind") == "concept" else None
    with report("concept activations over the gallery", "points") as advance:
        return Locator(predictor, concepts, progress=advance,
                       plain_run=ckpt.get("kind") == "geoclip")  # fmt: skip


def check_request(spec: ModelSpec, request: Request) -> None:
    """Refuse, before anything loads, what ``spec``'s model cannot answer: the deletion
    check needs a concept-aware run, and fewer concepts removed than it has (reading the
    run's checkpoint is a fraction of a second; loading CLIP and the gallery, minutes)."""
    if not request.check:
        return
    ckpt = read_model(spec.checkpoint) if spec.checkpoint else {}
    concept_aware = ckpt.get("kind") == "concept"
    refuse_check(request, len(ckpt["concepts"]["concepts"]) if concept_aware else None,
                 f"{spec.checkpoint}, a plain GeoCLIP run," if spec.checkpoint
                 else "pretrained GeoCLIP")  # fmt: skip


def concept_cache_path(clip: ClipId, names: list[str], cache_dir: str | Path | None) -> Path:
    """Where zero-shot explain caches a concept set's embeddings by a CLIP (the sidecar marks
    them complete); stored features of that CLIP find them there too."""
    key = hashlib.sha256(json.dumps([clip.as_meta(), names]).encode()).hexdigest()[:16]
    return (Path(cache_dir or default_cache_dir()) / "concepts" / key).with_suffix(".safetensors")


def _load(spec: ModelSpec, report: Report) -> tuple[Predictor, dict[str, Any]]:
    """The predictor of ``spec`` with its run's checkpoint dict ({} for pretrained GeoCLIP).

    Refused in one line before any weights load: a run trained on features of another CLIP
    (naming the options that match), a CLIP whose width the head cannot take, a calibration
    made for another model, gallery or CLIP. Stored features load no CLIP weights; an ONNX
    bundle's runtime (inference.loading) is refused here."""
    if spec.runtime != "torch":
        raise GeoconceptError(f"--runtime {spec.runtime}: {TORCH_ONLY}")
    stored = spec.features
    if stored:
        warn_if_random(stored.clip)
    identity = stored.clip if stored else ClipId.of(spec.clip_model, spec.clip_pretrained)
    width = stored.dim if stored else clip_embed_dim(spec.clip_model)
    head: RetrievalHead
    ckpt: dict[str, Any] = {}
    if spec.checkpoint:
        head, ckpt = load_head(spec.checkpoint, spec.device)
        check_trained_on(ckpt, identity, spec.checkpoint, hint=stored is None)
        check_head_takes(head, width, spec.checkpoint)
    else:
        check_geoclip_width(width, f"CLIP {identity}")  # before minutes of CLIP loading
    clip = None if stored else load_clip(spec.clip_model, spec.clip_pretrained, spec.device)
    if not spec.checkpoint:
        warn_unless_geoclip_clip(identity)
        head = load_geoclip_head().to(spec.device)
    gps = load_gallery(spec.gallery)
    calibration = calibration_file(spec, head, gps, identity)
    cal = read_calibration(calibration) if spec.calibration else None
    if cal is not None:
        cal.check_for(head, gps, identity, calibration)
    with report("encoding gallery (once; cached)", "points") as advance:
        if is_large(gps):
            emb, index = indexed_gallery(gps, head, spec.cache_dir, progress=advance)
        else:
            emb, index = cached_gallery_embeddings(gps, head, spec.cache_dir, advance), None
    predictor = Predictor(head, gps, emb, clip, cal, spec.cache_dir, index)
    return predictor, ckpt


def calibration_file(spec: ModelSpec, head: RetrievalHead, gps: torch.Tensor, clip: ClipId
                     ) -> Path:  # fmt: skip
    """Where the calibration of ``spec``'s model (whose head and gallery are given) is, or
    would be: a run's in its folder or bundle; pretrained GeoCLIP's in the cache, for this
    gallery and the CLIP backbone of its features."""
    if spec.checkpoint:
        return run_calibration_path(spec.checkpoint)
    return geoclip_calibration_path(gps, head, clip, spec.cache_dir)


GEOCLIP_NAME = "GeoCLIP (pretrained)"


def load_heads(specs: Sequence[ModelSpec], features: StoredFeatures
               ) -> dict[str, RetrievalHead]:  # fmt: skip
    """The heads of several models to score on the same stored features, keyed by a display
    name (the checkpoint as given; GEOCLIP_NAME for pretrained GeoCLIP). A run trained on
    features of another CLIP is refused; pretrained GeoCLIP is left out, with a warning, of
    features of another width than its 768 when runs are scored beside it, and refused when
    it is the only model; an unfinished run is scored with a warning."""
    warn_if_random(features.clip)
    heads: dict[str, RetrievalHead] = {}
    runs = [s for s in specs if s.checkpoint]
    for spec in specs:
        if spec.checkpoint:
            head, ckpt = load_head(spec.checkpoint, spec.device)
            check_trained_on(ckpt, features.clip, spec.checkpoint)
            if ckpt.get("step", 0) < ckpt.get("total_steps", 0):
                warnings.warn(f"{spec.checkpoint} is an unfinished run (step {ckpt['step']} of "
                              f"{ckpt['total_steps']})", stacklevel=2)  # fmt: skip
            heads[str(spec.checkpoint)] = head
        elif runs and features.dim != GEOCLIP_FEATURE_DIM:
            warnings.warn(f"{GEOCLIP_NAME} left out: its image MLP takes {GEOCLIP_FEATURE_DIM}-d "
                          f"image features, these are {features.dim}-d", stacklevel=2)  # fmt: skip
        else:
            check_geoclip_width(features.dim, f"features of CLIP {features.clip}")
            warn_unless_geoclip_clip(features.clip)
            heads[GEOCLIP_NAME] = load_geoclip_head(spec.device)
    return heads
