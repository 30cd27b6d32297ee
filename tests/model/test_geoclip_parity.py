"""geoconcept's predictor against GeoCLIP itself, on the same 768-d CLIP image features."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from geoconcept_cli.gallery.store import cached_gallery_embeddings, load_gallery
from geoconcept_cli.inference.predictor import Predictor
from geoconcept_cli.model.geoclip import load_geoclip_head


class _FixedFeatures(torch.nn.Module):
    """Stands in for GeoCLIP's HF CLIP: returns preset 768-d features for any pixels."""

    def __init__(self, feats: torch.Tensor):
        super().__init__()
        self.feats = feats

    def get_image_features(self, pixel_values):
        return self.feats[: pixel_values.shape[0]]


@pytest.fixture(scope="module")
def geoclip_model():
    geoclip = pytest.importorskip("geoclip")
    torch.manual_seed(0)
    # Real MLP, location encoder, gallery and logit scale; a random ViT-L/14 we replace below.
    return geoclip.GeoCLIP(from_pretrained=True, clip_pretrained=False).eval()


@pytest.fixture(scope="module")
def predictor():
    head = load_geoclip_head()
    gps = load_gallery()
    return Predictor(head, gps, cached_gallery_embeddings(gps, head))


@pytest.mark.slow
def test_same_gallery_and_weights(geoclip_model, predictor):
    assert torch.equal(geoclip_model.gps_gallery, predictor.gallery_gps)
    assert torch.allclose(geoclip_model.logit_scale, predictor.head.logit_scale)


@pytest.mark.slow
def test_topk_and_probabilities_match_geoclip(geoclip_model, predictor):
    torch.manual_seed(1)
    feats = torch.randn(4, 768) * 0.5
    geoclip_model.image_encoder.CLIP = _FixedFeatures(feats)
    with torch.no_grad():
        probs = geoclip_model(torch.zeros(4, 3, 224, 224), geoclip_model.gps_gallery).softmax(-1)
    # GeoCLIP.predict takes the top-k gallery rows, and its gallery repeats some points; ours
    # are the same ranking with each place once (at its first row), with the same probability
    gps = geoclip_model.gps_gallery
    ref = probs.topk(60, dim=-1)
    ours_p, ours_i = predictor.topk(feats, 20)
    for q in range(4):
        ranked = pd.DataFrame(gps[ref.indices[q]].numpy(), columns=["lat", "lon"])
        distinct = ~ranked.duplicated()
        want = ranked[distinct].head(20)
        assert [tuple(x) for x in gps[ours_i[q]].tolist()] == list(want.itertuples(index=False))
        want_p = ref.values[q].numpy()[distinct.to_numpy()][:20]
        np.testing.assert_allclose(ours_p[q].numpy(), want_p, atol=1e-6)
        first = pd.DataFrame(gps.numpy()).drop_duplicates().index  # each place's first row
        assert set(ours_i[q].tolist()) <= set(first)
    # the full distributions agree too, not only the head
    full = predictor.logits(feats).softmax(-1)
    assert (full - probs).abs().max().item() < 1e-5
