"""`train` and `ablate`: runs of the concept-aware alignment, their options read from
``TrainConfig``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from .. import evaluation, training
from ..model.spec import ModelSpec
from ..runtime.launch import Workers
from .common import Commands, Model, cli_command, model_options, note, options_from, say, stdout
from .render import print_json

TRAINING = ("epochs max_steps batch_size lr weight_decay warmup_steps grad_clip queue_size "
            "batch_noise_m queue_noise_m divergence sigma lambda_div delta_weight "
            "train_location seed save_every log_every amp")  # fmt: skip


@cli_command(
    on_interrupt="rerun the same command with --resume to continue from the last "
    "checkpoint (written every --save-every steps and at each epoch end)"
)
@options_from(training.TrainConfig, TRAINING, after="concepts", into="config")
def train(
    features: Annotated[Path, typer.Argument(help="Feature folder from embed-images.")],
    config: dict[str, Any],
    out: Annotated[Path, typer.Option(help="Run folder: checkpoint, config, metrics.")],
    concepts: Annotated[
        str, typer.Option(help="Concept embeddings from embed-concepts, or 'none' (GeoCLIP).")
    ],
    resume: Annotated[bool, typer.Option(help="Continue from the run's checkpoint.")] = False,
    gpus: Annotated[int, typer.Option(help="GPUs per node (DDP over NCCL).")] = 0,
    nproc: Annotated[int, typer.Option(help="CPU processes (DDP over gloo), with --gpus 0.")] = 1,
    nnodes: int = 1,
    node_rank: int = 0,
    master_addr: Annotated[str, typer.Option(help="Address of node 0 (multi-node).")] = (
        "127.0.0.1"
    ),
    master_port: Annotated[
        int, typer.Option(help="Port of node 0 (multi-node; one node picks a free port).")
    ] = 29500,
    rdzv_timeout: Annotated[
        int, typer.Option(min=1, help="Seconds nodes wait for each other (torchrun: 900).")
    ] = 900,
) -> None:
    """Train the concept-aware alignment (or plain GeoCLIP with --concepts none)."""
    cfg = training.TrainConfig(features=str(features), out=str(out),
                               concepts=None if concepts.lower() == "none" else concepts,
                               **config)  # fmt: skip
    workers = Workers(gpus, nproc, nnodes, node_rank, master_addr, master_port, rdzv_timeout)
    last = training.train(cfg, resume, workers)
    if last is None:  # the run folder is written by node 0, maybe on another machine
        say(f"node {node_rank}: done; node 0 writes the run to {cfg.out}")
    elif last.get("done") and last.get("loss") is None:
        say(f"{cfg.out}: finished at step {last['step']}, nothing to do")
    else:
        print_json(last)


@cli_command
@model_options("gallery clip_model clip_pretrained device", after="queue_size")
@options_from(training.TrainConfig, "epochs max_steps batch_size lr warmup_steps queue_size",
              after="concepts", into="config", max_steps="Stop each run after N steps.",
              batch_size=None)  # fmt: skip
def ablate(
    train_features: Annotated[Path, typer.Argument(help="Training feature folder.")],
    test_features: Annotated[Path, typer.Argument(help="Test feature folder.")],
    config: dict[str, Any],
    model: Model,
    out: Annotated[Path, typer.Option(help="Folder for the runs and ablation.md/.json.")],
    concepts: Annotated[
        Path | None, typer.Option(help="Geography-driven concepts.parquet (default: shipped).")
    ] = None,
) -> None:
    """Concept-set ablation: geography-driven vs generic vs random (same k) vs none."""
    base = training.TrainConfig(features="", out="", **config)
    result = evaluation.ablate(train_features, test_features, out, base, ModelSpec(**model),
                               concepts, note)  # fmt: skip
    stdout.print(evaluation.markdown_table(result), highlight=False, soft_wrap=True)


COMMANDS: Commands = {"train": train, "ablate": ablate}
