"""evaluate: the scores and the gallery ceiling, the command, and features of another CLIP."""

from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image
from typer.testing import CliRunner

from geoconcept_cli.cli.app import app
from geoconcept_cli.evaluation.scores import nearest_gallery_km, summarize
from geoconcept_cli.geo.distance import haversine_km

runner = CliRunner()


def test_perfect_predictions_score_100():
    truth = np.array([[10.0, 20.0], [-33.0, 151.0]])
    d = haversine_km(truth[:, 0], truth[:, 1], truth[:, 0], truth[:, 1])
    assert summarize(d) == {"1km": 100.0, "25km": 100.0, "200km": 100.0, "750km": 100.0,
                            "2500km": 100.0, "median_km": 0.0, "n": 2}  # fmt: skip


def test_ceiling_matches_brute_force(rng):
    gallery = torch.tensor(np.c_[rng.uniform(-90, 90, 3000), rng.uniform(-180, 180, 3000)])
    test = torch.tensor(np.c_[rng.uniform(-90, 90, 200), rng.uniform(-180, 180, 200)])
    t, g = test.numpy(), gallery.numpy()
    brute = haversine_km(t[:, 0, None], t[:, 1, None], g[None, :, 0], g[None, :, 1]).min(1)
    np.testing.assert_allclose(nearest_gallery_km(test, gallery), brute, rtol=1e-9)


def test_evaluate_cli_geoclip_and_checkpoint(tmp_path, small_gallery):
    from synthetic import make_world

    from geoconcept_cli.training.config import TrainConfig
    from geoconcept_cli.training.loop import train

    world = make_world(tmp_path, n_regions=4, per_region=16, k=12)
    train(TrainConfig(features=str(world["train"]), out=str(tmp_path / "run"),
                      concepts=str(world["concepts"]), max_steps=2, batch_size=32,
                      queue_size=16))  # fmt: skip
    out_json = tmp_path / "eval.json"
    args = ["evaluate", str(world["test"]), str(tmp_path / "run"), "--gallery",
            str(world["gallery"]), "--json-out", str(out_json)]  # fmt: skip
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "| GeoCLIP (pretrained) |" in res.stdout and "| gallery ceiling |" in res.stdout
    assert f"encoding gallery for {tmp_path / 'run'} (once; cached): " in res.stderr  # new head
    result = json.loads(out_json.read_text())
    assert set(result["models"]) == {"GeoCLIP (pretrained)", str(tmp_path / "run")}
    assert result["ceiling"]["25km"] == 100.0  # every test point sits at a gallery centre
    assert list(result["ceiling"])[:5] == ["1km", "25km", "200km", "750km", "2500km"]  # not as text


def test_evaluate_refuses_features_of_another_clip_model(tmp_path):
    from synthetic import make_world

    from geoconcept_cli.training.config import TrainConfig
    from geoconcept_cli.training.loop import train

    world = make_world(tmp_path / "a", n_regions=4, per_region=16, k=12)
    other = make_world(tmp_path / "b", n_regions=4, per_region=16, k=12, clip_model="ViT-B-32")
    train(TrainConfig(features=str(world["train"]), out=str(tmp_path / "run"),
                      concepts=str(world["concepts"]), max_steps=1, batch_size=32,
                      queue_size=16))  # fmt: skip
    res = runner.invoke(app, ["evaluate", str(other["test"]), str(tmp_path / "run"),
                              "--gallery", str(world["gallery"])])  # fmt: skip
    assert res.exit_code == 2 and "ViT-B-32" in res.stderr


def test_predict_refuses_a_backbone_of_another_width(tmp_path):
    photo = tmp_path / "p.jpg"
    Image.new("RGB", (64, 64)).save(photo)
    res = runner.invoke(app, ["predict", str(photo), "--clip-model", "ViT-B-32",
                              "--clip-pretrained", "none"])  # fmt: skip
    assert res.exit_code == 2 and "768" in res.stderr


def test_features_of_a_random_clip_are_said_to_mean_nothing(tmp_path, small_gallery):
    """evaluate once scored such features as "GeoCLIP (pretrained)" without a word, where every
    command that builds a random CLIP warns."""
    import torch

    from geoconcept_cli.data.features import save_features

    feats = tmp_path / "random"
    save_features(feats, [f"r{i}" for i in range(8)], torch.randn(8, 768), torch.zeros(8, 2),
                  clip_model="ViT-L-14", clip_pretrained="none")  # fmt: skip
    res = runner.invoke(app, ["evaluate", str(feats), "--gallery", str(small_gallery)])
    assert res.exit_code == 0, res.output
    assert "made by CLIP ViT-L-14 with random weights" in res.stderr
