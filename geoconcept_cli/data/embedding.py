"""`embed-images`' work: run the frozen CLIP backbone once over a manifest's photos, decoded
in DataLoader workers, into the feature shards of ``data.features`` (this rank's share)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import GeoconceptError
from ..io.archives import (
    Photo,
    open_photo,
)
from ..model.clip import ClipBackbone, load_clip
from ..model.clip_id import ClipId
from ..model.spec import ModelSpec
from ..runtime.distributed import all_or_none, init_distributed, is_main_process
from ..runtime.launch import Workers
from ..runtime.progress import Log, progress_bar, quiet
from .features import (
    check_feature_folder,
    shard_rows,
    start_feature_folder,
    undecodable,
    write_shard,
)
from .manifests import Manifest, read_sources

if TYPE_CHECKING:
    from PIL import Image


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


@dataclass(frozen=True)
class EmbedOptions:
    """How photos are embedded: ``batch_size`` at once through CLIP, ``shard_size`` to a
    shard (the unit a rerun skips), decoded by ``workers`` DataLoader processes; ``labels``,
    where the coordinates come from (manifests.LABELS)."""

    batch_size: int = 64
    shard_size: int = 4096
    workers: int = 2
    labels: str = "columns"


def embed_shards(manifest: Manifest, out_dir: str | Path, clip: ClipBackbone,
                 options: EmbedOptions = EmbedOptions(), rank: int = 0, world_size: int = 1,
                 progress: Callable[[int], None] | None = None) -> dict[str, Any]:  # fmt: skip
    """Write the missing feature shards (this rank's share: shard i goes to rank i % world_size).

    ``progress(n)`` gets the images of each batch encoded; finished shards are not reported."""
    size = options.shard_size
    meta, pending = start_feature_folder(manifest, out_dir, clip.identity, size, rank)
    for s in range(rank, meta["shards"], world_size):
        if s not in pending:
            continue
        part = shard_rows(manifest, size, s)
        feats, keep, bad = _encode_shard(part, clip, options.batch_size, options.workers,
                                         progress)  # fmt: skip
        sel = part.iloc[keep]
        write_shard(
            Path(out_dir), s, sel["id"].tolist(), feats,
            torch.tensor(sel[["lat", "lon"]].to_numpy(), dtype=torch.float32), bad,
        )  # fmt: skip
    return meta


def embed_images_worker(sources: list[str], images: list[str], out: str, spec: ModelSpec,
                        options: EmbedOptions, manifest: Manifest | None = None
                        ) -> dict[str, Any]:  # fmt: skip
    """One process of embed-images (picklable for the launcher): its share of the shards.
    ``manifest``: the sources as this process already read them (archives are then not
    indexed again); launched processes read them themselves.

    Rank 0 shows progress over its own unfinished shards (with N ranks, about 1/N of the
    images); a rank 0 with none left shows none."""
    info = init_distributed(spec.device.startswith("cuda"))
    with all_or_none(info, "starting --out"):  # meta.json exists before any rank writes a shard
        m = manifest or read_sources([Path(s) for s in sources], [Path(i) for i in images],
                                     options.labels)  # fmt: skip
        meta, pending = start_feature_folder(
            m, out, ClipId.of(spec.clip_model, spec.clip_pretrained), options.shard_size,
            info.rank,
        )  # fmt: skip
    mine = [s for s in range(info.rank, meta["shards"], info.world_size) if s in pending]
    with all_or_none(info, "embedding images"):  # every shard is written before any report
        if mine:  # else no need to load CLIP
            device = info.device if spec.device.startswith("cuda") else spec.device
            clip = load_clip(spec.clip_model, spec.clip_pretrained, device)
            label = "embedding images" + (f" (rank 0: {len(mine)} of {meta['shards']} shards)"
                                          if info.world_size > 1 else "")  # fmt: skip
            total = sum(len(shard_rows(m, options.shard_size, s)) for s in mine)
            bar = progress_bar(label, total, unit="images") if info.is_main else nullcontext()
            with bar as advance:
                embed_shards(m, out, clip, options, info.rank, info.world_size, advance)
    return meta


@dataclass(frozen=True)
class EmbedResult:
    """What an ``embed_images`` run left in its folder: images stored there, of which embedded
    by this run, its shards, the manifest rows skipped (missing, invalid coordinates,
    undecodable), and whether this run wrote any shard (False: a rerun found it complete)."""

    out: Path
    stored: int
    embedded: int
    shards: int
    skipped: int
    wrote: bool


def embed_images(
    sources: Sequence[str | Path], out: str | Path, spec: ModelSpec = ModelSpec(),
    images: Sequence[str | Path] = (), options: EmbedOptions = EmbedOptions(),
    ranks: Workers = Workers(), log: Log = quiet,
) -> EmbedResult | None:  # fmt: skip
    """`geoconcept embed-images`: run ``spec``'s CLIP once over the photos of ``sources`` (a
    manifest whose photos are in ``images``, a folder or archives, or WebDataset shards) into
    the resumable feature folder ``out`` (see ``data.features``), here or over ``ranks``. What
    was found and skipped is ``log``ged as it is read. The result on the process that
    reports, None on the others."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise GeoconceptError(f"--out {out}: a file; give a folder for the feature shards")
    spec = replace(spec, device=ranks.device(spec.device))
    ranks.per_node()  # impossible process counts are refused before any reading
    m = read_sources([Path(s) for s in sources], [Path(i) for i in images], options.labels)
    label = sources[0] if len(sources) == 1 else f"{len(m.rows) + len(m.skipped)} samples"
    log(f"{label}: image ids from {m.source}")
    if m.rows.empty:
        raise GeoconceptError(
            f"{label}: none of its {len(m.skipped)} rows is usable (first: "
            f"{m.skipped[0][1] if m.skipped else 'no rows'}); check --images"
        )
    _log_skipped(m.skipped, log, "skipped rows (listed in meta.json)")
    clip = ClipId.of(spec.clip_model, spec.clip_pretrained)
    meta, pending = check_feature_folder(m, out, clip, options.shard_size)
    if pending:
        ranks.run(embed_images_worker, ([str(s) for s in sources], [str(i) for i in images],
                                        str(out), spec, options), manifest=m)  # fmt: skip
    if not is_main_process():  # under torchrun/SLURM every rank runs this: one reports
        return None
    bad_in = undecodable(out)  # images that exist but did not decode, listed in their shards
    bad = [b for shard in bad_in.values() for b in shard]
    _log_skipped(bad, log, "undecodable images (listed in their shards)")
    now = sum(len(shard_rows(m, options.shard_size, s)) - len(bad_in[s]) for s in pending)
    return EmbedResult(out, len(m.rows) - len(bad), now, meta["shards"],
                       len(m.skipped) + len(bad), bool(pending))  # fmt: skip


def _log_skipped(skipped: list[tuple[str, str]], log: Log, what: str) -> None:
    """The first ten skipped rows, each with why, and how many more there are."""
    for ident, reason in skipped[:10]:
        log(f"skipped {ident}: {reason}")
    if len(skipped) > 10:
        log(f"... and {len(skipped) - 10} more {what}")
