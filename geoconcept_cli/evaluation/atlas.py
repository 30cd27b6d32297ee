"""`atlas`: where a concept-aware model has learned each of its concepts, and whether that
agrees with what the concept set says.

Every concept's location activation over the gallery is one product of the gallery's
location latents with the concept basis, ``acts = z_loc @ B.T`` (N x k), averaged per country
(``atlas.parquet``: concept, country, continent, mean activation, rank of the country within
the concept). A concept is *grounded* where its learned map agrees with the concept set's
region associations: the AUROC of its activation separating gallery points inside its
associated countries or continents from the rest (0.5: no agreement; 1: perfect). Two controls
are measured in the same run: the same head before training (step 0: GeoCLIP's encoder and a
fresh, seeded projection) and a random basis of the same size over the trained latents.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..concepts.set import default_concepts_path, load_concepts
from ..errors import GeoconceptError
from ..gallery.store import load_gallery
from ..geo.geocode import reverse_geocode
from ..geo.regions import CONTINENT_OF
from ..io.artifacts import atomic_path, write_json
from ..model.checkpoints import load_head
from ..model.concept_head import ConceptAwareHead, build_head, location_latents
from ..model.spec import ModelSpec
from ..runtime.progress import Report, silent

MAPS_SHOWN = 12  # small multiples: the concepts asked for, or the 6 best and 6 worst grounded


def country_means(acts: torch.Tensor, country: torch.Tensor, n_countries: int) -> torch.Tensor:
    """(countries, k) mean of each activation column (N, k) over each country's points."""
    sums = torch.zeros(n_countries, acts.shape[1], dtype=acts.dtype).index_add_(0, country, acts)
    counts = torch.bincount(country, minlength=n_countries).clamp_min(1)
    return sums / counts[:, None].to(acts.dtype)


def atlas_table(means: torch.Tensor, countries: np.ndarray, concepts: list[str]) -> pd.DataFrame:
    """Long table of ``country_means``: one row per concept and country, ranked per concept."""
    k = len(concepts)
    values = means.T.numpy()  # (k, countries)
    ranks = (-values).argsort(axis=1).argsort(axis=1) + 1
    return pd.DataFrame({
        "concept": np.repeat(np.asarray(concepts, dtype=object), len(countries)),
        "country": np.tile(countries, k),
        "continent": np.tile([CONTINENT_OF.get(c, "") for c in countries], k),
        "mean_activation": values.reshape(-1),
        "rank": ranks.reshape(-1),
    })  # fmt: skip


def auroc_columns(acts: torch.Tensor, inside: torch.Tensor) -> np.ndarray:
    """AUROC of each column of ``acts`` (N, k) separating ``inside`` (N, k) rows from the
    rest (Mann-Whitney); NaN where a column has no inside or no outside row."""
    ranks = acts.argsort(dim=0).argsort(dim=0).double() + 1
    pos = inside.double().sum(0)
    neg = len(acts) - pos
    u = (ranks * inside).sum(0) - pos * (pos + 1) / 2
    auc = u / (pos * neg)
    return torch.where((pos > 0) & (neg > 0), auc, torch.nan).numpy()


def associated(concepts: list[str], concept_set: str | Path, country: np.ndarray,
               continent: np.ndarray) -> tuple[torch.Tensor, list[str]]:  # fmt: skip
    """(N, k) whether each gallery point lies in a region the concept set associates with each
    concept (by name), and each concept's region keys."""
    df = load_concepts(concept_set)
    regions = {row.concept.lower(): [r["region"] for r in row.regions if r["weight"] > 0]
               for row in df.itertuples()}  # fmt: skip
    inside = torch.zeros(len(country), len(concepts), dtype=torch.bool)
    keys = []
    for j, name in enumerate(concepts):
        these = regions.get(name.lower(), [])
        keys.append(";".join(these))
        if these:
            inside[:, j] = torch.from_numpy(np.isin(country, these) | np.isin(continent, these))
    return inside, keys


@dataclass
class Atlas:
    table: pd.DataFrame  # atlas.parquet
    grounding: pd.DataFrame  # one row per concept
    summary: dict[str, Any]
    acts: torch.Tensor  # (N, k) activations over the gallery, for the maps


def build_atlas(
    head: ConceptAwareHead, ckpt: dict[str, Any], gps: torch.Tensor, concept_set: str | Path,
    seed: int = 0, progress: Callable[[int, int], object] | None = None,
) -> Atlas:  # fmt: skip
    """Every concept of a concept-aware run over the gallery, its grounding and the controls.
    ``progress(n, total)`` follows the location encoder over the gallery (two passes: the
    trained head, then the step-0 head)."""
    concepts = ckpt["concepts"]["concepts"]
    places = reverse_geocode(gps.numpy())
    codes, country_index = np.unique(places.country.astype(str), return_inverse=True)
    country = torch.from_numpy(country_index)
    z = location_latents(head, gps, progress=progress)
    basis = head.basis.detach().cpu()
    acts = z @ basis.T  # (N, k): every concept over the gallery, one product
    means = country_means(acts, country, len(codes))
    keep = codes != ""  # points at sea have no country
    table = atlas_table(means[torch.from_numpy(keep)], codes[keep], concepts)

    inside, keys = associated(concepts, concept_set, places.country, places.continent)
    untrained = build_head_at_step0(head, ckpt)
    random_basis = F.normalize(torch.randn(basis.shape, generator=torch.Generator().manual_seed(
        seed)), dim=1)  # fmt: skip
    auc = {
        "auroc": auroc_columns(acts, inside),
        "auroc_step0": auroc_columns(location_latents(untrained, gps, progress=progress)
                                     @ untrained.basis.detach().cpu().T, inside),
        "auroc_random_basis": auroc_columns(z @ random_basis.T, inside),
    }  # fmt: skip
    cats = ckpt["concepts"]
    grounding = pd.DataFrame({"concept": concepts, "category": cats["categories"],
                              "subcategory": cats["subcategories"], "regions": keys,
                              "inside_points": inside.sum(0).numpy(), **auc})  # fmt: skip
    return Atlas(table, grounding, grounding_summary(grounding), acts)


def build_head_at_step0(head: ConceptAwareHead, ckpt: dict[str, Any]) -> ConceptAwareHead:
    """The head as ``train`` built it before its first step (same seed, same basis E)."""
    torch.manual_seed(int((ckpt.get("config") or {}).get("seed", 0)))
    fresh = build_head(head.concept_embeddings.detach().cpu())
    return fresh.eval().to(head.delta.device)  # type: ignore[return-value]


def grounding_summary(g: pd.DataFrame, n: int = 10) -> dict[str, Any]:
    """Mean and median AUROC per variant, and the most and least grounded concepts."""
    scored = g.dropna(subset=["auroc"]).sort_values("auroc", ascending=False)
    stats = {col: {"mean": float(g[col].mean()), "median": float(g[col].median())}
             for col in ("auroc", "auroc_step0", "auroc_random_basis")}  # fmt: skip
    cols = ["concept", "category", "regions", "auroc"]
    return {
        "concepts": len(g), "with_regions": int(len(scored)), **stats,
        "most_grounded": scored.head(n)[cols].to_dict("records"),
        "least_grounded": scored.tail(n)[cols].iloc[::-1].to_dict("records"),
    }  # fmt: skip


def report_markdown(summary: dict[str, Any], run: str) -> str:
    """A short report of the grounding, controls beside it."""
    lines = [f"# Concept atlas of {run}", "",
             f"{summary['with_regions']} of {summary['concepts']} concepts have region "
             "associations in the concept set; their grounding AUROC (0.5: the learned map "
             "ignores the associated regions, 1: it separates them perfectly):", "",
             "| model | mean | median |", "|---|---|---|"]  # fmt: skip
    names = {"auroc": "trained", "auroc_step0": "same head at step 0",
             "auroc_random_basis": "random basis, same size"}  # fmt: skip
    for col, label in names.items():
        lines.append(f"| {label} | {summary[col]['mean']:.3f} | {summary[col]['median']:.3f} |")
    for title, key in (
        ("Most grounded", "most_grounded"),
        ("Least grounded (candidates for the review file)", "least_grounded"),
    ):
        lines += ["", f"## {title}", "", "| concept | category | regions | AUROC |",
                  "|---|---|---|---|"]  # fmt: skip
        lines += [f"| {r['concept']} | {r['category']} | {r['regions']} | {r['auroc']:.3f} |"
                  for r in summary[key]]  # fmt: skip
    return "\n".join(lines) + "\n"


def write_atlas(atlas: Atlas, out: str | Path, run: str) -> list[Path]:
    """atlas.parquet, grounding.csv, grounding.json and report.md in ``out`` (atomically)."""
    out = Path(out)
    paths = [out / n for n in ("atlas.parquet", "grounding.csv", "grounding.json", "report.md")]
    with atomic_path(paths[0]) as tmp:
        atlas.table.to_parquet(tmp, index=False)
    with atomic_path(paths[1]) as tmp:
        atlas.grounding.to_csv(tmp, index=False)
    write_json(paths[2], json.loads(json.dumps(
        {"summary": atlas.summary, "concepts": atlas.grounding.to_dict("records")},
        default=float)), sort_keys=False)  # fmt: skip
    with atomic_path(paths[3]) as tmp:
        tmp.write_text(report_markdown(atlas.summary, run))
    return paths


def named_concepts(asked: list[str], names: list[str]) -> list[str]:
    """The run's spelling of each concept asked for; one line naming those it lacks."""
    lowered = {n.lower(): n for n in names}
    missing = [a for a in asked if a.lower() not in lowered]
    if missing:
        raise GeoconceptError(f"not concepts of this run: {', '.join(missing)}")
    return [lowered[a.lower()] for a in asked]


def pick_concepts(atlas: Atlas, asked: list[str] | None) -> list[str]:
    """The concepts to map: those asked for, else the best and worst grounded."""
    names = list(atlas.grounding["concept"])
    if asked:
        return named_concepts(asked, names)
    scored = atlas.grounding.dropna(subset=["auroc"]).sort_values("auroc", ascending=False)
    if scored.empty:
        return names[:MAPS_SHOWN]
    half = MAPS_SHOWN // 2
    best, worst = list(scored["concept"][:half]), list(scored["concept"][-half:])
    return list(dict.fromkeys(best + worst))


def plot_small_multiples(acts: dict[str, torch.Tensor], gps: torch.Tensor, path: str | Path,
                         grounding: pd.DataFrame) -> Path:  # fmt: skip
    """One small world map per concept, gallery points coloured by activation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(acts)
    cols = min(4, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.4 * rows), squeeze=False)
    auc = dict(zip(grounding["concept"], grounding["auroc"], strict=True))
    for ax, (name, values) in zip(axes.flat, acts.items(), strict=False):
        order = values.argsort()
        ax.scatter(gps[order, 1], gps[order, 0], c=values[order].numpy(), s=0.4,
                   cmap="inferno_r", linewidths=0, rasterized=True)  # fmt: skip
        grounded = "" if np.isnan(auc.get(name, np.nan)) else f" (AUROC {auc[name]:.2f})"
        ax.set_title(f"{name}{grounded}", fontsize=8)
        ax.set(xlim=(-180, 180), ylim=(-60, 85), xticks=[], yticks=[], aspect="equal")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return Path(path)


def make_atlas(spec: ModelSpec, out: str | Path, concepts: Sequence[str] | None = None,
               concept_set: str | Path | None = None, seed: int = 0, report: Report = silent
               ) -> tuple[Atlas, list[Path]]:  # fmt: skip
    """`geoconcept atlas`: every concept of ``spec``'s concept-aware run over its gallery,
    written to ``out`` (the per-country atlas, the grounding against ``concept_set``'s
    regions (default: the shipped set), a report, and the maps of ``concepts``, or of the 6
    best and 6 worst grounded). Returns the atlas and the files written."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise GeoconceptError(f"--out {out}: a file; give a folder")
    if spec.checkpoint is None:
        raise GeoconceptError("the atlas maps a concept-aware run: give its --checkpoint")
    head, ckpt = load_head(spec.checkpoint, spec.device)
    if not isinstance(head, ConceptAwareHead):
        raise GeoconceptError(f"{spec.checkpoint}: a plain GeoCLIP run (train --concepts none) "
                              "has no concepts to map; give a concept-aware run")  # fmt: skip
    names = ckpt["concepts"]["concepts"]
    asked = list(concepts) if concepts else None
    if asked:
        named_concepts(asked, names)  # before minutes of work
    gps = load_gallery(spec.gallery)
    with report("location encoder over the gallery", "points") as advance:
        progress = (lambda n, total: advance(n, 2 * total)) if advance else None
        atlas = build_atlas(head, ckpt, gps, concept_set or default_concepts_path(), seed,
                            progress)  # fmt: skip
    picked = pick_concepts(atlas, asked)
    index = {c: i for i, c in enumerate(names)}
    paths = write_atlas(atlas, out, str(spec.checkpoint))
    paths.append(plot_small_multiples({c: atlas.acts[:, index[c]] for c in picked}, gps,
                                      out / "maps.png", atlas.grounding))  # fmt: skip
    if not atlas.summary["with_regions"]:
        warnings.warn(
            "no concept of this run has region associations in the concept set: "
            "give --concept-set the concepts.parquet it was built from",
            stacklevel=2,
        )
    return atlas, paths
