"""`make reproduce` end to end on a CPU: Im2GPS3k photos stand in for MP-16, a tiny CLIP."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pandas as pd
import pytest
from conftest import TESTS, TINY_CLIP, shared_data

ROOT = TESTS.parent


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")
def test_make_reproduce_runs_every_stage_and_skips_them_on_a_rerun(tmp_path, small_gallery):
    labels = pd.read_csv(shared_data("im2gps3k", "im2gps3k_places365.csv"))
    images = shared_data("im2gps3k", "images")
    labels.iloc[:96].to_csv(tmp_path / "train.csv", index=False)
    labels.iloc[96:144].to_csv(tmp_path / "test.csv", index=False)
    work = tmp_path / "work"
    cmd = [
        "make", "-s", "-C", str(ROOT), "reproduce", "--assume-old=.venv/.installed",
        f"GC={sys.executable} -m geoconcept_cli", f"WORK={work}", "FRACTION=1", "GPUS=0",
        "DEVICE=cpu", f"MP16={tmp_path / 'train.csv'}", f"MP16_IMAGES={images}",
        f"IM2GPS={tmp_path / 'test.csv'}", f"IM2GPS_IMAGES={images}",
        f"CLIP_OPTS=--clip-model {TINY_CLIP} --clip-pretrained none",
        f"EVAL_OPTS=--gallery {small_gallery}",
        "TRAIN_OPTS=--epochs 2 --batch-size 32 --lr 1e-3 --queue-size 64",
    ]  # fmt: skip
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    models = json.loads((work / "eval.json").read_text())["models"]
    runs = {str(work / "run_concepts"), str(work / "run_geoclip")}
    assert set(models) == runs | {"GeoCLIP (pretrained)"}
    for scores in models.values():
        assert {"1km", "25km", "200km", "750km", "2500km"} <= set(scores)
        assert 0 <= scores["2500km"] <= 100
    assert json.loads((work / "feats_train" / "meta.json").read_text())["rows"] == 96
    made = sorted(p for p in work.rglob("*") if p.suffix in {".pt", ".safetensors"})
    stamps = {p: p.stat().st_mtime_ns for p in made}
    assert len(made) >= 5  # two checkpoints, two feature shards, the concept basis

    again = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in made} == stamps  # nothing recomputed
    lines = again.stdout.splitlines()  # each message whole, however long its path
    assert f"{work / 'run_concepts'}: finished at step 6, nothing to do" in lines
