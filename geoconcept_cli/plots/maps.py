"""Offline map of an explanation: GeoCLIP's 100K gallery points draw the inhabited world (no
tiles or shapefiles needed), with the top-k candidates, the true location and concept bars.
The world is drawn from the 100K points whatever gallery the prediction used; a smaller
retrieval gallery is drawn over it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch

if TYPE_CHECKING:
    from matplotlib.collections import PathCollection

    from ..inference.results import Explanation

MAP_SIZE_PX = (1400, 560)  # width, height of the PNG
DPI = 100


CATEGORY_COLOURS = {"natural": "#1f77b4", "human": "#ff7f0e"}


def render_map(
    exp: Explanation, gallery_gps: torch.Tensor, path: str | Path,
    true_latlon: tuple[float, float] | None = None,
) -> Path:  # fmt: skip
    """Write the explanation's map and concept bars to ``path`` (PNG), atomically; its heat
    ([lat, lon, probability] rows, when asked for) is drawn as the probability heatmap, on a
    log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm
    from matplotlib.patches import Patch

    from ..gallery.store import load_gallery
    from ..io.artifacts import atomic_path

    fig = plt.figure(figsize=(MAP_SIZE_PX[0] / DPI, MAP_SIZE_PX[1] / DPI), dpi=DPI)
    ax = fig.add_axes((0.05, 0.1, 0.58, 0.8))
    world = load_gallery()
    ax.scatter(world[:, 1], world[:, 0], s=0.2, c="#c8c8c8", linewidths=0, rasterized=True)
    if not (gallery_gps.shape == world.shape and torch.equal(gallery_gps, world)):
        label = f"retrieval gallery ({len(gallery_gps):,} points)"
        ax.scatter(gallery_gps[:, 1], gallery_gps[:, 0], s=3, c="#6f6f6f", linewidths=0,
                   rasterized=True, label=label)  # fmt: skip
    rows = np.asarray(exp.heat or [], dtype=np.float64).reshape(-1, 3)[::-1]  # top drawn last
    if (rows[:, 2] > 0).any():  # a log scale needs a positive floor: underflowed rows sit on it
        low = rows[:, 2][rows[:, 2] > 0].min()
        prob = rows[:, 2].clip(min=low)
        dots = ax.scatter(
            rows[:, 1],
            rows[:, 0],
            s=4,
            c=prob,
            cmap="inferno_r",
            linewidths=0,
            zorder=1.5,
            rasterized=True,
            norm=LogNorm(vmin=low, vmax=max(prob.max(), low * 1.01)),
        )
        fig.colorbar(dots, cax=fig.add_axes((0.64, 0.1, 0.008, 0.8)), label="probability")
    region = exp.region
    if region and region["points"]:
        lat, lon = zip(*region["points"], strict=True)
        shown = len(region["points"])
        label = (
            f"{region['coverage']:.0%} region ({region['area_km2']:.3g} km², "
            f"{region['places']:,} places"
            + (f"; the {shown} most probable drawn)" if shown < region["places"] else ")")
        )
        ax.scatter(lon, lat, s=4, c="#ff9f1c", linewidths=0, zorder=2, label=label)
    preds = [c.to_json() for c in exp.predictions]
    ax.scatter([p["lon"] for p in preds], [p["lat"] for p in preds],
               s=[40 + 400 * p["prob"] / max(preds[0]["prob"], 1e-9) for p in preds],
               c="#d62728", edgecolors="black", zorder=3, label="predictions")  # fmt: skip
    ax.annotate(preds[0]["place"], (preds[0]["lon"], preds[0]["lat"]), xytext=(6, 6),
                textcoords="offset points", fontsize=9)  # fmt: skip
    if true_latlon is not None:
        ax.scatter([true_latlon[1]], [true_latlon[0]], marker="*", s=250, c="#2ca02c",
                   edgecolors="black", zorder=4, label="true location")  # fmt: skip
    ax.set_xlim(-180, 180)
    ax.set_ylim(-60, 85)
    ax.set_aspect("equal")
    ax.set_xlabel("longitude")
    ax.set_ylabel("latitude")
    for handle in ax.legend(loc="lower left", fontsize=8).legend_handles:
        # the key, not the top prediction's probability-sized marker (every labelled artist
        # here is a scatter, whose legend key is a PathCollection)
        cast("PathCollection", handle).set_sizes([40])
    ax.set_title(f"{Path(exp.image or '').name}  ({exp.mode})", fontsize=9)

    bars = fig.add_axes((0.78, 0.1, 0.2, 0.8))
    concepts = exp.why_here or exp.photo_concepts or []
    names = [c["concept"] for c in concepts][::-1]
    values = [c["weight"] for c in concepts][::-1]
    colours = [CATEGORY_COLOURS.get(c["category"], "#7f7f7f") for c in concepts][::-1]
    bars.barh(names, values, color=colours)
    bars.tick_params(axis="y", labelsize=8)
    bars.legend(handles=[Patch(color=v, label=k) for k, v in CATEGORY_COLOURS.items()],
                fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2,
                frameon=False)  # fmt: skip
    bars.set_title("why here (score terms)" if exp.why_here else "photo concepts",
                   fontsize=9, pad=20)  # fmt: skip
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    plt.close(fig)
    return path


def render_heatmap(scores: torch.Tensor, gallery_gps: torch.Tensor, path: str | Path,
                   title: str, marks: list[dict[str, Any]] | None = None) -> Path:  # fmt: skip
    """A world map of one score per gallery point (probability or activation), brightest
    where it is highest, over the 100K-point world, with ``marks`` (lat, lon, place) named."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..gallery.store import load_gallery
    from ..io.artifacts import atomic_path

    fig = plt.figure(figsize=(MAP_SIZE_PX[0] / DPI, MAP_SIZE_PX[1] / DPI), dpi=DPI)
    ax = fig.add_axes((0.05, 0.1, 0.82, 0.8))
    world = load_gallery()
    ax.scatter(world[:, 1], world[:, 0], s=0.2, c="#d8d8d8", linewidths=0, rasterized=True)
    order = scores.argsort()  # highest drawn last, on top
    pts = gallery_gps[order]
    shown = ax.scatter(pts[:, 1], pts[:, 0], s=1.5, c=scores[order].numpy(), cmap="inferno_r",
                       linewidths=0, rasterized=True)  # fmt: skip
    fig.colorbar(shown, cax=fig.add_axes((0.89, 0.1, 0.015, 0.8)))
    for m in marks or []:
        ax.scatter([m["lon"]], [m["lat"]], s=60, facecolors="none", edgecolors="#1f77b4", lw=1.5)
        ax.annotate(m["place"], (m["lon"], m["lat"]), xytext=(5, 5), textcoords="offset points",
                    fontsize=8, color="#1f4e79")  # fmt: skip
    ax.set(xlim=(-180, 180), ylim=(-60, 85), aspect="equal", xlabel="longitude",
           ylabel="latitude")  # fmt: skip
    ax.set_title(title, fontsize=10)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    plt.close(fig)
    return Path(path)
