"""The field's metrics, offline reverse geocoding, label files as they ship, temperature
calibration and conformal confidence regions."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from synthetic import make_world
from typer.testing import CliRunner

from geoconcept_cli.cli.app import app
from geoconcept_cli.data.manifests import read_manifest
from geoconcept_cli.errors import GeoconceptError
from geoconcept_cli.evaluation import scores as evaluate
from geoconcept_cli.evaluation.metrics import admin_matches, distance_metrics, geoscore, reliability
from geoconcept_cli.gallery.store import load_gallery
from geoconcept_cli.geo.distance import haversine_km
from geoconcept_cli.geo.geocode import reverse_geocode
from geoconcept_cli.inference.calibration import (
    TOLERANCE,
    Calibration,
    best_near,
    conformal_threshold,
    covered,
    fit_temperature,
    gallery_tree,
    mass_above,
    pairs_within,
    place_areas,
    region_cut,
    region_mask,
    save_calibration,
)
from geoconcept_cli.inference.predictor import Predictor
from geoconcept_cli.io.artifacts import hash_state_dict, hash_tensors
from geoconcept_cli.model.clip_id import ClipId
from geoconcept_cli.model.geoclip import load_geoclip_head
from geoconcept_cli.model.spec import ModelSpec
from geoconcept_cli.runtime.scratch import Scratch
from geoconcept_cli.training.config import TrainConfig
from geoconcept_cli.training.loop import train

runner = CliRunner()
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


def test_reverse_geocoding_is_on_the_sphere():
    """Across the date line the nearest place in degrees is not the nearest on Earth: at
    16 S 179.9 W a search in raw degrees finds Leava, Wallis and Futuna, 266 km away, while a
    Fijian settlement across the line is 92 km away."""
    places = reverse_geocode(np.array([[-16.0, -179.9], [78.22, 15.65]]))
    assert places.country[0] == "FJ" and places.place_km[0] < 100
    assert places.country[1] == "SJ"  # Longyearbyen, Svalbard


def _planted(n: int, n_gallery: int, seed: int, sharpness: float = 3.0):
    """Photos whose true location is drawn from a known softmax over a random gallery (then
    moved a few km): probabilities, gallery and truth, exchangeable across photos."""
    gen = torch.Generator().manual_seed(seed)
    gps = torch.stack([torch.rand(n_gallery, generator=gen) * 140 - 60,
                       torch.rand(n_gallery, generator=gen) * 360 - 180], dim=1)  # fmt: skip
    logits = sharpness * torch.randn(n, n_gallery, generator=gen)
    probs = logits.softmax(dim=1)
    pick = torch.multinomial(probs, 1, generator=gen)[:, 0]
    truth = gps[pick] + 0.05 * torch.randn(n, 2, generator=gen)  # ~5 km away
    return logits, probs, gps, truth, pick


@pytest.mark.parametrize("alpha", [0.1, 0.3])
def test_conformal_regions_cover_as_promised(alpha):
    logits, probs, gps, truth, _ = _planted(4000, 1500, seed=1)
    tree = gallery_tree(gps)
    best = best_near(probs, *pairs_within(tree, truth, 25.0))
    q = conformal_threshold(mass_above(probs[:2000], best[:2000]).numpy(), alpha)
    hit = covered(best[2000:], region_cut(probs[2000:], q)).numpy()
    sd = math.sqrt(alpha * (1 - alpha) / 2000)
    assert abs(hit.mean() - (1 - alpha)) < 4 * sd + 1 / 2000, hit.mean()
    # covered means: the mass ranked strictly above the best place near the truth is <= q
    assert (hit == (mass_above(probs[2000:], best[2000:]) <= q + TOLERANCE).numpy()).all()
    # the region as a set of places holds a place within 25 km of the truth exactly then
    mask = region_mask(probs[2000:], q)
    r, c = pairs_within(tree, truth[2000:], 25.0)
    near = torch.zeros_like(mask)
    near[r, c] = True
    assert ((mask & near).any(dim=1).numpy() == hit).all()
    far = torch.tensor([-torch.inf])  # no gallery place near the truth: never covered
    assert not bool(covered(far, region_cut(probs[:1], math.inf)))
    # a threshold equal to a photo's own score keeps that photo covered
    scores = mass_above(probs[:50], best[:50])
    for i in range(50):
        assert bool(covered(best[i : i + 1], region_cut(probs[i : i + 1], float(scores[i]))))
        place = probs[i] == best[i]  # the most probable place near the truth is in the region
        assert bool(region_mask(probs[i : i + 1], float(scores[i]))[0][place].all())


def test_region_cut_is_the_sorted_answer():
    scratch = Scratch()  # shared by every call: blocks of other sizes, left-over contents
    for sharpness in (0.05, 3.0, 30.0):
        logits, probs, *_ = _planted(40, 20000, seed=2, sharpness=sharpness)
        for q in (0.0, 0.5, 0.95):
            cuts = [
                region_cut(probs, q, keys=keys, bins=bins)  # binned on either; 3 bins
                for keys in (None, logits)
                for bins in (2048, 3)
            ]  # hold wide spreads
            cuts.append(torch.cat([
                region_cut(probs[:7], q, scratch=scratch),
                region_cut(probs[7:], q, keys=logits[7:], scratch=scratch),  # a larger block
            ]))  # fmt: skip
            for i, row in enumerate(probs):
                values = row.double().sort(descending=True).values
                sorted_cut = float(values[(values.cumsum(0) - values) <= q].min())
                assert [float(c[i]) for c in cuts] == [sorted_cut] * 5


def test_region_cut_of_half_precision_probabilities():
    _, probs, *_ = _planted(8, 5000, seed=3, sharpness=3.0)
    half = probs.half()  # its log-probability keys are taken in float32: 1e-38 is 0 in half
    cut = region_cut(half, 0.5)
    for i, row in enumerate(half):
        values = row.double().sort(descending=True).values
        assert float(cut[i]) == float(values[(values.cumsum(0) - values) <= 0.5].min())


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


def test_temperature_undoes_planted_overconfidence():
    logits, probs, gps, truth, pick = _planted(3000, 400, seed=3, sharpness=2.0)
    over = 3.0 * logits  # three times too sharp
    t = fit_temperature(over[:1500], pick[:1500])
    assert t == pytest.approx(3.0, rel=0.1)
    test = over[1500:]
    top = test.argmax(dim=1)
    hit = (top == pick[1500:]).numpy()
    before = reliability(test.softmax(1).max(1).values.numpy(), hit)["ece"]
    after = reliability((test / t).softmax(1).max(1).values.numpy(), hit)["ece"]
    assert after < 0.5 * before and after < 0.05, (before, after)


# ------------------------------------------------------------------------- label files
def _photos(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.new("RGB", (40, 30), (120, 80, 40)).save(folder / name)


def test_label_files_as_they_ship(tmp_path):
    _photos(tmp_path / "img", ["a.jpg", "b.jpg", "1234567890.jpg"])
    places365 = "IMG_ID,AUTHOR,LAT,LON,S3_Label,S16_Label,S365_Label,Prob_indoor,Prob_natural,"\
        "Prob_urban\na.jpg,x@N00,48.85,2.35,1,2,3,0.1,0.2,0.7\nb.jpg,y@N00,-33.9,151.2,1,2,3,"\
        "0.1,0.2,0.7\n"  # fmt: skip
    (tmp_path / "im2gps3k_places365.csv").write_text(places365)  # Im2GPS3k and Im2GPS
    yfcc = ("IMG_ID,AUTHOR,LON,LAT,S3_Label,S16_Label,S365_Label,Prob_indoor,Prob_natural,"
            "Prob_urban\na.jpg,x@N00,2.35,48.85,1,2,3,0.1,0.2,0.7\n")  # fmt: skip
    (tmp_path / "yfcc4k_places365.csv").write_text(yfcc)
    osv = ("id,latitude,longitude,thumb_original_url,country,sequence,captured_at,lon_bin,"
           "lat_bin,cell,land_cover,road_index,drive_side,climate,soil,dist_sea,region,"
           "sub-region,city,unique_country,unique_region,unique_sub-region,unique_city\n"
           "1234567890,48.85,2.35,https://x/y.jpg,FR,s1,1500000000,5,6,c,2,0.3,1,7,3,0.1,"
           "Ile-de-France,Paris,Paris,FR,FR_IDF,FR_IDF_75,FR_IDF_75_Paris\n")  # fmt: skip
    (tmp_path / "test.csv").write_text(osv)
    for name, columns, n in (("im2gps3k_places365.csv", ("IMG_ID", "LAT", "LON"), 2),
                             ("yfcc4k_places365.csv", ("IMG_ID", "LAT", "LON"), 1),
                             ("test.csv", ("id", "latitude", "longitude"), 1)):  # fmt: skip
        m = read_manifest(tmp_path / name, tmp_path / "img")
        assert m.source == "column {}, coordinates from {}, {}".format(*columns), name
        assert len(m.rows) == n and not m.skipped, name
        assert m.rows["lat"].iloc[0] == 48.85 and m.rows["lon"].iloc[0] == 2.35
    osv_row = read_manifest(tmp_path / "test.csv", tmp_path / "img").rows.iloc[0]
    assert osv_row["photo"].endswith("1234567890.jpg")  # OSV-5M ids name <id>.jpg
    (tmp_path / "both.csv").write_text("IMG_ID,lat,latitude,LON\na.jpg,1,1,2\n")
    with pytest.raises(GeoconceptError, match="columns lat and latitude could each be the "
                                              "latitude; keep one"):  # fmt: skip
        read_manifest(tmp_path / "both.csv", tmp_path / "img")


def test_embed_images_says_which_columns_it_used(tmp_path, tiny_clip):
    _photos(tmp_path / "img", ["1234567890.jpg"])
    (tmp_path / "test.csv").write_text("id,latitude,longitude,lon_bin,lat_bin,country\n"
                                       "1234567890,48.85,2.35,5,6,FR\n")  # fmt: skip
    res = runner.invoke(
        app,
        [
            "embed-images",
            str(tmp_path / "test.csv"),
            "--images",
            str(tmp_path / "img"),
            "--out",
            str(tmp_path / "f"),
            "--workers",
            "0",
            "--clip-model",
            tiny_clip,
            "--clip-pretrained",
            "none",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "image ids from column id, coordinates from latitude, longitude" in res.stderr
    assert "1 images embedded" in res.stdout


# ------------------------------------------------------------------- calibrate, end to end
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("calibration")
    world = make_world(root, n_regions=8, per_region=64, k=24, clip_model="tiny-clip-768")
    train(TrainConfig(features=str(world["train"]), out=str(root / "run"),
                      concepts=str(world["concepts"]), epochs=4, batch_size=32, lr=3e-3,
                      warmup_steps=3, queue_size=32))  # fmt: skip
    world["run"] = root / "run"
    return world


def _one_line_error(res) -> str:
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), res.stderr
    return lines[0]


def test_calibrate_then_evaluate_report_and_write_everything(world, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(world["run"], run)
    res = runner.invoke(app, ["calibrate", str(world["train"]), str(run),
                              "--gallery", str(world["gallery"]), "--alpha", "0.2"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "GeoCLIP (pretrained): temperature" in res.stdout and "80% region within 25 km" \
        in res.stdout  # fmt: skip
    cal = json.loads((run / "calibration.json").read_text())
    assert cal["alpha"] == 0.2 and cal["photos"] == 8 * 64 and cal["nll_after"] <= cal[
        "nll_before"]  # fmt: skip
    out = tmp_path / "eval.json"
    res = runner.invoke(app, [
        "evaluate", str(world["test"]), str(run), "--gallery", str(world["gallery"]),
        "--json-out", str(out), "--predictions-out", str(tmp_path / "preds.parquet"),
        "--plots", str(tmp_path / "plots"),
    ])  # fmt: skip
    assert res.exit_code == 0, res.output
    model = json.loads(out.read_text())["models"][str(run)]
    for key in ("geoscore", "mean_km", "median_km", "country", "region", "city", "per_continent"):
        assert key in model
    probs = model["probabilities"]
    assert probs["calibrated"] and probs["target_coverage"] == pytest.approx(0.8)
    assert 0.6 <= probs["coverage"] <= 1.0 and probs["mean_area_km2"] > 0
    assert set(probs["ece"]["25km"]) == {"uncalibrated", "calibrated"}
    recall = list(probs["recall_vs_area"].values())
    assert recall == sorted(recall) and recall[-1] <= 1.0
    df = pd.read_parquet(tmp_path / "preds.parquet")
    assert len(df) == 2 * 8 * 16 and set(df["model"]) == {"GeoCLIP (pretrained)",
                                                          str(run)}  # fmt: skip
    for col in (
        "id",
        "true_lat",
        "pred_lat",
        "distance_km",
        "prob",
        "true_country",
        "pred_country",
        "true_region",
        "pred_city",
        "in_region",
        "region_area_km2",
    ):
        assert col in df, col
    ours = df[df["model"] == str(run)]
    assert ours["in_region"].mean() == pytest.approx(probs["coverage"])
    assert ours["distance_km"].le(25).mean() * 100 == pytest.approx(model["25km"])
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted(
        f"reliability-{n}.png" for n in ("GeoCLIP_pretrained", str(run).strip("/")
                                         .replace("/", "_")))  # fmt: skip
    text = " ".join(res.stdout.split())
    assert "calibrated (T" in text and "GeoScore | country | region | city |" in text


def calibrate_run(world: dict, run: Path) -> int:
    """Exit code of `calibrate` fitting ``run`` on the planted world's training features."""
    args = ["calibrate", str(world["train"]), str(run), "--no-geoclip", "--gallery",
            str(world["gallery"])]  # fmt: skip
    return runner.invoke(app, args).exit_code


def test_explain_and_predict_say_whether_probabilities_are_calibrated(world, tmp_path,
                                                                      tiny_clip):  # fmt: skip
    run = tmp_path / "run"
    shutil.copytree(world["run"], run)
    photo = tmp_path / "p.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
                    ).save(photo)  # fmt: skip
    args = [
        "explain",
        str(photo),
        "--checkpoint",
        str(run),
        "--clip-model",
        tiny_clip,
        "--clip-pretrained",
        "none",
        "--gallery",
        str(world["gallery"]),
        "--json",
    ]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    exp = json.loads(res.stdout)
    assert exp["probabilities"]["calibrated"] is False and "region" not in exp
    assert calibrate_run(world, run) == 0
    exp = json.loads(runner.invoke(app, args).stdout)
    assert exp["probabilities"]["calibrated"] is True
    region = exp["region"]
    assert region["coverage"] == pytest.approx(0.9) and region["places"] >= 1
    top = exp["predictions"][0]
    assert region["area_km2"] > 0
    assert region["points"][0] == pytest.approx([top["lat"], top["lon"]], abs=1e-5)
    res = runner.invoke(app, args[:-1] + ["--top-k", "3", "--map", str(tmp_path / "m.png")])
    assert res.exit_code == 0 and (tmp_path / "m.png").stat().st_size > 10_000, res.output
    text = res.stdout
    assert "probabilities calibrated (temperature" in " ".join(text.split())
    assert "90% confidence region" in " ".join(text.split())
    # an exported model carries its calibration
    assert runner.invoke(app, ["export", str(run), "--out", str(tmp_path / "m")]).exit_code == 0
    assert json.loads((tmp_path / "m" / "config.json").read_text())["calibration"]["alpha"] == 0.1
    assert "The probabilities are calibrated" in (tmp_path / "m" / "README.md").read_text()
    args[args.index(str(run))] = str(tmp_path / "m")
    from_bundle = json.loads(runner.invoke(app, args).stdout)
    assert from_bundle["region"]["area_km2"] == pytest.approx(region["area_km2"])


def test_a_calibration_for_another_model_gallery_or_clip_is_refused(world, tmp_path, tiny_clip):
    run = tmp_path / "run"
    shutil.copytree(world["run"], run)
    assert calibrate_run(world, run) == 0
    other = tmp_path / "other"
    train(TrainConfig(features=str(world["train"]), out=str(other), concepts=None, max_steps=2,
                      batch_size=32, warmup_steps=1, queue_size=32))  # fmt: skip
    shutil.copy(run / "calibration.json", other / "calibration.json")
    evaluate = ["evaluate", str(world["test"]), "--no-geoclip"]
    line = _one_line_error(runner.invoke(app, [*evaluate, str(other), "--gallery",
                                               str(world["gallery"])]))  # fmt: skip
    assert "calibration.json was made for another model's weights; rerun geoconcept calibrate" \
        in line  # fmt: skip
    line = _one_line_error(runner.invoke(app, [*evaluate, str(run)]))  # GeoCLIP's 100K gallery
    assert "was made for another gallery" in line
    cal = json.loads((run / "calibration.json").read_text())
    cal["clip"] = {"model": "ViT-B-32", "pretrained": "openai", "config": None}
    (run / "calibration.json").write_text(json.dumps(cal))
    line = _one_line_error(runner.invoke(app, [*evaluate, str(run), "--gallery",
                                               str(world["gallery"])]))  # fmt: skip
    assert "was made with CLIP ViT-B-32 (openai), not tiny-clip-768 (none)" in line
    assert "--radius-km 1e+09: must be > 0 and at most 20015" in _one_line_error(runner.invoke(
        app, ["calibrate", str(world["train"]), str(run), "--radius-km", "1e9"]))  # fmt: skip
    (run / "calibration.json").write_text("{")
    assert "damaged calibration" in _one_line_error(runner.invoke(app, [
        *evaluate, str(run), "--gallery", str(world["gallery"])]))  # fmt: skip


def test_predict_uses_geoclips_calibration_for_that_gallery(world, tmp_path, tiny_clip,
                                                            small_gallery):  # fmt: skip
    photo = tmp_path / "p.jpg"
    Image.new("RGB", (64, 48), (30, 90, 150)).save(photo)
    cache = ["--cache-dir", str(tmp_path / "cache")]  # not the session's: others use GeoCLIP
    predict = ["predict", str(photo), "--clip-model", tiny_clip, "--clip-pretrained", "none",
               "--gallery", str(small_gallery), *cache]  # fmt: skip
    res = runner.invoke(app, predict)
    assert res.exit_code == 0 and "probabilities uncalibrated" in res.stdout, res.output
    res = runner.invoke(app, ["calibrate", str(world["train"]), "--gallery", str(small_gallery),
                              *cache])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert len(list((tmp_path / "cache" / "calibration").glob("geoclip-*.json"))) == 1
    out = json.loads(runner.invoke(app, [*predict, "--json"]).stdout)
    assert out["probabilities"]["calibrated"] and out["region"]["places"] >= 1
    fewer = tmp_path / "fewer.csv"  # another gallery: no calibration for it
    pd.read_csv(small_gallery).iloc[:100].to_csv(fewer, index=False)
    res = runner.invoke(app, [*predict[:6], "--gallery", str(fewer), *cache])
    assert res.exit_code == 0 and "probabilities uncalibrated" in res.stdout
