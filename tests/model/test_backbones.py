"""Any open_clip backbone: a tiny 512-d config embeds, trains (with and without concepts),
evaluates, explains and exports through the CLI; other backbones' artifacts are refused."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TESTS, one_line_error
from PIL import Image
from synthetic import make_world
from typer.testing import CliRunner

from geoconcept_cli.cli.app import app
from geoconcept_cli.data.features import load_features, save_features
from geoconcept_cli.errors import GeoconceptError
from geoconcept_cli.evaluation.scores import evaluate, evaluate_models
from geoconcept_cli.inference.factory import load_explainer, load_heads
from geoconcept_cli.inference.request import Request
from geoconcept_cli.model.checkpoints import read_checkpoint, read_model, write_checkpoint
from geoconcept_cli.model.clip_id import ClipId
from geoconcept_cli.model.concept_head import build_head
from geoconcept_cli.model.geoclip import load_geoclip_head
from geoconcept_cli.model.spec import ModelSpec, StoredFeatures
from geoconcept_cli.serving.service import GeoService, Photo
from geoconcept_cli.training.config import TrainConfig
from geoconcept_cli.training.loop import train

runner = CliRunner()
TINY_512 = str(TESTS / "data" / "tiny-clip-512.json")
CLIP_512 = ["--clip-model", TINY_512, "--clip-pretrained", "none"]
TRAIN = ["--batch-size", "8", "--max-steps", "3", "--warmup-steps", "1", "--queue-size", "8",
         "--lr", "1e-3"]  # fmt: skip
TRAIN_FIRST = "train a run on these features first"


def _ok(args: list[str]):
    res = runner.invoke(app, args)
    assert res.exit_code == 0, (args, res.output)
    return res


def _one_line_error(args: list[str]) -> str:
    return one_line_error(runner.invoke(app, args))


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, small_gallery) -> dict[str, Path]:
    """16 generated photos embedded by the 512-d CLIP, its concept basis, and two runs on them:
    concept-aware and plain GeoCLIP (--concepts none), all made through the CLI."""
    root = tmp_path_factory.mktemp("backbone512")
    rng = np.random.default_rng(0)
    gallery = pd.read_csv(small_gallery)
    rows = []
    for i in range(16):
        name = f"p{i}.jpg"
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(root / name)
        rows.append((name, gallery["lat"][i * 7], gallery["lon"][i * 7]))
    pd.DataFrame(rows, columns=["IMG_ID", "LAT", "LON"]).to_csv(root / "m.csv", index=False)
    paths = {"root": root, "photo": root / "p0.jpg", "feats": root / "feats",
             "basis": root / "basis.safetensors", "run": root / "run", "plain": root / "plain",
             "gallery": small_gallery}  # fmt: skip
    _ok(["embed-images", str(root / "m.csv"), "--out", str(paths["feats"]), "--workers", "0",
         "--batch-size", "8", *CLIP_512])  # fmt: skip
    _ok(["embed-concepts", "--out", str(paths["basis"]), *CLIP_512])
    _ok(["train", str(paths["feats"]), "--out", str(paths["run"]), "--concepts",
         str(paths["basis"]), *TRAIN])  # fmt: skip
    _ok(["train", str(paths["feats"]), "--out", str(paths["plain"]), "--concepts", "none",
         *TRAIN])  # fmt: skip
    return paths


def test_features_basis_and_checkpoints_record_the_backbone(pipeline):
    data = load_features(pipeline["feats"])
    assert data.features.shape == (16, 512) and data.meta["clip_model"] == "tiny-clip-512"
    basis = read_model(pipeline["run"])["model"]["concept_embeddings"]
    assert basis.shape[1] == 512 and len(basis) >= 500  # the 512-d text tower embedded them
    fresh = {"width": 512, "init": "fresh"}
    for run, kind in ((pipeline["run"], "concept"), (pipeline["plain"], "geoclip")):
        ckpt = read_model(run)
        assert ckpt["kind"] == kind and ckpt["image_mlp"] == fresh
        assert ckpt["clip"]["model"] == "tiny-clip-512" and ckpt["clip"]["pretrained"] == "none"
        assert ckpt["model"]["image_mlp.0.weight"].shape == (768, 512)
        assert ckpt["model"]["image_mlp.2.weight"].shape == (512, 768)


def test_the_fresh_mlp_is_seeded_and_trained_and_the_location_encoder_pretrained(pipeline):
    torch.manual_seed(0)  # what train did before building the head (--seed 0)
    start = build_head(None, 512)
    torch.manual_seed(0)
    again = build_head(None, 512)
    torch.manual_seed(1)
    other = build_head(None, 512)
    mlp = {k: v for k, v in start.state_dict().items() if k.startswith("image_mlp.")}
    for k, v in mlp.items():
        torch.testing.assert_close(again.state_dict()[k], v, rtol=0, atol=0)
        assert not torch.equal(other.state_dict()[k], v)
    geoclip = load_geoclip_head().state_dict()
    for k, v in start.state_dict().items():
        if k.startswith("location_encoder.") or k == "logit_scale":
            torch.testing.assert_close(v, geoclip[k], rtol=0, atol=0)
    trained = read_model(pipeline["plain"])["model"]
    moved = [float((trained[k] - v).abs().max()) for k, v in mlp.items()]
    assert min(moved) > 0  # every MLP tensor is in the optimizer and took steps
    assert max(moved) < 0.1  # ... from the seeded start, 3 steps at lr 1e-3


def test_evaluate_explain_predict_serve_atlas_and_export_accept_such_runs(pipeline, tmp_path):
    feats, run, plain, gallery = (str(pipeline[k]) for k in ("feats", "run", "plain", "gallery"))
    out = tmp_path / "eval.json"
    res = _ok(["evaluate", feats, run, plain, "--gallery", gallery, "--json-out", str(out)])
    assert "GeoCLIP (pretrained) left out: its image MLP takes 768-d" in res.stderr
    models = json.loads(out.read_text())["models"]
    assert set(models) == {run, plain} and all(m["n"] == 16 for m in models.values())

    photo = str(pipeline["photo"])
    res = _ok(["explain", photo, "--checkpoint", run, "--json", "--gallery", gallery, *CLIP_512])
    exp = json.loads(res.stdout)
    assert exp["mode"] == "concept-aware checkpoint"
    terms = sum(e["weight"] for e in exp["why_here"])
    assert 0 < terms <= exp["score_logit"] + 1e-4  # the shown concepts' share of the score
    res = _ok(["explain", photo, "--checkpoint", plain, "--json", "--gallery", gallery,
               "--concept-embeddings", str(pipeline["basis"]), *CLIP_512])  # fmt: skip
    exp = json.loads(res.stdout)
    assert exp["mode"] == "GeoCLIP checkpoint, zero-shot concepts" and exp["photo_concepts"]
    res = _ok(["predict", photo, "--checkpoint", plain, "--json", "--gallery", gallery,
               *CLIP_512])  # fmt: skip
    assert len(json.loads(res.stdout)["predictions"]) == 5
    service = GeoService(
        load_explainer(
            ModelSpec(checkpoint=run, clip_model=TINY_512, clip_pretrained="none", gallery=gallery)
        )
    )
    answer = service.explain(Photo(pipeline["photo"].read_bytes(), "p0.jpg"), Request(top_k=3))
    assert answer["mode"] == "concept-aware checkpoint" and len(answer["predictions"]) == 3
    assert service.where("a harbour at dawn")["mode"] == "projected onto the concept basis"
    _ok(["atlas", "--checkpoint", run, "--out", str(tmp_path / "atlas"), "--gallery", gallery])
    grounding = pd.read_csv(tmp_path / "atlas" / "grounding.csv")
    assert list(grounding["concept"]) == read_model(run)["concepts"]["concepts"]

    _ok(["predict", feats, "--checkpoint", run, "--out", str(tmp_path / "res"), "--gallery",
         gallery])  # fmt: skip
    assert len(pd.read_parquet(tmp_path / "res")) == 16

    bundle = tmp_path / "bundle"
    _ok(["export", run, "--out", str(bundle), "--eval", str(out)])
    config = json.loads((bundle / "config.json").read_text())
    assert config["image_mlp"] == {"width": 512, "init": "fresh"}
    assert "a fresh, seeded one of GeoCLIP's shape" in (bundle / "README.md").read_text()
    again = tmp_path / "again.json"
    _ok(["evaluate", feats, str(bundle), "--gallery", gallery, "--json-out", str(again)])
    assert json.loads(again.read_text())["models"][str(bundle)] == models[run]


def test_pretrained_geoclip_refuses_another_width_in_one_line(pipeline, tmp_path):
    photo, feats = str(pipeline["photo"]), str(pipeline["feats"])
    gallery = ["--gallery", str(pipeline["gallery"])]
    for args in (
        ["predict", photo, *CLIP_512, *gallery],
        ["explain", photo, *CLIP_512, *gallery],
        ["where", "rice terraces", *CLIP_512, *gallery],
        ["evaluate", feats, *gallery],
        ["predict", feats, "--out", str(tmp_path / "o"), *gallery],
    ):
        line = _one_line_error(args)
        assert "512-d image features, but pretrained GeoCLIP's image MLP takes 768-d" in line
        assert TRAIN_FIRST in line, args
    assert not (tmp_path / "o").exists()


def test_artifacts_of_different_backbones_are_refused_together(pipeline, tmp_path):
    run, gallery = str(pipeline["run"]), str(pipeline["gallery"])
    wide = tmp_path / "wide"  # 768-d features of the other tiny CLIP
    save_features(wide, [f"w{i}" for i in range(8)], torch.randn(8, 768), torch.zeros(8, 2),
                  clip_model="tiny-clip-768", clip_pretrained="none")  # fmt: skip
    line = _one_line_error(["evaluate", str(wide), run, "--gallery", gallery])
    assert "was trained on features of CLIP tiny-clip-512 (none), not tiny-clip-768" in line
    line = _one_line_error(["predict", str(wide), "--checkpoint", run, "--out",
                            str(tmp_path / "o"), "--gallery", gallery])  # fmt: skip
    assert "tiny-clip-512" in line
    tiny_768 = str(Path(TINY_512).with_name("tiny-clip-768.json"))
    line = _one_line_error(["explain", str(pipeline["photo"]), "--checkpoint", run,
                            "--clip-model", tiny_768, "--clip-pretrained", "none"])  # fmt: skip
    assert "pass --clip-model <your tiny-clip-512.json config>" in line
    line = _one_line_error(["train", str(wide), "--out", str(tmp_path / "r"), "--concepts",
                            str(pipeline["basis"]), *TRAIN])  # fmt: skip
    assert "was made with CLIP tiny-clip-512 (none), not tiny-clip-768 (none)" in line

    # artifacts that do not record their CLIP are still told apart by their width
    blind = tmp_path / "blind"
    save_features(blind, [f"b{i}" for i in range(8)], torch.randn(8, 768), torch.zeros(8, 2))
    cfg = TrainConfig(features=str(blind), out=str(tmp_path / "b"),
                      concepts=str(pipeline["basis"]), batch_size=8)  # fmt: skip
    with pytest.raises(GeoconceptError, match="512-d concept embeddings, but .* holds 768-d"):
        train(cfg)
    heads = load_heads([ModelSpec(checkpoint=pipeline["plain"])],
                       StoredFeatures(ClipId(None, None), 768))  # fmt: skip
    feats, truth, where = torch.randn(4, 768), torch.zeros(4, 2), ModelSpec(gallery=gallery)
    with pytest.raises(GeoconceptError, match="takes 512-d image features, not 768-d ones"):
        evaluate_models(heads, feats, truth, where)


def test_a_checkpoint_whose_image_mlp_record_lies_is_refused(pipeline, tmp_path):
    ckpt = read_checkpoint(pipeline["plain"] / "checkpoint.safetensors")
    for record in ({"width": 512, "init": "geoclip"}, {"width": "512", "init": "fresh"}):
        write_checkpoint(tmp_path / "c.safetensors", {**ckpt, "image_mlp": record})
        with pytest.raises(GeoconceptError, match="damaged checkpoint"):
            read_model(tmp_path / "c.safetensors")
    write_checkpoint(
        tmp_path / "c.safetensors", {**ckpt, "image_mlp": {"width": 768, "init": "geoclip"}}
    )
    line = _one_line_error(["evaluate", str(pipeline["feats"]), str(tmp_path / "c.safetensors"),
                            "--gallery", str(pipeline["gallery"])])  # fmt: skip
    assert "weights that do not fit a GeoCLIP head" in line and "(768, 512)" in line


def test_another_768_d_backbone_is_named_when_pretrained_geoclip_reads_it(tmp_path, small_gallery):
    feats = tmp_path / "siglip"  # ViT-B-16-SigLIP's width is ViT-L/14's, its space is not
    save_features(feats, [f"s{i}" for i in range(8)], torch.randn(8, 768), torch.zeros(8, 2),
                  clip_model="ViT-B-16-SigLIP", clip_pretrained="webli")  # fmt: skip
    res = _ok(["evaluate", str(feats), "--gallery", str(small_gallery)])
    assert "ViT-B-16-SigLIP (webli) have their width but lie in another space" in res.stderr


def test_a_planted_512_d_world_is_learned_with_and_without_concepts(tmp_path):
    world = make_world(tmp_path, n_regions=6, per_region=32, dim=512, clip_model="tiny-clip-512")
    base = dict(features=str(world["train"]), epochs=2, batch_size=32, lr=3e-3, warmup_steps=3,
                queue_size=32)  # fmt: skip
    runs = {name: tmp_path / name for name in ("concepts", "plain")}
    train(TrainConfig(out=str(runs["concepts"]), concepts=str(world["concepts"]), **base))
    train(TrainConfig(out=str(runs["plain"]), concepts=None, **base))
    runs_to_score = [ModelSpec(checkpoint=run, gallery=world["gallery"]) for run in runs.values()]
    scores = evaluate(world["test"], runs_to_score).summary["models"]
    chance = 100 * len(world["centers"]) / (len(world["centers"]) + 300)
    for name, run in runs.items():
        acc = scores[str(run)]["25km"]
        assert acc > 5 * chance, (name, acc, chance)


def test_a_local_vit_l14_file_is_warned_about_with_an_if():
    """Offline, OpenAI's own ViT-L/14 weights come as a local file, which cannot be told from
    other weights of that architecture: the warning says "if", not that they are foreign."""
    from geoconcept_cli.model.clip_id import ClipId
    from geoconcept_cli.model.geoclip import ForeignBackboneWarning, warn_unless_geoclip_clip

    with pytest.warns(ForeignBackboneWarning, match=r"if /w/ViT-L-14\.pt holds other weights "
                      r"than OpenAI's \(which cannot be told from the file\)"):  # fmt: skip
        warn_unless_geoclip_clip(ClipId("ViT-L-14", "/w/ViT-L-14.pt"))
    with pytest.warns(ForeignBackboneWarning, match=r"those of ViT-L-14 \(laion2b_s32b_b82k\) "
                      "have their width but lie in another space"):  # fmt: skip
        warn_unless_geoclip_clip(ClipId("ViT-L-14", "laion2b_s32b_b82k"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_unless_geoclip_clip(ClipId("ViT-L-14", "openai"))
