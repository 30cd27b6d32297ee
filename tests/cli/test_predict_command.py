"""`geoconcept predict` end to end: output formats and one-line errors with exit code 2."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
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
    assert len(lines) == 4 and lines[3].startswith("probabilities uncalibrated")
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
    assert set(data["predictions"][0]) == {"rank", "lat", "lon", "prob", "gallery_index", "place"}


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
    start = next(i for i, ln in enumerate(lines) if "Given a feature folder" in ln)
    end = next(i for i in range(start, len(lines)) if not lines[i].strip())
    paragraph = lines[start:end]
    assert len(paragraph) == 3 and all(len(ln.strip()) >= 70 for ln in paragraph[:-1]), paragraph
