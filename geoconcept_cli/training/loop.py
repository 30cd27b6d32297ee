"""`train`: concept-aware alignment (or plain GeoCLIP) on cached image features.

One process or many (DDP over torch.distributed; see ``distributed``). Everything that makes a
run reproducible is derived from (seed, step): the data order of each epoch and the GPS noise,
so a resumed run takes exactly the steps an uninterrupted one would (on the same kind of device:
on a GPU the noise comes from the GPU's generator).

On a GPU the features, coordinates and GPS queue live on the device (the features where they
fit), so a step's batch gather and GPS noise are kernels too: no host copies or host-side
tensor work between steps, whose time varied between runs and ate into throughput.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.features import feature_summary, load_features
from ..errors import GeoconceptError
from ..io.artifacts import atomic_path, remove_stale_temporaries, write_json
from ..model.checkpoints import (
    LEGACY_NAME,
    load_weights,
    read_checkpoint,
    run_calibration_path,
    run_checkpoint,
    save_checkpoint,
)
from ..model.clip_id import ClipId
from ..model.concept_embeddings import load_concept_embeddings
from ..model.concept_head import (
    ConceptAwareHead,
    RetrievalHead,
    build_head,
    same_basis,
    set_location_trainable,
)
from ..model.losses import DIVERGENCES, info_nce
from ..runtime.distributed import (
    DistInfo,
    all_gather_with_grad,
    all_or_none,
    init_distributed,
    mean_across_ranks,
    same_on_all_ranks,
)
from ..runtime.launch import Workers, launched_externally
from .config import TrainConfig

KM_PER_DEGREE = 111.195


def check_run(cfg: TrainConfig, resume: bool, world_size: int = 1) -> dict[str, Any] | None:
    """Validate a run before any process starts; ``{"step", "done"}`` if it already finished.

    A checkpoint in ``--out`` is only continued with the same options, the same feature rows and
    the same concept basis (compared by content, so moved or re-spelled paths are fine).
    """
    cfg.validate()
    if Path(cfg.out).exists() and not Path(cfg.out).is_dir():
        raise GeoconceptError(f"--out {cfg.out} is a file; give a run folder")
    meta, ids, dim = feature_summary(cfg.features)
    n = len(ids)
    basis = None
    if cfg.concepts:
        basis = load_concept_embeddings(cfg.concepts, ClipId.from_meta(meta))
        width = basis.embeddings.shape[1]
        if width != dim:  # files that do not record their CLIP pass the check above
            raise GeoconceptError(
                f"{cfg.concepts}: {width}-d concept embeddings, but {cfg.features} holds "
                f"{dim}-d image features: embed the concepts with the features' CLIP"
            )
    if cfg.batch_size % world_size:
        raise GeoconceptError(f"--batch-size {cfg.batch_size} must divide by {world_size}")
    if n < cfg.batch_size:
        raise GeoconceptError(
            f"{cfg.features}: {n} samples, fewer than --batch-size {cfg.batch_size}"
        )
    total = cfg.total_steps(n)
    if cfg.max_steps and cfg.max_steps > total:
        warnings.warn(
            f"--max-steps {cfg.max_steps} is more than --epochs {cfg.epochs} give ({total} "
            f"steps of --batch-size {cfg.batch_size}): the run stops at {total}; raise --epochs",
            stacklevel=1,
        )
    if cfg.warmup_steps > total:
        warnings.warn(
            f"--warmup-steps {cfg.warmup_steps} is longer than the run ({total} steps): the "
            "learning rate never reaches --lr",
            stacklevel=1,  # one location: shown once though the CLI and train() both check
        )
    ckpt_path = run_checkpoint(cfg.out)
    if ckpt_path is None:
        if resume:
            warnings.warn(f"--resume: no checkpoint in {cfg.out} yet; starting a new run",
                          stacklevel=1)  # fmt: skip
        return None
    ckpt = read_checkpoint(ckpt_path, resume=True)
    changed = _changed_options(ckpt["config"], cfg)
    if changed:
        raise GeoconceptError(
            f"{cfg.out} holds a run with other {', '.join(changed)}; use a new --out "
            "(see config.json there)"
        )
    saved = ckpt.get("features") or {}
    if saved and saved != features_identity(ids):
        what = f"{saved['rows']} rows then, {n} now" if saved["rows"] != n else "other image ids"
        raise GeoconceptError(
            f"{cfg.features} changed since {cfg.out} was checkpointed ({what}); use a new --out"
        )
    stored = ckpt["model"].get("concept_embeddings")
    if basis is not None and (stored is None or not same_basis(basis.embeddings, stored)):
        raise GeoconceptError(
            f"{cfg.concepts} is not the concept basis {cfg.out} was trained with; use a new --out"
        )
    if ckpt["step"] >= total:
        return {"step": ckpt["step"], "done": True}
    if not resume:
        raise GeoconceptError(
            f"{cfg.out} has a checkpoint at step {ckpt['step']}/{total}: pass --resume to continue"
        )
    return None


# Paths are checked by what they hold (feature rows, concept basis); the logging cadence does
# not change the weights. Every other option must match the checkpoint's.
_COMPARED_BY_CONTENT = ("features", "out", "concepts", "log_every", "save_every")
_OPTION_NAMES = {"lambda_div": "--lambda", "device": "--gpus"}


def _changed_options(saved: dict[str, Any], cfg: TrainConfig) -> list[str]:
    """Options of ``cfg`` that differ from a checkpoint's config (a missing key: its default)."""
    changed = [
        f"{_OPTION_NAMES.get(f.name, '--' + f.name.replace('_', '-'))} "
        f"{getattr(cfg, f.name)} (was {saved.get(f.name, f.default)})"
        for f in fields(cfg)
        if f.name not in _COMPARED_BY_CONTENT
        and saved.get(f.name, f.default) != getattr(cfg, f.name)
    ]
    if bool(saved.get("concepts")) != bool(cfg.concepts):  # concept-aware vs plain GeoCLIP
        changed.append("--concepts " + ("none" if saved.get("concepts") else "(was none)"))
    return changed


def features_identity(ids: list[str]) -> dict[str, Any]:
    """What a resumed run checks its features against: the row count and a digest of the ids."""
    return {"rows": len(ids), "ids_sha256": hashlib.sha256("\n".join(ids).encode()).hexdigest()}


class GPSQueue:
    """A ring buffer of recent (clean) batch GPS, used as extra negatives (GeoCLIP)."""

    def __init__(self, size: int, device: str | torch.device = "cpu"):
        self.gps = torch.zeros(size, 2, device=device)
        self.count = 0
        self.ptr = 0

    def items(self) -> torch.Tensor:
        return self.gps[: self.count]

    def push(self, gps: torch.Tensor) -> None:
        size = len(self.gps)
        if size == 0:
            return
        gps = gps[-size:].detach().to(self.gps.device)
        idx = (self.ptr + torch.arange(len(gps), device=gps.device)) % size
        self.gps[idx] = gps
        self.ptr = int((self.ptr + len(gps)) % size)
        self.count = min(size, self.count + len(gps))

    def state(self) -> dict[str, Any]:
        return {"gps": self.gps.cpu(), "count": self.count, "ptr": self.ptr}

    def load(self, state: dict[str, Any]) -> None:
        gps = state["gps"].to(self.gps.device, copy=True)
        self.gps, self.count, self.ptr = gps, state["count"], state["ptr"]


def jitter(gps: torch.Tensor, metres: float, gen: torch.Generator) -> torch.Tensor:
    """Gaussian GPS noise of ``metres`` standard deviation (GeoCLIP's augmentation); ``gen`` is
    a generator on the device of ``gps``."""
    if metres <= 0 or len(gps) == 0:
        return gps
    noise = torch.randn(gps.shape, generator=gen, device=gps.device)
    noise *= metres / 1000.0 / KM_PER_DEGREE
    noise[:, 1] /= torch.cos(torch.deg2rad(gps[:, 0])).clamp_min(0.01)
    out = gps + noise
    out[:, 0] = out[:, 0].clamp(-90, 90)
    out[:, 1] = (out[:, 1] + 180) % 360 - 180
    return out


class _Forward(nn.Module):
    """One forward for DDP: image embeddings, batch GPS embeddings, queue GPS embeddings."""

    def __init__(self, head: RetrievalHead):
        super().__init__()
        self.head = head

    def forward(self, feats: torch.Tensor, gps: torch.Tensor, queue_gps: torch.Tensor
                ) -> tuple[torch.Tensor, ...]:  # fmt: skip
        img, loc = self.head.embed(feats, torch.cat([gps, queue_gps]))
        return img, *loc.split([len(gps), len(queue_gps)])


def step_loss(
    model: nn.Module, head: RetrievalHead, feats: torch.Tensor, gps: torch.Tensor,
    queue_gps: torch.Tensor, cfg: TrainConfig, info: DistInfo,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:  # fmt: skip
    """The training objective on this rank's share of one global batch."""
    img, loc, qemb = model(feats, gps, queue_gps)
    loc_all = all_gather_with_grad(loc, info)
    contrastive = info_nce(img, torch.cat([loc_all, qemb]), head.logit_scale, info.rank * len(img))
    loss = contrastive
    parts = {"contrastive": contrastive.detach()}
    if cfg.concepts and cfg.lambda_div > 0:
        img_all = all_gather_with_grad(img, info)
        div = DIVERGENCES[cfg.divergence](img_all, loc_all, cfg.sigma)
        loss = loss + cfg.lambda_div * div
        parts["divergence"] = div.detach()
    if cfg.concepts and cfg.delta_weight > 0:
        assert isinstance(head, ConceptAwareHead)  # --concepts builds a concept-aware head
        loss = loss + cfg.delta_weight * head.delta.pow(2).sum()
    return loss, parts


def prepare(head: RetrievalHead, cfg: TrainConfig, info: DistInfo
            ) -> tuple[nn.Module, list[nn.Parameter], torch.optim.AdamW]:  # fmt: skip
    """The forward module (DDP-wrapped over several ranks), trainable parameters and AdamW."""
    set_location_trainable(head, cfg.train_location)
    params = [p for p in head.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    model: nn.Module = _Forward(head)
    if info.world_size > 1:
        device = head.logit_scale.device
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    return model, params, opt


def optimisation_step(
    model: nn.Module, head: RetrievalHead, opt: torch.optim.Optimizer,
    params: list[nn.Parameter], batch: tuple[torch.Tensor, ...], cfg: TrainConfig,
    info: DistInfo,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:  # fmt: skip
    """Forward (AMP on GPU), backward, clipping and the optimiser update on one batch.

    ``batch`` is this rank's (features, jittered GPS) and the jittered queue GPS, on any device.
    """
    device = head.logit_scale.device
    feats, gps, queue_gps = (t.to(device) for t in batch)
    amp = device.type == "cuda" and cfg.amp
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        loss, parts = step_loss(model, head, feats, gps, queue_gps, cfg, info)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
    opt.step()
    with torch.no_grad():  # as CLIP: a temperature below 1/100 destabilises training
        head.logit_scale.clamp_(max=math.log(100))
    return loss, parts


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to zero."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def resident(features: torch.Tensor, device: torch.device, share: float = 0.5) -> torch.Tensor:
    """``features`` on a GPU ``device`` if they take at most ``share`` of its free memory
    (the paper's 5% of MP-16 is 0.6 GB); else, and on a CPU, where they are."""
    if device.type != "cuda" or features.nbytes > share * torch.cuda.mem_get_info(device)[0]:
        return features
    return features.to(device)


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=gen)


def run_training(
    cfg: TrainConfig, resume: bool = False, info: DistInfo | None = None,
    progress: Callable[[int, int, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Run (or, with ``resume``, continue) training; returns the last metrics. Every rank calls it.

    A finished run is not redone: a rerun returns at once with ``done`` set.
    """
    use_cuda = cfg.device.startswith("cuda")
    info = info or init_distributed(use_cuda)
    device = info.device if use_cuda else torch.device(cfg.device)
    out = Path(cfg.out)
    with all_or_none(info, "starting the run"):  # loading may fail on one rank alone too
        finished = check_run(cfg, resume, info.world_size)
        if finished:
            return finished
        data = load_features(cfg.features)
        n = len(data.ids)
        local_b = cfg.batch_size // info.world_size
        steps_per_epoch = n // cfg.batch_size
        total = cfg.total_steps(n)

        torch.manual_seed(cfg.seed)
        basis = load_concept_embeddings(cfg.concepts) if cfg.concepts else None
        head = build_head(basis.embeddings if basis else None, data.features.shape[1])
        head = head.to(device).train()
        provenance = {
            "features": features_identity(data.ids),
            "clip": ClipId.from_meta(data.meta).as_meta(prefix=""),
            "concepts": {k: basis.meta[k] for k in ("concepts", "categories", "subcategories")}
            if basis else None,
        }  # fmt: skip
        features, latlon = resident(data.features, device), data.latlon.to(device)
        del data  # the host copy, where the features moved to the GPU
        step, ckpt, ckpt_path = 0, None, cfg.checkpoint_path()
        found = run_checkpoint(out)
        if found is not None:  # check_run has vetted it: same run, unfinished, --resume
            ckpt = read_checkpoint(found, resume=True)
            load_weights(head, ckpt["model"], found)  # before DDP, which broadcasts rank 0's
            step = ckpt["step"]
        if info.is_main:
            if found is None:
                write_json(out / "config.json", asdict(cfg))
            remove_stale_temporaries(ckpt_path)  # a checkpoint cut by a kill leaves one
            stale = run_calibration_path(out)
            if stale.is_file():  # made for the weights this run is about to change
                stale.unlink()
                warnings.warn(f"removed {stale}: it was made for the weights before this "
                              "resume; calibrate again when the run ends",
                              stacklevel=1)  # fmt: skip
    if not same_on_all_ranks(step, info):
        raise GeoconceptError(
            f"the ranks see different checkpoints in {cfg.out}: --out must be on a filesystem "
            "every node shares"
        )
    model, params, opt = prepare(head, cfg, info)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total, cfg.warmup_steps))
    queue = GPSQueue(cfg.queue_size, device)
    if ckpt:
        _load_training_state(ckpt, opt, sched, queue, found)

    metrics_path = out / "metrics.jsonl"
    with all_or_none(info, "starting metrics.jsonl"):
        if info.is_main:
            _truncate_metrics(metrics_path, step)

    def save() -> None:
        with all_or_none(info, "saving the checkpoint"):
            if info.is_main:
                save_checkpoint(
                    ckpt_path, head, asdict(cfg), optimizer=opt.state_dict(),
                    scheduler=sched.state_dict(), queue=queue.state(), step=step,
                    total_steps=total, **provenance,
                )  # fmt: skip
                (out / LEGACY_NAME).unlink(missing_ok=True)  # converted: one per run

    last: dict[str, Any] = {}
    t0, seen = time.perf_counter(), 0
    order_epoch, order = -1, None
    while step < total:
        epoch, in_epoch = divmod(step, steps_per_epoch)
        if epoch != order_epoch:
            order_epoch, order = epoch, epoch_order(n, cfg.seed, epoch).to(device)
        assert order is not None  # drawn at the first step: order_epoch starts at -1
        idx = order[in_epoch * cfg.batch_size : (in_epoch + 1) * cfg.batch_size]
        gen = torch.Generator(device).manual_seed(cfg.seed * 1_000_003 + step)
        gps_global = jitter(latlon[idx], cfg.batch_noise_m, gen)
        queue_gps = jitter(queue.items(), cfg.queue_noise_m, gen)
        mine = slice(info.rank * local_b, (info.rank + 1) * local_b)
        batch = (features[idx[mine].to(features.device)], gps_global[mine], queue_gps)
        loss, parts = optimisation_step(model, head, opt, params, batch, cfg, info)
        lr = sched.get_last_lr()[0]  # the rate this step used
        sched.step()
        queue.push(latlon[idx])
        step += 1
        seen += cfg.batch_size
        log = step % cfg.log_every == 0 or step == total
        checkpoint = step % cfg.save_every == 0 or step % steps_per_epoch == 0 or step == total
        if log or checkpoint:  # every rank takes the same branch: collectives stay matched
            global_loss = mean_across_ranks(loss.item(), info)
            if not math.isfinite(global_loss):
                raise GeoconceptError(
                    f"loss is {global_loss} at step {step}: lower --lr, or check --sigma"
                )
        if log:
            last = {
                "step": step, "epoch": epoch, "loss": global_loss,
                **{k: mean_across_ranks(float(v), info) for k, v in parts.items()},
                "lr": lr, "samples_per_s": seen / (time.perf_counter() - t0),
            }  # fmt: skip
            with all_or_none(info, "logging metrics"):
                if info.is_main:
                    with metrics_path.open("a") as f:
                        f.write(json.dumps(last) + "\n")
        if progress and info.is_main:
            progress(step, total, last)
        if checkpoint:
            save()
    return last


def _load_training_state(ckpt: dict[str, Any], opt: torch.optim.Optimizer,
                         sched: torch.optim.lr_scheduler.LRScheduler, queue: GPSQueue,
                         source: Path | None) -> None:  # fmt: skip
    """Optimizer, schedule and GPS queue of a resumed run; one line if they do not fit it."""
    try:
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        queue.load(ckpt["queue"])
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError, AttributeError):
        raise GeoconceptError(
            f"{source}: its optimizer, schedule or GPS queue state does not fit this run "
            "(damaged?); use a new --out"
        ) from None


def train_worker(cfg: TrainConfig, resume: bool = False) -> dict[str, Any]:
    """Entry point of each training process (picklable for the elastic launcher)."""
    from ..runtime.progress import progress_bar

    info = init_distributed(cfg.device.startswith("cuda"))
    if not info.is_main:
        return run_training(cfg, resume, info)
    fields = "{task.fields[loss]} {task.fields[rate]}"  # empty until the first log step
    with progress_bar("training", 1, fields, loss="", rate="") as bar:

        def report(step: int, total: int, last: dict[str, Any]) -> None:
            loss = f"loss {last['loss']:.4f}" if "loss" in last else ""
            rate = f"{last['samples_per_s']:,.0f} samples/s" if last else ""
            bar(0, completed=step, total=total, loss=loss, rate=rate)

        return run_training(cfg, resume, info, report)


def train(cfg: TrainConfig, resume: bool = False, workers: Workers = Workers()
          ) -> dict[str, Any] | None:  # fmt: skip
    """`geoconcept train`: run ``cfg`` (or, with ``resume``, continue it from its checkpoint)
    here or over ``workers`` (DDP), with progress; returns the last logged metrics, or
    ``{"step", "done"}`` when the run had already finished, or None on a node other than
    node 0 (which writes the run). Options and provenance are checked before any process
    starts, so a mistake is one line, not one traceback per rank."""
    cfg = replace(cfg, device=workers.device(cfg.device))
    if not launched_externally():
        finished = check_run(cfg, resume, workers.world_size())
        if finished:
            return finished
    last: dict[str, Any] | None = workers.run(train_worker, (cfg, resume))
    if last is not None:
        return last
    return last_metrics(cfg.out) if workers.node_rank == 0 else None


def _metric_lines(path: Path) -> list[dict[str, Any]]:
    """Decodable lines of a metrics.jsonl (a kill can leave the last one half-written)."""
    rows = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def last_metrics(out: str | Path) -> dict[str, Any]:
    """The last line of a run's metrics.jsonl ({} if none)."""
    rows = _metric_lines(Path(out) / "metrics.jsonl")
    return rows[-1] if rows else {}


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop log lines written after the checkpoint the run restarts from."""
    if not path.is_file():
        return
    keep = [row for row in _metric_lines(path) if row.get("step", 0) <= step]
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(row) + "\n" for row in keep))
