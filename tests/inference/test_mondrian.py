"""Conformal regions per group (Mondrian): on a planted split where one group's photos are
harder than the model believes, pooled calibration misses that group's coverage and per-group
calibration keeps every group's."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from geoconcept_cli.errors import GeoconceptError
from geoconcept_cli.inference.calibration import (
    best_near,
    conformal_threshold,
    covered,
    gallery_tree,
    mass_above,
    pairs_within,
    region_cut,
    region_cuts,
)
from geoconcept_cli.inference.mondrian import (
    group_scores,
    group_thresholds,
    grouped_covered,
    grouped_mask,
    place_slots,
)

GROUPS = ["easy", "hard"]
ALPHA = 0.1


def planted_groups(n: int, seed: int, n_gallery: int = 1500):
    """Probabilities over a random gallery split into two groups of places, photos of each
    group, and truths at a place of the photo's group: an "easy" photo's truth is drawn from
    the model's own probabilities (there), a "hard" one's from a four times flatter softmax,
    so the model is overconfident about hard photos."""
    gen = torch.Generator().manual_seed(seed)
    gps = torch.stack([torch.rand(n_gallery, generator=gen) * 140 - 60,
                       torch.rand(n_gallery, generator=gen) * 360 - 180], dim=1)  # fmt: skip
    place_group = (torch.arange(n_gallery) >= n_gallery // 2).long()
    photo_group = (torch.rand(n, generator=gen) < 0.5).long()
    logits = 3 * torch.randn(n, n_gallery, generator=gen)
    logits += 2.0 * (place_group[None] == photo_group[:, None])  # it knows the group
    probs = logits.softmax(dim=1)
    draw = torch.where(photo_group[:, None] == 1, logits / 4, logits)
    draw = draw.masked_fill(place_group[None] != photo_group[:, None], -torch.inf)
    truth = gps[torch.multinomial(draw.softmax(dim=1), 1, generator=gen)[:, 0]]
    truth = truth + 0.02 * torch.randn(n, 2, generator=gen)  # ~2 km away
    return probs, gps, truth, photo_group, place_group


def coverage_by_group(hit: torch.Tensor, photo_group: torch.Tensor) -> dict[str, float]:
    return {g: float(hit[photo_group == i].float().mean()) for i, g in enumerate(GROUPS)}


def test_per_group_thresholds_cover_every_group_where_pooled_misses_one():
    probs, gps, truth, photo_group, place_group = planted_groups(12_000, seed=3)
    near = pairs_within(gallery_tree(gps), truth, 25.0)
    cal, test = slice(0, 6000), slice(6000, None)
    rows, cols = near
    in_cal = rows < 6000
    cal_pairs = rows[in_cal], cols[in_cal]
    test_pairs = rows[~in_cal] - 6000, cols[~in_cal]
    # pooled: one threshold for every photo
    pooled = conformal_threshold(mass_above(probs[cal], best_near(probs[cal], *cal_pairs)),
                                 ALPHA)  # fmt: skip
    best = best_near(probs[test], *test_pairs)
    hit_pooled = covered(best, region_cut(probs[test], pooled))
    by_pooled = coverage_by_group(hit_pooled, photo_group[test])
    assert by_pooled["hard"] < 1 - ALPHA - 0.10, by_pooled  # the planted miss
    # per group: the photo's score against its own group's places, one threshold a group
    scores = group_scores(probs[cal], *cal_pairs, photo_group[cal], place_group)
    keys = np.array(GROUPS)[photo_group[cal].numpy()]
    own = group_thresholds(scores.numpy(), keys, ALPHA)
    assert list(own) == GROUPS and own["hard"] > own["easy"]
    slots = place_slots(np.array(GROUPS)[place_group.numpy()], list(own))
    cuts = region_cuts(probs[test], [*own.values(), pooled])
    assert torch.equal(cuts[:, -1], region_cut(probs[test], pooled))  # one histogram, the same
    hit = grouped_covered(probs[test], cuts, slots, *test_pairs)
    by_group = coverage_by_group(hit, photo_group[test])
    sd = math.sqrt(ALPHA * (1 - ALPHA) / 3000)
    for g, c in by_group.items():
        assert abs(c - (1 - ALPHA)) <= 0.03, (g, by_group, by_pooled)
        assert c >= 1 - ALPHA - 3 * sd, (g, by_group)
    # the region as a set of places holds a place near the truth exactly when covered
    mask = grouped_mask(probs[test], cuts, slots)
    near_truth = torch.zeros_like(mask)
    near_truth[test_pairs] = True
    assert torch.equal((mask & near_truth).any(dim=1), hit)
    # a group's places are in the region down to that group's cut, whatever the photo
    for i in range(5):
        for s, t in enumerate(own.values()):
            on = slots == s
            assert torch.equal(mask[i, on], probs[test][i, on] >= region_cut(
                probs[test][i : i + 1], t)[0])  # fmt: skip


def test_small_groups_keep_the_pooled_threshold_and_none_at_all_is_one_line():
    scores = np.linspace(0, 1, 130)
    keys = np.array(["Europe"] * 100 + ["Oceania"] * 20 + [""] * 10)  # '' at sea: no group
    own = group_thresholds(scores, keys, ALPHA)
    assert list(own) == ["Europe"]
    assert own["Europe"] == conformal_threshold(scores[:100], ALPHA)
    slots = place_slots(np.array(["Oceania", "Europe", ""]), list(own))
    assert slots.tolist() == [1, 0, 1]  # Oceania and the sea: the pooled slot
    with pytest.raises(GeoconceptError, match="no group has 50 calibration photos") as err:
        group_thresholds(scores[100:], keys[100:], ALPHA)
    assert "largest: Oceania, 20" in str(err.value) and "\n" not in str(err.value)
