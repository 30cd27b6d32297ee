"""`evaluate`: top-1 gallery retrieval scored as the field does (Im2GPS3k and OSV-5M).

Several checkpoints and the pretrained GeoCLIP side by side: accuracy at 1/25/200/750/2500 km,
mean and median error, GeoScore, country/region/city accuracy, the thresholds per continent,
the calibration of the probabilities (ECE, with and without a ``calibrate`` temperature) and,
for a calibrated model, the conformal region's coverage and area. Plus the gallery ceiling:
the share of test points whose nearest gallery point is within each threshold, which bounds
any retrieval model. Per-photo results go to ``--predictions-out``.

Top-1 is the single most probable gallery point, as GeoCLIP's evaluation scores it; not the
first candidate `predict` lists, which sums the points within ``--merge-km`` (inference.sites)
and may be another place.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import torch

from ..data.features import Features, load_features
from ..errors import GeoconceptError
from ..gallery.index import refuse_large
from ..gallery.store import cached_gallery_embeddings, load_gallery
from ..geo.distance import (
    THRESHOLDS_KM,
    accuracy_at_thresholds,
    haversine_km,
    unit_vectors,
)
from ..geo.geocode import Places, reverse_geocode
from ..inference.abstention import mass_near, risk_coverage
from ..inference.calibration import (
    best_near,
    covered,
    gallery_tree,
    pairs_within,
    place_areas,
    region_cuts,
)
from ..inference.calibration_record import Calibration, read_calibration
from ..inference.factory import GEOCLIP_NAME, calibration_file, load_heads
from ..inference.mondrian import grouped_covered, grouped_mask
from ..inference.predictor import Predictor
from ..io.artifacts import atomic_path, write_json
from ..model.clip_id import ClipId
from ..model.concept_head import ConceptAwareHead, RetrievalHead, check_head_takes
from ..model.spec import ModelSpec, StoredFeatures
from ..runtime.progress import Report, silent
from ..runtime.scratch import Scratch
from .interpretability import explanation_metrics
from .leakage import DUPLICATE_COSINE, SAME_SPOT_KM, Leakage, check_rule, find_leakage
from .metrics import admin_matches, geoscore, location_metrics, reliability

if TYPE_CHECKING:
    from scipy.spatial import cKDTree


def nearest_gallery_km(test_latlon: torch.Tensor, gallery: torch.Tensor,
                       tree: cKDTree | None = None) -> npt.NDArray[np.float64]:  # fmt: skip
    """Distance from each test point to its nearest gallery point (a KD-tree on the sphere:
    ``tree``, ``gallery_tree(gallery)``'s, when the caller has one)."""
    tree = gallery_tree(gallery) if tree is None else tree
    j = torch.from_numpy(tree.query(unit_vectors(test_latlon).numpy())[1])
    return haversine_km(test_latlon[:, 0], test_latlon[:, 1], gallery[j, 0], gallery[j, 1])


def summarize(dist_km: np.ndarray) -> dict[str, float]:
    """Accuracy at each threshold (%), median error (km) and the count."""
    return {
        **accuracy_at_thresholds(dist_km),
        "median_km": float(np.median(dist_km)),
        "n": int(len(dist_km)),
    }


CONFIDENCE_KM = 25.0  # the "top-1 within 25 km" event whose calibration is reported
AREAS_KM2 = tuple(float(f"{m}e{e}") for e in range(2, 9) for m in (1, 3))[:-1]  # 1e2..1e8


Bins = dict[str, dict[str, dict[str, Any]]]  # event -> probabilities -> reliability bins


@dataclass
class Evaluation:
    """An evaluation: the JSON summary, one row per photo and model, reliability bins."""

    summary: dict[str, Any]
    predictions: pd.DataFrame
    reliability: dict[str, Bins]  # per model

    def write_summary(self, path: str | Path) -> None:
        """The summary as JSON (``eval.json``), thresholds in distance order."""
        write_json(path, self.summary, sort_keys=False)

    def write_predictions(self, path: str | Path) -> None:
        """One row per photo and model as Parquet (``preds.parquet``)."""
        with atomic_path(path) as tmp:
            self.predictions.to_parquet(tmp, index=False)


BLOCK_ELEMENTS = 1 << 21  # per-photo statistics in blocks this small (8 MB of float32)


@torch.no_grad()
def score_photos(
    predictor: Predictor, feats: torch.Tensor, truth: torch.Tensor, country_of: torch.Tensor,
    areas: torch.Tensor | None = None, chunk: int = 1024, tree: cKDTree | None = None,
) -> dict[str, np.ndarray]:  # fmt: skip
    """Per photo: the top-1 gallery row; under the softmax at T=1 ("uncalibrated") and at the
    calibrated T, the top-1 probability and the probability mass within CONFIDENCE_KM of the
    top-1 and in its country (the confidences of those two events); with a calibration, the
    conformal region's membership of the truth, its area and the area of the most probable
    places down to the truth (km²), from ``areas``, each gallery row's (``place_areas``);
    the calibrated mass within the calibration's radius of the top-1 where that radius is not
    CONFIDENCE_KM (``confradius``: abstention's confidence), and for a calibration with
    groups the per-group (mondrian) region's membership of the truth and area.

    ``country_of`` is each gallery row's country index, in rising order: a gallery grouped by
    country makes a country's mass the sum of a slice. Logits come ``chunk`` photos at a time
    (one product with the gallery); the statistics then go through a few photos at a time,
    whose temporaries live in one ``Scratch`` (mapping fresh ones cost more than the
    arithmetic, on a 100K gallery). ``tree``: the gallery's ``gallery_tree``,
    when the caller has one."""
    if bool((country_of[1:] < country_of[:-1]).any()):
        raise ValueError("score_photos wants the gallery grouped by country")
    cal = predictor.calibration
    if cal is not None and areas is None:
        raise ValueError("score_photos wants the place areas of a calibrated predictor")
    dev = predictor.device
    areas = areas.to(dev) if areas is not None else None
    gps = predictor.gallery_gps
    tree = gallery_tree(gps) if tree is None else tree
    sizes = torch.bincount(country_of)
    ends = sizes.cumsum(0)
    starts = ends - sizes
    temps = {"uncalibrated": 1.0} | ({"calibrated": cal.temperature} if cal else {})
    # the confidence of abstention: within the calibration's radius, where it is not 25 km
    radius = cal.radius_km if cal and cal.radius_km != CONFIDENCE_KM else None
    slots = predictor.region_slots()
    rows = max(1, BLOCK_ELEMENTS // len(gps))
    out: dict[str, list[torch.Tensor]] = {}

    def add(key: str, value: torch.Tensor) -> None:
        out.setdefault(key, []).append(value.cpu())

    scratch = Scratch()  # the chunk's logits, and the blocks' (rows x gallery) temporaries
    for s in range(0, len(feats), chunk):
        part = feats[s : s + chunk]
        logits = predictor.logits(part, out=scratch("logits", (len(part), len(gps)),
                                                    torch.float32, dev))  # fmt: skip
        tops = argmax_rows(logits)
        near_top = Pairs(pairs_within(tree, gps[tops.cpu()], CONFIDENCE_KM), dev)
        near_truth = Pairs(pairs_within(tree, truth[s : s + chunk], cal.radius_km), dev) \
            if cal else None  # fmt: skip
        near_radius = Pairs(pairs_within(tree, gps[tops.cpu()], radius), dev) if radius else None
        for first in range(0, len(logits), rows):
            z, top = logits[first : first + rows], tops[first : first + rows]
            near = near_top.block(first, len(z))
            country = country_of[top.cpu()]
            spans = list(zip(starts[country].tolist(), ends[country].tolist(), strict=True))
            add("top1", top)
            for name, t in temps.items():  # z is divided in place: T=1 first
                p = torch.softmax(z.div_(t) if t != 1 else z, dim=1,
                                  out=scratch("probs", z.shape, z.dtype, dev))  # fmt: skip
                add(f"prob_{name}", p.gather(1, top[:, None])[:, 0])
                add(f"conf25_{name}", mass_near(p, *near))
                add(
                    f"confcountry_{name}",
                    torch.stack([p[i, a:b].sum() for i, (a, b) in enumerate(spans)]),
                )
                if name == "calibrated":
                    assert cal and near_truth and areas is not None  # made with the calibration
                    best = best_near(p, *near_truth.block(first, len(z)))
                    # z: the calibrated logits; the pooled threshold is the last one
                    thresholds = predictor.region_thresholds() if slots is not None else [
                        cal.threshold]  # fmt: skip
                    cuts = region_cuts(p, thresholds, keys=z, scratch=scratch)
                    cut = cuts[:, -1]
                    add("in_region", covered(best, cut))
                    mask = scratch("mask", p.shape, p.dtype, dev)
                    add("region_km2", torch.ge(p, cut[:, None], out=mask) @ areas)
                    reach = torch.ge(p, best[:, None], out=mask) @ areas
                    add("area_to_truth_km2", reach.where(torch.isfinite(best), torch.inf))
                    if near_radius is not None:
                        add(
                            "confradius_calibrated", mass_near(p, *near_radius.block(first, len(z)))
                        )
                    if slots is not None:  # the per-group region (mondrian) beside the pooled
                        add("in_region_grouped", grouped_covered(
                            p, cuts, slots, *near_truth.block(first, len(z))))  # fmt: skip
                        inside = grouped_mask(p, cuts, slots, scratch, out=mask)
                        add("region_km2_grouped", inside @ areas)
    return {k: torch.cat(v).numpy() for k, v in out.items()}


def argmax_rows(x: torch.Tensor, run: int = 256) -> torch.Tensor:
    """``x.argmax(dim=1)`` (the first of equal maxima) of a (B, N) tensor, found through the
    maxima of runs of ``run`` columns: several times faster on CPU, whose argmax over long
    rows is not vectorised as max is."""
    b, n = x.shape
    whole = n - n % run
    if whole == 0:
        return x.argmax(dim=1)
    maxima: torch.Tensor = x[:, :whole].unflatten(1, (-1, run)).amax(dim=2)
    if whole < n:
        maxima = torch.cat([maxima, x[:, whole:].amax(dim=1, keepdim=True)], dim=1)
    start = maxima.argmax(dim=1).mul_(run)  # the first run holding the maximum
    cols = (start[:, None] + torch.arange(run, device=x.device)).clamp_max_(n - 1)
    return start.add_(x.gather(1, cols).argmax(dim=1))  # a short last run repeats column n-1


class Pairs:
    """(photo, gallery row) pairs as ``pairs_within`` gives them (photos in order), taken a
    block of photos at a time."""

    def __init__(self, pairs: tuple[torch.Tensor, torch.Tensor], device: torch.device) -> None:
        self.rows, self.cols = (t.to(device) for t in pairs)

    def block(self, first: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The pairs of photos first..first+n-1, numbered from 0."""
        lo, hi = torch.searchsorted(
            self.rows, torch.tensor([first, first + n], device=self.rows.device)
        ).tolist()
        return self.rows[lo:hi] - first, self.cols[lo:hi]


def evaluate_models(
    heads: dict[str, RetrievalHead],
    feats: torch.Tensor,
    truth: torch.Tensor,
    spec: ModelSpec = ModelSpec(),
    *,
    ids: list[str] | None = None,
    calibrations: dict[str, Path] | None = None,
    clip: ClipId | None = None,
    explanations: dict[str, Any] | None = None,
    leakage: Leakage | None = None,
    report: Report = silent,
) -> Evaluation:
    """Every metric of each named head over ``spec``'s gallery (its embeddings cached in its
    cache), the gallery ceiling, and one row per photo and model.

    ``calibrations`` maps a head's name to its calibration file (used where it exists, refused
    if made for another model, gallery or ``clip``). ``explanations`` (the keyword arguments
    of ``explanation_metrics``: m, draws, photos) adds interpretability metrics for each
    concept-aware head. ``leakage`` (``find_leakage`` of these photos) adds every metric over
    the photos without leakage, and its columns to the rows. ``report`` shows the encoding of
    a head's gallery (a cache miss)."""
    if len(feats) == 0:
        raise GeoconceptError("no test features to evaluate")
    for name, head in heads.items():
        check_head_takes(head, feats.shape[1], name)
    gps = load_gallery(spec.gallery)
    refuse_large(gps, "evaluate")
    ids = ids if ids is not None else [str(i) for i in range(len(feats))]
    truth_np = truth.double().numpy()
    places = reverse_geocode(truth_np)
    gallery_places = reverse_geocode(gps.numpy())
    codes, country_of = np.unique(gallery_places.country.astype(str), return_inverse=True)
    grouped = torch.from_numpy(np.argsort(country_of, kind="stable"))  # gallery by country
    places_grouped = places_at(gallery_places, grouped.numpy())
    gps_grouped, country_grouped = gps[grouped], torch.from_numpy(country_of)[grouped]
    tree = gallery_tree(gps_grouped)  # one for every model and for the ceiling
    rows, frames, bins, clean = {}, [], {}, {}
    for name, head in heads.items():
        path = (calibrations or {}).get(name)
        cal = read_calibration(path) if path else None
        if cal is not None:
            cal.check_for(head, gps, clip or ClipId(None, None), path)
        with report(f"encoding gallery for {name} (once; cached)", "points") as advance:
            emb = cached_gallery_embeddings(gps, head, spec.cache_dir, progress=advance)
        predictor = Predictor(head, gps_grouped, emb[grouped], calibration=cal,
                              cache_dir=spec.cache_dir, gallery_places=places_grouped)  # fmt: skip
        areas = place_areas(gps, cal.radius_km, spec.cache_dir)[grouped] if cal else None
        res = score_photos(predictor, feats, truth, country_grouped, areas, tree=tree)
        top1 = grouped[res["top1"]].numpy()
        pred = gps[top1].double().numpy()
        dist = haversine_km(truth_np[:, 0], truth_np[:, 1], pred[:, 0], pred[:, 1])
        pred_places = places_at(gallery_places, top1)
        rows[name], bins[name] = model_summary(dist, places, pred_places, res, cal)
        if leakage is not None:
            clean[name] = model_summary(dist, places, pred_places, res, cal, ~leakage.leaked)[0]
        if explanations is not None and isinstance(head, ConceptAwareHead):
            rows[name]["explanations"] = explanation_metrics(predictor, feats, **explanations)
        frames.append(_prediction_rows(name, ids, truth_np, pred, dist, res, places,
                                       pred_places, cal, leakage))  # fmt: skip
    ceiling = nearest_gallery_km(truth, gps_grouped, tree)
    summary = {"thresholds_km": list(THRESHOLDS_KM), "models": rows,
               "ceiling": summarize(ceiling)}  # fmt: skip
    if leakage is not None:
        kept = ~leakage.leaked
        summary["leakage"] = leakage.summary()
        summary["without_leakage"] = {"models": clean, "ceiling": summarize(ceiling[kept])}
    return Evaluation(summary, pd.concat(frames, ignore_index=True), bins)


def model_summary(dist: np.ndarray, places: Places, pred_places: Places,
                  res: dict[str, np.ndarray], cal: Calibration | None,
                  keep: np.ndarray | None = None) -> tuple[dict[str, Any], Bins]:  # fmt: skip
    """Every metric of one model over the photos ``keep`` marks (all by default), from its
    per-photo results (``score_photos``): distances and places, per continent, the
    calibration of its probabilities, and when to answer; and its reliability bins."""
    if keep is not None:
        dist, places, pred_places = (
            dist[keep],
            places_at(places, keep),
            places_at(pred_places, keep),
        )
        res = {k: v[keep] for k, v in res.items()}
    row = location_metrics(dist, places, pred_places)
    matches = admin_matches(places, pred_places)
    outcomes = {f"{CONFIDENCE_KM:g}km": dist <= CONFIDENCE_KM, "country": matches["country"]}
    bins = {event: {kind: reliability(res[f"conf{key}_{kind}"], hit)
                    for kind in ("uncalibrated", "calibrated") if f"conf{key}_{kind}" in res}
            for (event, hit), key in zip(outcomes.items(), ("25", "country"),
                                         strict=True)}  # fmt: skip
    row["probabilities"] = _probability_summary(cal, bins, res, places)
    row["answering"] = _answering_summary(cal, res, dist)
    return row, bins


@dataclass
class Contenders:
    """Models to score on one feature folder: its features, each model's head and calibration
    file by name, the CLIP of the features, and the spec whose gallery, cache and device they
    share."""

    data: Features
    heads: dict[str, RetrievalHead]
    calibrations: dict[str, Path]
    clip: ClipId
    spec: ModelSpec


def contenders(features: str | Path, models: Sequence[ModelSpec], what: str) -> Contenders:
    """Load ``models`` (pretrained GeoCLIP where a spec has no checkpoint) to score on the
    ``embed-images`` folder ``features``; one line if none is left to ``what``. They share
    the first spec's gallery, cache and device."""
    data = load_features(features)
    clip = ClipId.from_meta(data.meta)
    heads = load_heads(models, StoredFeatures(clip, data.features.shape[1]))
    if not heads:
        raise GeoconceptError(f"nothing to {what}: give checkpoints or keep --geoclip")
    spec = models[0]
    gps = load_gallery(spec.gallery)
    files = {name: calibration_file(spec if name == GEOCLIP_NAME else
                                    replace(spec, checkpoint=name), head, gps, clip)
             for name, head in heads.items()}  # fmt: skip
    return Contenders(data, heads, files, clip, spec)


def evaluate(features: str | Path, models: Sequence[ModelSpec],
             explanations: dict[str, Any] | None = None, report: Report = silent,
             train_features: str | Path | None = None,
             duplicate_cosine: float = DUPLICATE_COSINE, same_spot_km: float = SAME_SPOT_KM,
             ) -> Evaluation:  # fmt: skip
    """`geoconcept evaluate`: score each model (pretrained GeoCLIP where a spec has no
    checkpoint) on the labelled photos of an ``embed-images`` folder, side by side with the
    gallery ceiling, calibrated where a calibration exists (see ``evaluate_models``); with
    ``train_features``, also over the photos that do not leak from it (``leakage``)."""
    check_rule(duplicate_cosine, same_spot_km)  # before any model loads
    c = contenders(features, models, "evaluate")
    calibrations = c.calibrations if c.spec.calibration else None
    leakage = None if train_features is None else find_leakage(
        c.data.features, c.data.latlon, c.clip, train_features, duplicate_cosine, same_spot_km,
        report)  # fmt: skip
    return evaluate_models(c.heads, c.data.features, c.data.latlon, c.spec, ids=c.data.ids,
                           calibrations=calibrations, clip=c.clip, explanations=explanations,
                           leakage=leakage, report=report)  # fmt: skip


def places_at(places: Places, rows: np.ndarray) -> Places:
    """The places at ``rows`` (indices or a mask) of reverse-geocoded ones."""
    return Places(*(getattr(places, f.name)[rows] for f in fields(Places)))


def _probability_summary(cal: Calibration | None, bins: Bins, res: dict[str, np.ndarray],
                         places: Places) -> dict[str, Any]:  # fmt: skip
    """ECE of each event before and after calibration, and the conformal region's coverage,
    mean area and recall against area, overall and per continent of the truth (for the
    pooled threshold and, where the calibration has groups, the per-group ones)."""
    out: dict[str, Any] = {"calibrated": cal is not None,
                           "ece": {event: {kind: b["ece"] for kind, b in by_kind.items()}
                                   for event, by_kind in bins.items()}}  # fmt: skip
    if cal is None:
        return out
    area = res["region_km2"]
    reach = res["area_to_truth_km2"]
    out |= {
        "temperature": cal.temperature, "alpha": cal.alpha, "radius_km": cal.radius_km,
        "target_coverage": 1 - cal.alpha, "coverage": float(res["in_region"].mean()),
        "mean_area_km2": float(area.mean()), "median_area_km2": float(np.median(area)),
        "recall_vs_area": {f"{a:.0e}": float((reach <= a).mean()) for a in AREAS_KM2},
    }  # fmt: skip
    kinds = ["", "_grouped"] if "in_region_grouped" in res else [""]  # pooled; per group
    if len(kinds) > 1:
        out["coverage_grouped"] = float(res["in_region_grouped"].mean())
        out["mean_area_km2_grouped"] = float(res["region_km2_grouped"].mean())
    out["per_continent"] = {
        continent: {"n": int(on.sum())} | {
            f"{key}{suffix}": float(res[f"{field}{suffix}"][on].mean())
            for suffix in kinds
            for key, field in (("coverage", "in_region"), ("mean_area_km2", "region_km2"))}
        for continent in sorted(set(places.continent.astype(str)) - {""})
        for on in [places.continent == continent]
    }  # fmt: skip
    return out


def _answering_summary(cal: Calibration | None, res: dict[str, np.ndarray], dist: np.ndarray
                       ) -> dict[str, Any]:  # fmt: skip
    """When to answer: the risk-coverage curve of the top-1 within the calibration's radius
    (25 km without one), the photos ranked by that event's confidence (calibrated where it
    can be), and for a calibration with an abstention level, what it kept here."""
    radius = cal.radius_km if cal else CONFIDENCE_KM
    conf = confidence_of(res, cal)
    hit = dist <= radius
    out = {"radius_km": radius, "confidence": "calibrated" if cal else "uncalibrated",
           **risk_coverage(conf, hit)}  # fmt: skip
    if cal is not None and cal.abstention is not None:
        kept = conf >= cal.abstention.level
        out["abstention"] = {
            **cal.abstention.to_json(),
            "kept_here": float(kept.mean()),
            "accuracy_here": float(hit[kept].mean()) if kept.any() else None,
        }
    return out


def confidence_of(res: dict[str, np.ndarray], cal: Calibration | None) -> np.ndarray:
    """Each photo's confidence that its top-1 lies within the calibration's radius (25 km
    without one): abstention's confidence."""
    if "confradius_calibrated" in res:
        return res["confradius_calibrated"]
    return res["conf25_calibrated" if cal else "conf25_uncalibrated"]


def _prediction_rows(name: str, ids: list[str], truth: np.ndarray, pred: np.ndarray,
                     dist: np.ndarray, res: dict[str, np.ndarray], places: Places,
                     pred_places: Places, cal: Calibration | None,
                     leakage: Leakage | None) -> pd.DataFrame:  # fmt: skip
    """One row per photo for --predictions-out (schema in the README)."""
    kind = "calibrated" if cal else "uncalibrated"
    df = pd.DataFrame({
        "model": name, "id": ids, "true_lat": truth[:, 0], "true_lon": truth[:, 1],
        "pred_lat": pred[:, 0], "pred_lon": pred[:, 1], "distance_km": dist,
        "geoscore": geoscore(dist), "prob": res[f"prob_{kind}"], "calibrated": cal is not None,
        **{f"{side}_{level}": getattr(p, level).astype(str)
           for level in ("country", "region", "city", "continent")
           for side, p in (("true", places), ("pred", pred_places))},
    })  # fmt: skip
    df["in_region"] = res["in_region"] if cal else None
    df["region_area_km2"] = res["region_km2"] if cal else np.nan
    df["confidence"] = confidence_of(res, cal)
    df["answered"] = df["confidence"] >= cal.abstention.level if cal and cal.abstention else None
    if leakage is not None:
        df = pd.concat([df, leakage.frame()], axis=1)
    return df


def _coverage_by_continent(probs: dict[str, dict[str, Any]]) -> list[str]:
    """Markdown rows: each calibrated model's region coverage and mean area per continent of
    the truth, pooled and, where its calibration has groups, per group."""
    lines = []
    for name, p in probs.items():
        if "per_continent" not in p:
            continue
        grouped = "coverage_grouped" in next(iter(p["per_continent"].values()), {})
        lines += ["", f"{name}: {p['target_coverage']:.0%} regions per continent "
                  + ("(pooled threshold / per-group thresholds)" if grouped else
                     "(pooled threshold)"), "",
                  "| continent | n | coverage | mean area km² |", "|---|---|---|---|"]  # fmt: skip
        for continent, c in p["per_continent"].items():
            cov, area = f"{c['coverage']:.3f}", f"{c['mean_area_km2']:.3g}"
            if grouped:
                cov += f" / {c['coverage_grouped']:.3f}"
                area += f" / {c['mean_area_km2_grouped']:.3g}"
            lines.append(f"| {continent} | {c['n']} | {cov} | {area} |")
    return lines


def _answering_table(models: dict[str, dict[str, Any]]) -> list[str]:
    """Markdown rows: each model's risk-coverage (AURC, accuracy at 50/80/100% answered) and
    what its abstention level kept."""
    lines = ["", "| model | confidence | AURC | accuracy answering 50% / 80% / 100% "
             "| abstention level: answered, accuracy (target) |", "|---" * 5 + "|"]  # fmt: skip
    for name, r in models.items():
        a = r["answering"]
        acc = " / ".join(f"{v:.1%}" for v in a["accuracy_at"].values())
        level = a.get("abstention")
        kept = (f"below {level['level']:g}: {level['kept_here']:.0%}, "
                + (f"{level['accuracy_here']:.1%}" if level["accuracy_here"] is not None else "-")
                + f" ({level['target']:.0%})") if level else ""  # fmt: skip
        lines.append(f"| {name} | {a['confidence']}, top-1 within {a['radius_km']:g} km "
                     f"| {a['aurc']:.3f} | {acc} | {kept} |")  # fmt: skip
    return lines


TOP1_NOTE = (
    "Top-1: the most probable gallery point (GeoCLIP's protocol), not predict's first "
    "candidate, which sums the points within --merge-km."
)


def markdown_table(result: dict[str, Any]) -> str:
    """The evaluation as Markdown: distances and places per model (then the gallery
    ceiling), accuracy per continent, and the probabilities' calibration."""
    cols = [f"{t}km" for t in result["thresholds_km"]]
    models = result["models"]
    lines = [
        "| model | " + " | ".join(f"{t} km" for t in result["thresholds_km"])
        + " | median km | mean km | GeoScore | country | region | city |",
        "|---" * (len(cols) + 7) + "|",
    ]  # fmt: skip
    clean = result.get("without_leakage")
    for name, r in {**models, "gallery ceiling": result["ceiling"]}.items():
        both = {name: r}
        if clean is not None:  # side by side: the same metric without the leaking photos
            both[f"{name}, without leakage"] = clean["models"].get(name, clean["ceiling"])
        for label, row in both.items():
            cells = " | ".join(f"{row[c]:.1f}" for c in cols)
            extra = " | ".join(f"{row[k]:.1f}" if k in row else "" for k in
                               ("mean_km", "geoscore", "country", "region", "city"))  # fmt: skip
            lines.append(f"| {label} | {cells} | {row['median_km']:.1f} | {extra} |")
    lines.append(f"\n{TOP1_NOTE}")
    if "leakage" in result:
        lk = result["leakage"]
        lines.append(f"\nLeakage from {lk['train_photos']:,} training photos: {lk['leaked']} of "
                     f"{lk['photos']} test photos ({lk['near_duplicates']} near-duplicates at "
                     f"cosine >= {lk['duplicate_cosine']:g}, {lk['same_spot']} within "
                     f"{lk['same_spot_km']:g} km of a training photo); 'without leakage' rows "
                     f"score the other {lk['kept']}.")  # fmt: skip
    if any(r.get("per_continent") for r in models.values()):
        lines += [
            "",
            "| model | continent | n | "
            + " | ".join(f"{t} km" for t in result["thresholds_km"])
            + " |",
            "|---" * (len(cols) + 3) + "|",
        ]
        for name, r in models.items():
            for continent, c in r.get("per_continent", {}).items():
                cells = " | ".join(f"{c[k]:.1f}" for k in cols)
                lines.append(f"| {name} | {continent} | {c['n']} | {cells} |")
    probs = {name: r["probabilities"] for name, r in models.items() if "probabilities" in r}
    if probs:
        lines += ["", "| model | probabilities | ECE top-1 within 25 km | ECE right country "
                  "| coverage (target) | mean area km² |", "|---" * 6 + "|"]  # fmt: skip
        for name, p in probs.items():
            ece = [" / ".join(f"{v:.3f}" for v in p["ece"][e].values()) for e in p["ece"]]
            if p["calibrated"]:
                kind = f"calibrated (T {p['temperature']:.3g})"
                region = (f"{p['coverage']:.3f} ({p['target_coverage']:.2f}, "
                          f"{p['radius_km']:g} km)", f"{p['mean_area_km2']:.3g}")  # fmt: skip
            else:
                kind, region = "uncalibrated", ("", "")
            lines.append(f"| {name} | {kind} | {ece[0]} | {ece[1]} | {region[0]} | {region[1]} |")
        lines.append("\nECE: uncalibrated / calibrated, 15 bins.")
        lines += _coverage_by_continent(probs)
    lines += _answering_table(models)
    expl = {name: r["explanations"] for name, r in models.items() if "explanations" in r}
    for name, e in expl.items():
        d, ins, sp = e["deletion"], e["insertion"], e["sparsity"]
        lines += ["", f"Explanations of {name} over {e['photos']} photos (top m = {e['m']} "
                  f"concepts, {e['draws']} random draws each):", "",
                  "| faithful | score drop: top / random | rank after: top / random "
                  "| insertion: score kept, rank | concepts for 50% / 90% |",
                  "|---|---|---|---|---|",
                  f"| {e['faithful_share']:.1%} | {d['score_drop_top']:.3g} / "
                  f"{d['score_drop_random']:.3g} | {d['rank_after_top']:.1f} / "
                  f"{d['rank_after_random_median']:.1f} | {ins['score_kept_share']:.1%}, "
                  f"{ins['rank_after']:.1f} | {sp['concepts_for_50pct']:.1f} / "
                  f"{sp['concepts_for_90pct']:.1f} |"]  # fmt: skip
    return "\n".join(lines)
