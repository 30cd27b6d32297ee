"""Batch prediction from ``embed-images`` features: many photos at matrix-product speed.

``predict FEATS --out OUT`` writes ``OUT`` as a Parquet dataset folder: one
``part-NNNNN.parquet`` per feature shard (``pd.read_parquet(OUT)`` reads them as one table)
and ``_geoconcept.json`` saying which model, gallery and top-k made it. Shards are split over
ranks as embed-images splits them (shard i on rank i % world size, under torchrun or SLURM),
and a rerun skips the parts already written.

Scores go to distinct places only: GeoCLIP's gallery repeats 5,900 of its 100K points, and a
repeated point has the same logit at each copy, so the softmax over all rows is the softmax
over places with each place's logit counted ``multiplicity`` times. That is exactly the
probability `predict` gives, for 6% fewer products.
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
from ...model.clip import ClipId
from ..predictor import Predictor
from ..scorer import PlaceScorer
from .results import (
    GalleryProgress,
    ShardFrame,
    results_meta,
    run_on_ranks,
    start_results,
    write_parts,
)

# every part is written with the same schema: an empty shard's part would otherwise hold null
# columns, and a folder whose first part does so cannot be read as one table
SCHEMA = pa.schema([
    ("id", pa.large_string()), ("true_lat", pa.float64()), ("true_lon", pa.float64()),
    ("lat", pa.float64()), ("lon", pa.float64()), ("prob", pa.float32()),
    ("error_km", pa.float64()), ("country", pa.large_string()),
    ("top_lat", pa.list_(pa.float64())), ("top_lon", pa.list_(pa.float64())),
    ("top_prob", pa.list_(pa.float32())),
])  # fmt: skip
COLUMNS = SCHEMA.names


def predict_shard(scorer: PlaceScorer, ids: list[str], feats: torch.Tensor,
                  latlon: torch.Tensor, top_k: int, chunk: int = 4096) -> pd.DataFrame:  # fmt: skip
    """One row per photo: the top-1 place, its probability, error and country, and the top-k."""
    if len(ids) == 0:  # a shard whose every image failed to decode
        return pd.DataFrame(columns=COLUMNS)
    gps = scorer.predictor.gallery_gps
    probs, rows = zip(*(scorer.topk(feats[s : s + chunk], top_k)
                        for s in range(0, len(feats), chunk)), strict=True)  # fmt: skip
    prob, row = torch.cat(probs).numpy(), torch.cat(rows)
    top = gps[row].double().numpy()  # (B, k, 2)
    truth = latlon.double().numpy()
    err = haversine_km(truth[:, 0], truth[:, 1], top[:, 0, 0], top[:, 0, 1])
    return pd.DataFrame({
        "id": ids, "true_lat": truth[:, 0], "true_lon": truth[:, 1],
        "lat": top[:, 0, 0], "lon": top[:, 0, 1], "prob": prob[:, 0], "error_km": err,
        "country": reverse_geocode(top[:, 0]).country.astype(str),
        "top_lat": list(top[:, :, 0]), "top_lon": list(top[:, :, 1]), "top_prob": list(prob),
    }, columns=COLUMNS)  # fmt: skip


def predict_features(
    predictor: Predictor, features: str | Path, out: str | Path, top_k: int = 5,
    rank: int = 0, world_size: int = 1, progress: Callable[[int], object] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Write this rank's missing parts of ``out`` (see the module docstring); returns the
    results meta. ``progress(n)`` gets the photos of each part written."""
    features, out = Path(features), Path(out)
    meta = results_meta(predictor, features, top_k)
    start_results(out, meta, write=rank == 0)
    write_parts(features, out, _shard_frame(predictor, top_k), SCHEMA, rank, world_size,
                progress)  # fmt: skip
    return meta


def _shard_frame(predictor: Predictor, top_k: int) -> ShardFrame:
    scorer = PlaceScorer(predictor)
    return lambda ids, feats, latlon: predict_shard(scorer, ids, feats, latlon, top_k)


def predict_features_worker(
    features: str, out: str, checkpoint: str | None, gallery: str | None,
    cache_dir: str | None, device: str, top_k: int,
) -> dict[str, Any]:  # fmt: skip
    """One process of batch prediction (picklable for the launcher): its share of shards."""
    from ..predictor import load_run

    def load(device: str, clip: ClipId, dim: int, progress: GalleryProgress
             ) -> tuple[dict[str, Any], ShardFrame]:  # fmt: skip
        predictor, _ = load_run(checkpoint, gallery=gallery, cache_dir=cache_dir,
                                device=device, progress=progress, features_of=clip,
                                features_dim=dim)  # fmt: skip
        return results_meta(predictor, Path(features), top_k), _shard_frame(predictor, top_k)

    return run_on_ranks(features, out, device, "predicting", SCHEMA, load)


def summary(out: str | Path) -> tuple[int, float]:
    """(photos, median error in km) of a finished results folder."""
    table = pd.read_parquet(Path(out), columns=["error_km"])
    return len(table), float(np.median(table["error_km"])) if len(table) else float("nan")
