"""`serve`: the web page and JSON API over a warm model (see ``serving``)."""

from __future__ import annotations

from typing import Annotated

import typer

from .. import serving
from ..model.spec import ModelSpec
from ..runtime.progress import lazy_progress_bar
from .common import Commands, Model, cli_command, model_options, say


@cli_command
@model_options("concepts concept_embeddings clip_model clip_pretrained gallery device cache_dir "
               "calibration",
               after="tiles")  # fmt: skip
@model_options("checkpoint runtime", after=None)
def serve(
    model: Model,
    host: Annotated[
        str,
        typer.Option(
            help="Address to bind. Anything but 127.0.0.1/localhost is "
            "reachable from other machines: set an --api-key."
        ),
    ] = "127.0.0.1",  # fmt: skip
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 8000,
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="GEOCONCEPT_API_KEY",
            show_envvar=True,
            help="Require 'Authorization: Bearer KEY' on every endpoint "
            "but /healthz and the page's static files.",
        ),
    ] = None,  # fmt: skip
    max_upload_mb: Annotated[
        float, typer.Option(min=0.01, help="Largest photo upload accepted (413 above).")
    ] = 20.0,
    tiles: Annotated[
        str | None,
        typer.Option(
            help="Optional map tile URL template for online users, e.g. "
            "'https://tile.openstreetmap.org/{z}/{x}/{y}.png'."
        ),
    ] = None,  # fmt: skip
) -> None:
    """Serve a web page and a JSON API that locate and explain photos, with the models warm.

    Loads everything once, prints the URL, and answers until Ctrl-C. The page (at /) works
    offline; the API is described at /openapi.json and in the README."""
    serving.serve(ModelSpec(**model), host, port, api_key, max_upload_mb, tiles,
                  lazy_progress_bar, say)  # fmt: skip


COMMANDS: Commands = {"serve": serve}
