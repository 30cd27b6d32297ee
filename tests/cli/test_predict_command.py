"""`geoconcept predict` end to end: output formats and one-line errors with exit code 2."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import heic_of, shared_data
from PIL import Image
from typer.testing import CliRunner

from geoconcept_cli.cli.app import app

runner = CliRunner()
LINE = re.compile(r"^(\d+)  (-?\d+\.\d{4}), (-?\d+\.\d{4})  p=(\S+)  (.+)$")


@pytest.fixture
def model_args(tiny_clip, small_gallery):
    return ["--clip-model", tiny_clip, "--clip-pretrained", "none", "--gallery", str(small_gallery)]


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "photo.jpg"
    rgb = np.random.default_rng(0).integers(0, 255, (90, 120, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)
    return path


def test_text_output(photo, model_args):
    res = runner.invoke(app, ["predict", str(photo), "--top-k", "3", *model_args])
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.stdout.splitlines() if ln.strip()]
    assert len(lines) == 5 and lines[4].startswith("probabilities uncalibrated")
    assert lines[3] == (
        "candidates: gallery points within 5 km merged, probabilities summed "
        "(--merge-km 0 lists each point)"
    )
    lines = lines[:3]
    assert [LINE.match(ln).group(1) for ln in lines] == ["1", "2", "3"]
    probs = [float(LINE.match(ln).group(4)) for ln in lines]  # 3 significant digits, never 0.00
    assert probs == sorted(probs, reverse=True) and all(0 < p <= 1 for p in probs)
    # distinct places print as distinct coordinates (2 decimals made neighbours look repeated)
    assert len({LINE.match(ln).group(2, 3) for ln in lines}) == 3
    assert "random weights" in res.stderr


def test_json_output(photo, model_args):
    res = runner.invoke(app, ["predict", str(photo), "--json", "--top-k", "2", *model_args])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["image"] == str(photo)
    assert [p["rank"] for p in data["predictions"]] == [1, 2]
    assert set(data["predictions"][0]) == {
        "rank",
        "lat",
        "lon",
        "prob",
        "gallery_index",
        "place",
        "points",
    }
    assert data["merge_km"] == 5


def _bad_inputs(tmp_path):
    text = tmp_path / "text.jpg"
    text.write_text("not an image")
    trunc = tmp_path / "trunc.jpg"
    Image.new("RGB", (256, 256)).save(trunc)
    trunc.write_bytes(trunc.read_bytes()[:300])
    return {"missing": tmp_path / "missing.jpg", "directory": tmp_path, "text": text,
            "truncated": trunc}  # fmt: skip


@pytest.mark.parametrize("case", ["missing", "directory", "text", "truncated"])
def test_bad_input_exit_2_one_line(tmp_path, model_args, case):
    res = runner.invoke(app, ["predict", str(_bad_inputs(tmp_path)[case]), *model_args])
    assert res.exit_code == 2
    err_lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(err_lines) == 1 and "Traceback" not in res.output


@pytest.mark.parametrize("mode", ["RGBA", "CMYK", "I;16"])
def test_odd_modes_work(tmp_path, model_args, mode):
    path = tmp_path / ("odd.png" if mode != "CMYK" else "odd.jpg")
    Image.new(mode, (40, 30)).save(path)
    res = runner.invoke(app, ["predict", str(path), "--top-k", "1", *model_args])
    assert res.exit_code == 0, res.output


def test_bad_model_option_is_one_line(photo, small_gallery):
    res = runner.invoke(app, ["predict", str(photo), "--clip-model", "ViT-Nope"])
    assert res.exit_code == 2 and "unknown CLIP model" in res.stderr


@pytest.mark.e2e
def test_console_script_no_traceback(tmp_path):
    """As a real process: the installed entry point fails cleanly on a missing file."""
    res = subprocess.run(
        [sys.executable, "-m", "geoconcept_cli", "predict", str(tmp_path / "nope.jpg")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 2
    assert res.stderr.strip().startswith("error:") and "Traceback" not in res.stderr


def test_help_paragraphs_reflow_to_the_terminals_width():
    """A docstring's paragraph is wrapped to the terminal, not at its source line breaks
    (at 80 columns those left one-word lines: '... predicts every photo in it' / 'at')."""
    res = runner.invoke(app, ["predict", "--help"], env={"COLUMNS": "80"})
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    start = next(i for i, ln in enumerate(lines) if "Batch mode writes one row" in ln)
    end = next(i for i in range(start, len(lines)) if not lines[i].strip())
    paragraph = lines[start:end]
    assert len(paragraph) == 3 and all(len(ln.strip()) >= 70 for ln in paragraph[:-1]), paragraph


def test_a_folder_of_photos_is_predicted_into_rows(tmp_path, model_args):
    """`predict DIR --out` once said the folder was "not an embed-images folder"; it now
    predicts a folder (or a manifest) of photos as explain does, a row a photo."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, colour in enumerate(("olive", "navy")):
        Image.new("RGB", (64, 48), colour).save(folder / f"p{i}.jpg")
    real = sorted(shared_data("im2gps3k", "images").iterdir())[0]
    (folder / "p2.heic").write_bytes(heic_of(real))  # an iPhone's photo is one of them
    (folder / "broken.jpg").write_text("not an image")
    out = tmp_path / "rows.parquet"
    res = runner.invoke(app, ["predict", str(folder), "--out", str(out), "--top-k", "3",
                              *model_args])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert f"3 photos predicted -> {out}; 1 missing or unreadable" in res.stdout
    assert "skipped" in res.stderr and "broken.jpg" in res.stderr
    rows = pd.read_parquet(out)
    assert list(rows.columns) == [
        "image",
        "lat",
        "lon",
        "prob",
        "place",
        "top_k",
        "confidence",
        "answered",
    ]
    assert rows["confidence"].isna().all()  # an uncalibrated model: no confidence
    assert sorted(Path(i).name for i in rows["image"]) == ["p0.jpg", "p1.jpg", "p2.heic"]
    assert all(len(json.loads(t)) == 3 for t in rows["top_k"])
    single = runner.invoke(app, ["predict", str(folder / "p2.heic"), "--json", *model_args])
    lat = rows.loc[rows["image"].str.endswith("p2.heic"), "lat"].item()
    assert json.loads(single.stdout)["predictions"][0]["lat"] == pytest.approx(lat, abs=1e-6)
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(folder / "p0.jpg", one)
    res = runner.invoke(app, ["predict", str(one), "--out", str(tmp_path / "one.parquet"),
                              *model_args])  # fmt: skip
    assert res.exit_code == 0 and "1 photo predicted ->" in res.stdout, res.output
    res = runner.invoke(app, ["predict", str(folder), *model_args])
    assert res.exit_code == 2 and "needs --out results.parquet" in res.stderr


def test_more_than_can_be_listed_is_refused_in_one_line(photo, model_args, tmp_path):
    """--top-k 200000 once printed every one of 94,100 places without a word. Refused before
    anything loads: the gallery given to `where` does not exist, and would have been the error."""
    res = runner.invoke(app, ["predict", str(photo), "--top-k", "200000", *model_args])
    assert res.exit_code == 2
    assert res.stderr.strip() == ("error: --top-k 200000: at most 100 are listed (the server's "
                                  "limit too); give 100 or fewer")  # fmt: skip
    res = runner.invoke(app, ["where", "rice terraces", "--countries", "101", "--gallery",
                              str(tmp_path / "no-such-gallery.csv")])  # fmt: skip
    assert res.exit_code == 2 and res.stderr.startswith("error: --countries 101: at most 100")
