"""`export` and `cache`: a trained model as a folder to share, and what the cache holds."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .. import export, inference, io
from .. import model as models
from ..errors import GeoconceptError
from ..model.spec import ModelSpec
from ..runtime.progress import lazy_progress_bar
from .common import Commands, Model, cli_command, model_options, say, stdout
from .render import count


@cli_command
@model_options("gallery cache_dir", after="quantize")
def export_cmd(
    model: Model,
    run: Annotated[
        Path | None,
        typer.Argument(
            help="Run folder or checkpoint file (an exported model re-exports); none with "
            "--onnx: pretrained GeoCLIP."
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Model folder to write (an earlier export there is replaced)."),
    ] = None,
    evaluation: Annotated[
        Path | None,
        typer.Option(
            "--figures",
            "--eval",
            help="evaluate --json-out file with this run's figures "
            "(default: the run's own, eval.json in its folder, if it names the run).",
        ),
    ] = None,  # fmt: skip
    onnx: Annotated[
        bool,
        typer.Option(
            "--onnx",
            help="Also write onnx/: the model as one ONNX graph with its gallery, which "
            "predict runs with no torch (--runtime onnx).",
        ),
    ] = False,
    quantize: Annotated[
        str | None, typer.Option(help="--onnx: int8 adds a dynamically quantized graph.")
    ] = None,
    clip_model: Annotated[
        str | None,
        typer.Option(help="--onnx: the CLIP architecture or config (default: the run's)."),
    ] = None,
    clip_pretrained: Annotated[
        str | None,
        typer.Option(help="--onnx: its weights, a tag or a local file (default: the run's)."),
    ] = None,
) -> None:
    """Export a trained run as a model folder to share, with a model card.

    Safetensors weights, config.json, concepts.json, the run's calibration and README.md;
    with --onnx, an ONNX bundle that predicts with no torch (pretrained GeoCLIP's when no run
    is given). Every --checkpoint option takes the folder."""
    if out is None:
        raise GeoconceptError("give --out DIR, the model folder to write")
    if run is None and not onnx:
        raise GeoconceptError("give a run to export, or --onnx for pretrained GeoCLIP's graph")
    if quantize is not None and not onnx:
        raise GeoconceptError("--quantize goes with --onnx")
    if run is not None:
        _export_run(run, out, evaluation)
    if onnx:
        spec = export.onnx_spec(out if run is not None else None, clip_model, clip_pretrained,
                                **model)  # fmt: skip
        config = export.export_onnx(spec, out, quantize, lazy_progress_bar)
        graphs = " and ".join(name for name in config["files"] if name.endswith(".onnx"))
        say(f"ONNX bundle ({graphs}, {config['clip']['model']}) -> {out / 'onnx'}; "
            f"geoconcept predict PHOTO --checkpoint {out} --runtime onnx")  # fmt: skip


def _export_run(run: Path, out: Path, evaluation: Path | None) -> None:
    """The safetensors bundle of a run, and what it says."""
    done = export.export_model(run, out, evaluation)
    config = done.config
    concepts = f"{config['concept_set']['count']} concepts, " if config["concept_set"] else ""
    kind = models.KINDS[config["kind"]]
    figures = (f"from {done.figures_from}" if done.figures_from else
               "none (evaluate --json-out RUN/eval.json, or give --figures)")  # fmt: skip
    say(
        f"exported {kind} model ({concepts}step {config['step']} of {config['total_steps']}) -> "
        f"{out}; figures: {figures}"
    )


@cli_command
@model_options("cache_dir", after="clear_calibrations")
def cache(
    clear: Annotated[
        bool, typer.Option("--clear", help="Delete gallery and concept embeddings, parsed places.")
    ] = False,
    clear_calibrations: Annotated[
        bool,
        typer.Option("--clear-calibrations", help="Delete pretrained GeoCLIP's calibrations."),
    ] = False,
    model: Model | None = None,
) -> None:
    """Show what the cache holds; --clear deletes the embeddings (recomputed when next needed).

    Gallery embeddings (one per trained checkpoint) are also pruned automatically, least
    recently used first, beyond $GEOCONCEPT_GALLERY_CACHE_GB (default 4). Fetched concept
    sources are kept: build-concepts --offline needs them.
    """
    given = ModelSpec(**(model or {})).cache_dir
    root = Path(given) if given else io.default_cache_dir()
    if root.exists() and not root.is_dir():
        raise GeoconceptError(f"--cache-dir {root}: not a folder")
    stdout.print(f"cache {root} (gallery embeddings kept within "
                 f"$GEOCONCEPT_GALLERY_CACHE_GB, default {io.GALLERY_CACHE_GB:g})",
                 highlight=False, soft_wrap=True)  # fmt: skip
    usage = io.cache_usage(root)

    def size_text(size: int) -> str:
        return f"{size / 1e9:.2f} GB" if size >= 1e9 else f"{size / 1e6:.0f} MB"

    for part, (files, size) in usage.items():
        stdout.print(f"{part}: {files} files, {size_text(size)}", highlight=False)
    if not usage:
        stdout.print(f"{root}: empty", highlight=False, soft_wrap=True)
    _calibrations(root, clear_calibrations)
    if clear:
        files, size = io.clear_cache(root)
        stdout.print(f"removed {files} files ({size_text(size)}) from {root}", highlight=False,
                     soft_wrap=True)  # fmt: skip


def _calibrations(root: Path, clear: bool) -> None:
    """Pretrained GeoCLIP's stored calibrations, which every later answer uses: listed, and
    deleted with ``clear``."""
    stored = inference.stored_geoclip_calibrations(root)
    if stored:
        say(
            "pretrained GeoCLIP's calibrations (predict, explain, evaluate and serve use the "
            "one of their gallery and CLIP, unless --no-calibration; --clear-calibrations "
            "deletes them):"
        )
    for path, cal in stored:
        what = cal if isinstance(cal, str) else (
            f"temperature {cal.temperature:.3g}, fitted on {count(cal.photos, 'photo')}, "
            f"CLIP {cal.clip.get('model')} ({cal.clip.get('pretrained')}), "
            f"{1 - cal.alpha:.0%} region within {cal.radius_km:g} km")  # fmt: skip
        say(f"  {path}: {what}")
        if clear:
            path.unlink()
    if clear:
        say(f"removed {count(len(stored), 'calibration')}")


COMMANDS: Commands = {"export": export_cmd, "cache": cache}
