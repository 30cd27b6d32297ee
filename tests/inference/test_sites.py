"""Candidates as distinct places: nearby gallery points merged, their probabilities summed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import one_line_error, tiny_spec
from typer.testing import CliRunner

from geoconcept_cli.cli.app import app
from geoconcept_cli.errors import GeoconceptError
from geoconcept_cli.gallery.sites import site_ids
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


PARIS = [48.85, 2.35]
# Paris (row 0), a point 50 m from it held twice (rows 1, 5), one 3 km north of Paris (row 3),
# one 6 km north (row 2: 3 km from row 3) and Sydney (row 4)
GPS = torch.tensor([PARIS, offset(*PARIS, 0.05), offset(*PARIS, 6.0), offset(*PARIS, 3.0),
                    [-33.87, 151.2], offset(*PARIS, 0.05)])  # fmt: skip


def test_a_site_is_a_leader_and_the_points_within_the_radius_it_took(tmp_path):
    """In gallery order: Paris leads its twin's two rows and the point 3 km north; the point
    6 km north leads its own site although it is 3 km from a member (no chaining)."""
    assert site_ids(GPS, 5.0, tmp_path).tolist() == [0, 0, 1, 0, 2, 0]
    assert site_ids(GPS, 10.0, tmp_path).tolist() == [0, 0, 0, 0, 1, 0]
    assert site_ids(GPS, 0.01, tmp_path).tolist() == [0, 1, 2, 3, 4, 1]  # copies stay one
    assert (tmp_path / "sites").is_dir()  # cached per gallery and radius


def sites_of(radius_km: float, tmp_path) -> sites.Sites:
    places, copies = distinct_places(GPS)
    row_copies = torch.zeros(len(GPS), dtype=torch.long)
    row_copies[places] = copies
    return sites.Sites(site_ids(GPS, radius_km, tmp_path), row_copies)


def test_a_candidate_sums_every_row_of_its_site_and_stands_at_its_best_point(tmp_path):
    """Paris .30 + twin .10 a row (two rows) + 3 km north .05 = .55 over 4 rows, at Paris;
    6 km north .25; Sydney .20: listed by their sums."""
    probs = torch.tensor([[0.30, 0.10, 0.25, 0.05, 0.20, 0.10]])
    value, rows, held = sites_of(5.0, tmp_path).merge(probs, 3)
    torch.testing.assert_close(value, torch.tensor([[0.55, 0.25, 0.20]]))
    assert rows.tolist() == [[0, 2, 4]] and held.tolist() == [[4, 1, 1]]
    # a site's point is its most probable, wherever its leader is
    value, rows, _ = sites_of(5.0, tmp_path).merge(
        torch.tensor([[0.1, 0.1, 0.0, 0.4, 0.3, 0.1]]), 1
    )
    assert rows.tolist() == [[3]] and value.tolist() == [[pytest.approx(0.7)]]
    # activations: a site scores its best row
    value, rows, _ = sites_of(5.0, tmp_path).merge(probs, 2, total=False)
    torch.testing.assert_close(value, torch.tensor([[0.30, 0.25]]))


def test_the_sum_of_the_single_most_probable_point_can_lose(tmp_path):
    """Sydney's one point (.40) holds less than Paris with its twin's rows (.45)."""
    probs = torch.tensor([[0.15, 0.15, 0.0, 0.0, 0.40, 0.15]])
    value, rows, _ = sites_of(5.0, tmp_path).merge(probs, 2)
    assert rows.tolist() == [[0, 4]]  # Paris first: its first best point
    torch.testing.assert_close(value, torch.tensor([[0.45, 0.40]]))


def test_ranked_places_of_an_index_count_their_copies(tmp_path):
    """An index ranks places (a repeated point once, at its first row): its rows weigh."""
    value, rows, held = sites_of(5.0, tmp_path).merge(torch.tensor([[0.3, 0.1, 0.2]]), 2,
                                                      rows=torch.tensor([[0, 1, 4]]))  # fmt: skip
    torch.testing.assert_close(value, torch.tensor([[0.5, 0.2]]))  # .3 + 2 x .1
    assert rows.tolist() == [[0, 4]] and held.tolist() == [[4, 1]]


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


def test_where_lists_distinct_places(tiny_clip, small_gallery, tmp_path):
    """`where` sums a zero-shot text's probability over each place's points too."""

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
