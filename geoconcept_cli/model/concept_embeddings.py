"""`embed-concepts`: the frozen concept basis E, CLIP text embeddings of the concept set.

Each concept is embedded with every prompt template, each template embedding L2-normalised,
averaged and normalised again (CLIP's prompt ensembling). Output: ``<out>.safetensors`` with
``embeddings`` (k x d, float32) and ``<out>.json`` beside it: concept order, categories, model,
pretrained tag, templates and the concept set's hash. Later stages refuse a file made for
another model or another concept set.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pandas as pd
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from ..concepts.set import concept_set_hash, default_concepts_path, load_concepts
from ..errors import GeoconceptError
from ..io.artifacts import atomic_path, write_json
from ..runtime.progress import Report, silent
from .clip import ClipBackbone, load_clip
from .clip_id import ClipId, check_same_clip
from .spec import ModelSpec

DEFAULT_TEMPLATES = (
    "a photo of {}.",
    "a street view photo showing {}.",
    "a landscape photo with {}.",
    "a travel photo of a place with {}.",
)


@dataclass
class ConceptEmbeddings:
    """The basis E (k x d) with what made it."""

    embeddings: torch.Tensor
    meta: dict[str, Any]

    @property
    def concepts(self) -> list[str]:
        return cast(list[str], self.meta["concepts"])


def sidecar(path: str | Path) -> Path:
    return Path(path).with_suffix(".json")


def check_templates(templates: Sequence[str]) -> None:
    """Each prompt template holds the concept once, as ``{}``: a template without it gives
    every concept the same embedding (a degenerate basis that trains to NaN)."""
    for t in templates:
        if "{}" not in t or t.count("{") != 1 or t.count("}") != 1:
            raise GeoconceptError(f"--template {t!r}: needs exactly one {{}} for the concept, "
                                  "e.g. 'a photo of {}'")  # fmt: skip


@torch.no_grad()
def encode_concepts(
    names: list[str], clip: ClipBackbone, templates: Sequence[str] = DEFAULT_TEMPLATES,
    batch_size: int = 64, progress: Callable[[int], object] | None = None,
) -> torch.Tensor:  # fmt: skip
    """Prompt-ensembled, L2-normalised text embeddings (k x d). ``progress(n)`` gets 0 as the
    work begins, then the concepts of each batch (small enough to report every ~tenth of the
    shipped 645). A batch's prompts under every template go through the text tower at once,
    as far as their longest one (see ``ClipBackbone.encode_texts``)."""
    out = []
    if progress:
        progress(0)
    for start in range(0, len(names), batch_size):
        chunk = names[start : start + batch_size]
        prompts = [t.format(c) for t in templates for c in chunk]  # template-major
        unit = F.normalize(clip.encode_texts(prompts), dim=-1).view(len(templates), len(chunk), -1)
        out.append(F.normalize(unit.mean(0), dim=-1).cpu())
        if progress:
            progress(len(chunk))
    return torch.cat(out)


def _meta(concepts: pd.DataFrame, clip: ClipId, templates: Sequence[str]) -> dict[str, Any]:
    """What makes a concept basis: the format, the CLIP, the templates and the concept set."""
    return {
        "format": "geoconcept-concept-embeddings/1",
        **clip.as_meta(),
        "templates": list(templates),
        "concept_set_hash": concept_set_hash(concepts),
        "concepts": concepts["concept"].tolist(),
        "categories": concepts["category"].tolist(),
        "subcategories": concepts["subcategory"].tolist(),
    }


def _stored(out: Path, meta: dict[str, Any]) -> ConceptEmbeddings | None:
    """The basis at ``out`` if it was made exactly as ``meta`` says, else None."""
    if out.is_file() and sidecar(out).is_file():
        old = json.loads(sidecar(out).read_text())
        if old == meta:
            return ConceptEmbeddings(load_file(out)["embeddings"], old)
    return None


def embed_concepts(
    concepts_path: str | Path,
    clip: ClipBackbone,
    out: str | Path,
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    progress: Callable[[int], object] | None = None,
) -> tuple[ConceptEmbeddings, bool]:
    """Embed a concepts.parquet; returns (embeddings, computed). Skips work when unchanged."""
    meta = _meta(load_concepts(concepts_path), clip.identity, templates)
    out = Path(out).with_suffix(".safetensors")
    found = _stored(out, meta)
    if found is not None:
        return found, False
    check_templates(templates)
    emb = encode_concepts(meta["concepts"], clip, templates, progress=progress)
    save_concept_embeddings(out, emb, meta)
    return ConceptEmbeddings(emb, meta), True


def embed_concept_set(
    out: str | Path, concepts: str | Path | None = None, spec: ModelSpec = ModelSpec(),
    templates: Sequence[str] = DEFAULT_TEMPLATES, report: Report = silent,
) -> tuple[ConceptEmbeddings, bool]:  # fmt: skip
    """`geoconcept embed-concepts`: the concept basis E of ``concepts`` (default: the shipped
    set) by ``spec``'s CLIP text tower, written to ``out`` unless it is up to date there (then
    no CLIP loads); returns (embeddings, computed now)."""
    concepts = concepts or default_concepts_path()
    df = load_concepts(concepts)
    check_templates(templates)  # before CLIP loads
    identity = ClipId.of(spec.clip_model, spec.clip_pretrained)
    found = _stored(Path(out).with_suffix(".safetensors"), _meta(df, identity, templates))
    if found is not None:
        return found, False
    clip = load_clip(spec.clip_model, spec.clip_pretrained, spec.device)
    with report("embedding concepts", "concepts") as advance:
        progress = (lambda n: advance(n, len(df))) if advance else None
        return embed_concepts(concepts, clip, out, templates, progress)


def save_concept_embeddings(path: str | Path, embeddings: torch.Tensor, meta: dict[str, Any]
                            ) -> Path:  # fmt: skip
    """Write the basis and its sidecar (the sidecar last: it marks the pair complete)."""
    path = Path(path).with_suffix(".safetensors")
    with atomic_path(path) as tmp:
        save_file({"embeddings": embeddings.float().contiguous()}, str(tmp))
    write_json(sidecar(path), meta)
    return path


def load_concept_embeddings(path: str | Path, clip: ClipId | None = None) -> ConceptEmbeddings:
    """Read an embed-concepts output; refuse it if made for another CLIP model/weights."""
    given = Path(path)
    if given.is_dir() or given.suffix.lower() not in {"", ".safetensors", ".json"}:
        raise GeoconceptError(f"{given}: not concept embeddings (the .safetensors file that "
                              "geoconcept embed-concepts writes)")  # fmt: skip
    path = given.with_suffix(".safetensors")
    if not path.is_file() or not sidecar(path).is_file():
        raise GeoconceptError(f"{path}: no concept embeddings (run geoconcept embed-concepts)")
    meta = json.loads(sidecar(path).read_text())
    if clip is not None:
        check_same_clip(ClipId.from_meta(meta), clip, f"{path} was made with",
                        fix="rerun embed-concepts")  # fmt: skip
    emb = load_file(path)["embeddings"]
    if emb.shape[0] != len(meta["concepts"]):
        raise GeoconceptError(f"{path}: {emb.shape[0]} rows but {len(meta['concepts'])} concepts")
    return ConceptEmbeddings(emb, meta)
