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
