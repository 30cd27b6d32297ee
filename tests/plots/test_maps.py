"""The offline PNG map of an explanation: the world drawn whatever the gallery, the heatmap."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from geoconcept_cli.inference.results import Candidate, Explanation
from geoconcept_cli.plots.maps import render_map


def _paris(**fields) -> Explanation:
    """A zero-shot explanation that names Paris, for a map."""
    return Explanation(image="x.jpg", mode="zero-shot",
                       predictions=[Candidate(1, 48.8, 2.3, 0.5, 0, "Paris")],
                       spread={"max_pairwise_km": 0.0, "mean_to_top1_km": 0.0},
                       probabilities={}, **fields)  # fmt: skip


def test_map_draws_the_world_whatever_the_retrieval_gallery(tmp_path):
    exp = _paris(photo_concepts=[{"concept": "vineyard", "category": "natural",
                                  "subcategory": "agriculture", "weight": 0.3}])  # fmt: skip
    tiny = torch.tensor([[48.8, 2.3], [0.0, 0.0], [-33.9, 151.2]])
    render_map(exp, tiny, tmp_path / "map.png")
    pixels = np.asarray(Image.open(tmp_path / "map.png").convert("RGB")).astype(int)
    world_grey = (np.abs(pixels - 200).max(axis=2) <= 8).sum()  # GeoCLIP's 100K points
    assert world_grey > 2000  # three gallery points alone would leave the map blank


def test_map_draws_the_probability_heatmap(tmp_path):
    from geoconcept_cli.gallery.store import load_gallery

    exp = _paris()
    rng = np.random.default_rng(0)  # 300 points around Nairobi, far from the prediction
    heat = [[-1.3 + rng.normal(0, 3), 36.8 + rng.normal(0, 3), float(p)]
            for p in np.sort(rng.uniform(1e-5, 1e-2, 300))[::-1]]  # fmt: skip
    heat += [[-1.3, 36.8, 0.0]] * 3  # underflowed probabilities: on the log scale's floor
    render_map(exp, load_gallery(), tmp_path / "plain.png")
    exp.heat = heat
    render_map(exp, load_gallery(), tmp_path / "heat.png")
    plain, hot = (np.asarray(Image.open(tmp_path / f).convert("RGB")).astype(int)
                  for f in ("plain.png", "heat.png"))  # fmt: skip
    changed = np.abs(plain - hot).max(axis=2) > 40
    h, w = changed.shape

    def x_of(lon: float) -> int:  # the map axes span 0.05 to 0.63 of the width
        return int(w * (0.05 + 0.58 * (lon + 180) / 360))

    rows = slice(int(h * 0.35), int(h * 0.75))
    assert changed[rows, x_of(30) : x_of(44)].sum() > 300  # around Nairobi
    assert changed[:, x_of(-170) : x_of(-30)].sum() == 0  # the Americas: untouched


def _texts(artists) -> list:
    return [t for t in artists if t.get_visible() and t.get_text()]


def test_no_label_runs_into_another_and_every_candidate_is_named(tmp_path):
    """The colour bar's "probability" once overprinted the concept names, and only #1 was
    named; long names are drawn whole (never cut) and clear of the map."""
    from geoconcept_cli.gallery.store import load_gallery
    from geoconcept_cli.plots.maps import NAMED, map_figure

    places = ["Paris, FR", "Lyon, FR", "Geneva, CH", "Turin, IT", "Milan, IT", "Nice, FR", "Bern"]
    preds = [Candidate(i + 1, 45.0 + i * 0.5, 3.0 + i, 0.3 / (i + 1), i, place)
             for i, place in enumerate(places)]  # fmt: skip
    long_name = "license plate with blue eu strip on the left"
    concepts = [{"concept": long_name if i == 0 else f"concept {i}", "category": "human",
                 "subcategory": "x", "weight": 1.0 - i / 10} for i in range(8)]  # fmt: skip
    exp = Explanation(image="x.jpg", mode="zero-shot", predictions=preds, probabilities={},
                      spread={"max_pairwise_km": 0.0, "mean_to_top1_km": 0.0},
                      photo_concepts=concepts,
                      heat=[[45.0, 3.0, 0.3], [46.0, 4.0, 0.01], [10.0, 10.0, 1e-4]])  # fmt: skip
    fig = map_figure(exp, load_gallery())
    fig.canvas.draw()
    map_ax, cax, bars = fig.axes
    names = _texts(bars.get_yticklabels())
    assert long_name in [t.get_text() for t in names]
    colour_bar = [cax.yaxis.label, *_texts(cax.get_xticklabels())]
    assert colour_bar[0].get_text() == "probability"
    boxes = {"map": map_ax.get_window_extent()}
    boxes |= {f"name {t.get_text()}": t.get_window_extent() for t in names}
    boxes |= {f"colour bar {t.get_text()}": t.get_window_extent() for t in colour_bar}
    for a, box_a in boxes.items():
        for b, box_b in boxes.items():
            if a < b and not (a.startswith("name") and b.startswith("name")):
                assert not box_a.overlaps(box_b), f"{a} runs into {b}"
    edge = fig.bbox
    assert all(box.x0 >= 0 and box.y0 >= 0 and box.x1 <= edge.x1 and box.y1 <= edge.y1
               for box in boxes.values()), "a label is cut at the figure's edge"  # fmt: skip
    drawn = " ".join(t.get_text() for t in _texts(map_ax.texts))
    assert all(place in drawn for place in places[:NAMED])
    assert f"and {len(places) - NAMED} more" in drawn
    ranks = [t for t in map_ax.texts if t.get_text().isdigit()]
    assert [t.get_text() for t in ranks] == ["1", "6"]  # 2-5 sit on #1; 6 is 5 degrees on
    assert not ranks[0].get_window_extent().overlaps(ranks[1].get_window_extent())
    render_map(exp, load_gallery(), tmp_path / "map.png")  # the same figure, written
    assert Image.open(tmp_path / "map.png").size == (1400, 560)
