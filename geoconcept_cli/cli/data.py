"""`subset` and `embed-images`: the photos a run learns from, and their CLIP features."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .. import data
from ..model.spec import ModelSpec
from ..runtime.launch import Workers
from .common import Commands, Model, cli_command, model_options, note, say, stdout
from .render import count


@cli_command
def subset(
    manifest: Annotated[Path, typer.Argument(help="CSV/Parquet manifest.")],
    fraction: Annotated[float, typer.Option(help="Share of rows kept, e.g. 0.05.")],
    out: Annotated[Path, typer.Option(help="Output manifest (.csv or .parquet).")],
    seed: int = 0,
) -> None:
    """Keep a seeded random fraction of a manifest (the paper trains on 5% of MP-16)."""
    n = data.subset_manifest(manifest, fraction, out, seed)
    stdout.print(f"{count(n, 'row')} -> {out}")


@cli_command(on_interrupt="finished shards are kept: rerun the same command to continue")
@model_options("clip_model clip_pretrained device", after="gpus")
def embed_images(
    sources: Annotated[
        list[Path],
        typer.Argument(
            help="A manifest (CSV/Parquet: image id/path, LAT, LON), or WebDataset .tar shards "
            "whose samples hold KEY.jpg + KEY.json with the coordinates. Quoted patterns "
            "('shards/*.tar') are expanded.",
            show_default=False,
        ),
    ],
    model: Model,
    images: Annotated[
        list[Path] | None,
        typer.Option(
            help="Where the manifest's photos are: a folder (default: the manifest's), or "
            "archives read in place (.zip, .tar, .msg msgpack shards); repeat it, or quote a "
            "pattern ('mp16/*.msg')."
        ),
    ] = None,
    out: Annotated[Path, typer.Option(help="Output folder of feature shards.")] = Path("features"),
    batch_size: Annotated[int, typer.Option(min=1)] = 64,
    shard_size: Annotated[int, typer.Option(min=1, help="Images per shard.")] = 4096,
    workers: Annotated[int, typer.Option(min=0, help="Decoding processes.")] = 2,
    gpus: Annotated[int, typer.Option(min=0, help="Split shards over N GPUs.")] = 0,
    labels: Annotated[
        str,
        typer.Option(
            help="Where coordinates come from: 'columns' of the manifest, or 'exif': SOURCES is "
            "one folder of photos located by their EXIF GPS (those without it are skipped)."
        ),
    ] = "columns",
) -> None:
    """Run the frozen CLIP backbone once over a manifest's photos (in a folder or in archives,
    never extracted), over WebDataset shards or over a folder of geotagged photos; write
    resumable feature shards."""
    options = data.EmbedOptions(batch_size, shard_size, workers, labels)
    done = data.embed_images(sources, out, ModelSpec(**model), images or [], options,
                             Workers(gpus=gpus), note)  # fmt: skip
    if done is None:  # under torchrun/SLURM every rank runs this: one reports
        return
    if not done.wrote:
        shards = count(done.shards, "shard")
        say(f"{out} is complete: {count(done.stored, 'image')} in {shards}; nothing to embed")
        return
    say(f"{count(done.embedded, 'image')} embedded into {out} ({done.stored - done.embedded} "
        f"already there), {count(done.skipped, 'row')} skipped")  # fmt: skip


COMMANDS: Commands = {"subset": subset, "embed-images": embed_images}
