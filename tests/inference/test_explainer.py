"""`explain`: exact score decomposition, faithfulness check, zero-shot mode, batch, CLI."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import assert_close_json, shared_data, tiny_spec
from PIL import ExifTags, Image
from synthetic import tiny_trained_world
from typer.testing import CliRunner

from geoconcept_cli.cli.app import app
from geoconcept_cli.errors import GeoconceptError
from geoconcept_cli.inference import explainer as explain
from geoconcept_cli.inference import predictor as predictor_module
from geoconcept_cli.inference.explainer import faithfulness, remove_concepts
from geoconcept_cli.inference.factory import load_explainer
from geoconcept_cli.inference.predictor import Predictor
from geoconcept_cli.inference.reasons import ZERO_SHOT_PLACE
from geoconcept_cli.inference.request import Request
from geoconcept_cli.inference.scorer import PlaceScorer
from geoconcept_cli.io.images import load_image
from geoconcept_cli.plots.maps import MAP_SIZE_PX
from geoconcept_cli.training.config import TrainConfig
from geoconcept_cli.training.loop import train

runner = CliRunner()


CONCEPT_KEYS = {"mode", "predictions", "merge_km", "spread", "probabilities", "photo_concepts",
                "photo_concepts_source",
                "place_concepts", "place_concepts_source", "score_logit", "why_here",
                "rather_than", "rule"}  # fmt: skip


ZERO_SHOT_KEYS = {
    "mode",
    "predictions",
    "merge_km",
    "spread",
    "probabilities",
    "note",
    "photo_concepts",
    "photo_concepts_source",
    "place_concepts",
    "place_concepts_source",
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return tiny_trained_world(tmp_path_factory.mktemp("explain"))["run"]


@pytest.fixture(scope="module")
def concept_explainer(run_dir, tiny_clip, small_gallery):
    with pytest.warns(UserWarning):  # random CLIP weights
        return load_explainer(tiny_spec(checkpoint=run_dir, gallery=small_gallery))


@pytest.fixture(scope="module")
def zero_shot_explainer(tiny_clip, small_gallery):
    with pytest.warns(UserWarning):
        return load_explainer(tiny_spec(gallery=small_gallery))


def test_terms_sum_to_the_models_own_score(concept_explainer):
    torch.manual_seed(0)
    p = concept_explainer.predictor
    for _ in range(5):
        feats = torch.randn(1, 768) * 3
        exp = concept_explainer.explain_features(feats, Request(top_k=5)).to_json()
        logits = p.logits(feats)[0]
        top = exp["predictions"][0]["gallery_index"]
        assert exp["score_logit"] == pytest.approx(float(logits[top]), abs=1e-4)
        runner_up = exp["rather_than"]["runner_up"]
        gap = float(logits[top] - logits[runner_up["gallery_index"]])
        assert runner_up["logit_gap"] == pytest.approx(gap, abs=1e-4)
        assert set(exp) == CONCEPT_KEYS
        assert exp["rule"].startswith("IF the photo shows")


def test_photos_without_a_runner_up_in_the_ranked_pool_are_ranked_deeper(concept_explainer,
                                                                          monkeypatch):  # fmt: skip
    """A pool of one place (the top one, 0 km away) never holds the runner-up: every photo is
    then ranked RANKED_DEEP deep by the same ranker (Predictor.topk, or batch explain's
    PlaceScorer), and gets what a pool that deep gives at once."""
    torch.manual_seed(1)
    feats = torch.randn(24, 768) * 3
    contrasts = {}
    for ranker in (None, PlaceScorer(concept_explainer.predictor).topk):
        for pool in (explain.RANKED_DEEP, 1):
            monkeypatch.setattr(predictor_module, "POOL", pool)
            exps = concept_explainer.explain_batch(feats, Request(top_k=1, merge_km=0),
                                                   rank=ranker)  # fmt: skip
            contrasts[ranker is None, pool] = [(e.rather_than, e.rule) for e in exps]
    deep = contrasts[True, explain.RANKED_DEEP]
    assert all(c == deep for c in contrasts.values())
    assert sum(c is not None for c, _ in deep) >= 20


def test_no_deeper_ranking_when_the_pool_holds_every_place(concept_explainer):
    """Twenty places within 50 km of Paris: no runner-up anywhere, and no second ranking to
    look for one, since the pool of most probable places already holds them all."""
    p = concept_explainer.predictor
    gen = torch.Generator().manual_seed(4)
    gps = torch.tensor([48.85, 2.35]) + (torch.rand(20, 2, generator=gen) - 0.5) * 0.6
    emb = torch.nn.functional.normalize(torch.randn(20, p.gallery_emb.shape[1], generator=gen))
    few = explain.Explainer(Predictor(p.head, gps, emb), concept_explainer.concepts)
    calls = []

    def rank(feats, k):
        calls.append(k)
        return few.predictor.topk(feats, k)

    exps = few.explain_batch(torch.randn(4, 768, generator=gen), Request(top_k=1), rank=rank)
    # merged candidates come from the full probabilities, whose 20 places are the pool: the
    # ranker is never asked, neither for candidates nor for a deeper runner-up search
    assert calls == [] and not any(e.rather_than for e in exps)


def test_batch_explain_ranks_a_blocks_deep_photos_together_with_the_collector_paused(
    concept_explainer, monkeypatch
):
    """Batch explain (`explain FEATS --out`) takes a shard BLOCK photos at a time: with a pool
    of one place every photo needs the deep pass, ranked once a block, not once per scorer
    block of 1,024. Python's cycle collector is off while rows are built and back on after,
    even when explaining fails; smaller blocks give the same rows."""
    import gc

    from geoconcept_cli.inference.batch import explain as batch_explain

    monkeypatch.setattr(predictor_module, "POOL", 1)
    scorer = PlaceScorer(concept_explainer.predictor)
    gen = torch.Generator().manual_seed(5)
    feats = torch.randn(1100, 768, generator=gen) * 3  # over one scorer block
    ids = [f"p{i}" for i in range(len(feats))]
    calls = []
    topk = scorer.topk

    def rank(x, k):
        calls.append((len(x), k, gc.isenabled()))
        return topk(x, k)

    monkeypatch.setattr(scorer, "topk", rank)
    one = Request(top_k=1, merge_km=0)  # a pool of one point
    whole = batch_explain.explain_shard(concept_explainer, scorer, ids, feats, one)
    assert [c[:2] for c in calls] == [(1100, 1), (1100, explain.RANKED_DEEP)]
    assert not any(c[2] for c in calls) and gc.isenabled()
    assert whole["rule"].str.startswith("IF the photo shows").mean() > 0.9

    monkeypatch.setattr(batch_explain, "BLOCK", 500)
    calls.clear()
    assert batch_explain.explain_shard(concept_explainer, scorer, ids, feats, one).equals(whole)
    assert [c[0] for c in calls] == [500, 500, 500, 500, 100, 100]

    def fail(x, k):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(scorer, "topk", fail)
    with pytest.raises(RuntimeError, match="out of memory"):
        batch_explain.explain_shard(concept_explainer, scorer, ids, feats, one)
    assert gc.isenabled()
    gc.disable()  # a caller's choice is kept
    try:
        with pytest.raises(RuntimeError, match="out of memory"):
            batch_explain.explain_shard(concept_explainer, scorer, ids, feats, one)
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_faithfulness_check_reports_both_interventions(concept_explainer):
    feats = torch.randn(1, 768) * 3
    exp = concept_explainer.explain_features(feats, Request(check=True, m=3, draws=25)).to_json()
    c = exp["check"]
    assert c["score_before"] == pytest.approx(exp["score_logit"], abs=1e-4)
    top, rand = c["top_concepts_removed"], c["random_concepts_removed"]
    assert top["rank_after"] >= 1 and rand["rank_after"] >= 1 and rand["score_drop_std"] >= 0
    assert 0 <= c["beats_random_share"] <= 1 and rand["rank_after_median"] >= 1
    assert c["draws"] == 25
    with pytest.raises(GeoconceptError, match="--m"):
        concept_explainer.explain_features(
            feats, Request(check=True, m=len(concept_explainer.concepts.names))
        )
    with pytest.raises(GeoconceptError, match="--draws must be at least 20"):
        concept_explainer.explain_features(feats, Request(check=True, draws=5))


def test_faithfulness_needs_more_than_beating_the_random_mean():
    drops, ranks = [0.1] * 18 + [5.0, 5.0], [2] * 20  # two large random drops lift the mean
    # beats 18 of 20 draws (90%) although far above the random mean of 0.59: not faithful
    assert faithfulness(1.0, 7, drops, ranks) == {
        "random_concepts_removed": {"score_drop": pytest.approx(0.59),
                                    "score_drop_std": pytest.approx(1.47, abs=0.01),
                                    "rank_after": 2.0, "rank_after_median": 2.0},
        "beats_random_share": 0.9, "faithful": False,
        "unmet": ["it beats fewer than 95% of the draws"],
    }  # fmt: skip
    assert faithfulness(6.0, 7, drops, ranks)["faithful"]  # beats every draw, rank 7 >= 2
    # the score falls most, yet random removals push the place further down: not faithful
    assert faithfulness(6.0, 3, drops, [10] * 20)["unmet"] == [
        "the place stays higher in the ranking than under the median draw"
    ]
    assert faithfulness(6.0, 10, drops, [10] * 20)["faithful"]
    # removing the explanation raises the score, random removals raise it more: not faithful
    assert faithfulness(-0.5, 7, [-1.0] * 20, ranks)["unmet"] == ["the score does not fall"]


def test_removing_concepts_projects_out_their_directions():
    torch.manual_seed(0)
    basis = torch.randn(10, 6)
    z = torch.randn(6)
    out = remove_concepts(z, basis, torch.tensor([2, 7]))
    torch.testing.assert_close(basis[[2, 7]] @ out, torch.zeros(2), atol=1e-5, rtol=0)
    ortho = torch.linalg.qr(torch.randn(6, 6)).Q  # z along q0, removed rows along q1 and q2
    z0 = ortho[:, 0]
    torch.testing.assert_close(remove_concepts(z0, ortho.T[1:3], torch.tensor([0, 1])), z0)


def test_reasons_only_name_concepts_the_photo_shows(concept_explainer):
    torch.manual_seed(3)
    head = concept_explainer.predictor.head
    for _ in range(10):
        feats = torch.randn(1, 768) * 3
        exp = concept_explainer.explain_features(feats, Request(concepts_shown=10)).to_json()
        act = dict(zip(concept_explainer.concepts.names, head.image_concepts(feats)[0].tolist(),
                       strict=True))  # fmt: skip
        named = exp["why_here"] + exp["rather_than"]["for"] + exp["rather_than"]["against"]
        assert named and all(act[e["concept"]] > 0 for e in named)
        assert all(e["weight"] > 0 for e in exp["why_here"] + exp["rather_than"]["for"])
        assert all(e["weight"] < 0 for e in exp["rather_than"]["against"])


def test_zero_shot_on_real_photos(zero_shot_explainer):
    images = sorted(shared_data("im2gps3k", "images").iterdir())[:30]
    for path in images:
        exp = zero_shot_explainer.explain(path, Request(top_k=3, concepts_shown=5)).to_json()
        assert set(exp) == ZERO_SHOT_KEYS | {"image"}
        assert len(exp["predictions"]) == 3 and len(exp["photo_concepts"]) == 5
        assert exp["place_concepts"], f"no region knowledge for {exp['predictions'][0]['place']}"
        json.dumps(exp)


def test_zero_shot_place_concepts_rank_the_places_tags_by_the_photo(zero_shot_explainer):
    """Not an arbitrary few of the many concepts tagged with the country at equal weight (the
    ties new users saw): its tags, ordered by the photo's CLIP similarity to each."""
    cs = zero_shot_explainer.concepts
    text = zero_shot_explainer.text
    photo = sorted(shared_data("im2gps3k", "images").iterdir())[0]
    feats = zero_shot_explainer.predictor.image_features([load_image(photo)])
    sims = (torch.nn.functional.normalize(feats.float(), dim=1) @ text.T)[0]
    exp = zero_shot_explainer.explain_features(feats, Request(top_k=1, concepts_shown=8))
    top = exp.predictions[0]
    tagged = np.flatnonzero(cs.place_weights(top.lat, top.lon) > 0)
    expected = sorted(tagged, key=lambda i: -sims[i])[:8]
    assert len(tagged) > 8  # more tags than shown: the order is what matters
    assert [e["concept"] for e in exp.place_concepts] == [cs.names[i] for i in expected]
    weights = [e["weight"] for e in exp.place_concepts]
    assert weights == pytest.approx([float(sims[i]) for i in expected], rel=1e-3)  # 4 digits
    assert len(set(weights)) == len(weights)
    assert exp.place_concepts_source == ZERO_SHOT_PLACE


def test_cli_single_photo_json_and_map(tmp_path, run_dir, tiny_clip, small_gallery):
    photo = sorted(shared_data("im2gps3k", "images").iterdir())[0]
    png = tmp_path / "map.png"
    res = runner.invoke(app, [
        "explain", str(photo), "--checkpoint", str(run_dir), "--json", "--check",
        "--map", str(png), "--true-lat", "40", "--true-lon", "-3",
        "--clip-model", tiny_clip, "--clip-pretrained", "none", "--gallery", str(small_gallery),
    ])  # fmt: skip
    assert res.exit_code == 0, res.output
    exp = json.loads(res.stdout)
    assert set(exp) == CONCEPT_KEYS | {"image", "check"}
    with Image.open(png) as img:
        assert img.format == "PNG" and img.size == MAP_SIZE_PX


def test_cli_map_marks_the_exif_location(tmp_path, run_dir, tiny_clip, small_gallery):
    photo = tmp_path / "sydney.jpg"
    exif = Image.Exif()
    exif[ExifTags.IFD.GPSInfo] = {1: "S", 2: (33.0, 52.0, 4.0), 3: "E", 4: (151.0, 12.0, 36.0)}
    Image.new("RGB", (80, 60), "olive").save(photo, exif=exif)
    res = runner.invoke(app, [
        "explain", str(photo), "--checkpoint", str(run_dir), "--map", str(tmp_path / "m.png"),
        "--clip-model", tiny_clip, "--clip-pretrained", "none", "--gallery", str(small_gallery),
    ])  # fmt: skip
    assert res.exit_code == 0, res.output
    px = np.asarray(Image.open(tmp_path / "m.png").convert("RGB")).astype(int)
    star = np.abs(px - [44, 160, 44]).max(axis=2) <= 10  # the true-location marker
    ys, xs = np.nonzero(star)
    assert len(xs) > 30
    # Sydney: 151.2 E, 33.9 S on the map axes (x from 0.05 to 0.63 of the width)
    h, w = star.shape
    assert abs(xs.mean() - w * (0.05 + 0.58 * (151.2 + 180) / 360)) < 15
    assert ys.mean() > h / 2  # the southern hemisphere


def test_cli_checkpoint_options_name_the_fix(tiny_clip, small_gallery, run_dir):
    photo = sorted(shared_data("im2gps3k", "images").iterdir())[1]
    res = runner.invoke(
        app, ["explain", str(photo), "--checkpoint", str(run_dir), "--gallery", str(small_gallery)]
    )  # default CLIP: ViT-L-14 (openai)
    assert res.exit_code == 2
    assert "pass --clip-model tiny-clip-768 --clip-pretrained none" in res.stderr
    res = runner.invoke(app, ["explain", str(photo), "--checkpoint", str(run_dir), "--concepts",
                              "elsewhere.parquet", "--clip-model", tiny_clip, "--clip-pretrained",
                              "none", "--gallery", str(small_gallery)])  # fmt: skip
    assert res.exit_code == 0 and "--concepts and --concept-embeddings are ignored" in res.stderr


def test_cli_terminal_view(tiny_clip, small_gallery, run_dir):
    photo = sorted(shared_data("im2gps3k", "images").iterdir())[1]
    res = runner.invoke(app, ["explain", str(photo), "--checkpoint", str(run_dir), "--check",
                              "--clip-model", tiny_clip, "--clip-pretrained", "none",
                              "--gallery", str(small_gallery)])  # fmt: skip
    assert res.exit_code == 0, res.output
    text = " ".join(res.stdout.split())  # rich wraps at the terminal's width
    for heading in ("What the photo shows", "What the place is known for", "Why here",
                    "rather than", "Rule: IF", "Check: removing the top 3 concepts",
                    "(mean ± sd of 20 draws; median rank ->", "of 20 draws:"):  # fmt: skip
        assert heading in text


def test_cli_first_zero_shot_run_shows_its_one_off_work(tmp_path, tiny_clip, small_gallery):
    photo = sorted(shared_data("im2gps3k", "images").iterdir())[1]
    args = ["explain", str(photo), "--clip-model", tiny_clip, "--clip-pretrained", "none",
            "--gallery", str(small_gallery), "--cache-dir", str(tmp_path)]  # fmt: skip
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "embedding concepts (once; cached): 645/645 (100%)" in first.stderr
    assert "encoding gallery (once; cached): 500/500 (100%)" in first.stderr
    again = runner.invoke(app, args)  # both cached: nothing to report
    assert again.exit_code == 0 and "(once; cached)" not in again.stderr


def test_cli_batch_folder_skips_unreadable(tmp_path, tiny_clip, small_gallery):
    folder = tmp_path / "photos"
    folder.mkdir()
    for src in sorted(shared_data("im2gps3k", "images").iterdir())[:12]:
        shutil.copy(src, folder / src.name)
    (folder / "broken.jpg").write_text("not a photo")
    out = tmp_path / "results.parquet"
    res = runner.invoke(app, ["explain", str(folder), "--out", str(out),
                              "--clip-model", tiny_clip, "--clip-pretrained", "none",
                              "--gallery", str(small_gallery)])  # fmt: skip
    assert res.exit_code == 0, res.output
    df = pd.read_parquet(out)
    assert len(df) == 12 and "broken.jpg" in res.stderr
    assert {"image", "lat", "lon", "prob", "place", "top_k", "photo_concepts", "rule"} <= set(df)


def test_cli_bad_input(tmp_path, tiny_clip):
    res = runner.invoke(app, ["explain", str(tmp_path / "nope.jpg"), "--clip-model", tiny_clip])
    assert res.exit_code == 2 and res.stderr.startswith("error:")
    res = runner.invoke(app, ["explain", str(tmp_path), "--clip-model", tiny_clip])
    assert res.exit_code == 2 and "--out" in res.stderr


def test_cli_batch_manifest_without_coordinates(tmp_path, tiny_clip, small_gallery):
    src = sorted(shared_data("im2gps3k", "images").iterdir())[:3]
    for p in src:
        shutil.copy(p, tmp_path / p.name)
    names = [p.name for p in src] + ["gone.jpg"]
    pd.DataFrame({"path": names}).to_csv(tmp_path / "list.csv", index=False)
    out = tmp_path / "r.parquet"
    args = ["explain", str(tmp_path / "list.csv"), "--out", str(out), "--clip-model", tiny_clip,
            "--clip-pretrained", "none", "--gallery", str(small_gallery)]  # fmt: skip
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert len(pd.read_parquet(out)) == 3 and "gone.jpg: no such file" in res.stderr
    elsewhere = tmp_path / "lists"
    elsewhere.mkdir()
    (tmp_path / "list.csv").rename(elsewhere / "list.csv")
    args[1] = str(elsewhere / "list.csv")
    res = runner.invoke(app, [*args, "--images", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert len(pd.read_parquet(out)) == 3 and "gone.jpg: no such file" in res.stderr
    res = runner.invoke(app, [*args[:1], str(src[0]), *args[2:], "--images", str(tmp_path)])
    assert res.exit_code == 2 and "--images applies to a manifest" in res.stderr
    res = runner.invoke(app, args)  # the photos are not beside this manifest
    assert res.exit_code == 2 and "none of the 4 photos could be read; --images" in res.stderr
    res = runner.invoke(app, [*args, "--images", str(tmp_path), "--map", "m.png", "--json"])
    assert res.exit_code == 2 and "--map, --json: single photos only" in res.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    args[1] = str(empty)  # refused before anything loads, saying what would work
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and f"{empty}: no photos in it, and no meta.json" in res.stderr


def test_cli_bad_map_and_truth_fail_before_any_work(tmp_path, tiny_clip, small_gallery):
    photo = sorted(shared_data("im2gps3k", "images").iterdir())[0]
    base = ["explain", str(photo), "--gallery", str(small_gallery)]  # default ViT-L-14 (openai):
    for extra, message in [  # its weights cannot load here, so an error after loading differs
        (["--map", str(tmp_path)], "is a folder; give a file name"),
        (["--true-lat", "10"], "--true-lat and --true-lon go together"),
        (["--true-lat", "100", "--true-lon", "0"], "not a location"),
    ]:  # fmt: skip
        res = runner.invoke(app, [*base, *extra])
        assert res.exit_code == 2 and message in res.stderr, res.stderr
    res = runner.invoke(app, ["evaluate", str(tmp_path / "no-features"), "--json-out",
                              str(tmp_path)])  # fmt: skip
    assert res.exit_code == 2 and "is a folder; give a file name" in res.stderr


def test_a_plain_geoclip_checkpoint_is_named_as_such(run_dir, tiny_clip, small_gallery):
    plain = run_dir.parent / "plain"
    train(TrainConfig(features=str(run_dir.parent / "train"), out=str(plain), max_steps=2,
                      batch_size=32, warmup_steps=1, queue_size=32))  # fmt: skip
    with pytest.warns(UserWarning):
        explainer = load_explainer(tiny_spec(checkpoint=plain, gallery=small_gallery))
    out = explainer.explain_features(torch.randn(1, 768))
    assert out.mode == "GeoCLIP checkpoint, zero-shot concepts"
    assert out.note is not None and out.note.startswith(
        "a plain GeoCLIP checkpoint (train --concepts none)"
    )


@pytest.mark.parametrize("which", ["concept_explainer", "zero_shot_explainer"])
def test_a_batch_explains_each_photo_as_it_alone(which, request):
    """explain_batch takes every step for all photos at once (batch explain of a feature
    folder); each photo's explanation must be the one it gets on its own."""
    explainer = request.getfixturevalue(which)
    torch.manual_seed(1)
    feats = torch.randn(24, 768) * 3
    check = which == "concept_explainer"  # --check needs a concept-aware head
    asked = Request(top_k=5, check=check)
    batch = [e.to_json() for e in explainer.explain_batch(feats, asked)]
    alone = [explainer.explain_features(feats[i : i + 1], asked).to_json() for i in range(24)]
    # a product over a batch rounds unlike one over one row, and weights are rounded to 1e-5
    assert_close_json(batch, alone, abs=2e-5, rel=1e-5)
    lean = [e.to_json() for e in explainer.explain_batch(feats, asked, place_concepts=False)]
    if which == "concept_explainer":  # rows leave out the place's concepts: its encoder pass
        drop = ("place_concepts", "place_concepts_source")
        alone = [{k: v for k, v in e.items() if k not in drop} for e in alone]
    assert_close_json(lean, alone, abs=2e-5, rel=1e-5)
    shown = {json.dumps(e["photo_concepts"]) for e in batch}  # 24 different photos, not one
    # (random features are flat: the top candidate sums most points where the gallery is dense)
    assert len(shown) == 24 and len({e["predictions"][0]["prob"] for e in batch}) == 24


def test_the_check_is_refused_before_anything_loads_where_it_cannot_run(tmp_path, run_dir,
                                                                        tiny_clip):  # fmt: skip
    """`--check` without a concept-aware run once loaded the models for 17 s, then said in a
    note that it needs one, exit 0. Each line here comes before any model loads: the gallery
    given does not exist, and would have been the error."""
    photo = sorted(shared_data("im2gps3k", "images").iterdir())[0]
    model = ["--clip-model", tiny_clip, "--clip-pretrained", "none", "--gallery",
             str(tmp_path / "no-such-gallery.csv")]  # fmt: skip
    cases = [(["--check"], "pretrained GeoCLIP has no concepts: give a concept-aware "
               "--checkpoint"),
             (["--check", "--checkpoint", str(run_dir), "--m", "40"],
              "--m 40: must be between 1 and 39 (the run has 40 concepts)")]  # fmt: skip
    for extra, said in cases:
        res = runner.invoke(app, ["explain", str(photo), *model, *extra])
        assert res.exit_code == 2 and said in res.stderr, res.output
        assert len(res.stderr.strip().splitlines()) == 1


def test_the_library_refuses_a_check_as_the_command_does(zero_shot_explainer,
                                                         concept_explainer):  # fmt: skip
    feats = torch.randn(1, 768)
    with pytest.raises(GeoconceptError, match="pretrained GeoCLIP has no concepts: give a "
                                              "concept-aware --checkpoint"):  # fmt: skip
        zero_shot_explainer.explain_features(feats, Request(check=True))
    with pytest.raises(GeoconceptError, match=r"--m 40: must be between 1 and 39 \(the run"):
        concept_explainer.explain_features(feats, Request(check=True, m=40))


def test_more_concepts_asked_than_the_run_has_are_all_listed_and_said(run_dir, tiny_clip,
                                                                        small_gallery):  # fmt: skip
    """--concepts-shown 100000 once stopped at the set's size without a word."""
    photo = sorted(shared_data("im2gps3k", "images").iterdir())[0]
    res = runner.invoke(app, [
        "explain", str(photo), "--checkpoint", str(run_dir), "--json", "--concepts-shown", "60",
        "--clip-model", tiny_clip, "--clip-pretrained", "none", "--gallery", str(small_gallery),
    ])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "warning: --concepts-shown 60: 40 concepts in the set, all listed" in res.stderr
    assert len(json.loads(res.stdout)["photo_concepts"]) == 40
