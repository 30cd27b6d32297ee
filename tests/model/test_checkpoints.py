"""Checkpoints and exported models are data: nothing runs on load, bad files are one line,
and an exported bundle gives the run's own results."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import assert_close_json, one_line_error, tiny_spec
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from synthetic import tiny_trained_world
from typer.testing import CliRunner

from geoconcept_cli.cli.app import app
from geoconcept_cli.errors import GeoconceptError
from geoconcept_cli.evaluation.scores import evaluate
from geoconcept_cli.inference.factory import load_explainer
from geoconcept_cli.inference.request import Request
from geoconcept_cli.model.checkpoints import (
    LEGACY_FORMAT,
    load_head,
    read_checkpoint,
    read_model,
    write_checkpoint,
)
from geoconcept_cli.model.spec import ModelSpec
from geoconcept_cli.training.loop import run_training, train

runner = CliRunner()


class Payload:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return tiny_trained_world(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("photo") / "photo.jpg"
    pixels = np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def _crafted(tmp_path: Path, marker: Path) -> dict[str, Path]:
    """A checkpoint-looking torch file and a raw pickle, both running a command on unpickling,
    and a run folder holding the first."""
    torch_file = tmp_path / "evil.pt"
    torch.save({"format": LEGACY_FORMAT, "kind": "concept", "model": Payload(marker)}, torch_file)
    raw = tmp_path / "evil.pkl"
    raw.write_bytes(pickle.dumps(Payload(marker)))
    folder = tmp_path / "evil_run"
    folder.mkdir()
    shutil.copy(torch_file, folder / "checkpoint.pt")
    return {"torch": torch_file, "raw": raw, "folder": folder}


@pytest.mark.e2e
def test_the_crafted_files_would_run_code_if_unpickled(tmp_path):
    """The attack is real: an unsafe load of each file creates the marker."""
    for name, path in _crafted(tmp_path, tmp_path / "marker").items():
        if name == "folder":
            continue
        code = (f"import pickle, torch; p = {str(path)!r}; "
                "torch.load(p, weights_only=False) if p.endswith('.pt') else "
                "pickle.load(open(p, 'rb'))")  # fmt: skip
        subprocess.run([sys.executable, "-c", code], check=False, capture_output=True)
        assert (tmp_path / "marker").exists(), name
        (tmp_path / "marker").unlink()


def test_no_command_runs_a_crafted_checkpoint(world, photo, tmp_path, tiny_clip, small_gallery):
    marker = tmp_path / "marker"
    evil = _crafted(tmp_path, marker)
    table = tmp_path / "table.csv"
    pd.DataFrame({"lat": [10.0, 20, 30, 40, 50, 60], "lon": [0.0, 10, 20, 30, 40, 50],
                  "y": [1.0, 2, 3, 4, 5, 6]}).to_csv(table, index=False)  # fmt: skip
    clip = ["--clip-model", tiny_clip, "--clip-pretrained", "none"]
    for path in evil.values():
        commands = [
            ["explain", str(photo), "--checkpoint", str(path), *clip, "--gallery",
             str(small_gallery)],
            ["evaluate", str(world["test"]), str(path), "--no-geoclip"],
            ["visualize", str(world["test"]), str(path), "--out", str(tmp_path / "gap.png")],
            ["downstream", str(table), "--target", "y", "--checkpoint", str(path), "--folds", "2"],
            ["export", str(path), "--out", str(tmp_path / "bundle")],
        ]  # fmt: skip
        for args in commands:
            line = one_line_error(runner.invoke(app, args))
            assert "refused" in line or "not a geoconcept checkpoint" in line, (args, line)
            assert not marker.exists(), args
    # a run folder whose checkpoint was replaced, continued with --resume
    res = runner.invoke(app, [
        "train", str(world["train"]), "--out", str(evil["folder"]), "--concepts",
        str(world["concepts"]), "--max-steps", "4", "--batch-size", "32", "--warmup-steps", "1",
        "--resume",
    ])  # fmt: skip
    assert "refused: this pickle holds Python objects" in one_line_error(res)
    # CLIP weights given as a local file go through open_clip's weights-only loader
    res = runner.invoke(app, ["predict", str(photo), "--clip-model", tiny_clip,
                              "--clip-pretrained", str(evil["torch"])])  # fmt: skip
    one_line_error(res)
    assert not marker.exists() and not (tmp_path / "bundle").exists()


def test_a_run_folder_a_checkpoint_file_and_a_bundle_explain_alike(
    world, photo, tmp_path, tiny_clip, small_gallery
):
    bundle = tmp_path / "model"
    res = runner.invoke(app, ["export", str(world["run"]), "--out", str(bundle)])
    assert res.exit_code == 0, res.output
    assert "exported concept-aware model (40 concepts, step 4 of 4)" in res.stdout
    assert sorted(p.name for p in bundle.iterdir()) == [
        "README.md", "concepts.json", "config.json", "model.safetensors"]  # fmt: skip
    with safe_open(str(bundle / "model.safetensors"), "pt") as f:  # no pickle anywhere:
        assert f.metadata() == {"format": "geoconcept-model/1"}  # safetensors, JSON, text
    for name in ("config.json", "concepts.json"):
        assert isinstance(json.loads((bundle / name).read_text()), dict)
    assert (bundle / "README.md").read_text().startswith("# geoconcept model: model")
    assert not list(tmp_path.glob(".model.*"))  # no temporary left beside it

    results = []  # the first is a warm-up: an explainer that encodes the gallery was seen to
    # differ from later, cached ones by ~1e-7 relative, whatever the checkpoint's form
    for source in (world["run"], world["run"], world["run"] / "checkpoint.safetensors", bundle,
                   bundle / "model.safetensors"):  # fmt: skip
        with pytest.warns(UserWarning):  # random CLIP weights
            explainer = load_explainer(tiny_spec(checkpoint=source, gallery=small_gallery))
        results.append(explainer.explain(photo, Request(top_k=5, check=True)).to_json())
    assert results[1]["mode"] == "concept-aware checkpoint"
    for other in results[2:]:
        assert_close_json(other, results[1], abs=1e-6, skip=(".image",))

    runs = [ModelSpec(checkpoint=c, gallery=world["gallery"]) for c in (world["run"], bundle)]
    scores = evaluate(world["test"], runs).summary["models"]
    assert scores[str(world["run"])] == scores[str(bundle)]
    a, b = read_model(world["run"]), read_model(bundle)
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=0)


def test_the_model_card_names_data_and_figures(world, tmp_path):
    run = tmp_path / "runs" / "concepts"
    shutil.copytree(world["run"], run)
    res = runner.invoke(app, ["evaluate", str(world["test"]), str(run), "--gallery",
                              str(world["gallery"]), "--json-out",
                              str(run.parent / "eval.json")])  # fmt: skip
    assert res.exit_code == 0, res.output
    figures = json.loads((run.parent / "eval.json").read_text())["models"][str(run)]
    # an eval.json lying beside the run is not the run's own: its figures need naming
    res = runner.invoke(app, ["export", str(run), "--out", str(tmp_path / "model")])
    assert res.exit_code == 0 and "figures: none (evaluate --json-out RUN/eval.json, or give " \
        "--figures)" in res.stdout, res.output  # fmt: skip
    res = runner.invoke(app, ["export", str(run), "--out", str(tmp_path / "model"), "--figures",
                              str(run.parent / "eval.json")])  # fmt: skip
    assert res.exit_code == 0 and f"figures: from {run.parent / 'eval.json'}" in res.stdout
    shutil.move(run.parent / "eval.json", run / "eval.json")  # the run's own: found
    res = runner.invoke(app, ["export", str(run), "--out", str(tmp_path / "model")])
    assert res.exit_code == 0 and f"figures: from {run / 'eval.json'}" in res.stdout, res.output
    card = (tmp_path / "model" / "README.md").read_text()
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert "Image features: `train`, 192 photos" in card  # make_world: 6 regions x 32
    assert "40 concepts" in card and "Privacy" in card and "not street-level" in card
    row = next(ln for ln in card.splitlines() if ln.startswith("| this model |"))
    assert row.split(" | ")[1:3] == [f"{figures['1km']:.1f}", f"{figures['25km']:.1f}"]
    assert "| GeoCLIP (pretrained) |" in card and "| gallery ceiling |" in card
    assert config["evaluation"]["model"]["25km"] == figures["25km"]
    assert config["clip"] == {"model": "tiny-clip-768", "pretrained": "none", "config": None}
    assert config["training"]["features"] == "train" and "out" not in config["training"]
    # a rerun replaces the earlier export; a folder of other files is never overwritten
    res = runner.invoke(app, ["export", str(run), "--out", str(tmp_path / "model")])
    assert res.exit_code == 0, res.output
    assert "other files" in one_line_error(
        runner.invoke(app, ["export", str(run), "--out", str(tmp_path / "runs")])
    )
    hub = tmp_path / "hub_model"  # a folder that merely looks like an export
    hub.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (hub / name).write_text("{}")
    assert "other files" in one_line_error(
        runner.invoke(app, ["export", str(run), "--out", str(hub)])
    )
    assert sorted(p.name for p in hub.iterdir()) == [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
    ]
    assert "no figures for" in one_line_error(runner.invoke(app, [
        "export", str(world["run"]), "--out", str(tmp_path / "m2"), "--eval",
        str(run / "eval.json")]))  # fmt: skip
    res = runner.invoke(app, ["export", str(world["run"]), "--out", str(tmp_path / "m3")])
    assert "figures: none (evaluate --json-out RUN/eval.json" in res.stdout
    card = (tmp_path / "m3" / "README.md").read_text()
    assert "No evaluation of this run was given or found" in card


def _bundle(world, tmp_path: Path, name: str) -> Path:
    out = tmp_path / name
    res = runner.invoke(app, ["export", str(world["run"]), "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out


def _edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_malformed_checkpoints_and_bundles_are_one_line_errors(world, photo, tmp_path, tiny_clip):
    ckpt = read_checkpoint(world["run"] / "checkpoint.safetensors")
    cases: dict[str, tuple[Path, str]] = {}

    def checkpoint_case(name: str, message: str, **changes) -> None:
        write_checkpoint(tmp_path / f"{name}.safetensors", {**ckpt, **changes})
        cases[name] = (tmp_path / f"{name}.safetensors", message)

    model = ckpt["model"]
    checkpoint_case("missing", "1 missing (e.g. delta)",
                    model={k: v for k, v in model.items() if k != "delta"})  # fmt: skip
    checkpoint_case("shape", "of another shape (e.g. image_mlp.0.weight: (768, 700)",
                    model={**model, "image_mlp.0.weight": torch.zeros(768, 700)})  # fmt: skip
    checkpoint_case(
        "nan",
        "not finite numbers",
        model={**model, "delta": torch.full_like(model["delta"], float("nan"))},
    )
    checkpoint_case("names", "concept list does not match its 40 concept weights",
                    concepts={k: v[:-1] for k, v in ckpt["concepts"].items()})  # fmt: skip

    cut = tmp_path / "cut.safetensors"
    data = (world["run"] / "checkpoint.safetensors").read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    cases["truncated"] = (cut, "not a whole safetensors file")
    newer = tmp_path / "newer.safetensors"
    with safe_open(str(world["run"] / "checkpoint.safetensors"), "pt") as f:
        meta = f.metadata()
    save_file(load_file(world["run"] / "checkpoint.safetensors"), str(newer),
              metadata={**meta, "format": "geoconcept-checkpoint/3"})  # fmt: skip
    cases["version"] = (newer, "checkpoint format geoconcept-checkpoint/3, but this geoconcept "
                               "reads geoconcept-checkpoint/2")  # fmt: skip
    shard = next(Path(world["test"]).glob("shard-*.safetensors"))
    cases["foreign safetensors"] = (shard, "not a geoconcept checkpoint (no 'geoconcept-")
    foreign_pt = tmp_path / "state_dict.pt"
    torch.save({"weight": torch.zeros(3)}, foreign_pt)
    cases["foreign torch file"] = (foreign_pt, "not a geoconcept checkpoint (a torch file")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    cases["text"] = (text, "not a geoconcept checkpoint (neither safetensors nor a torch file)")
    looks = tmp_path / "header_0x80.safetensors"  # a header size whose low byte is a pickle's
    looks.write_bytes(bytes([0x80, 0, 0, 0, 0, 0, 0, 0]) + b'{"cut')  # first: still safetensors
    cases["0x80 header size"] = (looks, "not a whole safetensors file")
    empty = tmp_path / "empty_run"
    empty.mkdir()
    cases["empty folder"] = (empty, "no checkpoint.safetensors (a train run) nor")

    weights = _bundle(world, tmp_path, "b_weights")
    (weights / "model.safetensors").write_bytes(
        (weights / "model.safetensors").read_bytes()[:-100])  # fmt: skip
    cases["bundle truncated"] = (weights, "sha256 differs): damaged or replaced")
    other_set = _bundle(world, tmp_path, "b_concepts")
    concepts = json.loads((other_set / "concepts.json").read_text())
    concepts["concepts"][0] = "not the same concept"
    (other_set / "concepts.json").write_text(json.dumps(concepts))
    cases["bundle concept set"] = (other_set, "another concept set than the one this model")
    version = _bundle(world, tmp_path, "b_version")
    _edit_json(version / "config.json", format="geoconcept-model/2")
    cases["bundle version"] = (version, "model format geoconcept-model/2, but this geoconcept")
    backbone = _bundle(world, tmp_path, "b_backbone")
    _edit_json(backbone / "config.json", clip={"model": "ViT-B-32", "pretrained": "openai"})
    cases["bundle backbone"] = (
        backbone,
        "was trained on features of CLIP ViT-B-32 (openai), "
        "not tiny-clip-768 (none); pass --clip-model ViT-B-32",
    )
    typed = _bundle(world, tmp_path, "b_types")
    _edit_json(typed / "config.json", total_steps="x", features=[1])
    cases["bundle field types"] = (typed, "damaged checkpoint (kind, weights, config, steps")
    no_json = _bundle(world, tmp_path, "b_json")
    (no_json / "config.json").write_text("{cut")
    cases["bundle config"] = (no_json, "config.json: not valid JSON")

    for name, (path, message) in cases.items():
        res = runner.invoke(
            app,
            [
                "explain",
                str(photo),
                "--checkpoint",
                str(path),
                "--clip-model",
                tiny_clip,
                "--clip-pretrained",
                "none",
            ],
        )
        line = one_line_error(res)
        assert message in line, (name, line)


def test_a_legacy_pickle_checkpoint_loads_safely_and_resume_converts_it(world, tmp_path):
    """Runs written before safetensors (a torch pickle of tensors and plain containers) keep
    working through the weights-only unpickler, and --resume rewrites them."""
    cfg = replace(world["cfg"], out=str(tmp_path / "old"), max_steps=6, save_every=3)

    def crash_at_4(step, total, last):
        if step == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_training(cfg, progress=crash_at_4)
    new = read_checkpoint(cfg.checkpoint_path())
    torch.save({**new, "format": LEGACY_FORMAT}, tmp_path / "old" / "checkpoint.pt")
    cfg.checkpoint_path().unlink()

    legacy_head, legacy = load_head(tmp_path / "old")
    assert legacy["step"] == 3
    for k, v in legacy_head.state_dict().items():
        torch.testing.assert_close(v, new["model"][k], rtol=0, atol=0)
    with pytest.raises(GeoconceptError, match="--resume"):
        train(cfg)
    (tmp_path / "old" / "calibration.json").write_text("{}")  # for the weights at step 3
    with pytest.warns(UserWarning, match="calibration.json: it was made for the weights before"):
        train(cfg, resume=True)
    assert not (tmp_path / "old" / "checkpoint.pt").exists()
    assert not (tmp_path / "old" / "calibration.json").exists()
    ref = replace(cfg, out=str(tmp_path / "ref"))
    train(ref)
    a, b = read_checkpoint(ref.checkpoint_path()), read_checkpoint(cfg.checkpoint_path())
    assert b["step"] == 6
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=1e-6, msg=k)


def test_a_checkpoint_without_training_state_cannot_be_resumed(world, tmp_path):
    cfg = replace(world["cfg"], out=str(tmp_path / "run"), max_steps=8)
    (tmp_path / "run").mkdir()
    ckpt = read_checkpoint(world["run"] / "checkpoint.safetensors")
    write_checkpoint(cfg.checkpoint_path(), {k: v for k, v in ckpt.items() if k != "optimizer"})
    with pytest.raises(GeoconceptError, match="no optimizer state to resume from"):
        train(cfg, resume=True)
