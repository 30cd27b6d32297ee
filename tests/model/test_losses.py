import math

import pytest
import torch

from geoconcept_cli.model.losses import (
    info_nce,
    log_kernel_divergence,
    mean_divergence,
    median_sigma,
    mmd2,
)


def test_log_kernel_formula_is_mean_matching():
    torch.manual_seed(0)
    z, loc = torch.randn(32, 16), torch.randn(48, 16) + 0.3
    for sigma in (0.5, 2.0):
        torch.testing.assert_close(
            log_kernel_divergence(z, loc, sigma), mean_divergence(z, loc, sigma)
        )


def test_mmd_zero_for_same_sample_positive_for_shift():
    torch.manual_seed(0)
    z = torch.randn(64, 8)
    assert mmd2(z, z).abs() < 1e-6
    assert mmd2(z, z + 1.0) > 0.1
    assert mmd2(z, z + 1.0) > mmd2(z, z + 0.2) > 0


def test_median_heuristic_keeps_signal_where_small_fixed_sigma_collapses():
    torch.manual_seed(0)
    n, d = 64, 512
    z, loc = torch.randn(n, d), torch.randn(n, d) + 0.5
    collapsed = mmd2(z, loc, sigma=0.1)
    assert math.isclose(float(collapsed), 2 / n, rel_tol=1e-3)  # only self-pairs survive
    # with the median bandwidth, the shifted sample is clearly further than a fresh draw
    assert mmd2(z, loc) > 5 * mmd2(z, torch.randn(n, d))
    assert median_sigma(z, loc) > 10


def test_info_nce_targets_and_offset():
    img = torch.eye(4)
    loc = torch.cat([torch.zeros(2, 4), torch.eye(4)])  # positives sit after 2 foreign rows
    scale = torch.tensor(math.log(100.0))
    good = info_nce(img, loc, scale, target_offset=2)
    bad = info_nce(img, loc, scale, target_offset=0)
    assert good < 1e-3 < bad


def test_median_sigma_is_the_off_diagonal_median():
    torch.manual_seed(0)
    for n in (3, 10, 64):
        z, loc = torch.randn(n, 7), torch.randn(n + 1, 7)
        pooled = torch.cat([z, loc])
        d = torch.cdist(pooled, pooled)
        off = d[~torch.eye(len(pooled), dtype=torch.bool)]
        torch.testing.assert_close(median_sigma(z, loc), off.median(), rtol=1e-5, atol=1e-6)


def test_mmd_matches_the_textbook_formula():
    torch.manual_seed(1)
    z, loc, sigma = torch.randn(5, 3), torch.randn(7, 3) + 0.4, 1.3

    def k(a, b):
        return math.exp(-float((a - b).pow(2).sum()) / (2 * sigma**2))

    ref = (
        sum(k(a, b) for a in z for b in z) / 25
        + sum(k(a, b) for a in loc for b in loc) / 49
        - 2 * sum(k(a, b) for a in z for b in loc) / 35
    )
    assert float(mmd2(z, loc, sigma)) == pytest.approx(ref, rel=1e-5)


def test_location_encoder_is_float32_under_autocast():
    from geoconcept_cli.model.geoclip import load_geoclip_head

    head = load_geoclip_head()
    latlon = torch.tensor([[48.85, 2.35], [-33.9, 151.2], [35.7, 139.7], [0.1, -78.5]])
    ref = head.embed_locations(latlon)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        amp = head.embed_locations(latlon)
    # bf16 Fourier phases would give cosines near 0.8 to the fp32 embeddings
    assert (amp.float() * ref).sum(1).min() > 0.99


@pytest.mark.parametrize("device", [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")),
])  # fmt: skip
def test_losses_stay_float32_under_autocast(device):
    torch.manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(16, 64), dim=1).to(device)
    loc = torch.nn.functional.normalize(torch.randn(48, 64), dim=1).to(device)
    scale = torch.tensor(math.log(100.0), device=device)
    ref_nce, ref_mmd = info_nce(img, loc, scale), mmd2(img, loc[:16])
    with torch.autocast(device, dtype=torch.bfloat16):
        amp_nce, amp_mmd = info_nce(img, loc, scale), mmd2(img, loc[:16])
    # a bf16 matmul moves logits at scale 100 by ~0.1 and the MMD by ~1e-3
    torch.testing.assert_close(amp_nce, ref_nce, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(amp_mmd, ref_mmd, rtol=1e-6, atol=1e-7)


def test_pooled_distances_have_an_exact_zero_diagonal():
    from geoconcept_cli.model.losses import _sq_dists

    torch.manual_seed(0)
    x = torch.randn(50, 33) * 7
    d2 = _sq_dists(x)
    assert (d2.diagonal() == 0).all()
    torch.testing.assert_close(d2, torch.cdist(x, x).pow(2), rtol=1e-4, atol=1e-3)


def test_concept_head_joint_embedding_equals_the_per_modality_ones():
    from geoconcept_cli.model.concept_head import ConceptAwareHead

    torch.manual_seed(0)
    head = ConceptAwareHead(torch.randn(20, 768))
    torch.nn.init.normal_(head.image_proj.weight, std=0.05)
    torch.nn.init.normal_(head.delta, std=0.05)
    feats, latlon = torch.randn(5, 768), torch.tensor([[48.8, 2.3], [-33.9, 151.2], [1.0, 2.0]])
    img, loc = head.embed(feats, latlon)
    torch.testing.assert_close(img, head.embed_images(feats))
    torch.testing.assert_close(loc, head.embed_locations(latlon))
    # W_loc folded into the basis: the same direction as the documented l = norm(W_loc LocEnc)
    place = torch.nn.functional.normalize(head.location_concepts(latlon), dim=1)
    torch.testing.assert_close(loc, place)
    # the retrieval embedding is the normalised concept activation of the unit latent
    act = torch.nn.functional.normalize(head.image_concepts(feats), dim=1)
    torch.testing.assert_close(img, act)
    torch.testing.assert_close(head.image_latent(feats).norm(dim=1), torch.ones(5))
