"""`evaluate`, `calibrate`, `downstream`, `visualize` and `atlas`: how good the models are,
how trustworthy their probabilities, what their location features know, where their concepts
lie."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from .. import evaluation, io, plots
from ..errors import GeoconceptError
from ..evaluation.leakage import DUPLICATE_COSINE, SAME_SPOT_KM
from ..inference.mondrian import MIN_GROUP_PHOTOS
from ..model.spec import RUN_PATHS, ModelSpec
from ..runtime.progress import lazy_progress_bar
from .common import Commands, Model, cli_command, model_options, say
from .render import print_json

Checkpoints = Annotated[
    list[Path] | None, typer.Argument(help=f"Trained runs, each a {RUN_PATHS}.")
]


def _models(model: Model, checkpoints: list[Path] | None, geoclip: bool) -> list[ModelSpec]:
    """Pretrained GeoCLIP (if kept) and each checkpoint, over one gallery, cache and device."""
    shared = ModelSpec(**model)
    runs = [replace(shared, checkpoint=ck) for ck in checkpoints or []]
    return [shared, *runs] if geoclip else runs


@cli_command
@model_options("device cache_dir calibration", after="explain_photos")
@model_options("gallery", after="geoclip")
def evaluate(
    features: Annotated[Path, typer.Argument(help="Test feature folder from embed-images.")],
    model: Model,
    checkpoints: Checkpoints = None,
    geoclip: Annotated[bool, typer.Option(help="Include pretrained GeoCLIP.")] = True,
    json_out: Annotated[Path | None, typer.Option("--json-out", help="Write JSON here.")] = None,
    predictions_out: Annotated[
        Path | None, typer.Option(help="Parquet: one row per photo and model.")
    ] = None,
    plots_dir: Annotated[
        Path | None,
        typer.Option("--plots", help="Folder for reliability diagrams (PNG, one per model)."),
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
    train_features: Annotated[
        Path | None,
        typer.Option(
            help="The training photos' feature folder: report every metric also without the "
            "test photos that leak from it (near-duplicates, or taken within --same-spot-km)."
        ),
    ] = None,
    duplicate_cosine: Annotated[
        float, typer.Option(help="--train-features: CLIP cosine from which a near-duplicate.")
    ] = DUPLICATE_COSINE,
    same_spot_km: Annotated[
        float, typer.Option(help="--train-features: a training photo this close: same spot.")
    ] = SAME_SPOT_KM,
) -> None:
    """Score models side by side, with the gallery ceiling.

    Accuracy at 1/25/200/750/2500 km, GeoScore, country/region/city accuracy, per continent,
    the calibration of their probabilities (calibrated models: conformal coverage and area,
    per continent), and the risk-coverage of answering only the confident photos;
    --explanations adds deletion, insertion and sparsity of concept explanations;
    --train-features, every metric without the photos that leak from training."""
    for path in (json_out, predictions_out):
        if path:
            io.writable_file(path)  # before the evaluation, not after it
    if plots_dir is not None and plots_dir.exists() and not plots_dir.is_dir():
        raise GeoconceptError(f"--plots {plots_dir}: a file; give a folder")
    rule = [flag for flag, value, default in (("--duplicate-cosine", duplicate_cosine,
            DUPLICATE_COSINE), ("--same-spot-km", same_spot_km, SAME_SPOT_KM))
            if value != default]  # fmt: skip
    if rule and train_features is None:
        raise GeoconceptError(f"{' and '.join(rule)}: the leakage rule goes with "
                              "--train-features, the training photos' feature folder")  # fmt: skip
    measured = {"m": m, "draws": draws, "photos": explain_photos} if explanations else None
    result = evaluation.evaluate(features, _models(model, checkpoints, geoclip), measured,
                                 lazy_progress_bar, train_features, duplicate_cosine,
                                 same_spot_km)  # fmt: skip
    say(evaluation.markdown_table(result.summary))
    if json_out:
        result.write_summary(json_out)
    if predictions_out:
        result.write_predictions(predictions_out)
    if plots_dir is not None:
        written = [plots.plot_reliability(bins, name, plots_dir)
                   for name, bins in result.reliability.items()]  # fmt: skip
        answering = {name: r["answering"] for name, r in result.summary["models"].items()}
        written.append(plots.plot_risk_coverage(answering, plots_dir))
        say(f"reliability diagrams and risk-coverage: {', '.join(map(str, written))}")


@cli_command
@model_options("gallery device cache_dir", after="radius_km")
def calibrate(
    features: Annotated[
        Path,
        typer.Argument(
            help="Calibration feature folder from embed-images: held-out "
            "photos with GPS, not the test set."
        ),
    ],
    model: Model,
    checkpoints: Checkpoints = None,
    geoclip: Annotated[
        bool | None,
        typer.Option(help="Calibrate pretrained GeoCLIP (default: only when no run is given)."),
    ] = None,
    alpha: Annotated[
        float, typer.Option(help="Miscoverage of the confidence region (0.1: 90% regions).")
    ] = 0.1,
    radius_km: Annotated[
        float, typer.Option(help="The region covers the truth within this distance.")
    ] = 25.0,
    by: Annotated[
        str | None,
        typer.Option(
            help="continent or country: a region threshold per group of places with "
            f"{MIN_GROUP_PHOTOS}+ of the photos that set it, so that coverage holds on each "
            "(the pooled threshold for the others)."
        ),
    ] = None,
    target_accuracy: Annotated[
        float | None,
        typer.Option(
            help="Choose the confidence below which predict, explain and serve say 'not "
            "localizable': the accuracy (top place within --radius-km) of the photos answered "
            "is at least this, with 90% certainty."
        ),
    ] = None,
) -> None:
    """Calibrate probabilities and fit confidence regions on held-out photos.

    Per model, a temperature and a conformal threshold (per continent or country with --by;
    an abstention level with --target-accuracy), stored beside a run (calibration.json) and,
    for pretrained GeoCLIP, in the cache (geoconcept cache lists it); predict, explain and
    evaluate then use them (--no-calibration: not)."""
    include_geoclip = not checkpoints if geoclip is None else geoclip  # only what is named
    fitted = evaluation.calibrate(features, _models(model, checkpoints, include_geoclip), alpha,
                                  radius_km, lazy_progress_bar, by, target_accuracy)  # fmt: skip
    for name, (cal, path) in fitted.items():
        say(f"{name}: temperature {cal.temperature:.3g} (NLL {cal.nll_before:.3f} -> "
            f"{cal.nll_after:.3f} on {cal.photos} photos); {1 - alpha:.0%} region within "
            f"{radius_km:g} km: mass threshold {cal.threshold:.4g} -> {path}")  # fmt: skip
        if cal.by:
            say(f"  per {cal.by}: own thresholds for " + ", ".join(
                f"{g} {t:.4g}" for g, t in cal.groups.items()) + f"; every other {cal.by} "
                f"keeps the pooled one (fewer than {MIN_GROUP_PHOTOS} photos)")  # fmt: skip
        if cal.abstention:
            a = cal.abstention
            say(f"  abstain below confidence {a.level:g}: kept {a.kept:.0%} of the calibration "
                f"photos at {a.accuracy:.0%} accuracy; {a.guarantee()}")  # fmt: skip


@cli_command
@model_options("device", after="as_json")
def downstream(
    table: Annotated[
        Path,
        typer.Argument(
            help="CSV/Parquet with latitude, longitude, target (or, with "
            "--preset, the downstream data folder)."
        ),
    ],
    model: Model,
    target: Annotated[str | None, typer.Option(help="Target column.")] = None,
    preset: Annotated[
        str | None, typer.Option(help="air-temperature or us-income (2016, county centroids).")
    ] = None,
    lat: Annotated[str | None, typer.Option(help="Latitude column (default: found).")] = None,
    lon: Annotated[str | None, typer.Option(help="Longitude column (default: found).")] = None,
    task: Annotated[str, typer.Option(help="regression or classification.")] = "regression",
    checkpoint: Annotated[
        list[Path] | None,
        typer.Option(help=f"Trained run to probe beside GeoCLIP: {RUN_PATHS} (repeat)."),
    ] = None,
    folds: int = 5,
    seed: int = 0,
    spatial_block_deg: Annotated[
        float | None, typer.Option(help="Spatial blocking: folds of whole lat/lon cells.")
    ] = None,
    probe: Annotated[list[str] | None, typer.Option(help="linear and/or mlp (repeat).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Probe location embeddings (GeoCLIP, checkpoints, raw coordinates) on a geographic task."""
    data = evaluation.downstream_table(table, target, preset, lat, lon, task)
    res = evaluation.probe_locations(data, _models(model, checkpoint, geoclip=True), folds, seed,
                                     spatial_block_deg, probe,
                                     lazy_progress_bar)  # fmt: skip
    if as_json:
        print_json(res.to_dict())
    else:
        say(evaluation.summary_line(res))
        say(evaluation.results_table_markdown(res))


@cli_command
def visualize(
    features: Annotated[Path, typer.Argument(help="Feature folder (photos with GPS).")],
    checkpoint: Annotated[Path, typer.Argument(help=f"Trained run: {RUN_PATHS}.")],
    out: Annotated[Path, typer.Option(help="PNG to write.")] = Path("modality_gap.png"),
    max_points: Annotated[int, typer.Option(min=2, help="Photos sampled (UMAP cost).")] = 3000,
    by_continent: Annotated[bool, typer.Option(help="Marker per continent.")] = False,
    seed: int = 0,
) -> None:
    """UMAP of image, location and concept vectors of a checkpoint, and the modality gap."""
    gap = plots.plot_modality_gap(features, checkpoint, out, max_points, by_continent, seed)
    say(f"modality gap: centroid distance {gap['centroid_distance']:.4f}, mean paired "
        f"cosine {gap['mean_paired_cosine']:.4f}  -> {out}")  # fmt: skip


@cli_command
@model_options("device", after="seed")
@model_options("gallery", after="concept_set")
def atlas(
    model: Model,
    checkpoint: Annotated[Path, typer.Option(help=f"Concept-aware run: {RUN_PATHS}.")],
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
    seed: Annotated[int, typer.Option(help="Seed of the random-basis control.")] = 0,
) -> None:
    """Map every concept of a run over the gallery, and measure how well each is grounded.

    Writes a per-country atlas, each concept's agreement with the concept set's regions
    (AUROC, beside a step-0 and a random-basis control), a report and maps."""
    asked = [c.strip() for c in concepts.split(",") if c.strip()] if concepts else None
    spec = ModelSpec(**model, checkpoint=checkpoint)
    result, paths = evaluation.make_atlas(spec, out, asked, concept_set, seed, lazy_progress_bar)
    s = result.summary
    say(
        f"grounding AUROC over {s['with_regions']} of {s['concepts']} concepts with regions: "
        f"trained {s['auroc']['mean']:.3f} (median {s['auroc']['median']:.3f}), step 0 "
        f"{s['auroc_step0']['mean']:.3f}, random basis {s['auroc_random_basis']['mean']:.3f}"
    )
    say("wrote " + ", ".join(map(str, paths)))


COMMANDS: Commands = {"evaluate": evaluate, "calibrate": calibrate, "downstream": downstream,
            "visualize": visualize, "atlas": atlas}  # fmt: skip
