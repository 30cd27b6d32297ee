"""`embed-images`: run the frozen CLIP backbone once over a manifest and store feature shards.

Layout of an output folder (documented in the README):
- ``meta.json``: model, pretrained tag, manifest hash, shard size, rows, skipped rows;
- ``shard-00000.safetensors`` ...: ``features`` (n, D) float32, ``latlon`` (n, 2) float32; the
  image ids in the safetensors metadata (``ids``, JSON). Undecodable images are left out of
  their shard and listed in its metadata (``skipped``).
A finished shard is never recomputed, so an interrupted run resumes at the next one.
Training and evaluation read these features: an epoch costs no CLIP forward.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import pandas as pd
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import GeoconceptError
from ..io.artifacts import atomic_path, write_json
from ..model.clip_id import ClipId, check_same_clip
from .manifests import Manifest

if TYPE_CHECKING:
    pass

FEATURES_FORMAT = "geoconcept-features/1"


def shard_path(out_dir: Path, index: int) -> Path:
    return out_dir / f"shard-{index:05d}.safetensors"


def write_shard(
    out_dir: Path, index: int, ids: list[str], features: torch.Tensor, latlon: torch.Tensor,
    skipped: list[tuple[str, str]] | None = None,
) -> None:  # fmt: skip
    """Atomically write one feature shard (see the module docstring for the layout)."""
    tensors = {"features": features.float().contiguous(), "latlon": latlon.float().contiguous()}
    metadata = {"ids": json.dumps(ids), "skipped": json.dumps(skipped or [])}
    with atomic_path(shard_path(out_dir, index)) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def save_features(
    out_dir: str | Path, ids: list[str], features: torch.Tensor, latlon: torch.Tensor,
    shard_size: int = 4096, **meta: Any,
) -> None:  # fmt: skip
    """Write features computed elsewhere in the embed-images layout (tests, converters)."""
    out_dir = Path(out_dir)
    n_shards = max(1, -(-len(ids) // shard_size))
    for s in range(n_shards):
        part = slice(s * shard_size, (s + 1) * shard_size)
        write_shard(out_dir, s, ids[part], features[part], latlon[part])
    write_json(out_dir / "meta.json", {
        "format": FEATURES_FORMAT, "rows": len(ids), "shards": n_shards,
        "shard_size": shard_size, "skipped": [], **meta,
    })  # fmt: skip


def check_feature_folder(
    manifest: Manifest, out_dir: str | Path, clip: ClipId, shard_size: int
) -> tuple[dict[str, Any], list[int]]:
    """(meta, shards still to write) of an output folder; reads only.

    A folder of features from another CLIP model, manifest or set of existing images is
    refused: its finished shards would be mixed with new ones. So are shards without a
    meta.json (of unknown origin): rank 0 writes meta.json before any shard is encoded.
    """
    out_dir = Path(out_dir)
    rows = manifest.rows
    n_shards = max(1, -(-len(rows) // shard_size))
    meta = {
        "format": FEATURES_FORMAT,
        **clip.as_meta(),
        "manifest_sha256": manifest.sha256,
        "rows_sha256": hashlib.sha256("\n".join(rows["id"]).encode()).hexdigest()[:16],
        "shard_size": shard_size,
        "rows": len(rows),
        "shards": n_shards,
        "skipped": [{"id": i, "reason": r} for i, r in manifest.skipped],
    }
    meta_path = out_dir / "meta.json"
    if meta_path.is_file():
        old = json.loads(meta_path.read_text())
        check_same_clip(ClipId.from_meta(old), clip, f"{out_dir} holds features of",
                        fix="use a new folder")  # fmt: skip
        keys = ("manifest_sha256", "rows_sha256", "shard_size")
        changed = [k for k in keys if old.get(k) != meta[k]]
        if changed == ["shard_size"]:
            raise GeoconceptError(f"{out_dir} was embedded with --shard-size {old['shard_size']}; "
                                  "repeat it to finish that folder")  # fmt: skip
        if changed:
            why = ("other images (some appeared or went missing since)"
                   if changed == ["rows_sha256"] else "another manifest")  # fmt: skip
            raise GeoconceptError(
                f"{out_dir} holds features of {why}: {', '.join(changed)} differ; use a new folder"
            )
    elif any(out_dir.glob("shard-*.safetensors")):
        raise GeoconceptError(
            f"{out_dir} holds feature shards but no meta.json, so their origin is unknown; "
            "delete them or use a new folder"
        )
    return meta, [s for s in range(n_shards) if not shard_path(out_dir, s).is_file()]


def start_feature_folder(
    manifest: Manifest, out_dir: str | Path, clip: ClipId, shard_size: int, rank: int = 0
) -> tuple[dict[str, Any], list[int]]:
    """``check_feature_folder``, then rank 0 writes meta.json if absent (before any shard)."""
    meta, pending = check_feature_folder(manifest, out_dir, clip, shard_size)
    if rank == 0 and not (Path(out_dir) / "meta.json").is_file():
        write_json(Path(out_dir) / "meta.json", meta)
    return meta, pending


def shard_rows(manifest: Manifest, shard_size: int, index: int) -> pd.DataFrame:
    """The manifest rows that shard ``index`` holds (before undecodable images are dropped)."""
    return manifest.rows.iloc[index * shard_size : (index + 1) * shard_size]


def undecodable(folder: str | Path) -> dict[int, list[tuple[str, str]]]:
    """Per shard, (id, error) of the images it left out as unreadable (shard headers only)."""
    folder = Path(folder)
    bad = {}
    for s in range(_read_meta(folder)["shards"]):
        with safe_open(str(_existing_shard(folder, s)), "pt") as f:
            bad[s] = [tuple(b) for b in json.loads(f.metadata().get("skipped", "[]"))]
    return bad


def check_features_clip(folder: str | Path, clip: ClipId) -> None:
    """Refuse a feature folder made by another CLIP model or weights than the ones given."""
    made = ClipId.from_meta(_read_meta(Path(folder)))
    check_same_clip(made, clip, f"{folder} holds features of", hint=True)


def feature_summary(folder: str | Path) -> tuple[dict[str, Any], list[str], int]:
    """(meta, row ids, feature width) of a feature folder, read from shard headers only."""
    folder = Path(folder)
    meta = _read_meta(folder)
    ids, dim = [], 0
    for s in range(meta["shards"]):
        with safe_open(str(_existing_shard(folder, s)), "pt") as f:
            ids += json.loads(f.metadata()["ids"])
            dim = f.get_slice("features").get_shape()[-1]
    if not ids:
        raise GeoconceptError(f"{folder}: no features (every image was skipped?)")
    return meta, ids, dim


def _read_meta(folder: Path) -> dict[str, Any]:
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        raise GeoconceptError(f"{folder}: no meta.json, not an embed-images folder")
    return cast(dict[str, Any], json.loads(meta_path.read_text()))


def _existing_shard(folder: Path, index: int) -> Path:
    path = shard_path(folder, index)
    if not path.is_file():
        raise GeoconceptError(f"{folder}: shard {index} missing; rerun embed-images to finish")
    return path


@dataclass
class Features:
    """All shards of a feature folder, concatenated."""

    ids: list[str]
    features: torch.Tensor
    latlon: torch.Tensor
    meta: dict[str, Any]


def shard_size_of(folder: str | Path, index: int) -> int:
    """How many photos shard ``index`` holds (its header only)."""
    with safe_open(str(_existing_shard(Path(folder), index)), "pt") as f:
        return int(f.get_slice("features").get_shape()[0])


def read_meta(folder: str | Path) -> dict[str, Any]:
    """A feature folder's meta.json (its CLIP, shard count...), or a one-line error."""
    return _read_meta(Path(folder))


def read_shard(folder: str | Path, index: int) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """(ids, features, latlon) of one shard of an ``embed-images`` folder."""
    with safe_open(str(_existing_shard(Path(folder), index)), "pt") as f:
        return json.loads(f.metadata()["ids"]), f.get_tensor("features"), f.get_tensor("latlon")


def load_features(folder: str | Path) -> Features:
    """Read every shard of an ``embed-images`` folder (one-line error if incomplete)."""
    meta = _read_meta(Path(folder))
    ids: list[str] = []
    feats, latlon = [], []
    for s in range(meta["shards"]):
        shard_ids, shard_feats, shard_latlon = read_shard(folder, s)
        ids += shard_ids
        feats.append(shard_feats)
        latlon.append(shard_latlon)
    return Features(ids, torch.cat(feats), torch.cat(latlon), meta)
