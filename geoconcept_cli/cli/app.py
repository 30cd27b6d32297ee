"""The ``geoconcept`` command: the Typer app, and every group's commands registered on it.

A command parses its options, builds a spec or config, calls one library function and
renders what it returns; the groups live beside this module, one per concern."""

from __future__ import annotations

import typer

from . import concepts, data, evaluation, locate, models, serve, training

app = typer.Typer(
    help="Interpretable worldwide image geo-localization (concept-aware GeoCLIP).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="markdown",  # a docstring's paragraph reflows to the terminal's width
)


@app.callback()
def main() -> None:
    """Interpretable worldwide image geo-localization (concept-aware GeoCLIP).

    Stages read and write files, so each can rerun alone: build-concepts -> embed-concepts
    -> embed-images -> train -> evaluate; predict and explain locate a photo, a folder of
    photos or a feature folder.
    """


COMMANDS = {**locate.COMMANDS, **serve.COMMANDS, **concepts.COMMANDS, **data.COMMANDS,
            **training.COMMANDS, **evaluation.COMMANDS, **models.COMMANDS}  # fmt: skip
# the order --help lists them in: using a model first, then the pipeline's stages
LISTED = ("predict", "explain", "where", "serve", "atlas", "build-concepts", "embed-concepts",
          "subset", "embed-images", "train", "evaluate", "calibrate", "ablate", "downstream",
          "visualize", "export", "cache")  # fmt: skip
assert sorted(LISTED) == sorted(COMMANDS), "every command is listed once"
for name in LISTED:
    app.command(name)(COMMANDS[name])
