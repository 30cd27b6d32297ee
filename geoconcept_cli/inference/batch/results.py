"""The results folder of a batch run over an ``embed-images`` feature folder, and the run itself.

``OUT`` is a Parquet dataset folder: one ``part-NNNNN.parquet`` per feature shard
(``pd.read_parquet(OUT)`` reads them as one table) and ``_geoconcept.json`` saying which model,
gallery and options made it. Shards are split over ranks as embed-images splits them (shard i
on rank i % world size, under torchrun or SLURM), and a rerun writes only the missing parts.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import torch

from ...data.features import feature_summary, read_meta, read_shard, shard_size_of
from ...errors import GeoconceptError
from ...io.artifacts import atomic_path, hash_state_dict, hash_tensors, write_json
from ...model.clip_id import ClipId
from ...model.spec import ModelSpec, StoredFeatures
from ...runtime.distributed import all_or_none, init_distributed, is_main_process
from ...runtime.launch import Workers
from ...runtime.progress import Report, lazy_progress_bar, progress_bar, silent
from ..predictor import Predictor
from ..request import Request

RESULTS_FORMAT = "geoconcept-predictions/1"


META_NAME = "_geoconcept.json"  # Parquet readers skip files starting with "_"


def results_meta(predictor: Predictor, features: Path, top_k: int,
                 fmt: str = RESULTS_FORMAT, **made_with: Any) -> dict[str, Any]:  # fmt: skip
    """What a results folder was made from: rerunning with another model, gallery, top-k,
    feature folder or ``made_with`` setting must not mix parts."""
    meta = read_meta(features)
    return {
        "format": fmt, "features": str(features.resolve()),
        "feature_rows": meta["rows"], "shards": meta["shards"], "top_k": top_k,
        "head": hash_state_dict(predictor.head), "gallery": hash_tensors(predictor.gallery_gps),
        "temperature": predictor.temperature, **made_with,
        **({"normalised_over": predictor.index.note()} if predictor.index else {}),
    }  # fmt: skip


def part_path(out: Path, index: int) -> Path:
    return out / f"part-{index:05d}.parquet"


def check_out(out: Path) -> None:
    """Refuse an ``out`` that cannot hold results: a file, or a folder of other files (checked
    again by ``start_results``; first before any model loads)."""
    if out.exists() and not out.is_dir():
        raise GeoconceptError(f"--out {out}: a file; a feature folder's results are a folder "
                              "of parts")  # fmt: skip
    if out.is_dir() and not (out / META_NAME).is_file() and any(out.iterdir()):
        raise GeoconceptError(f"--out {out}: a folder holding other files; give a new folder")


def start_results(out: Path, meta: dict[str, Any], write: bool = True) -> None:
    """Refuse an ``out`` made otherwise; ``write`` (one rank) records ``meta`` there."""
    check_out(out)
    old_path = out / META_NAME
    if old_path.is_file():
        old = json.loads(old_path.read_text())
        changed = [k for k in meta if k != "normalised_over" and old.get(k) != meta[k]]
        if changed:
            raise GeoconceptError(
                f"--out {out} holds results made with another {', '.join(changed)}; "
                "give another --out (or delete it)"
            )
    if write:
        record_meta(out, meta)


def record_meta(out: Path, meta: dict[str, Any]) -> None:
    """Write ``meta`` into ``out`` (made if need be), before any part."""
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / META_NAME, meta)


def missing_parts(out: Path, shards: int, rank: int = 0, world_size: int = 1) -> list[int]:
    """The shards of ``rank`` whose part is not written yet."""
    return [s for s in range(rank, shards, world_size) if not part_path(out, s).is_file()]


ShardFrame = Callable[[list[str], torch.Tensor, torch.Tensor], pd.DataFrame]


# a worker's model: (results meta, shard frame) of a spec reading stored features
Load = Callable[[ModelSpec, Report], tuple[dict[str, Any], ShardFrame]]


def write_parts(features: Path, out: Path, frame_of: ShardFrame, schema: pa.Schema,
                rank: int = 0, world_size: int = 1,
                progress: Callable[[int], object] | None = None) -> None:  # fmt: skip
    """Write this rank's missing parts of a started ``out``: ``frame_of(ids, features,
    latlon)`` of each shard, atomically, in ``schema``. ``progress(n)`` gets the photos of
    each part."""
    for s in missing_parts(out, read_meta(features)["shards"], rank, world_size):
        ids, feats, latlon = read_shard(features, s)
        frame = frame_of(ids, feats, latlon)
        with atomic_path(part_path(out, s)) as tmp:
            frame.to_parquet(tmp, index=False, schema=schema)
        if progress:
            progress(len(ids))


def run_on_ranks(spec: ModelSpec, features: str | Path, out: str | Path, label: str,
                 schema: pa.Schema, load: Load) -> dict[str, Any]:  # fmt: skip
    """One process of a batch run over a feature folder (torchrun, SLURM, launched or alone):
    ``load(spec, report)`` gives the results meta and the frame of a shard for the model of
    ``spec`` reading the folder's stored features (no CLIP weights load: the folder records
    its CLIP) on this rank's device; this rank then writes its missing parts in ``schema``."""
    info = init_distributed(spec.device.startswith("cuda"))
    features, out = Path(features), Path(out)
    report = lazy_progress_bar if info.is_main else silent
    with all_or_none(info, "loading the model"):
        fmeta, _, dim = feature_summary(features)
        device = str(info.device) if spec.device.startswith("cuda") else spec.device
        here = replace(spec, device=device).reading(StoredFeatures(ClipId.from_meta(fmeta), dim))
        meta, frame_of = load(here, report)
    with all_or_none(info, "checking --out"):  # every rank, so that all refuse it alike
        start_results(out, meta, write=False)
    with all_or_none(info, "recording --out"):  # before any rank writes a part
        if info.is_main:
            record_meta(out, meta)
    with all_or_none(info, "writing parts"):  # every part is written before any report
        mine = missing_parts(out, fmeta["shards"], info.rank, info.world_size)
        todo = sum(shard_size_of(features, s) for s in mine)  # photos left out are not there
        with progress_bar(label, todo, unit="photos") if info.is_main else nullcontext() as bar:
            write_parts(features, out, frame_of, schema, info.rank, info.world_size, bar)
    return meta


@dataclass(frozen=True)
class BatchResult:
    """A finished batch run, as the process that reports sees it: its folder, the photos it
    holds, and whether this run wrote any part (False: a rerun found it complete)."""

    out: Path
    photos: int
    wrote: bool
    median_error_km: float | None = None  # predictions: of the top-1, where labels are known


def run_batch(worker: Callable[..., object], spec: ModelSpec, features: str | Path,
              out: str | Path, request: Request, workers: Workers) -> bool | None:  # fmt: skip
    """Run a batch ``worker(spec, features, out, request)`` over a feature folder where
    ``workers`` says. Refused in one line before any model loads: not a feature folder, an
    ``out`` that cannot hold results. On the process that reports, whether parts were missing
    before (False: the results were complete); None on the others."""
    shards = read_meta(features)["shards"]
    check_out(Path(out))
    missing = missing_parts(Path(out), shards)
    spec = replace(spec, device=workers.device(spec.device))
    workers.run(worker, (spec, str(features), str(out), request))
    return bool(missing) if is_main_process() else None
