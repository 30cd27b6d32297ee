"""Temperature calibration and conformal confidence regions: their guarantees on planted
data, and how predict, explain and evaluate use (or refuse) a calibration."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import one_line_error
from PIL import Image
from synthetic import make_world
from typer.testing import CliRunner

from geoconcept_cli.cli.app import app
from geoconcept_cli.data.features import load_features, save_features
from geoconcept_cli.evaluation.metrics import reliability
from geoconcept_cli.inference.calibration import (
    TOLERANCE,
    best_near,
    conformal_threshold,
    covered,
    fit_temperature,
    gallery_tree,
    mass_above,
    pairs_within,
    region_cut,
    region_cuts,
    region_mask,
)
from geoconcept_cli.runtime.scratch import Scratch
from geoconcept_cli.training.config import TrainConfig
from geoconcept_cli.training.loop import train

runner = CliRunner()


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
            # several thresholds at once (a region per group), one histogram: the same cuts
            many = [q, 0.3, math.inf, 0.99, q]
            assert torch.equal(
                region_cuts(probs, many, keys=logits, scratch=scratch),
                torch.stack([region_cut(probs, t) for t in many], dim=1),
            )


def test_region_cut_of_half_precision_probabilities():
    _, probs, *_ = _planted(8, 5000, seed=3, sharpness=3.0)
    half = probs.half()  # its log-probability keys are taken in float32: 1e-38 is 0 in half
    cut = region_cut(half, 0.5)
    for i, row in enumerate(half):
        values = row.double().sort(descending=True).values
        assert float(cut[i]) == float(values[(values.cumsum(0) - values) <= 0.5].min())


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


def test_calibrate_then_evaluate_report_and_write_everything(world, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(world["run"], run)
    res = runner.invoke(app, ["calibrate", str(world["train"]), str(run),
                              "--gallery", str(world["gallery"]), "--alpha", "0.2"])  # fmt: skip
    assert res.exit_code == 0, res.output
    # only what was named: the run, not pretrained GeoCLIP (whose calibration every later
    # plain predict would use)
    assert res.stdout.startswith(f"{run}: temperature") and len(res.stdout.splitlines()) == 1
    assert "80% region within 25 km" in res.stdout
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
        [f"reliability-{n}.png" for n in ("GeoCLIP_pretrained", str(run).strip("/")
                                          .replace("/", "_"))] + ["risk-coverage.png"])  # fmt: skip
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
    line = one_line_error(runner.invoke(app, [*evaluate, str(other), "--gallery",
                                               str(world["gallery"])]))  # fmt: skip
    assert "calibration.json was made for another model's weights; rerun geoconcept calibrate" \
        in line  # fmt: skip
    line = one_line_error(runner.invoke(app, [*evaluate, str(run)]))  # GeoCLIP's 100K gallery
    assert "was made for another gallery" in line
    cal = json.loads((run / "calibration.json").read_text())
    cal["clip"] = {"model": "ViT-B-32", "pretrained": "openai", "config": None}
    (run / "calibration.json").write_text(json.dumps(cal))
    line = one_line_error(runner.invoke(app, [*evaluate, str(run), "--gallery",
                                               str(world["gallery"])]))  # fmt: skip
    assert "was made with CLIP ViT-B-32 (openai), not tiny-clip-768 (none)" in line
    assert "--radius-km 1e+09: must be > 0 and at most 20015" in one_line_error(runner.invoke(
        app, ["calibrate", str(world["train"]), str(run), "--radius-km", "1e9"]))  # fmt: skip
    (run / "calibration.json").write_text("{")
    assert "damaged calibration" in one_line_error(runner.invoke(app, [
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
    stored = list((tmp_path / "cache" / "calibration").glob("geoclip-*.json"))
    assert len(stored) == 1
    out = json.loads(runner.invoke(app, [*predict, "--json"]).stdout)
    assert out["probabilities"]["calibrated"] and out["region"]["places"] >= 1
    listed = runner.invoke(app, ["cache", *cache]).stdout  # seen where a person looks...
    assert f"{stored[0]}: temperature " in listed and "fitted on 512 photos" in listed
    res = runner.invoke(app, [*predict, "--no-calibration"])  # ...ignored when asked...
    assert res.exit_code == 0 and "probabilities uncalibrated" in res.stdout, res.output
    res = runner.invoke(app, ["cache", "--clear-calibrations", *cache])  # ...and removed
    assert res.exit_code == 0 and "removed 1 calibration" in res.stdout and not stored[0].exists()
    res = runner.invoke(app, ["calibrate", str(world["train"]), "--gallery", str(small_gallery),
                              *cache])  # fmt: skip
    assert res.exit_code == 0 and len(list(stored[0].parent.glob("geoclip-*.json"))) == 1
    fewer = tmp_path / "fewer.csv"  # another gallery: no calibration for it
    pd.read_csv(small_gallery).iloc[:100].to_csv(fewer, index=False)
    res = runner.invoke(app, [*predict[:6], "--gallery", str(fewer), *cache])
    assert res.exit_code == 0 and "probabilities uncalibrated" in res.stdout


def test_a_calibration_on_few_photos_is_warned_about(world, tmp_path):
    """39 photos once gave pretrained GeoCLIP a calibration that every plain predict then
    reported, with a region of 12.5 million km²: below 200 photos calibrate says it is rough."""
    few = tmp_path / "few"
    data = load_features(world["train"])
    save_features(few, data.ids[:40], data.features[:40], data.latlon[:40],
                  **{k: v for k, v in data.meta.items() if k.startswith("clip_")})  # fmt: skip
    run = tmp_path / "run"
    shutil.copytree(world["run"], run)
    res = runner.invoke(app, ["calibrate", str(few), str(run), "--gallery", str(world["gallery"])])
    assert res.exit_code == 0, res.output
    assert "warning: calibrating on 40 photos: the temperature and the region will be rough" \
        in res.stderr  # fmt: skip


def test_calibrate_per_continent_with_a_target_accuracy_then_abstain(world, tmp_path, tiny_clip):
    run = tmp_path / "run"
    shutil.copytree(world["run"], run)
    photo = tmp_path / "p.jpg"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)
                    ).save(photo)  # fmt: skip
    predict = ["predict", str(photo), "--checkpoint", str(run), "--clip-model", tiny_clip,
               "--clip-pretrained", "none", "--gallery", str(world["gallery"])]  # fmt: skip
    res = runner.invoke(app, [*predict, "--abstain-below", "0.5"])  # nothing calibrated yet
    assert res.exit_code == 2 and "run geoconcept calibrate first" in res.output.splitlines()[-1]
    assert "Traceback" not in res.output
    base = ["calibrate", str(world["train"]), str(run), "--gallery", str(world["gallery"])]
    for bad, said in ((["--target-accuracy", "1.5"], "--target-accuracy 1.5: give an accuracy"),
                      (["--by", "planet"], "--by planet: give continent or country")):  # fmt: skip
        res = runner.invoke(app, [*base, *bad])
        assert res.exit_code == 2 and said in one_line_error(res)
    res = runner.invoke(app, [*base, "--by", "continent", "--target-accuracy", "0.6"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.stdout.split())
    # the planted regions: two in Asia, two in North America (~64 photos each set the
    # region), one in Oceania (~32: the pooled threshold), three at sea
    cal = json.loads((run / "calibration.json").read_text())
    assert cal["by"] == "continent" and set(cal["groups"]) == {"Asia", "North America"}
    assert "per continent: own thresholds for Asia" in text and "keeps the pooled one" in text
    level = cal["abstention"]
    assert level["target"] == 0.6 and level["accuracy"] >= 0.6 and 0 < level["level"] < 1
    assert f"abstain below confidence {level['level']:g}" in text and "90% certainty" in text
    # evaluate: per continent, pooled and per group; and the risk-coverage of answering
    out = tmp_path / "eval.json"
    res = runner.invoke(app, ["evaluate", str(world["test"]), str(run), "--no-geoclip",
                              "--gallery", str(world["gallery"]),
                              "--json-out", str(out)])  # fmt: skip
    assert res.exit_code == 0, res.output
    model = json.loads(out.read_text())["models"][str(run)]
    probs, answering = model["probabilities"], model["answering"]
    assert 0 <= probs["coverage_grouped"] <= 1 and probs["mean_area_km2_grouped"] > 0
    asia = probs["per_continent"]["Asia"]
    assert set(asia) == {"n", "coverage", "mean_area_km2", "coverage_grouped",
                         "mean_area_km2_grouped"}  # fmt: skip
    assert answering["radius_km"] == 25 and 0 <= answering["aurc"] <= 1
    assert answering["accuracy_at"]["100%"] == pytest.approx(model["25km"] / 100)
    assert answering["abstention"]["level"] == level["level"]
    text = " ".join(res.stdout.split())
    assert "(pooled threshold / per-group thresholds)" in text and "AURC" in text
    # a photo of noise is not localizable at a high level; --json keeps the best guess
    res = runner.invoke(app, [*predict, "--abstain-below", "0.99"])
    assert res.exit_code == 0 and "not localizable at this confidence" in res.stdout
    assert "p=" not in res.stdout
    got = json.loads(runner.invoke(app, [*predict, "--abstain-below", "0.99", "--json"]).stdout)
    assert got["confidence"]["answered"] is False and got["confidence"]["level"] == 0.99
    assert got["confidence"]["guarantee"] is None and len(got["predictions"]) == 5
    got = json.loads(runner.invoke(app, [*predict, "--json"]).stdout)  # the calibrated level
    assert got["confidence"]["level"] == level["level"]
    assert got["confidence"]["guarantee"].startswith("with 90% certainty")
    steered = json.loads(runner.invoke(app, [*predict, "--json", "--within", "Asia"]).stdout)
    assert steered["confidence"]["guarantee"] is None  # chosen for unsteered questions
    shown = runner.invoke(app, [*predict, "--abstain-below", "0"])
    assert "not localizable" not in shown.stdout and "p=" in shown.stdout
    res = runner.invoke(app, [*predict, "--abstain-below", "1"])
    assert res.exit_code == 2 and "--abstain-below 1" in one_line_error(res)
    # a batch run from features: each photo's confidence and whether it is answered
    res = runner.invoke(app, ["predict", str(world["test"]), "--checkpoint", str(run),
                              "--gallery", str(world["gallery"]),
                              "--out", str(tmp_path / "b")])  # fmt: skip
    assert res.exit_code == 0, res.output
    rows = pd.read_parquet(tmp_path / "b")
    assert rows["answered"].tolist() == (rows["confidence"] >= level["level"]).tolist()
    preds = tmp_path / "preds.parquet"
    runner.invoke(app, ["evaluate", str(world["test"]), str(run), "--no-geoclip", "--gallery",
                        str(world["gallery"]), "--predictions-out", str(preds)])  # fmt: skip
    evaluated = pd.read_parquet(preds).set_index("id")
    assert np.allclose(evaluated.loc[rows["id"], "confidence"], rows["confidence"], atol=1e-5)
