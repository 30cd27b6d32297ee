"""Abstention: the level chosen for a target accuracy keeps it on planted photos a known share
of which cannot be located, and the risk-coverage curve reads as it should."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from geoconcept_cli.errors import GeoconceptError
from geoconcept_cli.geo.distance import haversine_km
from geoconcept_cli.inference.abstention import (
    LEVELS,
    abstention_level,
    check_level,
    risk_coverage,
)
from geoconcept_cli.inference.calibration import gallery_tree, top_confidence

RADIUS_KM = 25.0


def planted_photos(n: int, seed: int, flat_share: float = 0.4, n_gallery: int = 1500):
    """(confidence, hit, flat) of ``n`` photos over a random gallery: a localizable photo's
    truth is drawn from its own (sharp) softmax, so its probabilities are calibrated; a flat
    photo's logits are nearly uniform and its truth is anywhere in the gallery."""
    gen = torch.Generator().manual_seed(seed)
    gps = torch.stack([torch.rand(n_gallery, generator=gen) * 140 - 60,
                       torch.rand(n_gallery, generator=gen) * 360 - 180], dim=1)  # fmt: skip
    flat = torch.rand(n, generator=gen) < flat_share
    sharpness = torch.where(flat, 0.05, 4 + 8 * torch.rand(n, generator=gen))[:, None]
    probs = (sharpness * torch.randn(n, n_gallery, generator=gen)).softmax(dim=1)
    pick = torch.multinomial(probs, 1, generator=gen)[:, 0]
    pick = torch.where(flat, torch.randint(n_gallery, (n,), generator=gen), pick)
    truth = gps[pick].double()
    conf, top = top_confidence(probs, gps, gallery_tree(gps), RADIUS_KM)
    g = gps[top].double()
    hit = haversine_km(truth[:, 0], truth[:, 1], g[:, 0], g[:, 1]) <= RADIUS_KM
    return conf.numpy(), hit, flat.numpy()


@pytest.fixture(scope="module")
def population():
    """A large fresh sample: the accuracy a level really keeps."""
    return planted_photos(60_000, seed=99)


def kept_accuracy(population, level: float) -> float:
    conf, hit, _ = population
    return float(hit[conf >= level].mean())


@pytest.mark.parametrize("target", [0.7, 0.85])
def test_the_chosen_level_keeps_the_target_accuracy_on_every_split(population, target):
    conf_all, hit_all, flat_all = planted_photos(20 * 1000, seed=5)
    for split in range(20):  # 20 calibration sets of 1,000 photos
        part = slice(split * 1000, (split + 1) * 1000)
        chosen = abstention_level(conf_all[part], hit_all[part], target)
        # the guarantee: the accuracy on the photos kept, over fresh photos, is the target
        assert kept_accuracy(population, chosen.level) >= target, (split, chosen)
        # and it says what it saw: the calibration photos kept, at their accuracy
        kept = conf_all[part] >= chosen.level
        assert chosen.kept == pytest.approx(kept.mean())
        assert chosen.accuracy == pytest.approx(hit_all[part][kept].mean())
        assert chosen.accuracy >= target and chosen.level in LEVELS
        # the photos that cannot be located are the ones left out
        flat = flat_all[part]
        assert (~kept[flat]).mean() >= 0.95
        assert kept[~flat].mean() >= 0.3  # and many of the others answered
        # Bonferroni over 99 levels costs some: on 1,000 photos, at most 15 points more
        assert kept_accuracy(population, chosen.level) < target + 0.15
    # without abstention, the accuracy is far below the target: the level does the work
    assert hit_all.mean() < 0.7


def test_a_target_no_level_reaches_is_one_line():
    conf, hit, _ = planted_photos(300, seed=6, flat_share=0.9)
    with pytest.raises(GeoconceptError, match="no confidence level reaches it") as err:
        abstention_level(conf, hit, 0.999)
    assert "\n" not in str(err.value)
    for bad in (0.0, 1.0, 1.5, -0.2):
        with pytest.raises(GeoconceptError, match="--target-accuracy"):
            abstention_level(conf, hit, bad)
    for bad in (1.0, -0.1):
        with pytest.raises(GeoconceptError, match="--abstain-below"):
            check_level(bad)


def test_risk_coverage_by_hand():
    got = risk_coverage([0.9, 0.6, 0.8, 0.7], [1, 0, 0, 1])  # by confidence: 1, 0, 1, 0
    risks = [0.0, 1 / 2, 1 / 3, 1 / 2]
    assert got["aurc"] == pytest.approx(np.mean(risks))
    assert got["accuracy_at"] == pytest.approx({"50%": 0.5, "80%": 0.5, "100%": 0.5})
    assert np.allclose(got["curve"], [[0.25, 1.0], [0.5, 0.5], [0.75, 2 / 3], [1.0, 0.5]])
    # photos of equal confidence enter together, so their order does not matter
    tied = [risk_coverage([0.5, 0.5, 0.9], h) for h in ([1, 0, 1], [0, 1, 1])]
    assert tied[0] == tied[1] and tied[0]["curve"][1] == pytest.approx([1.0, 2 / 3])
    assert math.isnan(risk_coverage([], [])["aurc"])


def test_the_risk_coverage_curve_falls_where_it_should(population):
    conf, hit, _ = population
    got = risk_coverage(conf, hit)
    acc = got["accuracy_at"]
    # answering fewer photos, the most confident first, is more accurate on calibrated ones
    assert acc["50%"] > acc["80%"] > acc["100%"] == pytest.approx(hit.mean())
    coverage = [c for c, _ in got["curve"]]
    assert coverage == sorted(coverage) and coverage[-1] == 1.0 and len(coverage) <= 101
    # the area lies between the oracle's (the right answers first) and answering blindly
    n, right = len(hit), int(hit.sum())
    oracle = np.mean([max(0, i - right) / i for i in range(1, n + 1)])
    assert oracle < got["aurc"] < 1 - hit.mean()
    shuffled = risk_coverage(np.random.default_rng(0).permutation(conf), hit)["aurc"]
    assert got["aurc"] < shuffled - 0.1
