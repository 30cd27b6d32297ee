"""Predicting from an ONNX bundle (export --onnx): the same answers as the torch predictor,
open_clip's preprocessing pixel for pixel, no torch loaded, and one line for a bundle that
cannot be trusted or a question it cannot answer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_CLIP, cli_without_torch, one_line_error, tiny_spec
from conftest import im2gps_photos as photos
from PIL import Image
from typer.testing import CliRunner

from geoconcept_cli.cli.app import app
from geoconcept_cli.geo.limits import Limits
from geoconcept_cli.inference.onnx_runtime import OnnxPredictor, Preprocess, bundle_folder
from geoconcept_cli.inference.request import Request

runner = CliRunner()


@pytest.fixture
def bundle(onnx_bundle):
    return onnx_bundle


@pytest.mark.parametrize("merge_km", [5.0, 0.0])
def test_the_bundle_answers_as_the_torch_predictor(bundle, merge_km):
    folder, world = bundle
    from geoconcept_cli.inference.factory import load_predictor

    with pytest.warns(UserWarning):  # random CLIP weights
        torch_p = load_predictor(tiny_spec(checkpoint=folder, gallery=world["gallery"]))
    onnx_p = OnnxPredictor(bundle_folder(folder))
    assert torch_p.calibration is not None and onnx_p.calibration == torch_p.calibration
    for request in (Request(merge_km=merge_km), Request(merge_km=merge_km, limits=Limits.parse(
            None, ["20,100", "-30,-60"], [3000], None))):  # fmt: skip
        for photo in photos(12):
            want = torch_p.predict(photo, request).to_json()
            got = onnx_p.predict(photo, request).to_json()
            assert [c["gallery_index"] for c in got["predictions"]] == [
                c["gallery_index"] for c in want["predictions"]]  # fmt: skip
            for g, w in zip(got["predictions"], want["predictions"], strict=True):
                assert g["prob"] == pytest.approx(w["prob"], abs=1e-4)
                assert (g["points"], g["place"], g["rank"]) == (w["points"], w["place"], w["rank"])
            assert got["probabilities"] == want["probabilities"]
            gc, wc = got["confidence"], want["confidence"]
            assert gc["probability"] == pytest.approx(wc["probability"], abs=1e-4)
            assert {k: v for k, v in gc.items() if k != "probability"} == {
                k: v for k, v in wc.items() if k != "probability"}  # fmt: skip
            gr, wr = got["region"], want["region"]
            assert [c["country"] for c in gr["countries"]] == [
                c["country"] for c in wr["countries"]]  # fmt: skip
            # the same places (near-equal probabilities may list in another order)
            assert gr["places"] == wr["places"] and sorted(gr["points"]) == sorted(wr["points"])
            assert gr["area_km2"] == pytest.approx(wr["area_km2"], rel=1e-6)


def test_the_quantized_graph_answers_from_the_command_line(bundle):
    res = predict(bundle[0], "--json")
    res8 = runner.invoke(app, ["predict", str(photos(1)[0]), "--checkpoint", str(bundle[0]),
                               "--runtime", "onnx-int8", "--json"])  # fmt: skip
    assert res8.exit_code == 0, res8.output
    assert len(json.loads(res8.stdout)["predictions"]) == len(json.loads(res.stdout)[
        "predictions"]) == 5  # fmt: skip


def test_the_quantized_graph_is_the_fp32_one_nearly(bundle):
    folder, _ = bundle
    fp32, int8 = OnnxPredictor(bundle_folder(folder)), OnnxPredictor(bundle_folder(folder),
                                                                     int8=True)  # fmt: skip
    pixels = np.stack([fp32.preprocess(Image.open(p).convert("RGB")) for p in photos(8)])
    a, b = fp32.query(pixels), int8.query(pixels)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.5, cos  # random weights: no accuracy to keep, only the same model


@pytest.mark.parametrize("size", [(640, 480), (480, 640), (333, 999), (64, 64), (50, 30)])
def test_preprocessing_is_open_clips_pixel_for_pixel(size):
    import open_clip

    from geoconcept_cli.model.clip import load_clip

    for clip_size in (64, 224):  # the tiny test CLIP's, and ViT-L/14's (OpenAI's mean and std)
        if clip_size == 64:
            with pytest.warns(UserWarning):
                clip = load_clip(TINY_CLIP, "none")
            cfg, transform = open_clip.get_model_preprocess_cfg(clip.model), clip.preprocess
        else:
            cfg = {"size": (224, 224), "mean": open_clip.OPENAI_DATASET_MEAN,
                   "std": open_clip.OPENAI_DATASET_STD, "interpolation": "bicubic",
                   "resize_mode": "shortest"}  # fmt: skip
            transform = open_clip.image_transform(224, is_train=False, mean=cfg["mean"],
                                                  std=cfg["std"])  # fmt: skip
        ours = Preprocess.from_config(cfg, "test")
        for photo in photos(3):
            image = Image.open(photo).convert("RGB").resize(size)
            want = transform(image).numpy()
            got = ours(image)
            assert got.shape == want.shape and got.dtype == np.float32
            assert np.abs(got - want).max() <= 1e-6


def test_predict_from_the_bundle_loads_no_torch(bundle, tmp_path):
    folder, _ = bundle
    answer = json.loads(cli_without_torch(["predict", str(photos(1)[0]), "--checkpoint",
                                           str(folder), "--runtime", "onnx", "--json"],
                                          tmp_path))  # fmt: skip
    assert len(answer["predictions"]) == 5 and answer["confidence"]["radius_km"] == 25


def copy_of(bundle, tmp_path) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(bundle[0], folder)
    return folder


def predict(folder: Path, *args: str):
    return runner.invoke(app, ["predict", str(photos(1)[0]), "--checkpoint", str(folder),
                               "--runtime", "onnx", *args])  # fmt: skip


def test_a_bundle_that_cannot_be_trusted_is_one_line(bundle, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from geoconcept_cli.io.artifacts import file_sha256

    folder = copy_of(bundle, tmp_path)
    graph = folder / "onnx" / "model.onnx"
    config_path = folder / "onnx" / "runtime.json"
    config = json.loads(config_path.read_text())
    # truncated: its hash is not the recorded one
    data = graph.read_bytes()
    graph.write_bytes(data[: len(data) // 2])
    assert "its sha256 is not the one runtime.json records" in one_line_error(predict(folder))
    # a custom operator, even with its hash recorded, is refused before anything runs
    node = helper.make_node("Steal", ["pixels"], ["query"], domain="evil.ops")
    pixels = helper.make_tensor_value_info("pixels", TensorProto.FLOAT, [1, 3, 64, 64])
    query = helper.make_tensor_value_info("query", TensorProto.FLOAT, [1, 8])
    model = helper.make_model(helper.make_graph([node], "g", [pixels], [query]), opset_imports=[
        helper.make_opsetid("", 18), helper.make_opsetid("evil.ops", 1)])  # fmt: skip
    onnx.save(model, str(graph))
    config_path.write_text(json.dumps({**config, "files": {**config["files"],
                                       "model.onnx": file_sha256(graph)}}))  # fmt: skip
    assert "uses custom operators (evil.ops: Steal)" in one_line_error(predict(folder))
    # a graph for another input size than the bundle says
    shutil.copy(bundle[0] / "onnx" / "model.onnx", graph)
    config_path.write_text(json.dumps({**config, "preprocess": {**config["preprocess"],
                                                                "size": [224, 224]}}))  # fmt: skip
    assert "not photos of 224x224" in one_line_error(predict(folder))
    # missing pieces
    config_path.write_text(json.dumps(config))
    (folder / "onnx" / "gallery.safetensors").unlink()
    assert "gallery.safetensors: missing from the bundle" in one_line_error(predict(folder))
    shutil.copy(bundle[0] / "onnx" / "gallery.safetensors", folder / "onnx")
    # a file the bundle does not record is not loaded
    (folder / "onnx" / "extra.bin").write_bytes(b"x")
    assert "extra.bin: not recorded in runtime.json" in one_line_error(predict(folder))
    (folder / "onnx" / "extra.bin").unlink()
    # the model's folder calibrated again since the export: the bundle's regions are stale
    cal = json.loads((folder / "calibration.json").read_text())
    (folder / "calibration.json").write_text(json.dumps({**cal, "alpha": 0.3}))
    assert "is not the calibration the ONNX bundle was exported with" in one_line_error(
        predict(folder))  # fmt: skip
    assert predict(folder, "--no-calibration").exit_code == 0
    shutil.rmtree(folder / "onnx")
    assert "holds no ONNX bundle" in one_line_error(predict(folder))


def test_what_a_bundle_cannot_answer_is_one_line(bundle):
    folder, world = bundle
    for args, said in (
        (["--hint", "a harbour"], "--hint: hints, albums"),
        (["--merge-km", "3"], "--merge-km 3: this bundle holds sites of 5 km"),
        (["--gallery", str(world["gallery"])], "--gallery cannot be chosen"),
        (["--within", "Atlantis"], "Atlantis"),
    ):
        assert said in one_line_error(predict(folder, *args)), args
    assert "batch runs and albums use the torch runtime" in one_line_error(
        predict(folder, "--out", str(folder / "rows.parquet")))  # fmt: skip
    res = runner.invoke(app, ["predict", str(photos(1)[0]), "--checkpoint", str(folder),
                              "--runtime", "tensorflow"])  # fmt: skip
    assert "--runtime tensorflow: give torch, onnx, onnx-int8" in one_line_error(res)
