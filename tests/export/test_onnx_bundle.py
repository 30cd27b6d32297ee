"""`export --onnx`: pretrained GeoCLIP's bundle with no run, what the bundle records, and the
options that do not go together."""

from __future__ import annotations

import json

from conftest import TINY_CLIP, one_line_error, shared_data
from typer.testing import CliRunner

from geoconcept_cli.cli.app import app
from geoconcept_cli.io.artifacts import file_sha256

runner = CliRunner()


def tiny_geoclip(gallery) -> list[str]:
    """GeoCLIP's head read by the tiny random CLIP, over a small gallery."""
    return ["--clip-model", TINY_CLIP, "--clip-pretrained", "none", "--gallery", str(gallery)]


def test_pretrained_geoclip_exports_a_bundle_that_predicts(small_gallery, tmp_path):
    out = tmp_path / "geoclip"
    res = runner.invoke(app, ["export", "--onnx", "--out", str(out), *tiny_geoclip(small_gallery)])
    assert res.exit_code == 0, res.output
    folder = out / "onnx"
    config = json.loads((folder / "runtime.json").read_text())
    assert config["format"] == "geoconcept-onnx/1" and config["kind"] == "GeoCLIP"
    assert config["calibration"] is None and config["preprocess"]["size"] == [64, 64]
    assert set(config["files"]) == {
        "model.onnx",
        "model.onnx.data",
        "gallery.safetensors",
        "concepts.json",
        "concepts.safetensors",
    }  # zero-shot text
    for name, digest in config["files"].items():
        assert file_sha256(folder / name) == digest
    card = (out / "README.md").read_text()
    assert "## Running without torch (onnx/)" in card and "--runtime onnx" in card
    photo = sorted(shared_data("im2gps3k", "images").iterdir())[0]
    res = runner.invoke(app, ["predict", str(photo), "--checkpoint", str(out), "--runtime",
                              "onnx", "--json"])  # fmt: skip
    assert res.exit_code == 0, res.output
    answer = json.loads(res.stdout)
    assert len(answer["predictions"]) == 5 and "confidence" not in answer  # uncalibrated
    # exporting again replaces the bundle, and the card keeps one such section
    res = runner.invoke(app, ["export", "--onnx", "--out", str(out), *tiny_geoclip(small_gallery)])
    assert res.exit_code == 0, res.output
    assert (out / "README.md").read_text().count("## Running without torch") == 1


def test_options_that_do_not_go_together_are_one_line(tmp_path):
    for args, said in (
        (["--out", str(tmp_path / "m")], "give a run to export, or --onnx"),
        (["--onnx"], "give --out DIR"),
        (["--out", str(tmp_path / "m"), "--onnx", "--quantize", "int4", "--clip-model",
          TINY_CLIP, "--clip-pretrained", "none"], "--quantize int4: give int8"),
    ):  # fmt: skip
        assert said in one_line_error(runner.invoke(app, ["export", *args])), args
    res = runner.invoke(app, ["export", str(tmp_path / "run"), "--out", str(tmp_path / "m"),
                              "--quantize", "int8"])  # fmt: skip
    assert "--quantize goes with --onnx" in one_line_error(res)
