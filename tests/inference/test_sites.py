"""Candidates as distinct places: nearby gallery points merged, their probabilities summed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import one_line_error, tiny_spec
from typer.testing import CliRunner

from geoconcept_cli.cli.app import app
from geoconcept_cli.errors import GeoconceptError
from geoconcept_cli.gallery.store import cached_gallery_embeddings, distinct_places
from geoconcept_cli.geo.distance import haversine_km
from geoconcept_cli.inference import sites
from geoconcept_cli.inference.factory import load_locator
from geoconcept_cli.inference.predictor import Predictor
from geoconcept_cli.inference.request import Request
from geoconcept_cli.model.geoclip import load_geoclip_head

runner = CliRunner()


def offset(lat: float, lon: float, km_north: float) -> list[float]:
    """A point ``km_north`` km north of (lat, lon)."""
    return [lat + km_north / 111.195, lon]


def planted_sites() -> tuple[sites.Sites, torch.Tensor]:
    """Paris (row 0), a point 50 m from it held twice (rows 1, 5), one 3 km north of Paris
    (row 3), one 6 km north (row 2, 3 km from row 3) and Sydney (row 4)."""
    paris = [48.85, 2.35]
    gps = torch.tensor([paris, offset(*paris, 0.05), offset(*paris, 6.0), offset(*paris, 3.0),
                        [-33.87, 151.2], offset(*paris, 0.05)])  # fmt: skip
    places, copies = distinct_places(gps)
    row_copies = torch.zeros(len(gps), dtype=torch.long)
    row_copies[places] = copies
    return sites.Sites(gps, row_copies, len(places)), gps


def test_points_within_the_radius_of_a_candidates_first_point_are_summed_into_it():
    """Ranked Paris .30, 6 km north .25, the 50 m twin .10 a row (two rows), Sydney .10, 3 km
    north .05: Paris takes its twin's two rows and the point 3 km north (.55, 4 points); the
    point 6 km north stays apart although it is 3 km from a merged point (no chaining)."""
    merger, _ = planted_sites()
    probs = torch.tensor([[0.30, 0.25, 0.10, 0.10, 0.05]])
    rows = torch.tensor([[0, 2, 1, 4, 3]])
    got = merger.merge(probs, rows, k=3, merge_km=5.0, total=True)
    assert got.rows.tolist() == [[0, 2, 4]]
    torch.testing.assert_close(got.probs, torch.tensor([[0.55, 0.25, 0.10]]))
    assert got.points.tolist() == [[4, 1, 1]]
    at_ten = merger.merge(probs, rows, k=3, merge_km=10.0, total=True)  # wider: one Paris
    assert at_ten.rows.tolist()[0][:2] == [0, 4] and at_ten.points.tolist() == [[5, 1, 0]]
    torch.testing.assert_close(at_ten.probs, torch.tensor([[0.80, 0.10, 0.0]]))
    first = merger.merge(probs, rows, k=2, merge_km=5.0, total=False)  # activations
    torch.testing.assert_close(first.probs, torch.tensor([[0.30, 0.25]]))


def test_candidates_are_listed_by_their_summed_probability():
    """The single most probable point (Sydney, .2) holds less than Paris with its twin (.3)."""
    merger, _ = planted_sites()
    got = merger.merge(torch.tensor([[0.2, 0.15, 0.15]]), torch.tensor([[4, 0, 1]]), k=2,
                       merge_km=5.0, total=True)  # fmt: skip
    assert got.rows.tolist() == [[0, 4]]
    torch.testing.assert_close(got.probs, torch.tensor([[0.45, 0.2]]))  # the twin's two rows


def test_a_pool_too_shallow_for_k_candidates_is_deepened(monkeypatch):
    """Three ranked points all in Paris form one candidate of the three asked for: the photo
    is ranked again, deeper, by the same ranker."""
    merger, _ = planted_sites()
    place_rows = torch.tensor([0, 1, 2, 3, 4])  # row 5 repeats row 1
    probs = torch.tensor([[0.30, 0.10, 0.05, 0.25, 0.10]])
    calls = []

    def rank(feats, k):
        calls.append(k)
        order = probs.argsort(descending=True)[:, :k]
        return probs.gather(1, order), place_rows[order]

    monkeypatch.setattr(sites, "POOL", 1)
    monkeypatch.setattr(sites, "DEPTH", 1)
    got = merger.rank(rank, torch.zeros(1, 1), k=3, merge_km=5.0)
    assert calls == [3, 5]  # the first pool, then every point (GROWTH x 3, capped at 5)
    assert got.rows.tolist() == [[0, 4, 2]] and got.points.tolist() == [[4, 1, 1]]
    torch.testing.assert_close(got.probs, torch.tensor([[0.75, 0.10, 0.05]]))
    calls.clear()
    got = merger.rank(rank, torch.zeros(1, 1), k=2, merge_km=0.0)
    assert calls == [2] and got.rows.tolist() == [[0, 3]] and got.points.tolist() == [[1, 1]]


@pytest.fixture(scope="module")
def twins():
    """A predictor over 40 places of GeoCLIP's gallery, each with a twin 30 m north."""
    torch.manual_seed(0)
    head = load_geoclip_head()
    gen = torch.Generator().manual_seed(0)
    base = torch.stack([torch.rand(40, generator=gen) * 120 - 60,
                        torch.rand(40, generator=gen) * 340 - 170], 1)  # fmt: skip
    gps = torch.cat([base, base + torch.tensor([0.03 / 111.195, 0.0])])
    return Predictor(head, gps, cached_gallery_embeddings(gps, head))


def test_a_place_whose_points_are_metres_apart_is_listed_once(twins):
    """The gallery's neighbours 30 m apart were listed one after the other as one place
    (Shawville, Quebec at #2 and #3); each is now one candidate holding both points' mass."""
    feats = torch.randn(8, 768) * 3
    probs = twins.probabilities(feats)
    for i in range(len(feats)):
        merged = twins.predict_features(feats[i : i + 1], Request(top_k=5)).predictions
        lat, lon = np.array([[c.lat, c.lon] for c in merged]).T
        apart = haversine_km(lat[:, None], lon[:, None], lat, lon)[np.triu_indices(5, 1)]
        assert apart.min() > 5 and [c.points for c in merged] == [2] * 5
        for c in merged:  # a candidate's probability: its point's and its twin's
            twin = (c.gallery_index + 40) % 80
            assert c.prob == pytest.approx(float(probs[i, c.gallery_index] + probs[i, twin]),
                                           rel=1e-5)  # fmt: skip
        assert [c.prob for c in merged] == sorted((c.prob for c in merged), reverse=True)
        points = twins.predict_features(feats[i : i + 1], Request(top_k=5, merge_km=0))
        top_p, top_rows = twins.topk(feats[i : i + 1], 5)  # 0 km: every point, as before
        assert [c.gallery_index for c in points.predictions] == top_rows[0].tolist()
        assert [c.points for c in points.predictions] == [1] * 5


def test_where_lists_distinct_places(tiny_clip, small_gallery, tmp_path, monkeypatch):
    """`where` sums a zero-shot text's probability over each place's points too (all of them:
    a pool as deep as the gallery)."""
    monkeypatch.setattr(sites, "POOL", 2000)
    import pandas as pd

    twin = pd.read_csv(small_gallery)
    twin = pd.concat([twin, twin.assign(lat=twin["lat"] + 0.03 / 111.195)])
    path = tmp_path / "twins.csv"
    twin.to_csv(path, index=False)
    with pytest.warns(UserWarning):
        locator = load_locator(tiny_spec(gallery=path))
    answer = locator.where("rice terraces", Request(top_k=4))
    gps = locator.predictor.gallery_gps.double().numpy()
    for p in answer.places:  # every row within 5 km: its twin at least
        near = haversine_km(p["lat"], p["lon"], gps[:, 0], gps[:, 1]) <= sites.MERGE_KM
        assert p["points"] == near.sum() >= 2
        assert p["score"] == pytest.approx(float(answer.scores[near].sum()), abs=2e-6)
    assert answer.to_json()["merge_km"] == sites.MERGE_KM


def test_a_radius_out_of_range_is_refused(tiny_clip, small_gallery, tmp_path):
    for bad in (-1.0, 501.0):
        with pytest.raises(GeoconceptError, match="--merge-km"):
            Request(merge_km=bad)
    photo = tmp_path / "p.jpg"
    photo.write_bytes(b"")  # refused before the photo is read
    res = runner.invoke(app, ["predict", str(photo), "--merge-km", "-1"])
    assert "--merge-km" in one_line_error(res)
    model = ["--clip-model", tiny_clip, "--gallery", str(small_gallery)]
    res = runner.invoke(app, ["where", "rice terraces", "--merge-km", "600", *model])
    assert "--merge-km 600" in one_line_error(res)
