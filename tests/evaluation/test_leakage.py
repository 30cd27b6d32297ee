"""Leakage between training and test photos: planted near-duplicates and same-spot photos are
found, distinct photos far away are not, and evaluate reports every metric both ways."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import one_line_error
from typer.testing import CliRunner

from geoconcept_cli.cli.app import app
from geoconcept_cli.data.features import load_features, save_features
from geoconcept_cli.evaluation.leakage import find_leakage
from geoconcept_cli.geo.distance import haversine_km
from geoconcept_cli.model.clip_id import ClipId

runner = CliRunner()
CLIP = ClipId("tiny-clip-768", "none")


def clip_like(n: int, gen: torch.Generator, dim: int = 768) -> torch.Tensor:
    """Features with CLIP's shape: a shared direction plus a photo's own (cosines of distinct
    photos ~0.5, as CLIP's image embeddings are)."""
    shared = torch.ones(dim) / dim**0.5
    return 10 * shared + 10 * F.normalize(torch.randn(n, dim, generator=gen), dim=1)


def test_planted_duplicates_and_same_spot_photos_are_found(tmp_path):
    gen = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    n_train = 6000
    train = clip_like(n_train, gen)
    where = np.c_[rng.uniform(-60, 70, n_train), rng.uniform(-180, 180, n_train)]
    save_features(tmp_path / "train", [f"t{i}" for i in range(n_train)], train,
                  torch.tensor(where, dtype=torch.float32), shard_size=2500,
                  clip_model="tiny-clip-768", clip_pretrained="none")  # fmt: skip
    # 200 near-duplicates (a training photo re-encoded: its features moved a little), placed
    # far from it; 200 new photos taken within 1 km of a training photo; 400 distinct photos
    # 50+ km from every training photo
    dup_of = rng.choice(n_train, 200, replace=False)
    jitter = 0.9 * F.normalize(torch.randn(200, 768, generator=gen), dim=1)  # cosine ~0.996
    dups = train[dup_of] + jitter
    spot_of = rng.choice(n_train, 200, replace=False)
    bearing = rng.uniform(0, 2 * np.pi, 200)
    step = rng.uniform(0.05, 0.85, 200) / 111.2  # degrees of latitude: under 1 km
    spot = where[spot_of] + np.c_[step * np.cos(bearing), step * np.sin(bearing)
                                  / np.cos(np.radians(where[spot_of, 0]))]  # fmt: skip
    far = []
    while len(far) < 600:
        p = np.c_[rng.uniform(-60, 70), rng.uniform(-180, 180)][0]
        if haversine_km(p[0], p[1], where[:, 0], where[:, 1]).min() >= 50:
            far.append(p)
    far = np.array(far)
    feats = torch.cat([dups, clip_like(600, gen)])
    latlon = torch.tensor(np.r_[far[:200], spot, far[200:]], dtype=torch.float32)
    found = find_leakage(feats, latlon, CLIP, tmp_path / "train")
    assert found.train_photos == n_train
    dup, same, distinct = slice(0, 200), slice(200, 400), slice(400, 800)
    assert found.duplicate[dup].mean() >= 0.99 and found.same_spot[same].mean() >= 0.99
    assert [found.duplicate_of[i] for i in range(200)] == [f"t{i}" for i in dup_of]
    assert not found.leaked[distinct].any() and not found.same_spot[dup].any()
    assert not found.duplicate[same].any()  # new photos at an old spot are not duplicates
    assert found.nearest_train_km[distinct].min() >= 50
    assert np.allclose(
        found.nearest_train_km[same],
        haversine_km(spot[:, 0], spot[:, 1], where[spot_of, 0], where[spot_of, 1]),
        atol=0.01,
    )  # float32: ~1 m
    assert found.cosine[distinct].max() < 0.9 < found.cosine[dup].min()
    assert found.summary() == {
        "train_photos": n_train, "duplicate_cosine": 0.95, "same_spot_km": 1.0, "photos": 800,
        "near_duplicates": 200, "same_spot": 200, "leaked": 400, "kept": 400}  # fmt: skip


@pytest.fixture(scope="module")
def leaky(small_world, tmp_path_factory):
    """The small world's test photos, half of them copied into a training folder."""
    root = tmp_path_factory.mktemp("leaky")
    test = load_features(small_world["test"])
    half = len(test.ids) // 2
    save_features(root / "train", test.ids[:half], test.features[:half], test.latlon[:half] + 5,
                  clip_model=test.meta["clip_model"], clip_pretrained="none")  # fmt: skip
    return root, half, len(test.ids)


def test_evaluate_reports_every_metric_with_and_without_leakage(small_world, leaky):
    root, half, n = leaky
    out, preds = root / "eval.json", root / "preds.parquet"
    res = runner.invoke(app, ["evaluate", str(small_world["test"]), "--gallery",
                              str(small_world["gallery"]), "--train-features", str(root / "train"),
                              "--json-out", str(out), "--predictions-out", str(preds)])  # fmt: skip
    assert res.exit_code == 0, res.output
    summary = json.loads(out.read_text())
    assert summary["leakage"]["near_duplicates"] == half and summary["leakage"]["kept"] == n - half
    clean = summary["without_leakage"]["models"]["GeoCLIP (pretrained)"]
    full = summary["models"]["GeoCLIP (pretrained)"]
    assert clean["n"] == n - half and full["n"] == n and set(clean) == set(full)
    df = pd.read_parquet(preds)
    assert df["near_duplicate"].tolist() == [True] * half + [False] * (n - half)
    assert df["duplicate_of"].iloc[0] == df["id"].iloc[0]  # a copy of itself
    kept = df[~df["leaked"]]
    assert clean["25km"] == pytest.approx(100 * (kept["distance_km"] <= 25).mean())
    assert "GeoCLIP (pretrained), without leakage" in res.stdout
    assert f"{half} of {n} test photos" in " ".join(res.stdout.split())


def test_training_features_of_another_clip_are_one_line(small_world, leaky, tmp_path):
    test = load_features(small_world["test"])
    save_features(tmp_path / "other", test.ids, test.features, test.latlon,
                  clip_model="ViT-B-32", clip_pretrained="openai")  # fmt: skip
    for args, said in (
        (["--train-features", str(tmp_path / "other")], "holds features of CLIP ViT-B-32"),
        (["--train-features", str(leaky[0] / "train"), "--duplicate-cosine", "1.5"],
         "--duplicate-cosine 1.5"),
        (["--train-features", str(tmp_path / "none")], "none"),
        (["--same-spot-km", "5"], "--same-spot-km: the leakage rule goes with --train-features"),
    ):  # fmt: skip
        res = runner.invoke(app, ["evaluate", str(small_world["test"]), "--gallery",
                                  str(small_world["gallery"]), *args])  # fmt: skip
        assert res.exit_code == 2, res.output
        assert said in one_line_error(res)
