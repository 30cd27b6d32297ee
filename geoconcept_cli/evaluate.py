"""`evaluate`: top-1 gallery retrieval scored at 1/25/200/750/2500 km (Im2GPS3k protocol).

Several checkpoints and the pretrained GeoCLIP side by side, plus the gallery ceiling: the
share of test points whose nearest gallery point is within each threshold, which bounds any
retrieval model.
"""

from __future__ import annotations

import warnings
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .checkpoints import check_trained_on, load_head
from .encoders import ClipId, check_feature_dim, load_geoclip_head
from .errors import GeoconceptError
from .gallery import cached_gallery_embeddings, load_gallery
from .geo import THRESHOLDS_KM, accuracy_at_thresholds, haversine_km, unit_vectors
from .predict import Predictor


def nearest_gallery_km(test_latlon: torch.Tensor, gallery: torch.Tensor, chunk=4096) -> np.ndarray:
    """Distance from each test point to its nearest gallery point (max dot on the sphere)."""
    g = unit_vectors(gallery)
    best = []
    for start in range(0, len(test_latlon), chunk):
        q = test_latlon[start : start + chunk]
        j = (unit_vectors(q) @ g.T).argmax(dim=1)
        best.append(haversine_km(q[:, 0], q[:, 1], gallery[j, 0], gallery[j, 1]))
    return np.concatenate(best)


def summarize(dist_km: np.ndarray) -> dict:
    """Accuracy at each threshold (%), median error (km) and the count."""
    return {
        **accuracy_at_thresholds(dist_km),
        "median_km": float(np.median(dist_km)),
        "n": int(len(dist_km)),
    }


@torch.no_grad()
def top1_errors(predictor: Predictor, feats: torch.Tensor, truth: torch.Tensor, chunk=4096):
    """Great-circle error (km) of each query's top-1 gallery point (argmax of the cosine)."""
    idx = torch.cat(
        [predictor.cosines(feats[s : s + chunk]).argmax(dim=1).cpu()
         for s in range(0, len(feats), chunk)]
    )  # fmt: skip
    pred = predictor.gallery_gps[idx]
    return haversine_km(truth[:, 0], truth[:, 1], pred[:, 0], pred[:, 1])


def evaluate_heads(
    heads: dict[str, nn.Module],
    feats: torch.Tensor,
    truth: torch.Tensor,
    gallery: str | Path | None = None,
    cache_dir: str | Path | None = None,
    progress=None,
    gallery_progress=None,
) -> dict:
    """Scores of each named head and the gallery ceiling, as one JSON-able dict.

    ``progress(name)`` follows each head; ``gallery_progress(name)`` is a context manager
    yielding ``advance(n, total)`` for encoding that head's gallery (on a cache miss)."""
    if len(feats) == 0:
        raise GeoconceptError("no test features to evaluate")
    check_feature_dim(feats.shape[1], "test features")
    gps = load_gallery(gallery)
    rows = {}
    for name, head in heads.items():
        with gallery_progress(name) if gallery_progress else nullcontext() as advance:
            emb = cached_gallery_embeddings(gps, head, cache_dir, progress=advance)
        rows[name] = summarize(top1_errors(Predictor(head, gps, emb), feats, truth))
        if progress:
            progress(name)
    return {
        "thresholds_km": list(THRESHOLDS_KM),
        "models": rows,
        "ceiling": summarize(nearest_gallery_km(truth, gps)),
    }


def heads_to_evaluate(
    checkpoints: list[str | Path], geoclip: bool = True, device="cpu", features_meta=None
):
    """GeoCLIP's pretrained head (optional) and each checkpoint's, keyed by a display name.

    With ``features_meta`` (the test features' meta.json), a checkpoint trained on features
    of another CLIP model is refused.
    """
    heads = {"GeoCLIP (pretrained)": load_geoclip_head(device)} if geoclip else {}
    meta = features_meta or {}
    for ck in checkpoints:
        head, ckpt = load_head(ck, device)
        check_trained_on(ckpt, ClipId.from_meta(meta), ck)
        if ckpt.get("step", 0) < ckpt.get("total_steps", 0):
            warnings.warn(
                f"{ck} is an unfinished run (step {ckpt['step']} of {ckpt['total_steps']})",
                stacklevel=2,
            )
        heads[str(ck)] = head
    return heads


def markdown_table(result: dict) -> str:
    """The evaluation as a Markdown table, models then the gallery ceiling."""
    cols = [f"{t}km" for t in result["thresholds_km"]]
    lines = [
        "| model | " + " | ".join(f"{t} km" for t in result["thresholds_km"]) + " | median km |",
        "|---" * (len(cols) + 2) + "|",
    ]
    rows = {**result["models"], "gallery ceiling": result["ceiling"]}
    for name, r in rows.items():
        cells = " | ".join(f"{r[c]:.1f}" for c in cols)
        lines.append(f"| {name} | {cells} | {r['median_km']:.1f} |")
    return "\n".join(lines)
