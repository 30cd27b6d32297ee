"""The ``geoconcept`` command: parses arguments, calls the library, prints. No logic here."""

from __future__ import annotations

import functools
import json
import logging
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from .errors import GeoconceptError

app = typer.Typer(
    help="Interpretable worldwide image geo-localization (concept-aware GeoCLIP).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
out = Console()
err = Console(stderr=True)

# ------------------------------------------------------------------ shared options
ClipModel = Annotated[
    str,
    typer.Option(
        help="open_clip architecture (GeoCLIP uses ViT-L-14), or a JSON model config path."
    ),
]
ClipPretrained = Annotated[
    str,
    typer.Option(
        help="open_clip pretrained tag, a local .pt/.safetensors checkpoint, or 'none' "
        "(random weights: meaningless predictions, for tests)."
    ),
]
Gallery = Annotated[
    Path | None,
    typer.Option(help="CSV/Parquet of lat/lon gallery points (default: GeoCLIP's 100K)."),
]
Device = Annotated[str, typer.Option(help="torch device, e.g. cpu or cuda.")]
CacheDir = Annotated[
    Path | None,
    typer.Option(
        help="cache for gallery embeddings (default: $GEOCONCEPT_CACHE or ~/.cache/geoconcept)."
    ),
]


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    err.print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)


def cli_command(fn: Callable) -> Callable:
    """Run a command with one-line warnings, and turn GeoconceptError into 'error: ...' + exit 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        warnings.showwarning = _one_line_warning
        logging.getLogger().setLevel(logging.ERROR)  # open_clip logs chatter on the root logger
        try:
            return fn(*args, **kwargs)
        except GeoconceptError as exc:
            err.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


@contextmanager
def progress_bar(description: str, total: int) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on stderr; yields ``advance(n)``."""
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:,}/{task.total:,}"),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    ) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)


def _gallery_progress() -> Callable[[int], None]:
    """Lazily open a progress bar the first time the gallery has to be (re-)encoded."""
    state: dict = {}

    def advance(n: int) -> None:
        if "bar" not in state:
            state["bar"] = Progress(
                TextColumn("encoding gallery (once; cached)"), BarColumn(), console=err,
                transient=True,
            )  # fmt: skip
            state["bar"].start()
            state["task"] = state["bar"].add_task("", total=100_000)
        state["bar"].advance(state["task"], n)

    def stop() -> None:
        if "bar" in state:
            state["bar"].stop()

    advance.stop = stop  # type: ignore[attr-defined]
    return advance


# ------------------------------------------------------------------ commands
@app.callback()
def main() -> None:
    """Interpretable worldwide image geo-localization (concept-aware GeoCLIP).

    Stages read and write files, so each can rerun alone: build-concepts -> embed-concepts
    -> embed-images -> train -> evaluate; predict and explain work on single photos.
    """


@app.command()
@cli_command
def predict(
    image: Annotated[Path, typer.Argument(help="Photo to locate (JPEG, PNG, WebP, TIFF...).")],
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="How many candidates.")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
    clip_model: ClipModel = "ViT-L-14",
    clip_pretrained: ClipPretrained = "openai",
    gallery: Gallery = None,
    device: Device = "cpu",
    cache_dir: CacheDir = None,
) -> None:
    """Predict where a photo was taken: top-k GPS candidates with probabilities and place names."""
    from .images import load_image
    from .predict import Predictor

    load_image(image)  # fail fast on a bad file, before loading any model
    advance = _gallery_progress()
    try:
        predictor = Predictor.load(
            clip_model, clip_pretrained, gallery, cache_dir=cache_dir, device=device,
            progress=advance,
        )  # fmt: skip
    finally:
        advance.stop()  # type: ignore[attr-defined]
    cands = predictor.predict(image, top_k)
    if as_json:
        out.print_json(
            json.dumps({"image": str(image), "predictions": [c.to_dict() for c in cands]})
        )
        return
    for c in cands:
        out.print(f"{c.rank}  {c.lat:.2f}, {c.lon:.2f}  p={c.prob:.2f}  {c.place}", highlight=False)


if __name__ == "__main__":  # pragma: no cover
    app()
