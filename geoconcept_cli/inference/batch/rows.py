"""The rows of batch runs, one a photo: the schema every Parquet file or part of them has (also
when empty), and how an explanation, or a prediction, becomes a row."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa

from ...io.artifacts import atomic_path
from ..request import Request
from ..results import Album, Explanation, Prediction
from ..sites import CHUNK

if TYPE_CHECKING:
    import torch

    from ..predictor import Predictor

ROW_SCHEMA = pa.schema([
    ("image", pa.large_string()), ("lat", pa.float64()), ("lon", pa.float64()),
    ("prob", pa.float64()), ("place", pa.large_string()), ("mode", pa.large_string()),
    ("top_k", pa.large_string()), ("photo_concepts", pa.list_(pa.large_string())),
    ("why_here", pa.list_(pa.large_string())), ("rule", pa.large_string()),
    ("confidence", pa.float64()), ("answered", pa.bool_()),
])  # fmt: skip
ROW_COLUMNS = ROW_SCHEMA.names


def explanation_row(exp: Explanation, image: str) -> dict[str, Any]:
    """One flat row of a batch run (top-k as JSON, top concepts, the rule)."""
    top = exp.predictions[0]
    return {
        "image": image, "lat": top.lat, "lon": top.lon, "prob": top.prob,
        "place": top.place, "mode": exp.mode,
        "top_k": json.dumps([c.to_json() for c in exp.predictions]),
        "photo_concepts": [e["concept"] for e in exp.photo_concepts or []],
        "why_here": [e["concept"] for e in exp.why_here or []],
        "rule": exp.rule or "", **confidence_cells(exp),
    }  # fmt: skip


def confidence_cells(result: Explanation | Prediction) -> dict[str, Any]:
    """A calibrated model's confidence and whether the photo is answered (else nulls)."""
    c = result.confidence
    return {"confidence": c and c["probability"], "answered": c and c["answered"]}


PREDICTION_SCHEMA = pa.schema([
    ("image", pa.large_string()), ("lat", pa.float64()), ("lon", pa.float64()),
    ("prob", pa.float64()), ("place", pa.large_string()), ("top_k", pa.large_string()),
    ("confidence", pa.float64()), ("answered", pa.bool_()),
])  # fmt: skip


def prediction_row(pred: Prediction, image: str) -> dict[str, Any]:
    """One flat row of a batch prediction of photos (the top-1, and the top-k as JSON)."""
    top = pred.predictions[0]
    return {"image": image, "lat": top.lat, "lon": top.lon, "prob": top.prob, "place": top.place,
            "top_k": json.dumps([c.to_json() for c in pred.predictions]),
            **confidence_cells(pred)}  # fmt: skip


ALBUM_SCHEMA = pa.schema([
    ("group", pa.large_string()), ("photos", pa.int64()), ("lat", pa.float64()),
    ("lon", pa.float64()), ("prob", pa.float64()), ("place", pa.large_string()),
    ("top_k", pa.large_string()), ("parts", pa.large_string()), ("disagreeing", pa.int64()),
])  # fmt: skip


def album_row(album: Album) -> dict[str, Any]:
    """One flat row of a group of photos located together (the top candidate, the top-k and
    each photo's part as JSON, how many photos disagree)."""
    top = album.predictions[0]
    return {"group": album.group, "photos": len(album.images), "lat": top.lat, "lon": top.lon,
            "prob": top.prob, "place": top.place,
            "top_k": json.dumps([c.to_json() for c in album.predictions]),
            "parts": json.dumps(album.photos),
            "disagreeing": sum(ph["disagrees"] for ph in album.photos)}  # fmt: skip


def rows_to_parquet(rows: list[dict[str, Any]], path: str | Path,
                    schema: pa.Schema = ROW_SCHEMA) -> None:  # fmt: skip
    """Write batch rows atomically (the documented columns even when there are none)."""
    with atomic_path(path) as tmp:
        pd.DataFrame(rows, columns=schema.names).to_parquet(tmp, index=False, schema=schema)


def confidence_columns(predictor: Predictor, feats: torch.Tensor, request: Request,
                       chunk: int = CHUNK
                       ) -> tuple[list[float | None], list[bool | None]]:  # fmt: skip
    """Each photo's confidence and whether it is answered at ``request``'s level
    (``Predictor.confidences``); nulls for a model without a calibration."""
    level = predictor.abstain_level(request)
    if level is None:
        return [None] * len(feats), [None] * len(feats)
    found = [c for s in range(0, len(feats), chunk)
             for c in predictor.confidences(feats[s : s + chunk], level)]  # fmt: skip
    return [c["probability"] for c in found], [c["answered"] for c in found]
