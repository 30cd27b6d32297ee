"""Text hints: a planted hint moves the true place up, a contradictory one shows as a negative
share, and words no concept covers are reported, not applied."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import assert_close_json, one_line_error, tiny_spec
from safetensors.torch import load_file
from typer.testing import CliRunner

from geoconcept_cli.cli.app import app
from geoconcept_cli.geo.distance import haversine_km
from geoconcept_cli.geo.limits import Limits
from geoconcept_cli.inference.factory import load_explainer
from geoconcept_cli.inference.request import HINT_WEIGHT, Request

runner = CliRunner()


@pytest.fixture(scope="module")
def planted(planted_world):
    """The planted world's predictor, noisy photos and truths; a photo's planted hint is its
    region's most distinctive concept direction, as CLIP would embed the concept's name, and
    the contradictory one another region's."""
    p, feats, truth, region, world = planted_world
    directions = next(v for v in load_file(str(world["concepts"])).values() if v.ndim == 2)
    mix = world["mixtures"]
    # each region's most distinctive concept: its weight there over its most elsewhere
    elsewhere = torch.stack([torch.cat([mix[:r], mix[r + 1 :]]).amax(0) for r in range(12)])
    own = (mix - elsewhere).argmax(1)
    right = torch.stack([directions[own[r]] * 8 for r in region.tolist()])
    gen = torch.Generator().manual_seed(2)
    other = (region + 1 + torch.randint(0, 10, (len(region),), generator=gen)) % 12
    wrong = torch.stack([directions[own[r]] * 8 for r in other.tolist()])
    return p, feats, truth, right, wrong


def ranks_of_truth(p, feats, truth):
    """The rank, among the gallery's places, of each photo's best place within 25 km of its
    truth (its region: the gallery holds 21 points there)."""
    gps = p.gallery_gps[p.places].double().numpy()
    probs = p.probabilities(feats)[:, p.places]
    out = []
    for i in range(len(feats)):
        near = torch.from_numpy(haversine_km(*truth[i].tolist(), gps[:, 0], gps[:, 1]) <= 25)
        out.append(int((probs[i] > probs[i, near].max()).sum()) + 1)
    return np.array(out)


def test_a_planted_hint_raises_the_true_place_and_a_contradictory_one_lowers_it(planted):
    p, feats, truth, right, wrong = planted
    alone = ranks_of_truth(p, feats, truth)

    def with_hints(hints):
        return np.array([ranks_of_truth(p.with_prior(p.hint_prior(hints[i : i + 1],
                                                                  HINT_WEIGHT)),
                                        feats[i : i + 1], truth[i : i + 1])[0]
                         for i in range(len(feats))])  # fmt: skip

    helped, misled = with_hints(right), with_hints(wrong)
    assert 0.4 < (alone == 1).mean() < 0.9  # the photo alone is not enough
    assert np.log(helped).mean() < np.log(alone).mean() - 0.1
    assert (helped == 1).mean() > (alone == 1).mean()
    assert np.log(misled).mean() > np.log(alone).mean() + 0.1


def test_a_contradictory_hint_shows_as_a_negative_share(planted):
    """Where the answer is the photo's region: a hint that itself points there (its own most
    probable place) has a positive share, and one pointing elsewhere a negative share."""
    p, feats, truth, right, wrong = planted

    def near_truth(i, row):
        return haversine_km(*truth[i].tolist(), *p.gallery_gps[row].tolist()) <= 25

    for hints, sign in ((right, 1), (wrong, -1)):
        shares = []
        for i in range(len(feats)):
            q = p.with_prior(p.hint_prior(hints[i : i + 1], HINT_WEIGHT))
            top = q.topk(feats[i : i + 1], 1)[1][0]
            (g,) = q.hint_gains(feats[i : i + 1], top, hints[i : i + 1], ("h",), HINT_WEIGHT)[0]
            assert -1 <= g["share"] <= 1 and g["weight"] == HINT_WEIGHT
            own = int(p.hint_logprobs(hints[i : i + 1])[0].argmax())  # where the hint points
            if near_truth(i, top[0]) and near_truth(i, own) == (sign > 0):
                shares.append(g["share"])
        assert len(shares) > 10 and np.mean(np.sign(shares) == sign) > 0.9, shares


def test_words_no_concept_covers_are_reported_not_applied(tiny_clip, small_gallery, tmp_path):
    with pytest.warns(UserWarning):
        explainer = load_explainer(tiny_spec(gallery=small_gallery))
    feats = torch.randn(1, 768, generator=torch.Generator().manual_seed(0)) * 3
    plain = explainer.explain_features(feats, Request(top_k=3))
    exp = explainer.explain_features(feats, Request(top_k=3, hints=("red telephone box",
                                                                    "qwzx blorp")))  # fmt: skip
    named, nonsense = exp.hints
    assert named["applied"] and named["concepts"][0] == {"concept": "red telephone box",
                                                         "similarity": 1.0}  # fmt: skip
    assert {"logit_gain", "share", "photo_logit_gain"} <= set(named)
    assert not nonsense["applied"] and "share" not in nonsense
    only_nonsense = explainer.explain_features(feats, Request(top_k=3, hints=("qwzx blorp",)))
    assert [c.to_json() for c in only_nonsense.predictions] == [
        c.to_json() for c in plain.predictions]  # the answer did not move  # fmt: skip
    pred = explainer.predictor.predict_features(feats, Request(hints=("red telephone box",)))
    assert pred.to_json()["hints"][0]["hint"] == "red telephone box"
    photo = tmp_path / "p.jpg"
    photo.write_bytes(b"")
    for bad in (["--hint-weight", "0", "--hint", "x"], ["--hint", " "]):
        assert "--hint" in one_line_error(runner.invoke(app, ["explain", str(photo), *bad]))


def test_several_hints_and_photos_each_get_their_own_gains(tiny_clip, small_gallery):
    """Two hints on one photo, and one hint on two photos: each gain read from its own photo
    and hint (a mix-up once crashed on two hints)."""
    with pytest.warns(UserWarning):
        p = load_explainer(tiny_spec(gallery=small_gallery)).predictor
    feats = torch.randn(2, 768, generator=torch.Generator().manual_seed(3)) * 3
    two = ("red telephone box", "double-decker bus")
    got = p.predict_features(feats[:1], Request(hints=two)).to_json()["hints"]
    assert [h["hint"] for h in got] == list(two) and all(-1 <= h["share"] <= 1 for h in got)
    hints = p.hint_features(two[:1])
    rows = p.topk(feats, 1)[1][:, 0]
    both = p.hint_gains(feats, rows, hints, two[:1], HINT_WEIGHT)
    alone = [p.hint_gains(feats[i : i + 1], rows[i : i + 1], hints, two[:1], HINT_WEIGHT)[0]
             for i in range(2)]  # fmt: skip
    assert_close_json(both, alone, abs=2e-5)  # a batch's product rounds unlike one row's


def test_a_hint_without_a_rival_inside_a_small_limit_gives_nothing(tiny_clip, small_gallery):
    """Inside 300 km nothing is 200+ km from the answer for long: a hint with no place far
    enough inside has no rival, no gain and no share (never inf or NaN)."""
    with pytest.warns(UserWarning):
        p = load_explainer(tiny_spec(gallery=small_gallery)).predictor
    feats = torch.randn(1, 768, generator=torch.Generator().manual_seed(4)) * 3
    lat, lon = p.gallery_gps[p.places[0]].tolist()
    tight = Limits.parse(near=[f"{lat},{lon}"], radius=[90])
    got = p.predict_features(feats, Request(hints=("red telephone box",), limits=tight))
    (h,) = got.to_json()["hints"]
    assert h["rival_gallery_index"] is None and h["share"] == 0 and h["logit_gain"] == 0
    json.dumps(got.to_json(), allow_nan=False)  # what serve sends
