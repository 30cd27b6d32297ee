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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from ...io.artifacts import hash_tensors
from ...model.spec import ModelSpec
from ...runtime.launch import Workers
from ...runtime.progress import Report
from ..explainer import Explainer
from ..factory import load_explainer
from ..request import Request
from ..scorer import PlaceScorer
from .results import (
    BatchResult,
    ShardFrame,
    results_meta,
    run_batch,
    run_on_ranks,
    start_results,
    write_parts,
)
from .rows import ROW_COLUMNS, ROW_SCHEMA, confidence_columns, explanation_row

EXPLANATIONS_FORMAT = "geoconcept-explanations/1"
# photos explained at once: the few whose runner-up lies deeper than explain's pool are ranked
# again together, one more pass over the gallery a block; its (photos x concepts) arrays stay
# ~10 MB each for 645 concepts
BLOCK = 4096


def explanations_meta(explainer: Explainer, features: Path, request: Request
                      ) -> dict[str, Any]:  # fmt: skip
    """``results_meta`` plus what else shapes the rows: the concepts (names, and the text
    embeddings of zero-shot mode), how many are shown, and the mode."""
    text = [explainer.text] if explainer.text is not None else []
    concepts = hash_tensors(*text, extra="\n".join(explainer.concepts.names))
    return results_meta(explainer.predictor, features, request.top_k, fmt=EXPLANATIONS_FORMAT,
                        concepts=concepts, concepts_shown=request.concepts_shown,
                        mode=explainer.mode, merge_km=request.merge_km,
                        limits=request.limits.describe(),
                        abstain_below=explainer.predictor.abstain_level(request))  # fmt: skip


def explain_shard(explainer: Explainer, scorer: PlaceScorer, ids: list[str],
                  feats: torch.Tensor, request: Request) -> pd.DataFrame:  # fmt: skip
    """One row per photo of a shard, ranked and explained BLOCK photos at a time."""
    rows = []
    with _collector_paused():
        for b in range(0, len(ids), BLOCK):
            exps = explainer.explain_batch(feats[b : b + BLOCK], request, rank=scorer.topk,
                                           place_concepts=False)  # fmt: skip
            conf, answered = confidence_columns(scorer.predictor, feats[b : b + BLOCK], request)
            named = zip(ids[b : b + BLOCK], exps, strict=True)
            rows += [explanation_row(exp, ident) | {"confidence": c, "answered": a}
                     for (ident, exp), c, a in zip(named, conf, answered, strict=True)]  # fmt: skip
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


def _shard_frame(explainer: Explainer, request: Request) -> ShardFrame:
    scorer = PlaceScorer(explainer.predictor.steered(explainer.map_hints(request)[0]))
    return lambda ids, feats, _latlon: explain_shard(explainer, scorer, ids, feats, request)


def explain_feature_folder(
    explainer: Explainer, features: str | Path, out: str | Path, request: Request = Request(),
    rank: int = 0, world_size: int = 1, progress: Callable[[int], object] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Write this rank's missing parts of ``out`` (see the module docstring); returns the
    results meta. ``progress(n)`` gets the photos of each part written."""
    features, out = Path(features), Path(out)
    meta = explanations_meta(explainer, features, request)
    start_results(out, meta, write=rank == 0)
    write_parts(features, out, _shard_frame(explainer, request), ROW_SCHEMA, rank, world_size,
                progress)  # fmt: skip
    return meta


def explain_features_worker(spec: ModelSpec, features: str, out: str, request: Request
                            ) -> dict[str, Any]:  # fmt: skip
    """One process of batch explanation (picklable for the launcher): its share of shards."""

    def load(spec: ModelSpec, report: Report) -> tuple[dict[str, Any], ShardFrame]:
        explainer = load_explainer(spec, report)
        meta = explanations_meta(explainer, Path(features), request)
        return meta, _shard_frame(explainer, request)

    return run_on_ranks(spec, features, out, "explaining", ROW_SCHEMA, load)


def explain_folder(spec: ModelSpec, features: str | Path, out: str | Path,
                   request: Request = Request(), workers: Workers = Workers()
                   ) -> BatchResult | None:  # fmt: skip
    """Explain every photo of an ``embed-images`` folder from its stored features (no CLIP
    runs) into ``out`` (see the module docstring), here or over ``workers``; the result on
    the process that reports, None on the others."""
    wrote = run_batch(explain_features_worker, spec, features, out, request, workers)
    if wrote is None:
        return None
    photos = len(pd.read_parquet(out, columns=["image"]))
    return BatchResult(Path(out), photos, wrote)
