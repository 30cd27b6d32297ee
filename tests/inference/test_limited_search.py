"""Search inside a limit: every answer from the allowed places, renormalised over them, by the
same kernels (exact, blocked batch, faiss) masked rather than a second gallery."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import one_line_error, shared_data
from typer.testing import CliRunner

from geoconcept_cli.cli.app import app
from geoconcept_cli.errors import GeoconceptError
from geoconcept_cli.gallery.index import GalleryIndex, build_index
from geoconcept_cli.gallery.store import distinct_places
from geoconcept_cli.geo.distance import haversine_km
from geoconcept_cli.geo.geocode import reverse_geocode
from geoconcept_cli.geo.limits import Limits
from geoconcept_cli.inference.calibration_record import Calibration
from geoconcept_cli.inference.factory import load_predictor
from geoconcept_cli.inference.request import Request
from geoconcept_cli.inference.scorer import PlaceScorer
from geoconcept_cli.model.clip_id import ClipId
from geoconcept_cli.model.spec import ModelSpec, StoredFeatures

runner = CliRunner()
FRANCE = Limits.parse(["FR"])


@pytest.fixture(scope="module")
def predictor():
    """GeoCLIP's real head and 100K gallery, for stored 768-d features (no CLIP loads)."""
    return load_predictor(ModelSpec(features=StoredFeatures(ClipId("ViT-L-14", "openai"), 768)))


def test_a_limited_prediction_is_the_softmax_over_the_places_inside(predictor):
    torch.manual_seed(0)
    feats = torch.randn(4, 768) * 3
    inside = torch.from_numpy(predictor.gallery_countries == "FR")
    full = predictor.logits(feats)
    expect = full.masked_fill(~inside, -torch.inf).softmax(1)
    for i in range(len(feats)):
        got = predictor.predict_features(feats[i : i + 1], Request(top_k=5, merge_km=0,
                                                                   limits=FRANCE))  # fmt: skip
        rows = [c.gallery_index for c in got.predictions]
        assert all(inside[rows])
        top = expect[i].clone()
        top[~torch.isin(torch.arange(len(top)), predictor.places)] = -1
        assert rows == top.topk(5).indices.tolist()
        assert [c.prob for c in got.predictions] == pytest.approx(expect[i, rows].tolist(),
                                                                  rel=1e-5)  # fmt: skip
        note = got.probabilities["limited_to"]
        assert note.startswith("France (FR): renormalised over the 4,429 places inside")
        merged = predictor.predict_features(feats[i : i + 1], Request(limits=FRANCE))
        assert all(c == "FR" for c in reverse_geocode(
            np.array([[c.lat, c.lon] for c in merged.predictions])).country)  # fmt: skip
    # the mask is made once per limits, and the whole gallery's predictor stays as it was
    again = predictor.limited(Limits.parse(["France"]))
    assert again.allowed is predictor.limited(FRANCE).allowed  # the mask is made once
    assert predictor.allowed is None and predictor.logits(feats).isfinite().all()


def test_the_batch_kernel_masks_the_places_outside(predictor):
    """PlaceScorer's blocked top-k of a limited predictor is the limited exact ranking, also
    where whole blocks hold no place inside (a small circle)."""
    torch.manual_seed(1)
    feats = torch.randn(300, 768) * 3
    for limits in (FRANCE, Limits.parse(near=["-33.87,151.2"], radius=[30])):
        p = predictor.limited(limits)
        probs, rows = PlaceScorer(p).topk(feats, 5)
        want_p, want_rows = p.topk(feats, 5)
        assert torch.equal(rows, want_rows)
        torch.testing.assert_close(probs, want_p, rtol=1e-4, atol=1e-7)
        assert bool(p.allowed[rows].all())


def test_the_faiss_path_searches_only_the_places_inside():
    gen = torch.Generator().manual_seed(2)
    gps = torch.stack([torch.rand(3000, generator=gen) * 140 - 70,
                       torch.rand(3000, generator=gen) * 360 - 180], 1)  # fmt: skip
    emb = torch.nn.functional.normalize(torch.randn(3000, 64, generator=gen), dim=1)
    places, copies = distinct_places(gps)
    index = GalleryIndex(build_index(emb.half().numpy(), places.numpy()), emb.half().numpy(),
                         places, copies)  # fmt: skip
    allowed = gps[:, 1] > 100  # east of 100°E: about a fifth
    q = torch.nn.functional.normalize(torch.randn(50, 64, generator=gen), dim=1)
    probs, rows = index.topk(q, 5, 30.0, 1.0, allowed)
    assert bool(allowed[rows].all())
    exact = (q @ emb.T).masked_fill(~allowed, -torch.inf).argmax(1)
    assert (rows[:, 0] == exact).float().mean() > 0.9  # an 8-bit index, re-scored exactly
    assert torch.all(probs[:, :-1] >= probs[:, 1:])


def test_a_calibrated_region_stays_inside_the_limit(predictor):
    cal = Calibration(temperature=1.0, alpha=0.1, radius_km=25.0, threshold=float("inf"),
                      photos=100, nll_before=1.0, nll_after=1.0, model="", gallery="",
                      clip={})  # fmt: skip
    p = predictor.limited(FRANCE)
    p.calibration = cal  # the view's own: the whole gallery's predictor stays uncalibrated
    try:
        region = p.regions(torch.randn(1, 768) * 3)[0]
    finally:
        p.calibration = None
    assert [c["country"] for c in region["countries"]] == ["FR"]
    assert region["places"] == 4429 and predictor.calibration is None


def test_an_empty_limit_is_one_line_and_exit_2(predictor, tmp_path):
    with pytest.raises(GeoconceptError, match="no gallery place inside 1 km around 0,-30"):
        predictor.limited(Limits.parse(near=["0,-30"], radius=[1]))  # mid-Atlantic
    photo = tmp_path / "p.jpg"
    from PIL import Image

    Image.new("RGB", (64, 64)).save(photo)
    res = runner.invoke(app, ["predict", str(photo), "--near", "0,-30", "--radius", "1",
                              "--clip-model", "tests/data/tiny-clip-768.json",
                              "--clip-pretrained", "none"])  # fmt: skip
    assert "no gallery place inside" in one_line_error(res)
    res = runner.invoke(app, ["predict", str(photo), "--within", "Atlantis"])
    assert "--within 'Atlantis'" in one_line_error(res)


def test_a_limit_to_the_true_country_keeps_answers_inside_and_accuracy(predictor):
    """Im2GPS3k's real labels, random features: every answer inside the photo's country, and
    the 750/2500 km accuracy at least what the whole gallery gives."""
    labels = pd.read_csv(shared_data("im2gps3k", "im2gps3k_places365.csv")).head(150)
    truth = labels[["LAT", "LON"]].to_numpy(dtype=float)
    countries = reverse_geocode(truth).country
    torch.manual_seed(3)
    feats = torch.randn(len(labels), 768) * 3
    free, kept = [], []
    for i, cc in enumerate(countries):
        if not cc:
            continue
        for out, limits in ((free, Limits()), (kept, Limits.parse([cc]))):
            top = predictor.predict_features(feats[i : i + 1], Request(top_k=1, limits=limits))
            c = top.predictions[0]
            out.append(haversine_km(*truth[i], c.lat, c.lon))
            if limits:
                assert reverse_geocode(np.array([[c.lat, c.lon]])).country[0] == cc
    free, kept = np.array(free), np.array(kept)
    for km in (750, 2500):
        assert (kept <= km).mean() >= (free <= km).mean()


def test_the_conformal_region_under_a_limit_keeps_its_coverage(planted_world):
    """Calibrated on half of the planted photos, the region of each other photo under a limit
    that holds its truth (2,000 km around it) covers the truth at least as often as the free
    region (renormalising inside removes mass above the truth, never below), and lies inside
    the limit."""
    from geoconcept_cli.evaluation.calibration_fit import calibrate_predictor

    p, feats, truth, _, _ = planted_world
    order = torch.randperm(len(feats), generator=torch.Generator().manual_seed(0))
    fit, held = order[: len(order) // 2], order[len(order) // 2 :]
    p.calibration = calibrate_predictor(p, feats[fit], truth[fit], ClipId("tiny-clip-768", "none"),
                                        alpha=0.2, radius_km=25.0)  # fmt: skip
    try:
        free, kept = [], []
        for i in held.tolist():
            lat, lon = truth[i].tolist()
            around = Limits.parse(near=[f"{lat},{lon}"], radius=[2000])
            for out, limits in ((free, Limits()), (kept, around)):
                region = p.limited(limits).regions(feats[i : i + 1], max_points=10_000)[0]
                pts = np.array(region["points"])
                km = haversine_km(lat, lon, pts[:, 0], pts[:, 1])
                out.append(bool((km <= 25).any()))
                if limits:
                    assert (km <= 2000 + 1).all()
        coverage = (np.mean(kept), np.mean(free))
        assert coverage[0] >= coverage[1] and coverage[0] >= 0.7, coverage
    finally:
        p.calibration = None


def test_a_ranking_deeper_than_the_limit_holds_stays_inside(predictor):
    """The explainer's runner-up search ranks 200 deep: inside a limit of fewer places, both
    rankers list only those (a ranking once filled up with places outside)."""
    p = predictor.limited(Limits.parse(["Estonia"]))  # 134 places
    assert 32 < p.place_count < 200
    feats = torch.randn(3, 768, generator=torch.Generator().manual_seed(5)) * 3
    for rank in (p.topk, PlaceScorer(p).topk):
        probs, rows = rank(feats, 200)
        assert rows.shape[1] == p.place_count and bool(p.allowed[rows].all())


def test_hints_on_a_feature_folder_are_refused_before_loading(tmp_path):
    from synthetic import make_world

    world = make_world(tmp_path / "w", n_regions=2, per_region=4, clip_model="ViT-L-14")
    res = runner.invoke(app, ["predict", str(world["test"]), "--out", str(tmp_path / "o"),
                              "--hint", "a coast"])  # fmt: skip
    assert "--hint needs CLIP's text tower" in one_line_error(res)
    assert not (tmp_path / "o").exists()
