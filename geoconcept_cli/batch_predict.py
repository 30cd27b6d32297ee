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

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
import torch.nn.functional as F

from .artifacts import atomic_path, hash_state_dict, hash_tensors, write_json
from .encoders import ClipId
from .errors import GeoconceptError
from .features import read_meta, read_shard
from .geo import haversine_km
from .geocode import reverse_geocode
from .predict import Predictor
from .scratch import Scratch

RESULTS_FORMAT = "geoconcept-predictions/1"
META_NAME = "_geoconcept.json"  # Parquet readers skip files starting with "_"
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


class PlaceScorer:
    """Top-k distinct places of CLIP features, scoring each place once (module docstring).

    The (photos x places) logits are never held whole: blocks of BLOCK x BLOCK stay in the
    CPU's cache while their softmax denominator (an online log-sum-exp, as in flash attention)
    and top-k are taken, so the work is one product and no pass over a 100K-wide matrix (a
    top-k deeper than 16 starts from one wider span, at most WARM_BLOCKS blocks). An indexed
    gallery is searched in its index instead (``Predictor.topk``)."""

    BLOCK = 1024
    RUN = 32  # columns summarised by their max, so that only runs above the floor are read
    OFFERED = 32  # offered logits a row, on average, that trigger a merge (raising the floor)
    WARM = 64  # the first span of columns holds WARM x k of them (see _block_rows)
    WARM_BLOCKS = 16  # and at most this many blocks' worth: 64 MB of logits for 1,024 photos

    def __init__(self, predictor: Predictor):
        self.predictor = predictor
        exact = predictor.index is None  # an indexed gallery: topk searches its index
        self.emb = predictor.place_emb if exact else torch.empty(0)
        self.log_count = predictor.place_copies.float().log()
        self.logit_scale = float(predictor.head.logit_scale.detach().exp())
        self.temperature = predictor.temperature
        # a span's logits: a fresh array each span costs page faults that rival the exp
        self.scratch = Scratch()

    @torch.no_grad()
    def topk(self, feats: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(probabilities, gallery rows), each (B, k): as ``Predictor.topk``."""
        p = self.predictor
        if p.index is not None:
            return p.topk(feats, k)
        img = p.head.embed_images(feats.to(p.device).float())
        k = max(1, min(k, len(self.emb)))
        probs, idx = zip(*(self._block_rows(img[r : r + self.BLOCK], k)
                           for r in range(0, len(img), self.BLOCK)), strict=True)  # fmt: skip
        return torch.cat(probs).cpu(), self.predictor.places[torch.cat(idx)].cpu()

    def _block_rows(self, q: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        n, dev = len(q), q.device
        q = q * self.logit_scale  # the rounding of Predictor.logits, so that near-ties rank alike
        high = torch.full((n,), -torch.inf, device=dev)  # running max of each row's logits
        total = torch.zeros(n, dtype=torch.float64, device=dev)  # sum of exp(logit - high)
        best = torch.empty(n, 0, device=dev)
        best_idx = torch.empty(n, 0, dtype=torch.long, device=dev)
        # once k are held, a block offers only the logits above a row's k-th best: a few,
        # kept as (row, column, value) until they are merged, so a top-32 (explain's
        # runner-up pool) costs about what a top-5 does
        offered: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        pending = torch.zeros(n, dtype=torch.long, device=dev)  # offered, per row
        # the first span holds WARM x k columns (at most WARM_BLOCKS blocks): the k-th best of
        # so many sits near where it ends, so later blocks offer about k ln(N / (WARM k))
        # values a row, not k ln(N / k)
        first = self.BLOCK * min(self.WARM_BLOCKS, max(1, -(-self.WARM * k // self.BLOCK)))
        for c, end in self._spans(first):
            emb = self.emb[c:end]
            z = torch.mm(q, emb.T, out=self.scratch("logits", (n, len(emb)), q.dtype, dev))
            if self.temperature != 1.0:  # as Predictor.probabilities divides
                z.div_(self.temperature)
            whole = z if len(emb) % self.RUN == 0 else F.pad(z, (0, -len(emb) % self.RUN),
                                                             value=-torch.inf)  # fmt: skip
            runs = whole.view(n, -1, self.RUN)
            run_max = runs.amax(2)  # each run of columns' max: most runs cannot enter
            if best.shape[1] < k:
                top = z.topk(min(k, z.shape[1]), dim=1)
                best, best_idx = self._merge(best, best_idx, top.values, top.indices + c, k)
            else:
                floor = best[:, -1:]
                rows, at = (run_max > floor).nonzero(as_tuple=True)  # the runs that can
                pick, within = (runs[rows, at] > floor[rows]).nonzero(as_tuple=True)
                rows, cols = rows[pick], at[pick] * self.RUN + within
                offered.append((rows, cols + c, z[rows, cols]))
                pending += torch.bincount(rows, minlength=n)
                # merge when a row averages OFFERED, or one row a block: the merge's width
                # (the busiest row's) stays under 2 blocks, whatever order the gallery is in
                if int(pending.sum()) >= n * self.OFFERED or int(pending.max()) >= self.BLOCK:
                    best, best_idx = self._merge_offered(best, best_idx, offered, k)
                    offered = []
                    pending.zero_()
            new_high = torch.maximum(high, run_max.amax(1))
            weighted = z.add_(self.log_count[c:end]).sub_(new_high[:, None]).exp_()
            total = total * torch.exp(high - new_high).double() + weighted.sum(1).double()
            high = new_high
        best, best_idx = self._merge_offered(best, best_idx, offered, k)
        lse = high.double() + total.log()
        return (best.double() - lse[:, None]).exp().float(), best_idx

    def _spans(self, first: int) -> list[tuple[int, int]]:
        """Column spans of the places: ``first`` wide, then blocks."""
        n = len(self.emb)
        starts = [0, *range(first, n, self.BLOCK)] if first < n else [0]
        return [(c, min(n, first if c == 0 else c + self.BLOCK)) for c in starts]

    @staticmethod
    def _merge(best: torch.Tensor, best_idx: torch.Tensor, values: torch.Tensor,
               columns: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """The top-k of the held and the (B, m) offered values, with their columns."""
        held, rows = torch.cat([best, values], 1), torch.cat([best_idx, columns], 1)
        keep = held.topk(min(k, held.shape[1]), dim=1)
        return keep.values, rows.gather(1, keep.indices)

    def _merge_offered(self, best: torch.Tensor, best_idx: torch.Tensor,
                       offered: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], k: int
                       ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """:meth:`_merge` of (row, column, value) triples, laid out a row each (-inf after a
        row's last)."""
        if not offered:
            return best, best_idx
        rows, cols, vals = (torch.cat(part) for part in zip(*offered, strict=True))
        order = rows.argsort(stable=True)
        rows, cols, vals = rows[order], cols[order], vals[order]
        counts = torch.bincount(rows, minlength=len(best))
        at = torch.arange(len(rows), device=rows.device) - (counts.cumsum(0) - counts)[rows]
        width = int(counts.max())
        values = torch.full((len(best), width), -torch.inf, device=best.device)
        columns = torch.zeros((len(best), width), dtype=torch.long, device=best.device)
        values[rows, at], columns[rows, at] = vals, cols
        return self._merge(best, best_idx, values, columns, k)


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


ShardFrame = Callable[[list[str], torch.Tensor, torch.Tensor], pd.DataFrame]
GalleryProgress = Callable[[int, int], None] | None  # (points encoded, of total)


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


def run_on_ranks(
    features: str, out: str, device: str, label: str, schema: pa.Schema,
    load: Callable[[str, ClipId, int, GalleryProgress], tuple[dict[str, Any], ShardFrame]],
) -> dict[str, Any]:  # fmt: skip
    """One process of a batch run over a feature folder (torchrun, SLURM, ``launch`` or
    alone): ``load(device, clip, width, progress)`` gives the results meta and the frame of a
    shard (``progress`` reports gallery encoding, on the main rank); this rank then writes its
    missing parts in ``schema``. No CLIP weights are loaded: the features were embedded by
    the CLIP their folder records."""
    from contextlib import nullcontext

    from .distributed import all_or_none, init_distributed
    from .features import feature_summary, shard_size_of
    from .progress import lazy_progress_bar, progress_bar

    info = init_distributed(device.startswith("cuda"))
    encoding = (lazy_progress_bar("encoding gallery (once; cached)", "points") if info.is_main
                else nullcontext(None))  # fmt: skip
    with all_or_none(info, "loading the model"), encoding as gallery_progress:
        fmeta, _, dim = feature_summary(features)
        meta, frame_of = load(str(info.device) if device.startswith("cuda") else device,
                              ClipId.from_meta(fmeta), dim, gallery_progress)  # fmt: skip
    with all_or_none(info, "checking --out"):  # every rank, so that all refuse it alike
        start_results(Path(out), meta, write=False)
    with all_or_none(info, "recording --out"):  # before any rank writes a part
        if info.is_main:
            record_meta(Path(out), meta)
    with all_or_none(info, "writing parts"):  # every part is written before any report
        mine = missing_parts(Path(out), fmeta["shards"], info.rank, info.world_size)
        todo = sum(shard_size_of(features, s) for s in mine)  # photos left out are not there
        with progress_bar(label, todo, unit="photos") if info.is_main else nullcontext() as bar:
            write_parts(Path(features), Path(out), frame_of, schema, info.rank,
                        info.world_size, bar)  # fmt: skip
    return meta


def predict_features_worker(
    features: str, out: str, checkpoint: str | None, gallery: str | None,
    cache_dir: str | None, device: str, top_k: int,
) -> dict[str, Any]:  # fmt: skip
    """One process of batch prediction (picklable for the launcher): its share of shards."""
    from .predict import load_run

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
