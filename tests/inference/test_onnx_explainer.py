"""Explaining from an ONNX bundle (export --onnx): the torch explainer's explanation, term for
term, with no torch loaded; zero-shot concepts for GeoCLIP's bundle; one line for what a
bundle cannot explain."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import (
    TINY_CLIP,
    assert_close_json,
    cli_without_torch,
    one_line_error,
    tiny_spec,
)
from conftest import (
    im2gps_photos as photos,
)
from typer.testing import CliRunner

from geoconcept_cli.cli.app import app
from geoconcept_cli.geo.limits import Limits
from geoconcept_cli.inference.onnx_explainer import OnnxExplainer
from geoconcept_cli.inference.onnx_runtime import OnnxPredictor, bundle_folder
from geoconcept_cli.inference.request import Request

runner = CliRunner()


def explain(folder, *args: str):
    return runner.invoke(app, ["explain", str(photos(1)[0]), "--checkpoint", str(folder),
                               "--runtime", "onnx", *args])  # fmt: skip


def predict_ok(folder) -> bool:
    res = runner.invoke(app, ["predict", str(photos(1)[0]), "--checkpoint", str(folder),
                              "--runtime", "onnx", "--json"])  # fmt: skip
    return res.exit_code == 0 and len(json.loads(res.stdout)["predictions"]) == 5


# equal-probability candidates may list in another order in either runtime
ORDERLESS = (".region.points",)


@pytest.mark.parametrize("merge_km", [5.0, 0.0])
def test_the_bundle_explains_as_the_torch_explainer(onnx_bundle, merge_km):
    folder, world = onnx_bundle
    from geoconcept_cli.inference.factory import load_explainer

    with pytest.warns(UserWarning):  # random CLIP weights
        torch_e = load_explainer(tiny_spec(checkpoint=folder, gallery=world["gallery"]))
    onnx_e = OnnxExplainer(OnnxPredictor(bundle_folder(folder)))
    limits = Limits.parse(None, ["20,100", "-30,-60"], [3000], None)
    compared = 0
    for request in (Request(merge_km=merge_km), Request(merge_km=merge_km, limits=limits)):
        for photo in photos(12):
            want = torch_e.explain(photo, request).to_json()
            got = onnx_e.explain(photo, request).to_json()
            assert got["mode"] == "concept-aware checkpoint" and got["rule"] == want["rule"]
            assert sorted(got["region"]["points"]) == sorted(want["region"]["points"])
            assert_close_json(got, want, abs=1e-4, rel=1e-6, skip=ORDERLESS)
            # the decomposition is exact: the terms of every concept sum to the score
            assert got["why_here"] and got["rather_than"]["for"]
            compared += 1
    assert compared == 24


def test_the_terms_sum_to_the_score_the_graph_gives(onnx_bundle):
    folder, _ = onnx_bundle
    e = OnnxExplainer(OnnxPredictor(bundle_folder(folder)))
    p = e.predictor
    query, acts = p.outputs(p.pixels(__import__("PIL.Image").Image.open(photos(1)[0])
                                      .convert("RGB")))  # fmt: skip
    out = e.explain_outputs(query[0], acts[0], Request(merge_km=0, concepts_shown=100))
    top = out.predictions[0].gallery_index
    score = float(p.place_emb[p.place_of_row[top]] @ query[0])  # the top place's logit
    assert out.score_logit == pytest.approx(score, abs=1e-5)
    runner_up = out.rather_than["runner_up"]
    gap = score - float(p.place_emb[p.place_of_row[runner_up["gallery_index"]]] @ query[0])
    assert runner_up["logit_gap"] == pytest.approx(gap, abs=1e-5)
    shown = np.asarray(acts[0]) > 0
    assert len(out.why_here) <= int(shown.sum())  # only concepts the photo shows are reasons


def test_explain_from_the_bundle_loads_no_torch(onnx_bundle, tmp_path):
    folder, _ = onnx_bundle
    from PIL import Image

    from geoconcept_cli.plots.maps import MAP_SIZE_PX

    answer = json.loads(cli_without_torch(["explain", str(photos(1)[0]), "--checkpoint",
                                           str(folder), "--runtime", "onnx", "--json", "--map",
                                           str(tmp_path / "map.png")], tmp_path))  # fmt: skip
    assert answer["mode"] == "concept-aware checkpoint" and answer["why_here"]
    assert answer["rule"].startswith(("IF the photo shows", "no concept shown"))
    with Image.open(tmp_path / "map.png") as png:  # the world drawn from the bundle's gallery
        assert png.format == "PNG" and png.size == MAP_SIZE_PX
    text = explain(folder, "--abstain-below", "0")
    assert text.exit_code == 0 and "rather than" in text.stdout, text.output


def test_geoclips_bundle_explains_with_zero_shot_concepts(small_gallery, tmp_path):
    from geoconcept_cli.inference.factory import load_explainer

    out = tmp_path / "geoclip"
    tiny = ["--clip-model", TINY_CLIP, "--clip-pretrained", "none"]
    res = runner.invoke(app, ["export", "--onnx", "--out", str(out), *tiny, "--gallery",
                              str(small_gallery)])  # fmt: skip
    assert res.exit_code == 0, res.output
    with pytest.warns(UserWarning):  # random CLIP weights
        torch_e = load_explainer(tiny_spec(gallery=small_gallery))
    onnx_e = OnnxExplainer(OnnxPredictor(bundle_folder(out)))
    for photo in photos(4):
        want = torch_e.explain(photo).to_json()
        got = onnx_e.explain(photo).to_json()
        assert got["mode"] == "zero-shot" and got["photo_concepts"] and got["place_concepts"]
        assert_close_json(got, want, abs=1e-4)


def test_what_a_bundle_cannot_explain_is_one_line(onnx_bundle, tmp_path):
    folder, _ = onnx_bundle
    for args, said in (
        (["--check"], "batch runs and --check use the torch runtime"),
        (["--hint", "a harbour"], "--hint: hints, albums"),
        (["--concepts", str(tmp_path / "c.parquet")], "--concepts cannot be chosen"),
    ):
        assert said in one_line_error(explain(folder, *args)), args
    res = runner.invoke(app, ["explain", str(photos(1)[0].parent), "--checkpoint", str(folder),
                              "--runtime", "onnx"])  # fmt: skip
    assert "--runtime onnx explains one photo" in one_line_error(res)  # before batch's needs
    with pytest.raises(Exception, match="--check: hints, albums, the deletion check"):
        OnnxExplainer(OnnxPredictor(bundle_folder(folder))).refuse(Request(check=True))
    # a bundle exported before bundles explained: its graph gives the query alone
    old = tmp_path / "old"
    shutil.copytree(folder, old)
    config = json.loads((old / "onnx" / "runtime.json").read_text())
    config["graph"] = {"input": "pixels", "output": "query"}
    (old / "onnx" / "runtime.json").write_text(json.dumps(config))
    assert "exported before bundles explained" in one_line_error(explain(old))
    assert predict_ok(old)  # it still predicts


@pytest.mark.slow
def test_200_photos_are_explained_alike(onnx_bundle):
    """The issue's parity on 200 real photos with the tiny concept-aware run: the same top-5
    and probabilities, and every explanation term, within 1e-4 (each photo read once per
    runtime, as the server reads it)."""
    from PIL import Image

    from geoconcept_cli.inference.factory import load_explainer

    folder, world = onnx_bundle
    with pytest.warns(UserWarning):  # random CLIP weights
        torch_e = load_explainer(tiny_spec(checkpoint=folder, gallery=world["gallery"]))
    onnx_e = OnnxExplainer(OnnxPredictor(bundle_folder(folder)))
    p = onnx_e.predictor
    request = Request(abstain_below=0)
    for photo in photos(200):
        image = Image.open(photo).convert("RGB")
        want = torch_e.explain_features(torch_e.predictor.image_features([image]), request)
        query, acts = (out[0] for out in p.outputs(p.pixels(image)))
        got = onnx_e.explain_outputs(query, acts, request).to_json()
        assert_close_json(got, want.to_json(), abs=1e-4, rel=1e-6, skip=ORDERLESS)
