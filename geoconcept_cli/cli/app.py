"""The ``geoconcept`` command: parses arguments, calls the library, prints. No logic here."""

from __future__ import annotations

import functools
import json
import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TextIO

import typer
from rich.console import Console

from ..errors import GeoconceptError
from ..runtime.progress import lazy_progress_bar, progress_bar

if TYPE_CHECKING:  # imported where used: a command loads only what it needs
    from ..inference.explainer import Explainer

app = typer.Typer(
    help="Interpretable worldwide image geo-localization (concept-aware GeoCLIP).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="markdown",  # a docstring's paragraph reflows to the terminal's width
)
stdout = Console(soft_wrap=True)  # lines whole off a terminal too: scripts read them
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
    typer.Option(
        help="CSV/Parquet of lat/lon gallery points (default: GeoCLIP's 100K); from "
        "200K points indexed (predict, explain; evaluate/calibrate refuse it)."
    ),
]
MODEL_PATHS = "run folder, checkpoint file or exported model folder"
Concepts = Annotated[Path | None, typer.Option(help="concepts.parquet (default: the shipped set).")]
ConceptEmbeddings = Annotated[
    Path | None, typer.Option(help="embed-concepts output (default: computed and cached).")
]
Device = Annotated[str, typer.Option(help="torch device, e.g. cpu or cuda.")]
CacheDir = Annotated[
    Path | None,
    typer.Option(
        help="cache for gallery embeddings (default: $GEOCONCEPT_CACHE or ~/.cache/geoconcept)."
    ),
]


def _one_line_warning(message: Warning | str, category: type[Warning], filename: str,
                      lineno: int, file: TextIO | None = None, line: str | None = None
                      ) -> None:  # fmt: skip
    err.print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)


def cli_command(fn: Callable[..., Any] | None = None, *, on_interrupt: str = ""
                ) -> Callable[..., Any]:  # fmt: skip
    """Run a command with one-line warnings; bad input (GeoconceptError, or a path the system
    refuses: an --out that is a file, a read-only folder) becomes 'error: ...' + exit 2.
    Ctrl-C prints ``on_interrupt`` (how to continue) and exits 130."""
    if fn is None:
        return functools.partial(cli_command, on_interrupt=on_interrupt)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        warnings.showwarning = _one_line_warning
        logging.getLogger().setLevel(logging.ERROR)  # open_clip logs chatter on the root logger
        try:
            return fn(*args, **kwargs)
        except (GeoconceptError, OSError) as exc:
            err.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err.print(f"interrupted{'; ' + on_interrupt if on_interrupt else ''}",
                      highlight=False, soft_wrap=True)  # fmt: skip
            raise typer.Exit(130) from None

    return wrapper


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
    image: Annotated[
        Path,
        typer.Argument(
            help="Photo to locate (JPEG, PNG, WebP, TIFF...), or an "
            "embed-images feature folder for batch prediction (with --out)."
        ),
    ],  # fmt: skip
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="How many candidates.")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
    checkpoint: Annotated[
        Path | None, typer.Option(help=f"Trained run: {MODEL_PATHS} (default: GeoCLIP).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Batch mode: folder of Parquet parts (results.parquet).")
    ] = None,
    gpus: Annotated[int, typer.Option(min=0, help="Batch mode: split shards over N GPUs.")] = 0,
    clip_model: ClipModel = "ViT-L-14",
    clip_pretrained: ClipPretrained = "openai",
    gallery: Gallery = None,
    device: Device = "cpu",
    cache_dir: CacheDir = None,
) -> None:
    """Predict where a photo was taken: top-k GPS candidates with probabilities and place names.

    Given a feature folder from embed-images and --out, predicts every photo in it at
    matrix-product speed (no CLIP runs), split over --gpus or torchrun/SLURM ranks."""
    if image.is_dir():
        if as_json:
            raise GeoconceptError("--json is for one photo; batch mode writes --out")
        _predict_features(image, out, checkpoint, top_k, gpus, gallery, device, cache_dir)
        return
    if out is not None or gpus:
        raise GeoconceptError("--out and --gpus are for a feature folder (batch mode)")
    from ..io.images import load_image

    load_image(image)  # a bad file fails in a second: before torch and the models load
    from ..inference.predictor import load_predictor

    with lazy_progress_bar("encoding gallery (once; cached)", "points") as advance:
        predictor = load_predictor(checkpoint, clip_model, clip_pretrained, gallery, cache_dir,
                                   device, advance)  # fmt: skip
    result = predictor.describe(image, top_k)
    if as_json:
        stdout.print_json(json.dumps({"image": str(image), **result}))
        return
    for c in result["predictions"]:
        stdout.print(f"{c['rank']}  {_latlon(c)}  p={c['prob']:.3g}  "
                     f"{c['place']}", highlight=False)  # fmt: skip
    _print_probabilities(result)


def _predict_features(
    features: Path, out: Path | None, checkpoint: Path | None, top_k: int, gpus: int,
    gallery: Path | None, device: str, cache_dir: Path | None,
) -> None:  # fmt: skip
    """predict's batch mode: every photo of a feature folder into a folder of Parquet parts."""
    from ..inference.batch.predict import predict_features_worker, summary

    if out is None:
        raise GeoconceptError(
            f"{features} is a folder: batch prediction needs --out results.parquet"
        )
    paths = (str(checkpoint) if checkpoint else None, str(gallery) if gallery else None,
             str(cache_dir) if cache_dir else None)  # fmt: skip
    missing = _run_batch(predict_features_worker, features, out, paths, gpus, device, (top_k,))
    if missing is not None:
        photos, median = summary(out)
        done = (f"{photos} photos predicted -> {out}" if missing else
                f"{out} is complete: {photos} photos; nothing to predict")  # fmt: skip
        stdout.print(f"{done} (median error {median:.1f} km)", highlight=False, soft_wrap=True)


def _run_batch(
    worker: Callable[..., object], features: Path, out: Path, paths: tuple[str | None, ...],
    gpus: int, device: str, options: tuple[Any, ...],
) -> int | None:  # fmt: skip
    """Run a batch worker ``worker(features, out, *paths, device, *options)`` over a feature
    folder: in this process, in ``gpus`` launched ones, or as this rank of torchrun / SLURM.
    On the process that reports (the main one), how many parts were missing before (0: a
    rerun found the results complete); None on the others."""
    from ..data.features import read_meta
    from ..inference.batch.results import check_out, missing_parts
    from ..runtime.distributed import (
        check_processes,
        is_main_process,
        launch,
        launched_externally,
    )

    shards = read_meta(features)["shards"]  # not a feature folder, or no place for results:
    check_out(out)  # one line, before any model loads
    missing = len(missing_parts(out, shards))
    check_processes(gpus)
    if gpus > 0 and not device.startswith("cuda"):
        device = "cuda"
    args = (str(features), str(out), *paths, device, *options)
    if gpus > 1 and not launched_externally():
        launch(worker, args, nproc=gpus)
    else:
        worker(*args)
    return missing if is_main_process() else None


def _explainer(checkpoint: Path | None, concepts: Path | None, concept_embeddings: Path | None,
               clip_model: str, clip_pretrained: str, gallery: Path | None,
               cache_dir: Path | None, device: str) -> Explainer:  # fmt: skip
    """explain's and serve's explainer, with progress where the gallery or the concepts are
    not cached yet."""
    from ..inference.explainer import load_explainer

    with (
        lazy_progress_bar("encoding gallery (once; cached)", "points") as advance,
        lazy_progress_bar("embedding concepts (once; cached)", "concepts") as concept_advance,
    ):
        return load_explainer(checkpoint, concepts, concept_embeddings, clip_model,
                              clip_pretrained, gallery, cache_dir, device, advance,
                              concept_advance)  # fmt: skip


def _latlon(place: dict[str, Any]) -> str:
    """A candidate's coordinates to 4 decimals (~10 m): distinct gallery places often share
    a town and the first 2 decimals, and would look like one place repeated."""
    return f"{place['lat']:.4f}, {place['lon']:.4f}"


def _print_probabilities(result: dict[str, Any]) -> None:
    """Whether the probabilities are calibrated, and the confidence region if there is one."""
    stdout.print(f"[dim]{result['probabilities']['note']}[/]", highlight=False)
    region = result.get("region")
    if region:
        spans = ", ".join(f"{c['country']} {c['mass']:.2f}" for c in region["countries"][:6])
        stdout.print(
            f"{region['coverage']:.0%} confidence region (true location within "
            f"{region['radius_km']:g} km of one of its places): {region['places']:,} places, "
            f"{region['area_km2']:,.0f} km²; countries by probability: {spans}",
            highlight=False,
            soft_wrap=True,
        )


def _print_explanation(exp: dict[str, Any]) -> None:
    """The terminal view of one explanation: locations table, concept bars, reasons."""
    from rich.table import Table

    table = Table(title=f"{exp['image']}  [dim]({exp['mode']})[/]", title_justify="left")
    for col in ("#", "lat, lon", "p", "place"):
        table.add_column(col)
    for p in exp["predictions"]:
        table.add_row(str(p["rank"]), _latlon(p), f"{p['prob']:.3g}",
                      p["place"])  # fmt: skip
    stdout.print(table)
    spread = exp["spread"]
    stdout.print(f"top-k spread: max {spread['max_pairwise_km']:.0f} km apart, mean "
                 f"{spread['mean_to_top1_km']:.0f} km from #1", highlight=False)  # fmt: skip
    _print_probabilities(exp)

    def bars(title: str, entries: list[dict[str, Any]], source: str | None) -> None:
        if not entries:
            return
        stdout.print(f"\n[bold]{title}[/] [dim]({source})[/]" if source else f"\n[bold]{title}[/]")
        top = max(abs(e["weight"]) for e in entries) or 1.0
        for e in entries:
            bar = "█" * max(1, round(12 * abs(e["weight"]) / top))
            kind = f"{e['category']}/{e['subcategory']}"
            stdout.print(f"  {e['concept']:<30.30} {e['weight']:+.3f} {bar:<12} [dim]{kind}[/]",
                         highlight=False)  # fmt: skip

    bars("What the photo shows", exp.get("photo_concepts", []), exp.get("photo_concepts_source"))
    bars("What the place is known for", exp.get("place_concepts", []),
         exp.get("place_concepts_source"))  # fmt: skip
    bars("Why here (per-concept score terms)", exp.get("why_here", []), None)
    if "why_here" in exp and not exp["why_here"]:
        stdout.print("\n[bold]Why here[/]: no concept shown in the photo adds to this score")
    bars("Seen in the photo and known for the place", exp.get("overlap", []), "correlational")
    if "rather_than" in exp:
        r = exp["rather_than"]
        pro = ", ".join(e["concept"] for e in r["for"])
        con = ", ".join(e["concept"] for e in r["against"])
        stdout.print(f"\nPredicted {exp['predictions'][0]['place']} rather than "
                     f"{r['runner_up']['place']} mainly because of {pro}; against it: {con}.",
                     highlight=False)  # fmt: skip
        stdout.print(f"Rule: {exp['rule']}", highlight=False)
    if "check" in exp:
        c = exp["check"]
        verdict = "[green]faithful[/]" if c["faithful"] else (
            f"[red]NOT more faithful than random[/] ({'; '.join(c['unmet'])})")  # fmt: skip
        top, rand = c["top_concepts_removed"], c["random_concepts_removed"]
        moves = "drops" if top["score_drop"] >= 0 else "raises"
        stdout.print(
            f"\nCheck: removing the top {c['m']} concepts {moves} the score by "
            f"{abs(top['score_drop']):.3f} (rank -> {top['rank_after']}); removing {c['m']} "
            f"random concepts drops it by {rand['score_drop']:.3f} ± {rand['score_drop_std']:.3f} "
            f"(mean ± sd of {c['draws']} draws; median rank -> {rand['rank_after_median']:.0f}). "
            f"The top concepts beat {round(c['beats_random_share'] * c['draws'])} of "
            f"{c['draws']} draws: {verdict}"
        )
    if "note" in exp:
        stdout.print(f"\n[dim]{exp['note']}[/]")


@app.command()
@cli_command
def explain(
    target: Annotated[
        Path,
        typer.Argument(
            help="A photo; or, for batch mode, a folder of photos, a manifest (CSV/Parquet), "
            "or an embed-images feature folder (explained from its features: no CLIP runs)."
        ),
    ],
    checkpoint: Annotated[Path | None, typer.Option(help=f"Trained run: {MODEL_PATHS}.")] = None,
    top_k: Annotated[int, typer.Option("--top-k", min=1)] = 5,
    n_concepts: Annotated[int, typer.Option("--concepts-shown", min=1)] = 8,
    check: Annotated[bool, typer.Option("--check", help="Deletion test vs random.")] = False,
    m: Annotated[int, typer.Option(min=1, help="Concepts removed by --check.")] = 3,
    draws: Annotated[int, typer.Option(min=20, help="Random draws for --check.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    map_png: Annotated[Path | None, typer.Option("--map", help="Write a world map PNG.")] = None,
    true_lat: Annotated[
        float | None,
        typer.Option(help="True latitude, for the map (default: the photo's EXIF GPS, if any)."),
    ] = None,  # fmt: skip
    true_lon: Annotated[float | None, typer.Option(help="True longitude, for the map.")] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Batch mode: results.parquet (a folder of Parquet parts for a feature folder)."
        ),
    ] = None,
    gpus: Annotated[
        int, typer.Option(min=0, help="Feature-folder batch mode: split shards over N GPUs.")
    ] = 0,
    images: Annotated[
        Path | None, typer.Option(help="Manifest mode: folder its ids are relative to.")
    ] = None,
    concepts: Concepts = None,
    concept_embeddings: ConceptEmbeddings = None,
    clip_model: ClipModel = "ViT-L-14",
    clip_pretrained: ClipPretrained = "openai",
    gallery: Gallery = None,
    device: Device = "cpu",
    cache_dir: CacheDir = None,
) -> None:
    """Explain a prediction: where, what the photo shows, what the place is known for, why."""
    from ..io.images import load_image

    batch = target.is_dir() or target.suffix.lower() in {".csv", ".parquet", ".pq"}
    if batch and out is None:
        raise GeoconceptError("batch mode (a folder or manifest) needs --out results.parquet")
    if images is not None and (not batch or target.is_dir()):
        raise GeoconceptError("--images applies to a manifest (CSV/Parquet) only")
    single_only = [name for name, given in (("--map", map_png), ("--json", as_json),
                                             ("--check", check)) if given]  # fmt: skip
    if batch and single_only:
        raise GeoconceptError(f"{', '.join(single_only)}: single photos only, not batch mode")
    if not batch and out is not None:
        raise GeoconceptError("--out is for batch mode (a folder or manifest); use --json")
    if not batch:
        load_image(target)  # a bad photo fails in a second: before torch and the models load
    if target.is_dir() and (target / "meta.json").is_file():  # explained from its features
        assert out is not None  # batch mode requires --out (checked first)
        _explain_features(target, out, checkpoint, top_k, n_concepts, gpus, concepts,
                          concept_embeddings, gallery, device, cache_dir)  # fmt: skip
        return
    if gpus:
        raise GeoconceptError("--gpus is for an embed-images feature folder")
    from ..geo.distance import valid_latlon
    from ..inference.batch.explain import (
        batch_photos,
        explanation_row,
        rows_to_parquet,
    )
    from ..io.artifacts import writable_file

    if (true_lat is None) != (true_lon is None):
        raise GeoconceptError("--true-lat and --true-lon go together")
    if (true_lat is not None and true_lon is not None
            and not valid_latlon([true_lat], [true_lon])[0]):  # fmt: skip
        raise GeoconceptError(f"--true-lat {true_lat} --true-lon {true_lon}: not a location")
    for path in (out, map_png):  # fail fast, before loading any model
        if path is not None:
            writable_file(path)
    explainer = _explainer(checkpoint, concepts, concept_embeddings, clip_model, clip_pretrained,
                           gallery, cache_dir, device)  # fmt: skip
    opts: dict[str, Any] = dict(top_k=top_k, n_concepts=n_concepts, check=check, m=m,
                                draws=draws)  # fmt: skip
    if not batch:
        feats = explainer.predictor.image_features([load_image(target)])
        exp = {"image": str(target), **explainer.explain_features(feats, **opts)}
        if as_json:
            stdout.print_json(json.dumps(exp))
        else:
            _print_explanation(exp)
        if map_png:  # after printing: a map that cannot be written does not hide the answer
            from ..inference.heat import probability_heat
            from ..io.images import photo_gps
            from ..plots.maps import render_map

            truth = (
                (true_lat, true_lon)
                if true_lat is not None and true_lon is not None
                else photo_gps(target)
            )
            render_map(exp, explainer.predictor.gallery_gps, map_png, truth,
                       probability_heat(explainer.predictor, feats))  # fmt: skip
        return
    assert out is not None  # batch mode requires --out (checked first)
    paths, failed = batch_photos(target, images)
    rows = []
    with progress_bar("explaining", len(paths), unit="photos") as advance:
        for path in paths:
            try:
                rows.append(explanation_row(explainer.explain(path, **opts)))
            except GeoconceptError as exc:
                failed.append(str(exc))
            advance(1)
    for line in failed:
        err.print(f"skipped {line}", highlight=False, soft_wrap=True)
    if failed and not rows:
        hint = "; --images names the manifest's photo folder" if not target.is_dir() else ""
        raise GeoconceptError(f"none of the {len(failed)} photos could be read{hint}")
    rows_to_parquet(rows, out)
    stdout.print(f"{len(rows)} photos explained -> {out}; {len(failed)} missing or unreadable")


def _explain_features(
    features: Path, out: Path, checkpoint: Path | None, top_k: int, n_concepts: int, gpus: int,
    concepts: Path | None, concept_embeddings: Path | None, gallery: Path | None, device: str,
    cache_dir: Path | None,
) -> None:  # fmt: skip
    """explain's feature-folder mode: every photo into a folder of Parquet parts, no CLIP."""
    import pandas as pd

    from ..inference.batch.explain import explain_features_worker

    paths = tuple(
        str(a) if a is not None else None
        for a in (checkpoint, concepts, concept_embeddings, gallery, cache_dir)
    )
    options = (top_k, n_concepts)
    missing = _run_batch(explain_features_worker, features, out, paths, gpus, device, options)
    if missing is not None:
        photos = len(pd.read_parquet(out, columns=["image"]))
        stdout.print(f"{photos} photos explained from their features -> {out}" if missing else
                     f"{out} is complete: {photos} photos; nothing to explain",
                     highlight=False, soft_wrap=True)  # fmt: skip


@app.command("where")
@cli_command
def where_cmd(
    text: Annotated[str, typer.Argument(help="A concept or any text, e.g. 'rice terraces'.")],
    checkpoint: Annotated[
        Path | None, typer.Option(help=f"Trained run: {MODEL_PATHS} (default: GeoCLIP).")
    ] = None,
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="How many places.")] = 10,
    countries: Annotated[int, typer.Option(min=1, help="How many countries.")] = 10,
    map_png: Annotated[Path | None, typer.Option("--map", help="Write a heatmap PNG.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    clip_model: ClipModel = "ViT-L-14",
    clip_pretrained: ClipPretrained = "openai",
    gallery: Gallery = None,
    device: Device = "cpu",
    cache_dir: CacheDir = None,
) -> None:
    """Where on Earth a text or a concept points: top places and countries, and a heatmap.

    Without a checkpoint the text is scored as if it were a photo (approximate); with a
    concept-aware run a concept of its set gives the run's own concept axis (exact), and other
    text is projected onto its concepts."""
    from ..inference.locator import load_locator
    from ..io.artifacts import writable_file

    if not text.strip():
        raise GeoconceptError('give a text to locate, e.g. geoconcept where "rice terraces"')
    if map_png is not None:
        writable_file(map_png)
    with (
        lazy_progress_bar("encoding gallery (once; cached)", "points") as advance,
        lazy_progress_bar("concept activations over the gallery", "points") as concept_advance,
    ):
        locator = load_locator(checkpoint, clip_model, clip_pretrained, gallery, cache_dir,
                               device, advance, concept_advance)  # fmt: skip
    answer, scores = locator.where(text, top_k, countries)
    if as_json:
        stdout.print_json(json.dumps(answer))
    else:
        stdout.print(f"[bold]{answer['query']}[/]  [dim]({answer['mode']}; {answer['note']})[/]",
                     highlight=False, soft_wrap=True)  # fmt: skip
        for p in answer["places"]:
            stdout.print(f"{p['rank']}  {_latlon(p)}  {answer['score']} "
                         f"{p['score']:.3g}  {p['place']}", highlight=False)  # fmt: skip
        how = "summed probability" if answer["score"] == "probability" else "mean activation"
        stdout.print(f"countries by {how}: " + ", ".join(
            f"{c['country']} {c['score']:.3g}" for c in answer["countries"]), highlight=False,
            soft_wrap=True)  # fmt: skip
    if map_png is not None:
        from ..plots.maps import render_heatmap

        render_heatmap(scores, locator.predictor.gallery_gps, map_png,
                       f"{answer['query']} ({answer['mode']}, {answer['score']})",
                       answer["places"][:5])  # fmt: skip


@app.command()
@cli_command
def serve(
    checkpoint: Annotated[
        Path | None, typer.Option(help=f"Trained run: {MODEL_PATHS} (default: GeoCLIP).")
    ] = None,
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
    concepts: Concepts = None,
    concept_embeddings: ConceptEmbeddings = None,
    clip_model: ClipModel = "ViT-L-14",
    clip_pretrained: ClipPretrained = "openai",
    gallery: Gallery = None,
    device: Device = "cpu",
    cache_dir: CacheDir = None,
) -> None:
    """Serve a web page and a JSON API that locate and explain photos, with the models warm.

    Loads everything once, prints the URL, and answers until Ctrl-C. The page (at /) works
    offline; the API is described at /openapi.json and in the README."""
    if tiles is not None and not (
        tiles.startswith(("http://", "https://")) and all(f"{{{v}}}" in tiles for v in "zxy")
    ):
        raise GeoconceptError(f"--tiles {tiles}: an http(s) tile URL with {{z}}, {{x}} and {{y}}")
    from ..serving.http import bind, create_app, run_server
    from ..serving.service import GeoService

    with bind(host, port) as sock:  # a port in use stops us before the loading
        if host not in {"127.0.0.1", "localhost", "::1"}:
            warnings.warn(f"--host {host}: the server is reachable from other machines"
                          + ("" if api_key else "; anyone who can reach it can use it (set "
                             "--api-key or $GEOCONCEPT_API_KEY)"), stacklevel=1)  # fmt: skip
        explainer = _explainer(checkpoint, concepts, concept_embeddings, clip_model,
                               clip_pretrained, gallery, cache_dir, device)  # fmt: skip
        service = GeoService(explainer)
        app_ = create_app(service, api_key, max_upload_mb, tiles)
        shown = f"[{host}]" if ":" in host else host
        stdout.print(f"geoconcept serving {service.health()['mode']} at http://{shown}:{port}/ "
                     "(Ctrl-C stops)", highlight=False, soft_wrap=True)  # fmt: skip
        run_server(app_, sock)


@app.command()
@cli_command
def atlas(
    checkpoint: Annotated[Path, typer.Option(help=f"Concept-aware run: {MODEL_PATHS}.")],
    out: Annotated[Path, typer.Option(help="Folder for atlas.parquet, grounding, maps.")],
    concepts: Annotated[
        str | None,
        typer.Option(
            help="Concepts to map, comma-separated (default: the 6 best and 6 worst grounded)."
        ),
    ] = None,  # fmt: skip
    concept_set: Annotated[
        Path | None,
        typer.Option(
            help="concepts.parquet with the region associations (default: the shipped set)."
        ),
    ] = None,  # fmt: skip
    gallery: Gallery = None,
    seed: Annotated[int, typer.Option(help="Seed of the random-basis control.")] = 0,
    device: Device = "cpu",
) -> None:
    """Map every concept of a run over the gallery, and measure how well each is grounded.

    Writes a per-country atlas, each concept's agreement with the concept set's regions
    (AUROC, beside a step-0 and a random-basis control), a report and maps."""
    from ..concepts.set import default_concepts_path
    from ..evaluation.atlas import (
        build_atlas,
        named_concepts,
        pick_concepts,
        plot_small_multiples,
        write_atlas,
    )
    from ..gallery.store import load_gallery
    from ..model.checkpoints import load_head
    from ..model.concept_head import ConceptAwareHead

    if out.exists() and not out.is_dir():
        raise GeoconceptError(f"--out {out}: a file; give a folder")
    head, ckpt = load_head(checkpoint, device)
    if ckpt["kind"] != "concept":
        raise GeoconceptError(f"{checkpoint}: a plain GeoCLIP run (train --concepts none) has "
                              "no concepts to map; give a concept-aware run")  # fmt: skip
    assert isinstance(head, ConceptAwareHead)  # what a "concept" checkpoint builds
    asked = [c.strip() for c in concepts.split(",") if c.strip()] if concepts else None
    if asked:
        named_concepts(asked, ckpt["concepts"]["concepts"])  # before minutes of work
    gps = load_gallery(gallery)
    with progress_bar("location encoder over the gallery", 2 * len(gps), unit="points") as adv:
        result = build_atlas(head, ckpt, gps, concept_set or default_concepts_path(), seed,
                             progress=lambda n, total: adv(n))  # fmt: skip
    picked = pick_concepts(result, asked)
    index = {c: i for i, c in enumerate(ckpt["concepts"]["concepts"])}
    paths = write_atlas(result, out, str(checkpoint))
    paths.append(plot_small_multiples({c: result.acts[:, index[c]] for c in picked}, gps,
                                      out / "maps.png", result.grounding))  # fmt: skip
    s = result.summary
    if not s["with_regions"]:
        warnings.warn(
            "no concept of this run has region associations in the concept set: "
            "give --concept-set the concepts.parquet it was built from",
            stacklevel=1,
        )
    stdout.print(
        f"grounding AUROC over {s['with_regions']} of {s['concepts']} concepts with regions: "
        f"trained {s['auroc']['mean']:.3f} (median {s['auroc']['median']:.3f}), step 0 "
        f"{s['auroc_step0']['mean']:.3f}, random basis {s['auroc_random_basis']['mean']:.3f}",
        highlight=False,
        soft_wrap=True,
    )
    stdout.print("wrote " + ", ".join(map(str, paths)), highlight=False, soft_wrap=True)


@app.command("build-concepts")
@cli_command
def build_concepts_cmd(
    out_dir: Annotated[Path, typer.Option(help="Where candidates.parquet is written.")] = Path(
        "concepts"
    ),
    review: Annotated[
        Path | None, typer.Option(help="Review CSV to merge into (default: OUT_DIR/review.csv).")
    ] = None,
    region: Annotated[
        list[str] | None,
        typer.Option(
            help="Region: a country, ISO code, continent, biome, or KEY=Article "
            "(repeatable; default: 7 continents, 43 countries, 12 biomes)."
        ),
    ] = None,  # fmt: skip
    finalize: Annotated[
        bool, typer.Option("--finalize", help="Write concepts.parquet from the kept rows.")
    ] = False,
    wikipedia: Annotated[bool, typer.Option(help="Mine Wikipedia region articles.")] = True,
    worldkg: Annotated[bool, typer.Option(help="Query WorldKG classes per region.")] = True,
    llm: Annotated[bool, typer.Option(help="Ask an LLM ($OPENAI_API_KEY) per region.")] = True,
    worldkg_endpoint: Annotated[
        str, typer.Option(help="SPARQL endpoint URL.")
    ] = "https://www.worldkg.org/sparql",
    wikipedia_api_url: Annotated[str | None, typer.Option(help="MediaWiki API mirror.")] = None,
    llm_base_url: Annotated[str | None, typer.Option(help="OpenAI-compatible server URL.")] = None,
    llm_model: Annotated[str, typer.Option(help="LLM model name.")] = "gpt-4o-mini",
    llm_concepts: Annotated[int, typer.Option(help="Concepts asked per region.")] = 25,
    offline: Annotated[
        bool, typer.Option("--offline", help="Use cached responses only; no network.")
    ] = False,
    cache_dir: Annotated[Path | None, typer.Option(help="Response cache folder.")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds per request.")] = 30.0,
    similarity: Annotated[float, typer.Option(help="Near-duplicate merge threshold.")] = 0.9,
) -> None:
    """Build the geography-driven concept set (Wikipedia, WorldKG, LLM) into a review file.

    Edit the review CSV's decision column (keep / drop / rename:NEW / recategorise:CAT/SUB),
    rerun to add new candidates as pending (your edits are kept), then --finalize.
    """
    from .. import concepts as cs

    review_path = review or out_dir / "review.csv"
    if finalize:
        df = cs.finalize(review_path, out_dir / "concepts.parquet")
        stdout.print(f"wrote {out_dir / 'concepts.parquet'}: {len(df)} concepts")
        return
    report = cs.build_candidates(
        cs.resolve_regions(region) if region else None, out_dir, review_path=review_path,
        wikipedia=wikipedia, worldkg=worldkg, llm=llm, endpoint=worldkg_endpoint,
        llm_base_url=llm_base_url, llm_model=llm_model,
        wikipedia_api_url=wikipedia_api_url, offline=offline, cache_dir=cache_dir,
        timeout=timeout, llm_concepts=llm_concepts, similarity=similarity,
        progress=lambda line: err.print(line, highlight=False),
    )  # fmt: skip
    for failure in report.failures:
        err.print(f"[yellow]warning:[/] {failure}", highlight=False)
    per_source = ", ".join(f"{k} {v}" for k, v in report.rows_per_source.items())
    stdout.print(
        f"{report.concepts} candidate concepts ({per_source}) -> {report.candidates_path}; "
        f"review {report.review_path}: {report.review_rows} rows, {report.review_added} new "
        f"pending; cache {report.cache_hits} hits / {report.cache_misses} fetched",
        highlight=False,
    )


@app.command("embed-concepts")
@cli_command
def embed_concepts_cmd(
    concepts: Annotated[
        Path | None,
        typer.Argument(help="concepts.parquet from build-concepts --finalize (default: shipped)."),
    ] = None,
    out: Annotated[Path, typer.Option(help="Output (.safetensors + .json sidecar).")] = Path(
        "concept_embeddings.safetensors"
    ),
    template: Annotated[
        list[str] | None,
        typer.Option(help="Prompt template with {} (repeatable; default: 4 photo templates)."),
    ] = None,
    clip_model: ClipModel = "ViT-L-14",
    clip_pretrained: ClipPretrained = "openai",
    device: Device = "cpu",
) -> None:
    """Embed the concept set with CLIP's text encoder (prompt-ensembled, L2-normalised)."""
    from ..concepts.set import default_concepts_path, load_concepts
    from ..model.clip import load_clip
    from ..model.concept_embeddings import (
        DEFAULT_TEMPLATES,
        check_templates,
        embed_concepts,
    )

    concepts = concepts or default_concepts_path()
    k = len(load_concepts(concepts))
    templates = tuple(template or DEFAULT_TEMPLATES)
    check_templates(templates)  # before CLIP loads
    clip = load_clip(clip_model, clip_pretrained, device)
    with progress_bar("embedding concepts", k, unit="concepts") as advance:
        emb, computed = embed_concepts(concepts, clip, out, templates, progress=advance)
    verb = "wrote" if computed else "up to date:"
    stdout.print(f"{verb} {out.with_suffix('.safetensors')} ({emb.embeddings.shape[0]} concepts "
                 f"x {emb.embeddings.shape[1]})", soft_wrap=True)  # fmt: skip


@app.command()
@cli_command
def subset(
    manifest: Annotated[Path, typer.Argument(help="CSV/Parquet manifest.")],
    fraction: Annotated[float, typer.Option(help="Share of rows kept, e.g. 0.05.")],
    out: Annotated[Path, typer.Option(help="Output manifest (.csv or .parquet).")],
    seed: int = 0,
) -> None:
    """Keep a seeded random fraction of a manifest (the paper trains on 5% of MP-16)."""
    from ..data.manifests import subset_manifest

    n = subset_manifest(manifest, fraction, out, seed)
    stdout.print(f"{n} rows -> {out}")


@app.command("embed-images")
@cli_command(on_interrupt="finished shards are kept: rerun the same command to continue")
def embed_images_cmd(
    sources: Annotated[
        list[Path],
        typer.Argument(
            help="A manifest (CSV/Parquet: image id/path, LAT, LON), or WebDataset .tar shards "
            "whose samples hold KEY.jpg + KEY.json with the coordinates. Quoted patterns "
            "('shards/*.tar') are expanded.",
            show_default=False,
        ),
    ],
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
    clip_model: ClipModel = "ViT-L-14",
    clip_pretrained: ClipPretrained = "openai",
    device: Device = "cpu",
) -> None:
    """Run the frozen CLIP backbone once over a manifest's photos (in a folder or in archives,
    never extracted) or over WebDataset shards; write resumable feature shards."""
    from ..data.embedding import embed_images_worker
    from ..data.features import check_feature_folder, shard_rows, undecodable
    from ..data.manifests import read_sources
    from ..model.clip import ClipId
    from ..runtime.distributed import (
        check_processes,
        is_main_process,
        launch,
        launched_externally,
    )

    check_processes(gpus)
    if gpus > 0 and not device.startswith("cuda"):
        device = "cuda"
    if out.exists() and not out.is_dir():
        raise GeoconceptError(f"--out {out}: a file; give a folder for the feature shards")
    m = read_sources(sources, images)
    label = sources[0] if len(sources) == 1 else f"{len(m.rows) + len(m.skipped)} samples"
    err.print(f"{label}: image ids from {m.source}", highlight=False, soft_wrap=True)
    if m.rows.empty:
        raise GeoconceptError(
            f"{label}: none of its {len(m.skipped)} rows is usable (first: "
            f"{m.skipped[0][1] if m.skipped else 'no rows'}); check --images"
        )
    for ident, reason in m.skipped[:10]:
        err.print(f"skipped {ident}: {reason}", highlight=False, soft_wrap=True)
    if len(m.skipped) > 10:
        err.print(f"... and {len(m.skipped) - 10} more skipped rows (listed in meta.json)")
    meta, pending = check_feature_folder(m, out, ClipId.of(clip_model, clip_pretrained), shard_size)
    if pending:
        args = ([str(s) for s in sources], [str(i) for i in images or []], str(out), clip_model,
                clip_pretrained, device, batch_size, shard_size, workers)  # fmt: skip
        if gpus > 1 and not launched_externally():
            launch(embed_images_worker, args, nproc=gpus)
        else:
            embed_images_worker(*args, manifest=m)  # the archives are indexed once
    if not is_main_process():  # under torchrun/SLURM every rank runs this: one reports
        return
    bad_in = undecodable(out)  # images that exist but did not decode, listed in their shards
    bad = [b for shard in bad_in.values() for b in shard]
    for ident, reason in bad[:10]:
        err.print(f"skipped {ident}: {reason}", highlight=False, soft_wrap=True)
    stored = len(m.rows) - len(bad)
    if not pending:
        shards = f"{meta['shards']} shard" + "s" * (meta["shards"] != 1)
        stdout.print(f"{out} is complete: {stored} images in {shards}; nothing to embed",
                     soft_wrap=True)  # fmt: skip
        return
    now = sum(len(shard_rows(m, shard_size, s)) - len(bad_in[s]) for s in pending)
    stdout.print(f"{now} images embedded into {out} ({stored - now} already there), "
                 f"{len(m.skipped) + len(bad)} rows skipped", soft_wrap=True)  # fmt: skip


@app.command()
@cli_command(
    on_interrupt="rerun the same command with --resume to continue from the last "
    "checkpoint (written every --save-every steps and at each epoch end)"
)
def train(
    features: Annotated[Path, typer.Argument(help="Feature folder from embed-images.")],
    out: Annotated[Path, typer.Option(help="Run folder: checkpoint, config, metrics.")],
    concepts: Annotated[
        str, typer.Option(help="Concept embeddings from embed-concepts, or 'none' (GeoCLIP).")
    ],
    epochs: int = 10,
    max_steps: Annotated[int | None, typer.Option(help="Stop after N steps.")] = None,
    batch_size: Annotated[int, typer.Option(help="Global batch (over all ranks).")] = 512,
    lr: float = 3e-5,
    weight_decay: float = 1e-6,
    warmup_steps: int = 100,
    grad_clip: float = 1.0,
    queue_size: int = 4096,
    batch_noise_m: float = 150.0,
    queue_noise_m: float = 1000.0,
    divergence: Annotated[str, typer.Option(help="mmd (Gaussian MMD^2) or mean.")] = "mmd",
    sigma: Annotated[float | None, typer.Option(help="Kernel width (default: median).")] = None,
    lambda_div: Annotated[float, typer.Option("--lambda", help="Divergence weight.")] = 1.0,
    delta_weight: Annotated[float, typer.Option(help="Penalty keeping B near E.")] = 0.0,
    train_location: Annotated[str, typer.Option(help="none, partial or all.")] = "partial",
    seed: int = 0,
    save_every: int = 200,
    log_every: int = 10,
    amp: Annotated[bool, typer.Option(help="bfloat16 autocast on GPU.")] = True,
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
    from ..runtime.distributed import check_processes, launch, launched_externally
    from ..training.config import TrainConfig
    from ..training.train import check_run, last_metrics, train_worker

    if divergence not in ("mmd", "mean"):
        raise GeoconceptError("--divergence must be mmd or mean")
    cfg = TrainConfig(
        features=str(features), out=str(out),
        concepts=None if concepts.lower() == "none" else concepts,
        epochs=epochs, max_steps=max_steps, batch_size=batch_size, lr=lr,
        weight_decay=weight_decay, warmup_steps=warmup_steps, grad_clip=grad_clip,
        queue_size=queue_size, batch_noise_m=batch_noise_m, queue_noise_m=queue_noise_m,
        divergence=divergence, sigma=sigma, lambda_div=lambda_div, delta_weight=delta_weight,
        train_location=train_location, seed=seed, save_every=save_every, log_every=log_every,
        amp=amp, device="cuda" if gpus > 0 else "cpu",
    )  # fmt: skip
    procs = check_processes(gpus, nproc)
    if launched_externally():  # torchrun / SLURM started this process as one rank
        last: dict[str, Any] | None = train_worker(cfg, resume)
    else:
        last = check_run(cfg, resume, procs * nnodes)  # user errors here, not in N tracebacks
    if last is None and (procs > 1 or nnodes > 1):
        launch(train_worker, (cfg, resume), procs, nnodes, node_rank, master_addr,
               master_port, rdzv_timeout)  # fmt: skip
        if node_rank > 0:  # the run folder is written by node 0, maybe on another machine
            stdout.print(f"node {node_rank}: done; node 0 writes the run to {cfg.out}")
            return
        last = last_metrics(cfg.out)
    elif last is None:
        last = train_worker(cfg, resume)
    if last.get("done") and last.get("loss") is None:
        stdout.print(f"{cfg.out}: finished at step {last['step']}, nothing to do")
    else:
        stdout.print_json(json.dumps(last))


@app.command()
@cli_command
def evaluate(
    features: Annotated[Path, typer.Argument(help="Test feature folder from embed-images.")],
    checkpoints: Annotated[
        list[Path] | None, typer.Argument(help=f"Trained runs, each a {MODEL_PATHS}.")
    ] = None,
    geoclip: Annotated[bool, typer.Option(help="Include pretrained GeoCLIP.")] = True,
    gallery: Gallery = None,
    json_out: Annotated[Path | None, typer.Option("--json-out", help="Write JSON here.")] = None,
    predictions_out: Annotated[
        Path | None, typer.Option(help="Parquet: one row per photo and model.")
    ] = None,
    plots: Annotated[
        Path | None, typer.Option(help="Folder for reliability diagrams (PNG, one per model).")
    ] = None,
    explanations: Annotated[
        bool,
        typer.Option(
            "--explanations",
            help="Also measure concept-aware models' explanations: deletion, insertion, sparsity.",
        ),
    ] = False,
    m: Annotated[int, typer.Option(min=1, help="--explanations: concepts per explanation.")] = 3,
    draws: Annotated[
        int, typer.Option(min=20, help="--explanations: random draws per photo.")
    ] = 20,
    explain_photos: Annotated[
        int, typer.Option(min=1, help="--explanations: photos measured (a seeded sample).")
    ] = 200,
    device: Device = "cpu",
    cache_dir: CacheDir = None,
) -> None:
    """Score models side by side, with the gallery ceiling.

    Accuracy at 1/25/200/750/2500 km, GeoScore, country/region/city accuracy, per continent,
    and the calibration of their probabilities (calibrated models: conformal coverage and
    area); --explanations adds deletion, insertion and sparsity of concept explanations."""
    from ..data.features import load_features
    from ..evaluation.evaluate import (
        calibration_files,
        evaluate_models,
        heads_to_evaluate,
        markdown_table,
    )
    from ..io.artifacts import atomic_path, writable_file, write_json
    from ..model.clip import ClipId

    for path in (json_out, predictions_out):
        if path:
            writable_file(path)  # before the evaluation, not after it
    if plots is not None and plots.exists() and not plots.is_dir():
        raise GeoconceptError(f"--plots {plots}: a file; give a folder")
    data = load_features(features)
    heads = heads_to_evaluate(checkpoints or [], geoclip, device, data.meta,
                              data.features.shape[1])  # fmt: skip
    if not heads:
        raise GeoconceptError("nothing to evaluate: give checkpoints or keep --geoclip")
    result = evaluate_models(
        heads, data.features, data.latlon, gallery, cache_dir,
        gallery_progress=lambda name: lazy_progress_bar(
            f"encoding gallery for {name} (once; cached)", "points"),
        ids=data.ids, calibrations=calibration_files(heads, ClipId.from_meta(data.meta),
                                                     gallery, cache_dir),
        clip=ClipId.from_meta(data.meta),
        explanations={"m": m, "draws": draws, "photos": explain_photos} if explanations
        else None,
    )  # fmt: skip
    stdout.print(markdown_table(result.summary), highlight=False, soft_wrap=True)
    if json_out:
        write_json(json_out, result.summary, sort_keys=False)  # thresholds in distance order
    if predictions_out:
        with atomic_path(predictions_out) as tmp:
            result.predictions.to_parquet(tmp, index=False)
    if plots is not None:
        from ..plots.reliability import plot_reliability

        written = [plot_reliability(bins, name, plots) for name, bins in result.reliability.items()]
        stdout.print(f"reliability diagrams: {', '.join(map(str, written))}", highlight=False,
                     soft_wrap=True)  # fmt: skip


@app.command()
@cli_command
def calibrate(
    features: Annotated[
        Path,
        typer.Argument(
            help="Calibration feature folder from embed-images: held-out "
            "photos with GPS, not the test set."
        ),
    ],
    checkpoints: Annotated[
        list[Path] | None, typer.Argument(help=f"Trained runs, each a {MODEL_PATHS}.")
    ] = None,
    geoclip: Annotated[bool, typer.Option(help="Calibrate pretrained GeoCLIP too.")] = True,
    alpha: Annotated[
        float, typer.Option(help="Miscoverage of the confidence region (0.1: 90% regions).")
    ] = 0.1,
    radius_km: Annotated[
        float, typer.Option(help="The region covers the truth within this distance.")
    ] = 25.0,
    gallery: Gallery = None,
    device: Device = "cpu",
    cache_dir: CacheDir = None,
) -> None:
    """Calibrate probabilities and fit confidence regions on held-out photos.

    Per model, a temperature and a conformal threshold, stored beside a run (calibration.json)
    and, for pretrained GeoCLIP, in the cache; predict, explain and evaluate then use them."""
    from ..data.features import load_features
    from ..evaluation.calibrate import calibrate_heads
    from ..evaluation.evaluate import calibration_files, heads_to_evaluate
    from ..model.clip import ClipId

    data = load_features(features)
    heads = heads_to_evaluate(checkpoints or [], geoclip, device, data.meta,
                              data.features.shape[1])  # fmt: skip
    if not heads:
        raise GeoconceptError("nothing to calibrate: give checkpoints or keep --geoclip")
    files = calibration_files(heads, ClipId.from_meta(data.meta), gallery, cache_dir)
    cals = calibrate_heads(
        heads, files, data.features, data.latlon, ClipId.from_meta(data.meta), gallery,
        cache_dir, alpha, radius_km,
        gallery_progress=lambda name: lazy_progress_bar(
            f"encoding gallery for {name} (once; cached)", "points"),
    )  # fmt: skip
    for name, cal in cals.items():
        stdout.print(
            f"{name}: temperature {cal.temperature:.3g} (NLL {cal.nll_before:.3f} -> "
            f"{cal.nll_after:.3f} on {cal.photos} photos); {1 - alpha:.0%} region within "
            f"{radius_km:g} km: mass threshold {cal.threshold:.4g} -> {files[name]}",
            highlight=False,
            soft_wrap=True,
        )


@app.command()
@cli_command
def ablate(
    train_features: Annotated[Path, typer.Argument(help="Training feature folder.")],
    test_features: Annotated[Path, typer.Argument(help="Test feature folder.")],
    out: Annotated[Path, typer.Option(help="Folder for the runs and ablation.md/.json.")],
    concepts: Annotated[
        Path | None, typer.Option(help="Geography-driven concepts.parquet (default: shipped).")
    ] = None,
    epochs: int = 10,
    max_steps: Annotated[int | None, typer.Option(help="Stop each run after N steps.")] = None,
    batch_size: int = 512,
    lr: float = 3e-5,
    warmup_steps: int = 100,
    queue_size: int = 4096,
    gallery: Gallery = None,
    clip_model: ClipModel = "ViT-L-14",
    clip_pretrained: ClipPretrained = "openai",
    device: Device = "cpu",
) -> None:
    """Concept-set ablation: geography-driven vs generic vs random (same k) vs none."""
    from ..concepts.set import default_concepts_path
    from ..data.features import check_features_clip
    from ..evaluation.ablations import make_concept_sets, run_grid
    from ..evaluation.evaluate import markdown_table
    from ..model.clip import ClipId, load_clip
    from ..training.config import TrainConfig

    for folder in (train_features, test_features):  # before minutes of concept embedding
        check_features_clip(folder, ClipId.of(clip_model, clip_pretrained))
    clip = load_clip(clip_model, clip_pretrained, device)
    sets = make_concept_sets(concepts or default_concepts_path(), clip, out / "concept_sets")
    base = TrainConfig(features="", out="", epochs=epochs, max_steps=max_steps,
                       batch_size=batch_size, lr=lr, warmup_steps=warmup_steps,
                       queue_size=queue_size,
                       device="cuda" if device.startswith("cuda") else "cpu")  # fmt: skip
    result = run_grid(train_features, test_features, sets, out, base, gallery,
                      progress=lambda name, how: err.print(f"{how}: {name}"))  # fmt: skip
    stdout.print(markdown_table(result), highlight=False, soft_wrap=True)


@app.command()
@cli_command
def downstream(
    table: Annotated[
        Path,
        typer.Argument(
            help="CSV/Parquet with latitude, longitude, target (or, with "
            "--preset, the downstream data folder)."
        ),
    ],
    target: Annotated[str | None, typer.Option(help="Target column.")] = None,
    preset: Annotated[
        str | None, typer.Option(help="air-temperature or us-income (2016, county centroids).")
    ] = None,
    lat: Annotated[str | None, typer.Option(help="Latitude column (default: found).")] = None,
    lon: Annotated[str | None, typer.Option(help="Longitude column (default: found).")] = None,
    task: Annotated[str, typer.Option(help="regression or classification.")] = "regression",
    checkpoint: Annotated[
        list[Path] | None,
        typer.Option(help=f"Trained run to probe beside GeoCLIP: {MODEL_PATHS} (repeat)."),
    ] = None,
    folds: int = 5,
    seed: int = 0,
    spatial_block_deg: Annotated[
        float | None, typer.Option(help="Spatial blocking: folds of whole lat/lon cells.")
    ] = None,
    probe: Annotated[list[str] | None, typer.Option(help="linear and/or mlp (repeat).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    device: Device = "cpu",
) -> None:
    """Probe location embeddings (GeoCLIP, checkpoints, raw coordinates) on a geographic task."""
    from ..evaluation import downstream as ds

    if preset == "air-temperature":
        data = ds.air_temperature_table(table)
    elif preset == "us-income":
        data = ds.us_county_income_table(table)
    elif preset is not None:
        raise GeoconceptError("--preset must be air-temperature or us-income")
    elif target is None:
        raise GeoconceptError("give --target COLUMN (or a --preset)")
    else:
        data = ds.load_table(table, target, lat, lon, task)
    embedders = ds.default_embedders(device)
    for ck in checkpoint or []:
        embedders |= ds.checkpoint_embedders(ck, device)
    feats = ds.compute_features(data.latlon, embedders)
    probes = tuple(probe or ds.PROBES)
    with progress_bar("probing", len(feats) * len(probes) * folds) as advance:
        res = ds.run_probes(data, feats, folds, seed, spatial_block_deg, probes, advance)
    if as_json:
        stdout.print_json(json.dumps(res.to_dict()))
    else:
        stdout.print(ds.summary_line(res), highlight=False)
        stdout.print(ds.results_table_markdown(res), highlight=False)


@app.command()
@cli_command
def visualize(
    features: Annotated[Path, typer.Argument(help="Feature folder (photos with GPS).")],
    checkpoint: Annotated[Path, typer.Argument(help=f"Trained run: {MODEL_PATHS}.")],
    out: Annotated[Path, typer.Option(help="PNG to write.")] = Path("modality_gap.png"),
    max_points: Annotated[int, typer.Option(min=2, help="Photos sampled (UMAP cost).")] = 3000,
    by_continent: Annotated[bool, typer.Option(help="Marker per continent.")] = False,
    seed: int = 0,
) -> None:
    """UMAP of image, location and concept vectors of a checkpoint, and the modality gap."""
    import torch

    from ..data.features import load_features
    from ..model.checkpoints import check_trained_on, load_head
    from ..model.clip import ClipId
    from ..plots.modality_gap import latents, modality_gap, plot_umap

    data = load_features(features)
    pick = torch.randperm(len(data.ids), generator=torch.Generator().manual_seed(seed))
    pick = pick[:max_points]
    head, ckpt = load_head(checkpoint)
    check_trained_on(ckpt, ClipId.from_meta(data.meta), checkpoint)
    z = latents(head, data.features[pick], data.latlon[pick])
    gap = modality_gap(z)
    plot_umap(z, out, data.latlon[pick], by_continent, seed)
    stdout.print(f"modality gap: centroid distance {gap['centroid_distance']:.4f}, mean paired "
                 f"cosine {gap['mean_paired_cosine']:.4f}  -> {out}", highlight=False)  # fmt: skip


@app.command()
@cli_command
def export(
    run: Annotated[
        Path, typer.Argument(help="Run folder or checkpoint file (an exported model re-exports).")
    ],
    out: Annotated[
        Path, typer.Option(help="Model folder to write (an earlier export there is replaced).")
    ],
    evaluation: Annotated[
        Path | None,
        typer.Option(
            "--eval",
            help="evaluate --json-out file with this run's figures "
            "(default: eval.json in or beside the run, if it names the run).",
        ),
    ] = None,  # fmt: skip
) -> None:
    """Export a trained run as a model folder to share, with a model card.

    Safetensors weights, config.json, concepts.json, the run's calibration and README.md.
    Every --checkpoint option takes the folder."""
    from ..export.bundle import export_model
    from ..model.checkpoints import KINDS

    config = export_model(run, out, evaluation)
    concepts = f"{config['concept_set']['count']} concepts, " if config["concept_set"] else ""
    figures = config["evaluation"]
    stdout.print(f"exported {KINDS[config['kind']]} model ({concepts}step {config['step']} of "
                 f"{config['total_steps']}) -> "
                 f"{out}; figures: " + (f"from {figures['file']}" if figures else
                 "none found (give --eval)"), highlight=False, soft_wrap=True)  # fmt: skip


@app.command()
@cli_command
def cache(
    clear: Annotated[
        bool, typer.Option("--clear", help="Delete gallery and concept embeddings.")
    ] = False,
    cache_dir: CacheDir = None,
) -> None:
    """Show what the cache holds; --clear deletes the embeddings (recomputed when next needed).

    Gallery embeddings (one per trained checkpoint) are also pruned automatically, least
    recently used first, beyond $GEOCONCEPT_GALLERY_CACHE_GB (default 4). Fetched concept
    sources are kept: build-concepts --offline needs them.
    """
    from ..io.artifacts import (
        GALLERY_CACHE_GB,
        cache_usage,
        clear_cache,
        default_cache_dir,
    )

    root = cache_dir or default_cache_dir()
    if root.exists() and not root.is_dir():
        raise GeoconceptError(f"--cache-dir {root}: not a folder")
    stdout.print(f"cache {root} (gallery embeddings kept within "
                 f"$GEOCONCEPT_GALLERY_CACHE_GB, default {GALLERY_CACHE_GB:g})",
                 highlight=False, soft_wrap=True)  # fmt: skip
    usage = cache_usage(root)

    def size_text(size: int) -> str:
        return f"{size / 1e9:.2f} GB" if size >= 1e9 else f"{size / 1e6:.0f} MB"

    for part, (files, size) in usage.items():
        stdout.print(f"{part}: {files} files, {size_text(size)}", highlight=False)
    if not usage:
        stdout.print(f"{root}: empty", highlight=False, soft_wrap=True)
    if clear:
        files, size = clear_cache(root)
        stdout.print(f"removed {files} files ({size_text(size)}) from {root}", highlight=False,
                     soft_wrap=True)  # fmt: skip


if __name__ == "__main__":  # pragma: no cover
    app()
