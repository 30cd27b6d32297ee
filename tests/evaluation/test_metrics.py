"""The field's metrics (GeoScore, distances, country/region/city) and the per-photo scoring
that evaluate runs in blocks, checked against their dense definitions."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from geoconcept_cli.evaluation import scores as evaluate
from geoconcept_cli.evaluation.metrics import admin_matches, distance_metrics, geoscore
from geoconcept_cli.gallery.store import load_gallery
from geoconcept_cli.geo.distance import haversine_km
from geoconcept_cli.geo.geocode import reverse_geocode
from geoconcept_cli.inference.calibration import place_areas
from geoconcept_cli.inference.calibration_record import Calibration, save_calibration
from geoconcept_cli.inference.predictor import Predictor
from geoconcept_cli.io.artifacts import hash_state_dict, hash_tensors
from geoconcept_cli.model.clip_id import ClipId
from geoconcept_cli.model.geoclip import load_geoclip_head
from geoconcept_cli.model.spec import ModelSpec

PARIS, LYON = (48.8566, 2.3522), (45.7640, 4.8357)


SYDNEY, MELBOURNE = (-33.8688, 151.2093), (-37.8136, 144.9631)


ATLANTIC = (0.0, -30.0)  # 500 km from any settlement


def test_geoscore_and_distances_on_known_pairs():
    assert geoscore([0.0])[0] == 5000.0
    assert geoscore([1492.7])[0] == pytest.approx(5000 / math.e)
    d = haversine_km(*PARIS, *LYON)
    assert d == pytest.approx(392.0, abs=2.0)  # Paris-Lyon, great circle
    m = distance_metrics(np.array([0.0, d, 20000.0]))
    assert m["mean_km"] == pytest.approx((d + 20000.0) / 3)
    assert m["median_km"] == pytest.approx(d)
    assert m["geoscore"] == pytest.approx(np.mean(geoscore([0.0, d, 20000.0])))
    assert m["1km"] == pytest.approx(100 / 3) and m["750km"] == pytest.approx(200 / 3)


def test_country_region_city_on_real_places():
    places = reverse_geocode(np.array([PARIS, LYON, SYDNEY, MELBOURNE, ATLANTIC]))
    assert list(places.country) == ["FR", "FR", "AU", "AU", ""]
    assert list(places.continent) == ["Europe", "Europe", "Oceania", "Oceania", ""]
    assert places.region[0] != places.region[1] and places.region[2] != places.region[3]
    assert places.city[0] == "FR/Île-de-France/Paris" and places.city[2].endswith("/Sydney")
    truth = reverse_geocode(np.array([PARIS, SYDNEY, ATLANTIC, PARIS]))
    pred = reverse_geocode(np.array([LYON, MELBOURNE, ATLANTIC, (48.86, 2.35)]))
    hits = admin_matches(truth, pred)
    assert hits["country"].tolist() == [True, True, False, True]  # at sea: never a match
    assert hits["region"].tolist() == [False, False, False, True]
    assert hits["city"].tolist() == [False, False, False, True]


@pytest.mark.parametrize("temperature,threshold", [(1.0, 0.5), (0.4, 0.9), (50.0, 0.3)])
def test_score_photos_equals_its_dense_definition(temperature, threshold, monkeypatch):
    """evaluate's blocked statistics, against each one written densely over the gallery."""
    head = load_geoclip_head()
    gen = torch.Generator().manual_seed(4)
    gps = torch.stack([torch.rand(3000, generator=gen) * 100 - 40,
                       torch.rand(3000, generator=gen) * 300 - 150], dim=1)  # fmt: skip
    gps[1000:1040] = gps[1000] + 0.02 * torch.randn(40, 2, generator=gen)  # a dense spot
    country = np.unique(reverse_geocode(gps.numpy()).country.astype(str), return_inverse=True)[1]
    grouped = torch.from_numpy(np.argsort(country, kind="stable"))
    gps, country = gps[grouped], torch.from_numpy(country)[grouped]
    cal = Calibration(temperature, 0.1, 25.0, threshold, 100, 0.0, 0.0, "m", "g", {})
    predictor = Predictor(head, gps, head.embed_locations(gps), calibration=cal)
    areas = torch.rand(3000, generator=gen) * 1000
    feats = torch.randn(45, 768, generator=gen)
    truth = gps[torch.randint(3000, (45,), generator=gen)] + 0.05 * torch.randn(
        45, 2, generator=gen
    )
    truth[40:, 1] = 175.0  # beyond the gallery's longitudes: no place within 25 km
    monkeypatch.setattr(evaluate, "BLOCK_ELEMENTS", 3000 * 7)  # blocks of 7 photos
    res = evaluate.score_photos(predictor, feats, truth, country, areas, chunk=16)

    logits = torch.cat([predictor.logits(feats[s : s + 16]) for s in range(0, 45, 16)])
    top = logits.argmax(dim=1)
    assert (res["top1"] == top.numpy()).all()
    dist_top = torch.from_numpy(haversine_km(gps[top][:, None, 0], gps[top][:, None, 1],
                                             gps[None, :, 0], gps[None, :, 1]))  # fmt: skip
    dist_truth = torch.from_numpy(haversine_km(truth[:, None, 0], truth[:, None, 1],
                                               gps[None, :, 0], gps[None, :, 1]))  # fmt: skip
    for name, t in (("uncalibrated", 1.0), ("calibrated", temperature)):
        p = (logits / t).softmax(dim=1)
        expect = {
            "prob": p.gather(1, top[:, None])[:, 0],
            "conf25": (p * (dist_top <= 25)).sum(1),
            "confcountry": (p * (country[None, :] == country[top][:, None])).sum(1),
        }
        for key, value in expect.items():
            assert res[f"{key}_{name}"] == pytest.approx(value.numpy(), rel=1e-4, abs=1e-7)
    near = dist_truth <= 25
    best = torch.where(near, p, -1).amax(1)
    has = near.any(1)
    ranked = p.double().sort(dim=1, descending=True).values
    cut = torch.where(ranked.cumsum(1) - ranked <= threshold, ranked, 2).amin(1).float()
    assert (res["in_region"] == (has & (best >= cut)).numpy()).all()
    assert res["region_km2"] == pytest.approx(((p >= cut[:, None]) * areas).sum(1).numpy(),
                                              rel=1e-4)  # fmt: skip
    to_truth = torch.where(has, ((p >= best[:, None]) * areas).sum(1), torch.inf)
    assert res["area_to_truth_km2"] == pytest.approx(to_truth.numpy(), rel=1e-4)
    assert 0 < res["in_region"].sum() < 40 or threshold == 0.9  # both outcomes are exercised
    assert not has[40:].any() and np.isinf(res["area_to_truth_km2"][40:]).all()
    with pytest.raises(ValueError, match="grouped by country"):
        evaluate.score_photos(predictor, feats, truth, country.flip(0), areas)


def test_evaluate_maps_its_country_grouped_gallery_back(tmp_path):
    """evaluate groups the gallery by country inside: its rows and areas come back to the
    gallery's own order (a shuffled gallery, against dense statistics in that order)."""
    head = load_geoclip_head()
    gen = torch.Generator().manual_seed(6)
    gps = torch.stack([torch.rand(2000, generator=gen) * 100 - 40,
                       torch.rand(2000, generator=gen) * 300 - 150], dim=1)  # fmt: skip
    pd.DataFrame({"lat": gps[:, 0], "lon": gps[:, 1]}).to_csv(tmp_path / "g.csv", index=False)
    gps = load_gallery(tmp_path / "g.csv")
    cal = Calibration(0.5, 0.1, 25.0, 0.6, 100, 0.0, 0.0, hash_state_dict(head),
                      hash_tensors(gps), ClipId(None, None).as_meta(prefix=""))  # fmt: skip
    save_calibration(tmp_path / "cal.json", cal)
    feats = torch.randn(30, 768, generator=gen)
    truth = gps[torch.randint(2000, (30,), generator=gen)] + 0.05 * torch.randn(
        30, 2, generator=gen
    )
    got = evaluate.evaluate_models(
        {"m": head},
        feats,
        truth,
        ModelSpec(gallery=tmp_path / "g.csv", cache_dir=tmp_path),
        calibrations={"m": tmp_path / "cal.json"},
    ).predictions
    logits = Predictor(head, gps, head.embed_locations(gps)).logits(feats)
    p = (logits / 0.5).softmax(dim=1)
    top = logits.argmax(dim=1)
    assert got["pred_lat"].to_numpy() == pytest.approx(gps[top, 0].double().numpy())
    assert got["pred_lon"].to_numpy() == pytest.approx(gps[top, 1].double().numpy())
    assert got["prob"].to_numpy() == pytest.approx(p.gather(1, top[:, None])[:, 0].numpy(),
                                                   rel=1e-4)  # fmt: skip
    ranked = p.double().sort(dim=1, descending=True).values
    cut = torch.where(ranked.cumsum(1) - ranked <= 0.6, ranked, 2).amin(1).float()
    areas = place_areas(gps, 25.0, tmp_path)
    expect = ((p >= cut[:, None]) * areas).sum(1)
    assert got["region_area_km2"].to_numpy() == pytest.approx(expect.numpy(), rel=1e-4)
    near = torch.from_numpy(haversine_km(truth[:, None, 0], truth[:, None, 1],
                                         gps[None, :, 0], gps[None, :, 1]) <= 25)  # fmt: skip
    best = torch.where(near, p, -1).amax(1)
    assert (got["in_region"].to_numpy() == (near.any(1) & (best >= cut)).numpy()).all()


def test_argmax_rows_is_argmax():
    gen = torch.Generator().manual_seed(5)
    for n in (1, 255, 256, 257, 1000, 100_000):
        ties = torch.randint(0, 7, (9, n), generator=gen).float()  # the first of equal maxima
        for x in (ties, torch.randn(9, n, generator=gen)):
            assert torch.equal(evaluate.argmax_rows(x), x.argmax(dim=1)), n
