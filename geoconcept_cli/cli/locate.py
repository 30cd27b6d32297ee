"""`predict`, `explain` and `where`: where a photo (or a folder of them) was taken and why, and
where a text points."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from .. import geo, inference, io, plots
from ..errors import GeoconceptError
from ..geo.limits import Limits
from ..inference.request import HINT_WEIGHT, MERGE_KM, Request
from ..model.spec import ModelSpec
from ..runtime.launch import Workers
from ..runtime.progress import lazy_progress_bar
from .common import (
    RUN_HELP,
    Commands,
    Model,
    cli_command,
    model_options,
    note,
    options_from,
    say,
)
from .render import (
    count,
    print_album,
    print_explanation,
    print_json,
    print_prediction,
    print_where,
)

BATCH_SUFFIXES = {".csv", ".parquet", ".pq"}  # a manifest of photos to explain
AS_JSON = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
BATCH_OUT = Annotated[
    Path | None,
    typer.Option(
        "--out",
        help="Batch mode: results.parquet (a folder of Parquet parts for a feature folder).",
    ),
]
GPUS = Annotated[
    int, typer.Option(min=0, help="Feature-folder batch mode: split shards over N GPUs.")
]
MANIFEST_IMAGES = Annotated[
    Path | None, typer.Option(help="Manifest mode: folder its ids are relative to.")
]


@dataclass(frozen=True)
class Steering:
    """What a person already knows about where a photo was taken, and what a candidate is, as
    predict's, explain's and where's options (README: "Say what you know")."""

    merge_km: float = field(
        default=MERGE_KM,
        metadata={
            "flag": "--merge-km",
            "help": "Gallery points within this many km are one candidate, with their summed "
            "probability; 0 lists every point on its own.",
        },
    )
    within: list[str] | None = field(
        default=None,
        metadata={
            "metavar": "PLACE",
            "help": "Answer only from this country (ISO code or name), continent or "
            "first-level region ('Bavaria', 'Texas, US'); repeatable: the union of all limits "
            "is searched.",
        },
    )
    near: list[str] | None = field(
        default=None,
        metadata={"metavar": "LAT,LON", "help": "Answer only within --radius km of LAT,LON; "
                  "repeatable."},
    )  # fmt: skip
    radius: list[float] | None = field(
        default=None,
        metadata={"metavar": "KM", "help": "Km around each --near (one for all, or one per "
                  "--near)."},
    )  # fmt: skip
    bbox: list[str] | None = field(
        default=None,
        metadata={"metavar": "S,W,N,E", "help": "Answer only inside the box S,W,N,E (degrees; "
                  "W > E crosses 180°)."},
    )  # fmt: skip
    hint: list[str] | None = field(
        default=None,
        metadata={
            "metavar": "TEXT",
            "help": "What you know in words ('caption in Portuguese', 'near a coast'); "
            "repeatable: each hint's own where-distribution multiplies the photo's.",
        },
    )
    hint_weight: float = field(
        default=HINT_WEIGHT,
        metadata={"help": "How much a hint counts against the photo (1: as much)."},
    )
    abstain_below: float | None = field(
        default=None,
        metadata={
            "metavar": "P",
            "help": "Say 'not localizable at this confidence' when the calibrated probability "
            "that the most probable gallery point lies within the calibration radius is below "
            "P (default: the "
            "level calibrate --target-accuracy chose, if any; 0: always answer). --json keeps "
            "the best guess.",
        },
    )

    def request_fields(self) -> dict[str, Any]:
        """The Request fields these options give (a limit refused in one line here)."""
        return {"merge_km": self.merge_km, "hints": tuple(self.hint or ()),
                "hint_weight": self.hint_weight, "abstain_below": self.abstain_below,
                "limits": Limits.parse(self.within, self.near, self.radius, self.bbox)}  # fmt: skip


STEERING = "merge_km within near radius bbox hint hint_weight"
ANSWERING = f"{STEERING} abstain_below"  # a photo's question: steering, and when to answer
Steer = dict[str, Any]  # Steering fields given as options


@cli_command
@model_options("clip_model clip_pretrained gallery device cache_dir calibration", after="images")
@model_options("checkpoint runtime", after="as_json")
@options_from(Steering, ANSWERING, after="images", into="steer")
def predict(
    image: Annotated[
        Path,
        typer.Argument(
            help="Photo to locate (JPEG, PNG, WebP, HEIC, AVIF, TIFF...); or, for batch mode "
            "(with --out), a folder of photos, a manifest (CSV/Parquet) or an embed-images "
            "feature folder (predicted from its features at matrix-product speed: no CLIP runs)."
        ),
    ],  # fmt: skip
    model: Model,
    steer: Steer,
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="How many candidates.")] = 5,
    as_json: AS_JSON = False,
    out: BATCH_OUT = None,
    gpus: GPUS = 0,
    images: MANIFEST_IMAGES = None,
    together: Annotated[
        bool,
        typer.Option(
            "--together",
            help="A folder of photos taken at one place: locate them as one question (the "
            "product of their distributions), each photo's part said, strays flagged.",
        ),
    ] = False,
    group_by: Annotated[
        str | None,
        typer.Option(
            help="With --together and a manifest: locate each group of rows sharing "
            "this column's value as one album, a row per group in --out."
        ),
    ] = None,
) -> None:
    """Predict where a photo was taken: top-k GPS candidates with probabilities and place names.

    Batch mode writes one row per photo of a folder or manifest to --out; a feature folder from
    embed-images is predicted into a folder of Parquet parts, split over --gpus or
    torchrun/SLURM ranks."""
    spec = ModelSpec(**model)
    request = Request(top_k=top_k, **Steering(**steer).request_fields())
    if spec.runtime != "torch" and (out is not None or together or group_by or _batch(image)):
        raise GeoconceptError(f"--runtime {spec.runtime} predicts one photo; batch runs and "
                              "albums use the torch runtime (leave out --runtime)")  # fmt: skip
    if together or group_by:
        _check_album(image, out, images, gpus, group_by, as_json)
        explainer = inference.load_explainer(spec, lazy_progress_bar)  # photos name concepts
        if group_by and out:
            n = inference.albums_of_manifest(explainer, image, group_by, out, images, request,
                                             lazy_progress_bar, note)  # fmt: skip
            say(f"{count(n, 'album')} located -> {out}")
            return
        album = inference.album_of_photos(explainer, image, request, lazy_progress_bar, note)
        print_json(album.to_json()) if as_json else print_album(album)
        return
    features = _check_mode(image, out, images, gpus, ["--json"] if as_json else [])
    _refuse_hints_on_features(features, request)
    if out is not None and features:
        done = inference.predict_folder(spec, image, out, request, Workers(gpus=gpus))
        if done is not None:
            photos = count(done.photos, "photo")
            said = (f"{photos} predicted -> {out}" if done.wrote else
                    f"{out} is complete: {photos}; nothing to predict")  # fmt: skip
            say(f"{said} (median error {done.median_error_km:.1f} km)")
    elif out is not None:
        io.writable_file(out)  # fail fast, before loading any model
        predictor = inference.load_predictor(spec, lazy_progress_bar)
        rows, failed = inference.predict_photos(predictor, image, out, images, request,
                                                lazy_progress_bar, note)  # fmt: skip
        say(f"{count(rows, 'photo')} predicted -> {out}; {len(failed)} missing or unreadable")
    else:
        result = inference.load_predictor(spec, lazy_progress_bar).predict(image, request)
        if as_json:
            print_json(result.to_json())
        else:
            print_prediction(result)


@cli_command
@model_options("concepts concept_embeddings clip_model clip_pretrained gallery device cache_dir "
               "calibration",
               after="images")  # fmt: skip
@model_options("checkpoint runtime", after="target", checkpoint=RUN_HELP)
@options_from(Steering, ANSWERING, after="images", into="steer")
def explain(
    target: Annotated[
        Path,
        typer.Argument(
            help="A photo; or, for batch mode, a folder of photos, a manifest (CSV/Parquet), "
            "or an embed-images feature folder (explained from its features: no CLIP runs)."
        ),
    ],
    model: Model,
    steer: Steer,
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
    out: BATCH_OUT = None,
    gpus: GPUS = 0,
    images: MANIFEST_IMAGES = None,
) -> None:
    """Explain a prediction: where, what the photo shows, what the place is known for, why."""
    spec = ModelSpec(**model)
    request = Request(top_k=top_k, concepts_shown=n_concepts, check=check, m=m, draws=draws,
                      heat=map_png is not None, **Steering(**steer).request_fields())  # fmt: skip
    single_only = [name for name, given in (("--map", map_png), ("--json", as_json),
                                             ("--check", check)) if given]  # fmt: skip
    if spec.runtime != "torch" and (out is not None or check or _batch(target)):
        raise GeoconceptError(f"--runtime {spec.runtime} explains one photo; batch runs and "
                              "--check use the torch runtime (leave out --runtime)")  # fmt: skip
    features = _check_mode(target, out, images, gpus, single_only)
    _refuse_hints_on_features(features, request)
    if spec.runtime == "torch":
        inference.check_request(spec, request)
    if out is not None and features:
        _explain_features(spec, target, out, request, gpus)  # explained from their features
    elif out is not None:
        io.writable_file(out)  # fail fast, before loading any model
        explainer = inference.load_explainer(spec, lazy_progress_bar)
        done, failed = inference.explain_photos(explainer, target, out, images, request,
                                                lazy_progress_bar, note)  # fmt: skip
        say(f"{count(done, 'photo')} explained -> {out}; {len(failed)} missing or unreadable")
    else:
        _explain_photo(spec, target, request, as_json, map_png, true_lat, true_lon)


def _batch(target: Path) -> bool:
    """Whether ``target`` asks for batch mode: a folder, or a manifest (CSV/Parquet)."""
    return target.is_dir() or target.suffix.lower() in BATCH_SUFFIXES


def _check_mode(target: Path, out: Path | None, images: Path | None, gpus: int,
                single_only: list[str]) -> bool:  # fmt: skip
    """One line, before anything loads, for options that do not fit predict's or explain's
    mode: batch (a folder or a manifest, with --out) or one photo (which must read). True
    for an embed-images feature folder with --out (batch from its features)."""
    batch = _batch(target)
    if batch and out is None:
        raise GeoconceptError("batch mode (a folder or manifest) needs --out results.parquet")
    if images is not None and (not batch or target.is_dir()):
        raise GeoconceptError("--images applies to a manifest (CSV/Parquet) only")
    if batch and single_only:
        raise GeoconceptError(f"{', '.join(single_only)}: single photos only, not batch mode")
    if not batch and out is not None:
        raise GeoconceptError("--out is for batch mode (a folder or manifest); use --json")
    if not batch:
        io.load_image(target)  # a bad photo fails in a second: before torch and the models load
    features = batch and target.is_dir() and (target / "meta.json").is_file()
    if gpus and not features:
        raise GeoconceptError("--gpus is for an embed-images feature folder")
    if batch and target.is_dir() and not features and not io.photos_in(target):
        raise GeoconceptError(f"{target}: no photos in it, and no meta.json of an embed-images "
                              "feature folder: give a folder of photos, a manifest or "
                              "features")  # fmt: skip
    return features


def _refuse_hints_on_features(features: bool, request: Request) -> None:
    """One line, before anything loads: a feature folder brings no CLIP to read hints with."""
    if features and request.hints:
        raise GeoconceptError(
            "--hint needs CLIP's text tower, which a run over a feature "
            "folder does not load: give photos (a folder or a manifest)"
        )


def _check_album(target: Path, out: Path | None, images: Path | None, gpus: int,
                 group_by: str | None, as_json: bool) -> None:  # fmt: skip
    """One line, before anything loads, where an album cannot be: --together takes a folder
    of photos (one answer, text or --json) or, with --group-by and --out, a manifest."""
    if group_by is not None:
        if target.suffix.lower() not in BATCH_SUFFIXES or out is None or as_json:
            raise GeoconceptError("--group-by takes a manifest (CSV/Parquet) and --out "
                                  "albums.parquet (a row per group), not --json")  # fmt: skip
        io.writable_file(out)
    elif not target.is_dir() or (target / "meta.json").is_file() or not io.photos_in(target):
        raise GeoconceptError(f"--together takes a folder of photos (or a manifest with "
                              f"--group-by); {target} is not one")  # fmt: skip
    for name, given in (("--out", out and not group_by), ("--images", images and not group_by),
                        ("--gpus", gpus)):  # fmt: skip
        if given:
            raise GeoconceptError(f"{name}: not with --together on a folder, which answers once")


def _explain_features(spec: ModelSpec, features: Path, out: Path, request: Request,
                      gpus: int) -> None:  # fmt: skip
    """explain's feature-folder mode: every photo into a folder of Parquet parts, no CLIP."""
    done = inference.explain_folder(spec, features, out, request, Workers(gpus=gpus))
    if done is not None:
        photos = count(done.photos, "photo")
        say(f"{photos} explained from their features -> {out}" if done.wrote else
            f"{out} is complete: {photos}; nothing to explain")  # fmt: skip


def _explain_photo(spec: ModelSpec, photo: Path, request: Request, as_json: bool,
                   map_png: Path | None, true_lat: float | None, true_lon: float | None
                   ) -> None:  # fmt: skip
    """explain's single-photo mode: the explanation printed, and its map drawn if asked."""
    if (true_lat is None) != (true_lon is None):
        raise GeoconceptError("--true-lat and --true-lon go together")
    truth = (true_lat, true_lon) if true_lat is not None and true_lon is not None else None
    if truth is not None and not geo.valid_latlon([truth[0]], [truth[1]])[0]:
        raise GeoconceptError(f"--true-lat {true_lat} --true-lon {true_lon}: not a location")
    if map_png is not None:
        io.writable_file(map_png)  # fail fast, before loading any model
    explainer = inference.load_photo_explainer(spec, lazy_progress_bar)  # either runtime
    exp = explainer.explain(photo, request)
    if as_json:
        print_json(exp.to_json())
    else:
        print_explanation(exp)
    if map_png:  # after printing: a map that cannot be written does not hide the answer
        world = explainer.gallery_points if spec.runtime != "torch" else None  # no torch
        plots.render_map(exp, explainer.gallery_points, map_png, truth or io.photo_gps(photo),
                         world)  # fmt: skip


@cli_command
@model_options("clip_model clip_pretrained gallery device cache_dir calibration", after="as_json")
@model_options("checkpoint", after="text")
@options_from(Steering, "merge_km within near radius bbox", after="as_json", into="steer")
def where(
    text: Annotated[str, typer.Argument(help="A concept or any text, e.g. 'rice terraces'.")],
    model: Model,
    steer: Steer,
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="How many places.")] = 10,
    countries: Annotated[int, typer.Option(min=1, help="How many countries.")] = 10,
    map_png: Annotated[Path | None, typer.Option("--map", help="Write a heatmap PNG.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Where on Earth a text or a concept points: top places and countries, and a heatmap.

    Without a checkpoint the text is scored as if it were a photo (approximate); with a
    concept-aware run a concept of its set gives the run's own concept axis (exact), and other
    text is projected onto its concepts."""
    if not text.strip():
        raise GeoconceptError('give a text to locate, e.g. geoconcept where "rice terraces"')
    request = Request(top_k=top_k, countries=countries, **Steering(**steer).request_fields())
    if map_png is not None:
        io.writable_file(map_png)
    locator = inference.load_locator(ModelSpec(**model), lazy_progress_bar)
    answer = locator.where(text, request)
    if as_json:
        print_json(answer.to_json())
    else:
        print_where(answer)
    if map_png is not None:
        plots.render_heatmap(answer.scores, locator.predictor.gallery_gps, map_png,
                             f"{answer.query} ({answer.mode}, {answer.score})",
                             answer.places[:5])  # fmt: skip


COMMANDS: Commands = {"predict": predict, "explain": explain, "where": where}
