"""The modality gap: its numbers, and the UMAP picture `visualize` draws."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from geoconcept_cli.cli.app import app
from geoconcept_cli.plots.modality_gap import modality_gap
from geoconcept_cli.training.config import TrainConfig
from geoconcept_cli.training.loop import train

runner = CliRunner()


def test_modality_gap_numbers():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(50, 8))
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    same = modality_gap({"image": z, "location": z})
    assert same["centroid_distance"] == 0 and same["mean_paired_cosine"] == pytest.approx(1)
    shifted = z + 0.5
    gap = modality_gap({"image": z, "location": shifted})
    assert gap["centroid_distance"] == pytest.approx(0.5 * np.sqrt(8))


@pytest.mark.slow
def test_visualize_png(small_world, tmp_path):
    run = tmp_path / "run"
    world = small_world
    train(TrainConfig(features=str(world["train"]), out=str(run), concepts=str(world["concepts"]),
                      max_steps=2, batch_size=32, queue_size=16))  # fmt: skip
    png = tmp_path / "gap.png"
    res = runner.invoke(app, ["visualize", str(small_world["test"]), str(run), "--out", str(png),
                              "--by-continent"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "modality gap: centroid distance" in res.stdout
    with Image.open(png) as img:
        assert img.format == "PNG" and img.size == (800, 700)
