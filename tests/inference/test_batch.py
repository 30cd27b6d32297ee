"""Batch prediction from feature folders: exact against `predict`, resumable, split by rank."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import one_line_error
from slurm import srun
from typer.testing import CliRunner

from geoconcept_cli.cli.app import app
from geoconcept_cli.data.features import save_features, write_shard
from geoconcept_cli.gallery.store import load_gallery
from geoconcept_cli.geo.distance import haversine_km
from geoconcept_cli.inference.batch.predict import predict_features
from geoconcept_cli.inference.batch.results import part_path
from geoconcept_cli.inference.factory import load_explainer, load_predictor
from geoconcept_cli.inference.predictor import Predictor
from geoconcept_cli.inference.request import Request
from geoconcept_cli.inference.scorer import PlaceScorer
from geoconcept_cli.inference.sites import MERGE_KM
from geoconcept_cli.model.clip_id import ClipId
from geoconcept_cli.model.spec import ModelSpec, StoredFeatures

runner = CliRunner()


@pytest.fixture(scope="module")
def predictor():
    # stored features of GeoCLIP's CLIP: no CLIP weights needed
    return load_predictor(ModelSpec(features=StoredFeatures(ClipId("ViT-L-14", "openai"), 768)))


@pytest.fixture(scope="module")
def feats(tmp_path_factory):
    """120 random 768-d features in 3 shards, located at real gallery points."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(120, 768, generator=gen)
    gps = load_gallery()
    latlon = gps[torch.randint(len(gps), (120,), generator=gen)]
    folder = tmp_path_factory.mktemp("feats") / "test"
    ids = [f"photo-{i}" for i in range(120)]
    save_features(folder, ids, x, latlon, shard_size=40, clip_model="ViT-L-14",
                  clip_pretrained="openai")  # fmt: skip
    return folder, ids, x, latlon


def test_scoring_places_once_gives_predicts_probabilities(predictor):
    x = torch.randn(1100, 768, generator=torch.Generator().manual_seed(1))  # 2 query blocks
    probs, rows = PlaceScorer(predictor).topk(x, 10)
    want_probs, want_rows = predictor.topk(x, 10)
    # predict's softmax sums 100K float32 terms; this one sums in float64: 1e-5 apart
    assert torch.allclose(probs, want_probs, rtol=1e-4, atol=0)
    # blocked products round differently, so near-ties may swap: each row still holds
    # predict's probability at its rank
    got = predictor.probabilities(x).gather(1, rows)
    assert torch.allclose(got, want_probs, rtol=1e-5, atol=0)
    assert (rows == want_rows).float().mean() > 0.99
    # the gallery does repeat places, so the multiplicities were needed
    assert len(predictor.places) < len(predictor.gallery_gps)
    assert int(predictor.place_copies.sum()) == len(predictor.gallery_gps)


@pytest.mark.parametrize("k", [200, 1500])  # explain's deep runner-up pool; over a block
def test_a_deep_top_k_matches_predict(predictor, k):
    """Past the first span only logits above a row's k-th best are offered and merged."""
    x = torch.randn(64, 768, generator=torch.Generator().manual_seed(2))
    probs, rows = PlaceScorer(predictor).topk(x, k)
    want_probs, want_rows = predictor.topk(x, k)
    assert torch.allclose(probs, want_probs, rtol=1e-4, atol=0)
    assert all(len(set(r)) == k for r in rows.tolist())  # distinct places
    # all but the last few (where near-ties may cross the cut) are among predict's top-k
    assert all(set(got[: k - 10]) <= set(want) for got, want in
               zip(rows.tolist(), want_rows.tolist(), strict=True))  # fmt: skip
    assert (rows == want_rows).float().mean() > 0.99  # near-ties may swap


def test_a_gallery_in_rising_order_keeps_merges_narrow(predictor):
    """A photo whose logits rise along the gallery offers every logit of every block, while
    the others, whose best places come first, offer none: the merges must still stay under
    two blocks wide (they once grew with the gallery, to 32K columns at 1,024 photos). The
    gallery runs well past the first, WARM x k wide span, which holds no merge."""
    gen = torch.Generator().manual_seed(3)
    emb = torch.nn.functional.normalize(torch.randn(40_000, 512, generator=gen), dim=1)
    rising = torch.nn.functional.normalize(torch.randn(512, generator=gen), dim=0)
    emb = emb[(emb @ rising).argsort()]
    gps = torch.rand(40_000, 2, generator=gen) * torch.tensor([170.0, 350.0]) - torch.tensor(
        [85.0, 175.0]
    )
    scorer = PlaceScorer(Predictor(predictor.head, gps, emb))
    widths = []
    merge = scorer._merge
    scorer._merge = lambda b, i, v, c, k: widths.append(v.shape[1]) or merge(b, i, v, c, k)
    q = torch.stack([rising] + [-rising] * (PlaceScorer.BLOCK - 1))  # in embedding space
    probs, cols = scorer._block_rows(q, 200)
    z = (q[:2] * scorer.logit_scale) @ scorer.emb.T  # the scorer's rounding
    want = z.topk(200, dim=1)
    lse = torch.logsumexp(z.double() + scorer.log_count.double(), dim=1)
    assert torch.equal(cols[:2], want.indices)
    assert torch.allclose(probs[:2].double(), (want.values.double() - lse[:, None]).exp(),
                          rtol=1e-4)  # fmt: skip
    blocks = (40_000 - PlaceScorer.WARM * 200) // PlaceScorer.BLOCK  # after the first span
    assert max(widths) < 2 * PlaceScorer.BLOCK and len(widths) > blocks, widths


def test_cli_predicts_a_feature_folder_into_parquet_parts(tmp_path, feats, predictor):
    folder, ids, x, latlon = feats
    out = tmp_path / "results.parquet"
    res = runner.invoke(app, ["predict", str(folder), "--out", str(out), "--top-k", "3"])
    assert res.exit_code == 0, res.output
    assert "120 photos predicted" in res.output
    assert "predicting: 120/120 (100%)" in res.output  # progress counts the photos there are
    assert sorted(p.name for p in out.iterdir()) == [
        "_geoconcept.json",
        "part-00000.parquet",
        "part-00001.parquet",
        "part-00002.parquet",
    ]
    table = pd.read_parquet(out)
    assert table["id"].tolist() == ids
    ranked = predictor.ranked(x, 3, MERGE_KM)  # as `predict` lists them, one photo at a time
    probs, top = ranked.probs, predictor.gallery_gps[ranked.rows]
    assert np.allclose(table["lat"], top[:, 0, 0]) and np.allclose(table["lon"], top[:, 0, 1])
    assert np.allclose(table["prob"], probs[:, 0], rtol=1e-4)
    assert np.allclose(np.stack(table["top_prob"]), probs, rtol=1e-4)
    assert np.stack(table["top_lat"]).shape == (120, 3)
    assert (np.stack(table["top_points"]) == ranked.points.numpy()).all()
    assert (ranked.points > 1).any()  # random features: dense towns' points are merged
    res = runner.invoke(app, ["predict", str(folder), "--out", str(tmp_path / "points"),
                              "--top-k", "3", "--merge-km", "0"])  # fmt: skip
    assert res.exit_code == 0, res.output
    points = pd.read_parquet(tmp_path / "points")
    probs, rows = predictor.topk(x, 3)  # every gallery point its own candidate
    assert np.allclose(np.stack(points["top_prob"]), probs, rtol=1e-4)
    assert np.allclose(np.stack(points["top_lat"]), predictor.gallery_gps[rows][..., 0])
    err = haversine_km(latlon[:, 0], latlon[:, 1], table["lat"], table["lon"])
    assert np.allclose(table["error_km"], err)
    assert table["country"].str.fullmatch(r"[A-Z]{2}|").all()

    # a rerun writes only what is missing
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*")}
    part_path(out, 1).unlink()
    res = runner.invoke(app, ["predict", str(folder), "--out", str(out), "--top-k", "3"])
    assert res.exit_code == 0, res.output
    assert out.joinpath("part-00000.parquet").stat().st_mtime_ns == stamps["part-00000.parquet"]
    assert pd.read_parquet(out).equals(table)
    assert "120 photos predicted" in res.output
    res = runner.invoke(app, ["predict", str(folder), "--out", str(out), "--top-k", "3"])
    assert res.exit_code == 0, res.output  # and it says it did nothing, not that it predicted
    assert f"{out} is complete: 120 photos; nothing to predict (median error" in res.stdout

    # other options would mix parts of two predictions: refused
    res = runner.invoke(app, ["predict", str(folder), "--out", str(out), "--top-k", "5"])
    assert res.exit_code == 2 and "another top_k" in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_ranks_split_the_shards_and_together_write_the_single_run(tmp_path, feats, predictor):
    folder, *_ = feats
    single, split = tmp_path / "single", tmp_path / "split"
    predict_features(predictor, folder, single, Request(top_k=2))
    # rank 0 writes the meta
    predict_features(predictor, folder, split, Request(top_k=2), rank=0, world_size=2)
    assert sorted(p.name for p in split.glob("part-*")) == ["part-00000.parquet",
                                                            "part-00002.parquet"]  # fmt: skip
    predict_features(predictor, folder, split, Request(top_k=2), rank=1, world_size=2)
    assert pd.read_parquet(split).equals(pd.read_parquet(single))


@pytest.mark.distributed
def test_slurm_ranks_all_refuse_an_out_made_otherwise(tmp_path, feats, predictor):
    """Every rank refuses an --out made with other options in one line. Before, rank 0 alone
    refused, and rank 1 at the barrier got a gloo traceback (on NCCL: a wait until the
    group's timeout)."""
    folder, *_ = feats
    out = tmp_path / "out"
    predict_features(predictor, folder, out, Request(top_k=5))
    for code, err in srun(["predict", str(folder), "--out", str(out), "--top-k", "3"]):
        assert code == 2 and "another top_k" in err, err[-3000:]
        assert len(err.strip().splitlines()) == 1, err[-3000:]


@pytest.mark.distributed
def test_slurm_ranks_all_stop_when_one_fails_to_write_its_parts(tmp_path, feats, predictor):
    """Rank 0 cannot write part 2 (a folder holds its name), so it fails; rank 1 writes part
    1 and then stops too, in one line, where before it got a gloo traceback at the last
    barrier (on NCCL: a wait until the group's timeout)."""
    folder, ids, *_ = feats
    out = tmp_path / "out"
    predict_features(predictor, folder, out)
    for s in (1, 2):
        part_path(out, s).unlink()
    part_path(out, 2).mkdir()
    (code0, err0), (code1, err1) = srun(["predict", str(folder), "--out", str(out)])
    assert code0 == 2 and "part-00002.parquet: is a folder" in err0, err0[-3000:]
    assert len(err0.strip().splitlines()) == 1, err0[-3000:]
    assert code1 == 2 and err1.strip() == ("error: another rank failed while writing parts; "
                                           "its error is in its output"), err1[-3000:]  # fmt: skip
    assert pd.read_parquet(part_path(out, 1))["id"].tolist() == ids[40:80]


def emptied_first_shard(folder, feats: torch.Tensor, latlon: torch.Tensor, **meta) -> list[str]:
    """A feature folder of two shards whose first lost every photo (as embed-images leaves
    one whose images all failed to decode); the ids that are left."""
    ids = [f"photo-{i}" for i in range(len(feats))]
    save_features(folder, ids, feats, latlon, shard_size=len(feats) // 2, **meta)
    write_shard(folder, 0, [], feats[:0], latlon[:0])
    return ids[len(feats) // 2 :]


def test_a_shard_with_no_photo_left_gives_an_empty_part(tmp_path, feats, predictor):
    """Every part has the one schema, so a folder whose first part is empty still reads as
    one table (its columns would otherwise be null, and the next part's not castable)."""
    folder = tmp_path / "feats"
    save_features(folder, [], torch.zeros(0, 768), torch.zeros(0, 2), clip_model="ViT-L-14",
                  clip_pretrained="openai")  # fmt: skip
    predict_features(predictor, folder, tmp_path / "out")
    assert pd.read_parquet(tmp_path / "out").empty
    _, _, x, latlon = feats
    left = emptied_first_shard(tmp_path / "gappy", x[:6], latlon[:6], clip_model="ViT-L-14",
                               clip_pretrained="openai")  # fmt: skip
    predict_features(predictor, tmp_path / "gappy", tmp_path / "gappy-out", Request(top_k=2))
    table = pd.read_parquet(tmp_path / "gappy-out")
    assert table["id"].tolist() == left and np.stack(table["top_prob"]).shape == (3, 2)


def test_zero_shot_explain_of_stored_features_finds_their_clips_cached_concepts(
    tmp_path, tiny_clip, small_gallery
):
    """A user who explained a photo zero-shot has the concepts embedded by that CLIP in the
    cache; explaining that CLIP's stored features then uses them, where it used to refuse
    and ask for --concept-embeddings (embed-concepts: minutes of ViT-L/14 on a CPU)."""
    from PIL import Image

    from geoconcept_cli.concepts.set import ConceptSet, default_concepts_path
    from geoconcept_cli.inference.factory import concept_cache_path

    clip = ClipId.of(tiny_clip, "none")
    ids = [f"photo-{i}" for i in range(8)]
    gen = torch.Generator().manual_seed(0)
    folder = tmp_path / "feats"  # as embed-images with that CLIP records it
    save_features(folder, ids, torch.randn(8, 768, generator=gen), load_gallery(small_gallery)[:8],
                  **clip.as_meta())  # fmt: skip
    cache = tmp_path / "cache"
    common = ["--gallery", str(small_gallery), "--cache-dir", str(cache)]
    args = ["explain", str(folder), "--out", str(tmp_path / "zs.parquet"), *common]
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and "explain one photo zero-shot with that CLIP first" in res.stderr
    photo = tmp_path / "photo.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(photo)
    res = runner.invoke(app, ["explain", str(photo), "--clip-model", tiny_clip,
                              "--clip-pretrained", "none", *common])  # fmt: skip
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    table = pd.read_parquet(tmp_path / "zs.parquet")
    assert table["image"].tolist() == ids and (table["mode"] == "zero-shot").all()
    names = ConceptSet.from_parquet(default_concepts_path()).names
    named = ["explain", str(folder), "--out", str(tmp_path / "named.parquet"), *common,
             "--concept-embeddings", str(concept_cache_path(clip, names, cache))]  # fmt: skip
    assert runner.invoke(app, named).exit_code == 0
    assert pd.read_parquet(tmp_path / "named.parquet").equals(table)


def test_cli_batch_mode_refuses_bad_input_in_one_line(tmp_path, feats):
    folder, *_ = feats
    narrow = tmp_path / "narrow"  # ViT-B/32 width: GeoCLIP's MLP takes 768
    save_features(narrow, ["a"], torch.zeros(1, 512), torch.zeros(1, 2), clip_model="ViT-B-32",
                  clip_pretrained="openai")  # fmt: skip
    cases = [
        (["predict", str(folder)], "needs --out"),
        (["predict", str(tmp_path), "--out", str(tmp_path / "o")], "no photos in it, and no "),
        (["explain", str(tmp_path), "--out", str(tmp_path / "o")], "no photos in it, and no "),
        (["predict", str(folder), "--out", str(tmp_path / "o"), "--json"], "--json: single"),
        (["predict", str(narrow), "--out", str(tmp_path / "n")], "768"),
    ]
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    cases.append((["predict", str(folder), "--out", str(tmp_path / "busy")], "other files"))
    for args, message in cases:
        res = runner.invoke(app, args)
        assert res.exit_code == 2 and message in res.output, (args, res.output)
        assert len(res.output.strip().splitlines()) == 1


def test_cli_explains_a_feature_folder_into_parts_without_clip(tmp_path):
    """explain FEATS --out: every photo of an embed-images folder, from its features, with
    the rows `explain` gives each (no CLIP weights: the tiny CLIP here was never built), into
    parts as batch predict writes them: resumable, refusing other options, split by rank."""
    from synthetic import tiny_trained_world

    from geoconcept_cli.data.features import load_features
    from geoconcept_cli.inference.batch.explain import explain_feature_folder
    from geoconcept_cli.inference.batch.rows import explanation_row

    world = tiny_trained_world(tmp_path)
    test = load_features(world["test"])
    folder = tmp_path / "shards"  # the test photos again, in 3 shards
    save_features(folder, test.ids, test.features, test.latlon, shard_size=16,
                  clip_model="tiny-clip-768", clip_pretrained="none")  # fmt: skip
    out = tmp_path / "explained.parquet"
    args = ["explain", str(folder), "--checkpoint", str(world["run"]), "--gallery",
            str(world["gallery"]), "--out", str(out), "--top-k", "3"]  # fmt: skip
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert f"{len(test.ids)} photos explained from their features" in res.stdout
    assert f"explaining: {len(test.ids)}/{len(test.ids)} (100%)" in res.output
    assert "encoding gallery (once; cached)" in res.output  # a new head's gallery, on rank 0
    assert "has random weights" not in res.stderr  # no CLIP was built (load_clip says it)
    assert "these features were made by CLIP tiny-clip-768 with random weights" in res.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "_geoconcept.json",
        "part-00000.parquet",
        "part-00001.parquet",
        "part-00002.parquet",
    ]
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert f"{out} is complete: {len(test.ids)} photos; nothing to explain" in again.stdout
    meta = json.loads((out / "_geoconcept.json").read_text())
    assert meta["format"] == "geoconcept-explanations/1" and meta["concepts_shown"] == 8
    assert meta["mode"] == "concept-aware checkpoint" and meta["top_k"] == 3
    table = pd.read_parquet(out)
    assert table["image"].tolist() == test.ids
    stored = StoredFeatures(ClipId("tiny-clip-768", "none"), 768)
    explainer = load_explainer(ModelSpec(checkpoint=world["run"], gallery=world["gallery"],
                                         features=stored))  # fmt: skip
    for i in (0, 17, len(test.ids) - 1):
        exp = explainer.explain_features(test.features[i : i + 1], Request(top_k=3))
        want = explanation_row(exp, test.ids[i])
        row = table.iloc[i]
        assert (row["lat"], row["lon"], row["place"]) == (want["lat"], want["lon"], want["place"])
        # ranked a shard at a time as batch predict ranks (its softmax sums in float64)
        assert row["prob"] == pytest.approx(want["prob"], rel=1e-4)
        assert list(row["why_here"]) == want["why_here"] and row["rule"] == want["rule"]
        assert list(row["photo_concepts"]) == [e["concept"] for e in exp.photo_concepts or []]

    # a rerun writes only what is missing
    stamp = part_path(out, 0).stat().st_mtime_ns
    part_path(out, 1).unlink()
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "encoding gallery" not in res.output  # cached
    assert part_path(out, 0).stat().st_mtime_ns == stamp
    assert pd.read_parquet(out).equals(table)
    # other options would mix parts of two runs: refused in one line
    res = runner.invoke(app, [*args, "--concepts-shown", "4"])
    assert "another concepts_shown" in one_line_error(res)

    # two ranks together write the single run
    split = tmp_path / "split"
    explain_feature_folder(explainer, folder, split, Request(top_k=3), rank=0, world_size=2)
    assert sorted(p.name for p in split.glob("part-*")) == ["part-00000.parquet",
                                                            "part-00002.parquet"]  # fmt: skip
    explain_feature_folder(explainer, folder, split, Request(top_k=3), rank=1, world_size=2)
    assert pd.read_parquet(split).equals(table)

    # a first part with no photo keeps the schema of the others
    gappy = tmp_path / "gappy"
    left = emptied_first_shard(gappy, test.features[:8], test.latlon[:8],
                               clip_model="tiny-clip-768", clip_pretrained="none")  # fmt: skip
    explain_feature_folder(explainer, gappy, tmp_path / "gappy-out", Request(top_k=3))
    assert pd.read_parquet(tmp_path / "gappy-out")["image"].tolist() == left

    # zero-shot needs concept embeddings of the features' CLIP: it cannot embed the concepts,
    # and none of this CLIP's are cached
    res = runner.invoke(app, [*args[:2], "--gallery", str(world["gallery"]), "--out",
                              str(tmp_path / "zs.parquet")])  # fmt: skip
    assert res.exit_code == 2 and "needs the concepts embedded by their CLIP" in res.stderr
    assert not (tmp_path / "zs.parquet").exists()
    (tmp_path / "photos.csv").write_text("image\na.jpg\n")  # a manifest of photos
    res = runner.invoke(app, ["explain", str(tmp_path / "photos.csv"), "--out",
                              str(tmp_path / "x.parquet"), "--gpus", "2"])  # fmt: skip
    assert res.exit_code == 2 and "--gpus is for an embed-images feature folder" in res.stderr
