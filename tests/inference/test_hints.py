"""Text hints: a planted hint moves the true place up, a contradictory one shows as a negative
share, and words no concept covers are reported, not applied."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import one_line_error, tiny_spec
from safetensors.torch import load_file
from typer.testing import CliRunner

from geoconcept_cli.cli.app import app
from geoconcept_cli.geo.distance import haversine_km
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
