"""Batch prediction from ``embed-images`` features: many photos at matrix-product speed.

``predict FEATS --out OUT`` writes ``OUT`` as a folder of Parquet parts, one per feature shard
(see ``results``), each row a photo's top candidate, probability, error and country and its
top-k candidates with the gallery points each holds (``top_points``: points within the
request's ``merge_km`` are one candidate, see ``inference.sites``); points ranked by
``inference.scorer``'s kernel, which gives `predict`'s probabilities.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from ...geo.distance import haversine_km
from ...geo.geocode import reverse_geocode
from ...model.spec import ModelSpec
from ...runtime.launch import Workers
from ...runtime.progress import Report
from ..factory import load_predictor
from ..predictor import Predictor
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
from .rows import confidence_columns

# every part is written with the same schema: an empty shard's part would otherwise hold null
# columns, and a folder whose first part does so cannot be read as one table
SCHEMA = pa.schema([
    ("id", pa.large_string()), ("true_lat", pa.float64()), ("true_lon", pa.float64()),
    ("lat", pa.float64()), ("lon", pa.float64()), ("prob", pa.float32()),
    ("error_km", pa.float64()), ("country", pa.large_string()),
    ("top_lat", pa.list_(pa.float64())), ("top_lon", pa.list_(pa.float64())),
    ("top_prob", pa.list_(pa.float32())), ("top_points", pa.list_(pa.int64())),
    ("confidence", pa.float64()), ("answered", pa.bool_()),
])  # fmt: skip
COLUMNS = SCHEMA.names


def predict_shard(scorer: PlaceScorer, ids: list[str], feats: torch.Tensor,
                  latlon: torch.Tensor, request: Request, chunk: int = 4096
                  ) -> pd.DataFrame:  # fmt: skip
    """One row per photo: the top candidate, its probability, error and country, the top-k,
    and a calibrated model's confidence and whether the photo is answered (else null)."""
    if len(ids) == 0:  # a shard whose every image failed to decode
        return pd.DataFrame(columns=COLUMNS)
    p = scorer.predictor
    ranked = [p.ranked(feats[s : s + chunk], request.top_k, request.merge_km, scorer.topk,
                       pool=False) for s in range(0, len(feats), chunk)]  # fmt: skip
    prob, row = torch.cat([r.probs for r in ranked]).numpy(), torch.cat([r.rows for r in ranked])
    points = torch.cat([r.points for r in ranked]).numpy()
    top = p.gallery_gps[row].double().numpy()  # (B, k, 2)
    truth = latlon.double().numpy()
    err = haversine_km(truth[:, 0], truth[:, 1], top[:, 0, 0], top[:, 0, 1])
    conf, answered = confidence_columns(p, feats, request, chunk)
    return pd.DataFrame({
        "id": ids, "true_lat": truth[:, 0], "true_lon": truth[:, 1],
        "lat": top[:, 0, 0], "lon": top[:, 0, 1], "prob": prob[:, 0], "error_km": err,
        "country": reverse_geocode(top[:, 0]).country.astype(str),
        # a slot with no candidate (fewer sites than --top-k) is left out of the lists
        "top_lat": [t[h > 0] for t, h in zip(top[:, :, 0], points, strict=True)],
        "top_lon": [t[h > 0] for t, h in zip(top[:, :, 1], points, strict=True)],
        "top_prob": [t[h > 0] for t, h in zip(prob, points, strict=True)],
        "top_points": [h[h > 0] for h in points],
        "confidence": conf, "answered": answered,
    }, columns=COLUMNS)  # fmt: skip


def predict_features(
    predictor: Predictor, features: str | Path, out: str | Path, request: Request = Request(),
    rank: int = 0, world_size: int = 1, progress: Callable[[int], object] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Write this rank's missing parts of ``out`` (see the module docstring); returns the
    results meta. ``progress(n)`` gets the photos of each part written."""
    features, out = Path(features), Path(out)
    meta = results_meta(
        predictor,
        features,
        request.top_k,
        merge_km=request.merge_km,
        limits=request.limits.describe(),
        abstain_below=predictor.abstain_level(request),
    )
    start_results(out, meta, write=rank == 0)
    write_parts(features, out, _shard_frame(predictor, request), SCHEMA, rank,
                world_size, progress)  # fmt: skip
    return meta


def _shard_frame(predictor: Predictor, request: Request) -> ShardFrame:
    scorer = PlaceScorer(predictor.steered(request))
    return lambda ids, feats, latlon: predict_shard(scorer, ids, feats, latlon, request)


def predict_features_worker(spec: ModelSpec, features: str, out: str, request: Request
                            ) -> dict[str, Any]:  # fmt: skip
    """One process of batch prediction (picklable for the launcher): its share of shards."""

    def load(spec: ModelSpec, report: Report) -> tuple[dict[str, Any], ShardFrame]:
        predictor = load_predictor(spec, report)
        meta = results_meta(
            predictor,
            Path(features),
            request.top_k,
            merge_km=request.merge_km,
            limits=request.limits.describe(),
            abstain_below=predictor.abstain_level(request),
        )
        return meta, _shard_frame(predictor, request)

    return run_on_ranks(spec, features, out, "predicting", SCHEMA, load)


def predict_folder(spec: ModelSpec, features: str | Path, out: str | Path,
                   request: Request = Request(), workers: Workers = Workers()
                   ) -> BatchResult | None:  # fmt: skip
    """Predict every photo of an ``embed-images`` folder from its stored features (no CLIP
    runs) into ``out``, here or over ``workers``; the result (with the median error of the
    top-1) on the process that reports, None on the others."""
    wrote = run_batch(predict_features_worker, spec, features, out, request, workers)
    if wrote is None:
        return None
    photos, median = summary(out)
    return BatchResult(Path(out), photos, wrote, median)


def summary(out: str | Path) -> tuple[int, float]:
    """(photos, median error in km) of a finished results folder."""
    table = pd.read_parquet(Path(out), columns=["error_km"])
    return len(table), float(np.median(table["error_km"])) if len(table) else float("nan")
