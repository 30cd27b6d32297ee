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
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import pandas as pd
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset

from .artifacts import atomic_path, write_json
from .containers import COMPRESSED_TAR, ArchiveIndex, Photo, expand, open_photo, read_webdataset
from .encoders import ClipBackbone, ClipId, check_same_clip
from .errors import GeoconceptError
from .gallery import find_column, latlon_columns, latlon_names, read_table
from .geo import valid_latlon

if TYPE_CHECKING:
    from PIL import Image

FEATURES_FORMAT = "geoconcept-features/1"
# Image columns of label files as they ship: Im2GPS/Im2GPS3k/YFCC4k's IMG_ID, OSV-5M's id
# (file names without their .jpg), img2dataset's key, and common manifest spellings.
ID_NAMES = ("img_id", "id", "image", "image_id", "img", "path", "image_path", "img_path",
            "filename", "file", "file_name", "key", "photo_id")  # fmt: skip


@dataclass
class Manifest:
    """Usable rows of a manifest (or of WebDataset shards), and the ones skipped with why."""

    rows: pd.DataFrame  # id, photo (a file path or a containers.Entry), lat, lon
    skipped: list[tuple[str, str]] = field(default_factory=list)
    sha256: str = ""
    source: str = "column id, coordinates from lat, lon"  # where ids and coordinates came from


def read_sources(sources: list[Path], images: list[Path] | None = None) -> Manifest:
    """The photos to embed: one manifest (CSV/Parquet) whose ids name photos in ``images`` (a
    folder, or archives: .zip, .tar, .msg), or WebDataset .tar shards that carry their own
    coordinates. Shell patterns (quoted) are expanded."""
    sources, images = expand(sources), expand(images or [])
    if not all(s.name.lower().endswith((".tar", *COMPRESSED_TAR)) for s in sources):
        if len(sources) > 1:
            raise GeoconceptError("give one manifest (CSV/Parquet), or WebDataset .tar shards")
        return read_manifest(sources[0], images)
    if images:
        raise GeoconceptError("--images is for a manifest; WebDataset shards hold their photos")
    found = read_webdataset(sources)
    rows = pd.DataFrame({"id": found.ids, "photo": pd.Series(found.photos, dtype=object),
                         "lat": found.lat, "lon": found.lon})  # fmt: skip
    return Manifest(rows, found.skipped, found.sha256,
                    "sample keys, coordinates from each sample's .json")  # fmt: skip


def read_manifest(path: str | Path, images: str | Path | list[Path] | None = None) -> Manifest:
    """Read a CSV/Parquet manifest (image id/path + LAT/LON); bad rows are skipped, not fatal.

    The ids name files in the ``images`` folder (default: the manifest's), or photos inside
    ``images`` archives (see :mod:`containers`), read in place."""
    df = read_table(path)
    id_col = find_column(df, ID_NAMES, "image id/path", path)
    lat_col, lon_col = latlon_names(df, path)
    lat, lon = latlon_columns(df, path)
    find, skipped = _photo_finder(path, images)
    ids = df[id_col].astype(str).tolist()
    photos = [find(i) for i in ids]
    ok_coords = valid_latlon(lat, lon)
    keep = []
    for n, (i, p) in enumerate(zip(ids, photos, strict=True)):
        if not ok_coords[n]:
            skipped.append((i, "invalid coordinates"))
        elif p is None:
            skipped.append((i, "missing image"))
        else:
            keep.append(n)
    rows = pd.DataFrame(
        {"id": [ids[n] for n in keep], "photo": pd.Series([photos[n] for n in keep], dtype=object),
         "lat": lat[keep], "lon": lon[keep]}
    )  # fmt: skip
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
    return Manifest(rows, skipped, digest,
                    f"column {id_col}, coordinates from {lat_col}, {lon_col}")  # fmt: skip


def _photo_finder(
    manifest: str | Path, images: str | Path | list[Path] | None
) -> tuple[Callable[[str], Photo | None], list[tuple[str, str]]]:
    """(id -> the photo it names or None, [(archive, why it is unreadable)]): photos in a
    folder, or in archives indexed once; a truncated archive keeps what precedes the damage."""
    places = [Path(images)] if isinstance(images, (str, Path)) else list(images or [])
    if not places:
        places = [Path(manifest).parent]
    if len(places) == 1 and places[0].is_dir():
        base = places[0]

        def in_folder(image_id: str) -> Photo | None:
            path = image_path(base, image_id)
            return str(path) if path.is_file() else None

        return in_folder, []
    if any(p.is_dir() for p in places):
        raise GeoconceptError("--images takes one folder, or archives (.zip, .tar, .msg)")
    index = ArchiveIndex(places)
    return index.find, index.unreadable


def image_path(base: Path, image_id: str) -> Path:
    """The photo a manifest id names: the id as a path, or, for an id without a suffix that
    names no file (OSV-5M's), that id with ``.jpg``."""
    path = base / image_id
    if not path.suffix and not path.is_file() and path.with_name(path.name + ".jpg").is_file():
        return path.with_name(path.name + ".jpg")
    return path


def split_preprocess(
    preprocess: Callable[[Image.Image], torch.Tensor],
) -> tuple[Callable[[Image.Image], Any], Callable[[torch.Tensor], torch.Tensor] | None]:
    """Split open_clip's transform into (PIL part, Normalize) so workers can ship uint8.

    Decoding workers then send 4x fewer bytes and the float conversion and normalisation run
    on the model's device. Transforms of another shape are applied whole in the workers.
    """
    from torchvision.transforms import Compose, Normalize

    steps = list(getattr(preprocess, "transforms", []))
    if (
        len(steps) >= 2
        and isinstance(steps[-1], Normalize)
        and "ToTensor" in type(steps[-2]).__name__
    ):
        return Compose(steps[:-2]), steps[-1]
    return preprocess, None


def subset_manifest(path: str | Path, fraction: float, out: str | Path, seed: int = 0) -> int:
    """Write a seeded random ``fraction`` of a manifest's rows (e.g. the paper's 5% of MP-16)."""
    if not 0 < fraction <= 1:
        raise GeoconceptError(f"--fraction must be in (0, 1], got {fraction}")
    df = read_table(path)
    part = df.sample(frac=fraction, random_state=seed).sort_index()
    with atomic_path(out) as tmp:
        if Path(out).suffix.lower() in {".parquet", ".pq"}:
            part.to_parquet(tmp, index=False)
        else:
            part.to_csv(tmp, index=False)
    return len(part)


class _Images(Dataset[tuple[int, torch.Tensor | str]]):
    """Decodes photos in DataLoader workers (uint8 CHW when possible); errors become strings."""

    def __init__(self, photos: list[Photo], transform: Callable[[Image.Image], Any],
                 as_uint8: bool):  # fmt: skip
        self.photos, self.transform, self.as_uint8 = photos, transform, as_uint8

    def __len__(self) -> int:
        return len(self.photos)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | str]:
        try:
            img = self.transform(open_photo(self.photos[i]))
        except GeoconceptError as exc:
            return i, str(exc)
        if self.as_uint8:
            img = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1)
        return i, img


def _collate(batch: list[tuple[int, torch.Tensor | str]]
             ) -> tuple[list[int], torch.Tensor | None, list[tuple[int, str]]]:  # fmt: skip
    good = [(i, x) for i, x in batch if isinstance(x, torch.Tensor)]
    bad = [(i, x) for i, x in batch if not isinstance(x, torch.Tensor)]
    pixels = torch.stack([x for _, x in good]) if good else None
    return [i for i, _ in good], pixels, bad


def _encode_shard(part: pd.DataFrame, clip: ClipBackbone, batch_size: int, workers: int,
                  progress: Callable[[int], object] | None = None
                  ) -> tuple[torch.Tensor, list[int], list[tuple[str, str]]]:  # fmt: skip
    """CLIP features of one shard's rows: (features, kept row positions, [(id, error)])."""
    pil_part, normalize = split_preprocess(clip.preprocess)
    # Small loader batches reach the model quickly; the model sees ``batch_size`` at once.
    loader = DataLoader(
        _Images(part["photo"].tolist(), pil_part, normalize is not None),
        batch_size=min(16, batch_size), num_workers=workers, collate_fn=_collate,
        pin_memory=clip.device.type == "cuda", prefetch_factor=4 if workers else None,
    )  # fmt: skip
    feats: list[torch.Tensor] = []
    keep: list[int] = []
    bad: list[tuple[str, str]] = []
    pending: list[torch.Tensor] = []

    def flush() -> None:  # progress counts images encoded, not merely decoded
        if pending:
            pixels = torch.cat(pending)
            if normalize is not None:
                pixels = normalize(pixels.float().div_(255))
            feats.append(clip.encode_images(pixels))
            pending.clear()
            if progress:
                progress(len(pixels))

    # Each loader batch goes to the device as it arrives (pinned, asynchronous) and features
    # stay there until the shard ends: no host-side concatenation, no per-batch synchronisation,
    # so the next batch is gathered while the GPU runs the current one.
    for idx, pixels, failed in loader:
        bad += [(part["id"].iloc[i], msg) for i, msg in failed]
        if pixels is not None:
            pending.append(pixels.to(clip.device, non_blocking=True))
            keep += idx
            if sum(len(p) for p in pending) >= batch_size:
                flush()
        if progress and failed:
            progress(len(failed))
    flush()
    return (torch.cat(feats).cpu() if feats else torch.zeros(0, clip.embed_dim)), keep, bad


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


def embed_images(
    manifest: Manifest,
    out_dir: str | Path,
    clip: ClipBackbone,
    *,
    shard_size: int = 4096,
    batch_size: int = 64,
    workers: int = 2,
    rank: int = 0,
    world_size: int = 1,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Write the missing feature shards (this rank's share: shard i goes to rank i % world_size).

    ``progress(n)`` gets the images of each batch encoded; finished shards are not reported."""
    meta, pending = start_feature_folder(manifest, out_dir, clip.identity, shard_size, rank)
    for s in range(rank, meta["shards"], world_size):
        if s not in pending:
            continue
        part = shard_rows(manifest, shard_size, s)
        feats, keep, bad = _encode_shard(part, clip, batch_size, workers, progress)
        sel = part.iloc[keep]
        write_shard(
            Path(out_dir), s, sel["id"].tolist(), feats,
            torch.tensor(sel[["lat", "lon"]].to_numpy(), dtype=torch.float32), bad,
        )  # fmt: skip
    return meta


def embed_images_worker(
    sources: list[str], images: list[str], out: str, clip_model: str, clip_pretrained: str,
    device: str, batch_size: int, shard_size: int, workers: int,
    manifest: Manifest | None = None,
) -> dict[str, Any]:  # fmt: skip
    """One process of embed-images (picklable for the launcher): its share of the shards.
    ``manifest``: the sources as this process already read them (archives are then not
    indexed again); launched processes read them themselves.

    Rank 0 shows progress over its own unfinished shards (with N ranks, about 1/N of the
    images); a rank 0 with none left shows none."""
    from .distributed import all_or_none, init_distributed
    from .encoders import load_clip
    from .progress import progress_bar

    info = init_distributed(device.startswith("cuda"))
    with all_or_none(info, "starting --out"):  # meta.json exists before any rank writes a shard
        m = manifest or read_sources([Path(s) for s in sources], [Path(i) for i in images])
        meta, pending = start_feature_folder(
            m, out, ClipId.of(clip_model, clip_pretrained), shard_size, info.rank
        )
    mine = [s for s in range(info.rank, meta["shards"], info.world_size) if s in pending]
    with all_or_none(info, "embedding images"):  # every shard is written before any report
        if mine:  # else no need to load CLIP
            clip = load_clip(clip_model, clip_pretrained,
                             info.device if device.startswith("cuda") else device)  # fmt: skip
            label = "embedding images" + (f" (rank 0: {len(mine)} of {meta['shards']} shards)"
                                          if info.world_size > 1 else "")  # fmt: skip
            total = sum(len(shard_rows(m, shard_size, s)) for s in mine)
            bar = progress_bar(label, total, unit="images") if info.is_main else nullcontext()
            with bar as advance:
                embed_images(
                    m, out, clip, shard_size=shard_size, batch_size=batch_size,
                    workers=workers, rank=info.rank, world_size=info.world_size, progress=advance,
                )  # fmt: skip
    return meta


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
