"""Batch explanation from ``embed-images`` features: every photo explained at about ranking speed.

``explain FEATS --out OUT`` writes ``OUT`` as batch predict does (see ``batch_predict``): a
folder of ``part-NNNNN.parquet``, one per feature shard, each row ``explain``'s batch row
(``image`` holding the photo's id), and ``_geoconcept.json`` (format
``geoconcept-explanations/1``) saying which model, gallery, concepts and options made it.
Shards are split over ranks (torchrun, SLURM, ``--gpus``) and a rerun skips finished parts.
A shard is explained BLOCK photos at once (:meth:`Explainer.explain_batch`, ranked by batch
predict's ``PlaceScorer``, without the place's concepts, which rows do not show).
"""

from __future__ import annotations

import gc
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import torch

from ...io.artifacts import hash_tensors
from ...model.clip import (
    ClipId,
)
from ..explainer import Explainer
from ..scorer import PlaceScorer
from .results import (
    GalleryProgress,
    ShardFrame,
    results_meta,
    run_on_ranks,
    start_results,
    write_parts,
)

EXPLANATIONS_FORMAT = "geoconcept-explanations/1"
# photos explained at once: the few whose runner-up lies deeper than explain's pool are ranked
# again together, one more pass over the gallery a block; its (photos x concepts) arrays stay
# ~10 MB each for 645 concepts
BLOCK = 4096


def explanations_meta(explainer: Explainer, features: Path, top_k: int, n_concepts: int
                      ) -> dict[str, Any]:  # fmt: skip
    """``results_meta`` plus what else shapes the rows: the concepts (names, and the text
    embeddings of zero-shot mode), how many are shown, and the mode."""
    text = [explainer.text] if explainer.text is not None else []
    concepts = hash_tensors(*text, extra="\n".join(explainer.concepts.names))
    return results_meta(explainer.predictor, features, top_k, fmt=EXPLANATIONS_FORMAT,
                        concepts=concepts, concepts_shown=n_concepts,
                        mode=explainer.mode)  # fmt: skip


def explain_shard(explainer: Explainer, scorer: PlaceScorer, ids: list[str],
                  feats: torch.Tensor, top_k: int, n_concepts: int) -> pd.DataFrame:  # fmt: skip
    """One row per photo of a shard, ranked and explained BLOCK photos at a time."""
    rows = []
    with _collector_paused():
        for b in range(0, len(ids), BLOCK):
            exps = explainer.explain_batch(feats[b : b + BLOCK], top_k, n_concepts,
                                           rank=scorer.topk, place_concepts=False)  # fmt: skip
            named = zip(ids[b : b + BLOCK], exps, strict=True)
            rows += [explanation_row({"image": ident, **exp}) for ident, exp in named]
        return pd.DataFrame(rows, columns=ROW_COLUMNS)


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cycle collector off while a shard is explained into rows: their ~100K dicts
    and lists hold no cycles (reference counting frees them), yet they set off collections
    that walk every object of the process, torch's included (0.1 ms a photo). Left off if it
    was off."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _shard_frame(explainer: Explainer, top_k: int, n_concepts: int) -> ShardFrame:
    scorer = PlaceScorer(explainer.predictor)
    return lambda ids, feats, _latlon: explain_shard(explainer, scorer, ids, feats, top_k,
                                                     n_concepts)  # fmt: skip


def explain_feature_folder(
    explainer: Explainer, features: str | Path, out: str | Path, top_k: int = 5,
    n_concepts: int = 8, rank: int = 0, world_size: int = 1,
    progress: Callable[[int], object] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Write this rank's missing parts of ``out`` (see the module docstring); returns the
    results meta. ``progress(n)`` gets the photos of each part written."""
    features, out = Path(features), Path(out)
    meta = explanations_meta(explainer, features, top_k, n_concepts)
    start_results(out, meta, write=rank == 0)
    write_parts(features, out, _shard_frame(explainer, top_k, n_concepts), ROW_SCHEMA, rank,
                world_size, progress)  # fmt: skip
    return meta


def explain_features_worker(
    features: str, out: str, checkpoint: str | None, concepts: str | None,
    concept_embeddings: str | None, gallery: str | None, cache_dir: str | None, device: str,
    top_k: int, n_concepts: int,
) -> dict[str, Any]:  # fmt: skip
    """One process of batch explanation (picklable for the launcher): its share of shards."""
    from ..explainer import load_explainer

    def load(device: str, clip: ClipId, dim: int, progress: GalleryProgress
             ) -> tuple[dict[str, Any], ShardFrame]:  # fmt: skip
        explainer = load_explainer(checkpoint, concepts, concept_embeddings, gallery=gallery,
                                   cache_dir=cache_dir, device=device, progress=progress,
                                   features_of=clip, features_dim=dim)  # fmt: skip
        meta = explanations_meta(explainer, Path(features), top_k, n_concepts)
        return meta, _shard_frame(explainer, top_k, n_concepts)

    return run_on_ranks(features, out, device, "explaining", ROW_SCHEMA, load)


def explanation_row(exp: dict[str, Any]) -> dict[str, Any]:
    """One flat row of a batch run (top-k as JSON, top concepts, the rule)."""
    top = exp["predictions"][0]
    return {
        "image": exp["image"], "lat": top["lat"], "lon": top["lon"], "prob": top["prob"],
        "place": top["place"], "mode": exp["mode"],
        "top_k": json.dumps(exp["predictions"]),
        "photo_concepts": [e["concept"] for e in exp.get("photo_concepts", [])],
        "why_here": [e["concept"] for e in exp.get("why_here", [])],
        "rule": exp.get("rule", ""),
    }  # fmt: skip


# one schema for every file or part of rows (an empty part's columns would otherwise be null)
ROW_SCHEMA = pa.schema([
    ("image", pa.large_string()), ("lat", pa.float64()), ("lon", pa.float64()),
    ("prob", pa.float64()), ("place", pa.large_string()), ("mode", pa.large_string()),
    ("top_k", pa.large_string()), ("photo_concepts", pa.list_(pa.large_string())),
    ("why_here", pa.list_(pa.large_string())), ("rule", pa.large_string()),
])  # fmt: skip


ROW_COLUMNS = ROW_SCHEMA.names


def rows_to_parquet(rows: list[dict[str, Any]], path: str | Path) -> None:
    """Write batch rows atomically (the documented columns even when there are none)."""
    from ...io.artifacts import atomic_path

    with atomic_path(path) as tmp:
        pd.DataFrame(rows, columns=ROW_COLUMNS).to_parquet(tmp, index=False, schema=ROW_SCHEMA)


def batch_photos(
    target: str | Path, images_dir: str | Path | None = None
) -> tuple[list[Path], list[str]]:
    """Photos of a folder, or of a manifest's image column (no coordinates needed), relative
    to ``images_dir`` (default: the manifest's folder, as in ``read_manifest``).

    Returns (existing photo paths, one message per listed photo that is missing).
    """
    from ...data.manifests import ID_NAMES, image_path
    from ...io.images import IMAGE_SUFFIXES
    from ...io.tables import find_column, read_table

    target = Path(target)
    if target.is_dir():
        return sorted(p for p in target.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), []
    df = read_table(target)
    base = Path(images_dir) if images_dir else target.parent
    paths = [image_path(base, str(v)) for v in df[find_column(df, ID_NAMES, "image", target)]]
    return [p for p in paths if p.is_file()], [f"{p}: no such file" for p in paths
                                                if not p.is_file()]  # fmt: skip
