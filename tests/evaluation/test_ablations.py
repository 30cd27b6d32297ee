"""The concept-set ablation grid, end to end on tiny inputs."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from geoconcept_cli.cli.app import app
from geoconcept_cli.concepts.set import default_concepts_path
from geoconcept_cli.evaluation.ablations import generic_set

runner = CliRunner()


def test_generic_vocabulary_has_no_place_knowledge():
    words = generic_set()
    assert len(words) > 250 and len(set(words)) == len(words)
    shipped = set(__import__("pandas").read_parquet(default_concepts_path())["concept"])
    assert len(shipped & set(words)) < 10  # nearly disjoint from the geography-driven set


@pytest.mark.slow
def test_ablation_grid_end_to_end(small_world, tmp_path, tiny_clip):
    out = tmp_path / "grid"
    args = ["ablate", str(small_world["train"]), str(small_world["test"]), "--out", str(out),
            "--max-steps", "2", "--batch-size", "32", "--queue-size", "16",
            "--gallery", str(small_world["gallery"]), "--clip-model", tiny_clip,
            "--clip-pretrained", "none"]  # fmt: skip
    wrong = [*args[:-4], "--clip-model", "ViT-B-32", "--clip-pretrained", "none"]
    res = runner.invoke(app, wrong)  # refused before any concept set is embedded
    assert res.exit_code == 2 and "pass --clip-model tiny-clip-768" in res.stderr
    assert not out.exists()
    res = runner.invoke(app, [*args, "--warmup-steps", "1"])
    assert res.exit_code == 0, res.output
    assert "trained: geography" in res.stderr and "warmup" not in res.stderr
    result = json.loads((out / "ablation.json").read_text())
    assert set(result["models"]) == {"GeoCLIP (pretrained)", "geography", "generic", "random",
                                     "none"}  # fmt: skip
    assert list(result["models"]["none"])[:5] == ["1km", "25km", "200km", "750km", "2500km"]
    for name in ("geography", "generic", "random"):
        meta = json.loads((out / "concept_sets" / f"{name}.json").read_text())
        assert len(meta["concepts"]) == (len(generic_set()) if name == "generic" else 645)
    assert "| geography |" in (out / "ablation.md").read_text()
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/checkpoint.safetensors")}
    assert len(stamps) == 4
    again = runner.invoke(app, [*args, "--warmup-steps", "1"])  # finished: not retrained
    assert again.exit_code == 0 and "already trained: none" in again.stderr
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/checkpoint.safetensors")} == stamps
