"""Offline map of an explanation: GeoCLIP's 100K gallery points draw the inhabited world (no
tiles or shapefiles needed), with the top-k candidates, the true location and concept bars.
The world is drawn from the 100K points whatever gallery the prediction used; a smaller
retrieval gallery is drawn over it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.collections import PathCollection
    from matplotlib.figure import Figure

    from ..inference.results import Explanation

MAP_SIZE_PX = (1400, 560)  # width, height of the PNG
DPI = 100
NAME_PT = 8  # font size of the concept names beside the bars
MAP_AXES = (0.05, 0.1, 0.58, 0.8)  # left, bottom, width, height of the map, in the figure


CATEGORY_COLOURS = {"natural": "#1f77b4", "human": "#ff7f0e"}


NAMED = 5  # candidates listed by name on the map
RANK_APART_DEG = 5.0  # a candidate's rank is drawn beside it if no better one is this close


def render_map(
    exp: Explanation, gallery_gps: npt.ArrayLike, path: str | Path,
    true_latlon: tuple[float, float] | None = None, world: npt.ArrayLike | None = None,
) -> Path:  # fmt: skip
    """Write :func:`map_figure` to ``path`` (PNG), atomically."""
    import matplotlib.pyplot as plt

    from ..io.artifacts import atomic_path

    fig = map_figure(exp, gallery_gps, true_latlon, world)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    plt.close(fig)
    return path


def map_figure(
    exp: Explanation, gallery_gps: npt.ArrayLike, true_latlon: tuple[float, float] | None = None,
    world: npt.ArrayLike | None = None,
) -> Figure:  # fmt: skip
    """The explanation's map and concept bars over its (N, 2) gallery (a tensor or an array:
    either runtime's), the world drawn as ``world``'s points (None: GeoCLIP's 100K gallery,
    loaded with torch); its heat ([lat, lon, probability] rows, when asked for) is drawn as
    the probability heatmap, on a log scale, its colour bar under the map, clear of the
    concept names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm
    from matplotlib.patches import Patch

    fig = plt.figure(figsize=(MAP_SIZE_PX[0] / DPI, MAP_SIZE_PX[1] / DPI), dpi=DPI)
    ax = fig.add_axes(MAP_AXES)
    drawn = world_points() if world is None else np.asarray(world, dtype=np.float64)
    ax.scatter(drawn[:, 1], drawn[:, 0], s=0.2, c="#c8c8c8", linewidths=0, rasterized=True)
    gps = np.asarray(gallery_gps, dtype=np.float64)
    if not np.array_equal(gps, drawn):
        label = f"retrieval gallery ({len(gps):,} points)"
        ax.scatter(gps[:, 1], gps[:, 0], s=3, c="#6f6f6f", linewidths=0, rasterized=True,
                   label=label)  # fmt: skip
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
        cax = fig.add_axes((0.4, 0.075, 0.23, 0.015))
        fig.colorbar(dots, cax=cax, orientation="horizontal")
        cax.set_ylabel("probability", fontsize=8, rotation=0, ha="right", va="center")
        cax.tick_params(labelsize=7)
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
    labelled: list[tuple[float, float]] = []
    for p in preds:  # a rank beside its marker, unless a better one's already sits there
        if all(max(abs(p["lon"] - x), abs(p["lat"] - y)) >= RANK_APART_DEG for x, y in labelled):
            labelled.append((p["lon"], p["lat"]))
            ax.annotate(str(p["rank"]), (p["lon"], p["lat"]), xytext=(5, 5),
                        textcoords="offset points", fontsize=8, weight="bold")  # fmt: skip
    listed = [f"{p['rank']}  {p['place']}  (p={p['prob']:.2g})" for p in preds[:NAMED]]
    if len(preds) > NAMED:
        listed.append(f"… and {len(preds) - NAMED} more")
    box = {"facecolor": "white", "alpha": 0.85, "edgecolor": "#999999"}
    ax.text(0.01, 0.98, "\n".join(listed), transform=ax.transAxes, va="top", fontsize=8,
            zorder=5, bbox=box)  # fmt: skip
    if true_latlon is not None:
        ax.scatter([true_latlon[1]], [true_latlon[0]], marker="*", s=250, c="#2ca02c",
                   edgecolors="black", zorder=4, label="true location")  # fmt: skip
    ax.set_xlim(-180, 180)
    ax.set_ylim(-60, 85)
    ax.set_aspect("equal")
    ax.set_xlabel("longitude", loc="left")
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
    bars.tick_params(axis="y", labelsize=NAME_PT)
    bars.legend(handles=[Patch(color=v, label=k) for k, v in CATEGORY_COLOURS.items()],
                fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2,
                frameon=False)  # fmt: skip
    bars.set_title("why here (score terms)" if exp.why_here else "photo concepts",
                   fontsize=9, pad=20)  # fmt: skip
    _fit_names(fig, bars, names)
    return fig


def _fit_names(fig: Figure, bars: Axes, names: list[str]) -> None:
    """Narrow the bars so that their concept names, never cut, fit between the map and them
    (the names are measured, not drawn: a draw of the 100K-point world added 8% to a map)."""
    from matplotlib.font_manager import FontProperties

    font, renderer = FontProperties(size=NAME_PT), fig.canvas.get_renderer()  # type: ignore[attr-defined]
    widest = max((renderer.get_text_width_height_descent(n, font, ismath=False)[0]
                  for n in names), default=0.0)  # fmt: skip
    left = MAP_AXES[0] + MAP_AXES[2] + 0.02 + widest / fig.bbox.width
    box = bars.get_position()
    if left > box.x0:
        bars.set_position((left, box.y0, max(0.98 - left, 0.05), box.height))


def world_points() -> npt.NDArray[np.float64]:
    """GeoCLIP's 100K gallery, (N, 2) degrees: the inhabited world every map draws."""
    from ..gallery.store import load_gallery

    return load_gallery().numpy().astype(np.float64)


def render_heatmap(scores: npt.ArrayLike, gallery_gps: npt.ArrayLike, path: str | Path,
                   title: str, marks: list[dict[str, Any]] | None = None) -> Path:  # fmt: skip
    """A world map of one score per gallery point (probability or activation), brightest
    where it is highest, over the 100K-point world, with ``marks`` (lat, lon, place) named;
    points scored -inf (outside a search's limits) are left grey."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io.artifacts import atomic_path

    fig = plt.figure(figsize=(MAP_SIZE_PX[0] / DPI, MAP_SIZE_PX[1] / DPI), dpi=DPI)
    ax = fig.add_axes((0.05, 0.1, 0.82, 0.8))
    world = world_points()
    ax.scatter(world[:, 1], world[:, 0], s=0.2, c="#d8d8d8", linewidths=0, rasterized=True)
    values = np.asarray(scores, dtype=np.float64)
    order = np.argsort(values, kind="stable")  # highest drawn last, on top
    order = order[np.isfinite(values[order])]  # -inf: outside the search's limits
    pts = np.asarray(gallery_gps, dtype=np.float64)[order]
    shown = ax.scatter(pts[:, 1], pts[:, 0], s=1.5, c=values[order], cmap="inferno_r",
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
