"""Downstream probes: known answers on synthetic maps, row skipping, folds, and the real tables."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import shared_data

from geoconcept_cli.errors import GeoconceptError
from geoconcept_cli.evaluation import downstream as ds
from geoconcept_cli.gallery.store import load_gallery


def random_points(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 2) (lat, lon) degrees, uniform on the sphere (no pile-up at the poles)."""
    lat = np.degrees(np.arcsin(rng.uniform(-1, 1, n)))
    return np.stack([lat, rng.uniform(-180, 180, n)], axis=1)


def synthetic_table(latlon: np.ndarray, y: np.ndarray, task: str = "regression"):
    return ds.DownstreamTable(latlon, y, task, 0, 0, "synthetic")


@pytest.fixture(scope="module")
def points() -> np.ndarray:
    return random_points(np.random.default_rng(0), 600)


@pytest.fixture(scope="module")
def coords(points) -> dict[str, np.ndarray]:
    return ds.compute_features(points, {"coords": ds.raw_coordinates_embedder()})


def smooth_target(latlon: np.ndarray) -> np.ndarray:
    """A temperature-like field: warm at the equator, with a continental wave in longitude."""
    lat, lon = np.radians(latlon[:, 0]), np.radians(latlon[:, 1])
    return 30 * np.cos(lat) + 5 * np.sin(2 * lon) * np.cos(lat)


# ------------------------------------------------------------------------ known answers
def test_smooth_target_is_learned_from_coordinates(points, coords):
    res = ds.run_probes(synthetic_table(points, smooth_target(points)), coords)
    r2 = {r.probe: r.mean("r2") for r in res.rows}
    assert r2["mlp"] > 0.9
    assert r2["linear"] < r2["mlp"]  # cos(lat) is not linear in lat, lon and the unit vector


def test_smooth_target_is_learned_by_geoclip_linear_probe():
    # GeoCLIP's photo locations (its gallery): where its encoder was trained. Uniform points on
    # the sphere, two thirds of them at sea, give R^2 ~0.78 here against ~0.88 on these.
    points = load_gallery()[::150].double().numpy()
    feats = ds.compute_features(points, {"geoclip": ds.geoclip_embedder()})
    assert feats["geoclip"].shape == (len(points), 512)
    res = ds.run_probes(synthetic_table(points, smooth_target(points)), feats, probes=("linear",))
    assert res.rows[0].mean("r2") > 0.8


def test_pure_noise_gives_r2_near_zero(points, coords):
    noise = np.random.default_rng(1).normal(size=len(points))
    res = ds.run_probes(synthetic_table(points, noise), coords)
    for r in res.rows:
        assert -0.2 < r.mean("r2") < 0.1, r


def test_regions_are_classified_well_above_chance(points, coords):
    # Four regions: hemisphere (N/S) x side of the prime meridian (E/W); chance is 0.25.
    labels = np.where(points[:, 0] > 0, "N", "S").astype(object) + np.where(
        points[:, 1] > 0, "E", "W"
    )
    res = ds.run_probes(synthetic_table(points, labels.astype(str), "classification"), coords)
    for r in res.rows:
        assert r.mean("accuracy") > 0.85, r
        assert r.mean("macro_f1") > 0.85, r


# ------------------------------------------------------------------------------ tables
def test_invalid_rows_are_skipped_and_counted(tmp_path):
    df = pd.DataFrame(
        {
            "Latitude": ["10", "95", "abc", "", "20", "30", "40", "50"],
            "lng": [1, 2, 3, 4, 5, 6, 7, 8],
            "income": ["45,123", "1", "2", "3", "n/a", "", "3,5", "1,234,567.5"],
        }
    )
    path = tmp_path / "t.csv"
    df.to_csv(path, index=False)
    table = ds.load_table(path, "INCOME")
    # Coordinates are checked first: rows 1-3 count there even though row 3 also lacks a target.
    assert (table.n_skipped_coords, table.n_skipped_target) == (3, 3)
    np.testing.assert_array_equal(table.y, [45123.0, 1234567.5])
    np.testing.assert_array_equal(table.latlon, [[10, 1], [50, 8]])


def test_explicit_columns_parquet_and_classification(tmp_path):
    df = pd.DataFrame({"y": [0.0, 1.0, 2.0], "x": [5.0, 6.0, 7.0], "biome": ["a", None, " b "]})
    path = tmp_path / "t.parquet"
    df.to_parquet(path)
    table = ds.load_table(path, "biome", lat="y", lon="x", task="classification")
    assert table.y.tolist() == ["a", "b"] and table.n_skipped_target == 1


@pytest.mark.parametrize(
    "kwargs", [{"target": "nope"}, {"target": "v", "task": "ranking"}, {"target": "v", "lat": "q"}]
)
def test_bad_arguments_are_one_line_errors(tmp_path, kwargs):
    path = tmp_path / "t.csv"
    pd.DataFrame({"lat": [1.0], "lon": [2.0], "v": [3.0]}).to_csv(path, index=False)
    with pytest.raises(GeoconceptError):
        ds.load_table(path, **kwargs)


def test_embedder_with_wrong_shape_is_rejected():
    with pytest.raises(GeoconceptError, match="shape"):
        ds.compute_features(np.zeros((4, 2)), {"bad": lambda ll: torch.zeros(3, 8)})


def test_raw_coordinates_include_the_unit_vector():
    feats = ds.raw_coordinates_embedder()(torch.tensor([[0.0, 90.0], [90.0, 0.0]]))
    np.testing.assert_allclose(feats, [[0, 90, 0, 1, 0], [90, 0, 0, 0, 1]], atol=1e-6)
    assert ds.raw_coordinates_embedder(unit_sphere=False)(torch.zeros(3, 2)).shape == (3, 2)


# ------------------------------------------------------------------------------- folds
def test_spatial_folds_keep_every_block_in_one_fold(points):
    table = synthetic_table(points, smooth_target(points))
    blocks = ds.spatial_blocks(points, 30.0)
    splits = ds.fold_splits(table, folds=5, spatial_block_deg=30.0)
    tests = np.concatenate([test for _, test in splits])
    assert sorted(tests.tolist()) == list(range(len(points)))  # a partition of the rows
    for train, test in splits:
        assert not set(blocks[train]) & set(blocks[test])


def test_too_few_blocks_for_the_folds(points):
    table = synthetic_table(points, smooth_target(points))
    with pytest.raises(GeoconceptError, match="blocks"):
        ds.fold_splits(table, folds=5, spatial_block_deg=180.0)  # 2 x 2 cells


def test_results_as_json_and_markdown(points, coords):
    table = synthetic_table(points, smooth_target(points))
    fits = []
    res = ds.run_probes(
        table, coords, folds=3, spatial_block_deg=30.0, probes=("linear",), progress=fits.append
    )
    assert fits == [1, 1, 1]
    assert "3-fold CV over 30-degree lat/lon blocks" in ds.summary_line(res)
    data = json.loads(json.dumps(res.to_dict()))
    row = data["results"][0]
    assert (row["encoder"], row["probe"], row["dim"]) == ("coords", "linear", 5)
    assert len(row["metrics"]["r2"]["folds"]) == 3
    assert data["protocol"]["spatial_block_deg"] == 30.0
    md = ds.results_table_markdown(res)
    assert md.splitlines()[0] == "| encoder | probe | dim | R^2 | MAE |"
    assert "| coords | linear | 5 |" in md


# --------------------------------------------------------------------------- real data
def test_us_county_income_joins_centroids_by_padded_fips():
    downstream = shared_data("downstream")
    frame = ds.us_county_income_frame(downstream, 2016)
    assert frame["fips"].str.fullmatch(r"\d{5}").all()
    assert not frame["fips"].str.endswith("000").any()  # USA (0) and state rows dropped
    autauga = frame.set_index("fips").loc["01001"]  # stored as 1001 in income.csv
    assert autauga["median_income"] == 54487.0  # "54,487"
    assert autauga["lat"] == pytest.approx(32.49, abs=0.01)
    table = ds.us_county_income_table(downstream, 2016)
    assert 3000 < len(table.y) < 3200
    assert table.y.dtype == np.float64
    assert table.n_skipped_coords < 20  # counties with no ZIP-derived centroid


def test_county_fips_padding():
    got = ds.county_fips(pd.Series(["0", "1000", "1001", "01003", "x"]))
    assert got.tolist()[:4] == ["00000", "01000", "01001", "01003"] and pd.isna(got.iloc[4])


@pytest.mark.slow
def test_geoclip_ridge_reproduces_air_temperature():
    """The pretrained GeoCLIP ridge probe, shuffled 5-fold: measured R^2 0.928 (a few seconds)."""
    table = ds.air_temperature_table(shared_data("downstream"))
    assert len(table.y) == 3076
    feats = ds.compute_features(table.latlon, {"geoclip": ds.geoclip_embedder()})
    res = ds.run_probes(table, feats, probes=("linear",))
    assert res.rows[0].mean("r2") > 0.9


def test_cli_probes_a_checkpoint_beside_geoclip(tmp_path):
    from synthetic import make_world
    from typer.testing import CliRunner

    from geoconcept_cli.cli.app import app
    from geoconcept_cli.training.config import TrainConfig
    from geoconcept_cli.training.loop import train

    world = make_world(tmp_path, n_regions=4, per_region=16, k=12)
    run = tmp_path / "run"
    train(TrainConfig(features=str(world["train"]), out=str(run), concepts=str(world["concepts"]),
                      max_steps=2, batch_size=32, queue_size=16))  # fmt: skip
    rng = np.random.default_rng(0)
    lat, lon = rng.uniform(-60, 70, 150), rng.uniform(-180, 180, 150)
    pd.DataFrame({"lat": lat, "lon": lon, "y": np.sin(np.radians(lat))}).to_csv(
        tmp_path / "t.csv", index=False
    )
    args = ["downstream", str(tmp_path / "t.csv"), "--target", "y", "--checkpoint", str(run),
            "--probe", "linear", "--json"]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)["results"]
    assert {r["encoder"] for r in rows} == {"geoclip", "coords", "run:features", "run:concepts"}
    dims = {r["encoder"]: r["dim"] for r in rows}
    assert dims["run:concepts"] == 12 and dims["run:features"] == 768
    bad = CliRunner().invoke(app, ["downstream", str(tmp_path / "t.csv")])
    assert bad.exit_code == 2 and "--target" in bad.stderr
