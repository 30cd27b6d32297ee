"""Large galleries: a generated gallery past the indexing threshold is indexed, cached, and
ranks distinct places as the exact product does; commands that need every gallery point refuse
it in one line. The product indexes from 200,000 rows; this module lowers the threshold to its
gallery's 40,000 rows (and the encoding chunk to 16,384), so the same steps run on a fifth of
the points (encoding 200K took 35-50 s of the suite)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import one_line_error
from PIL import Image
from safetensors import safe_open
from synthetic import make_world
from typer.testing import CliRunner

from geoconcept_cli.cli.app import app
from geoconcept_cli.errors import GeoconceptError
from geoconcept_cli.gallery import index as gallery_index
from geoconcept_cli.gallery import store as gallery_mod
from geoconcept_cli.gallery.store import load_gallery
from geoconcept_cli.inference.batch.predict import predict_features
from geoconcept_cli.inference.factory import load_predictor
from geoconcept_cli.inference.predictor import Predictor
from geoconcept_cli.inference.request import Request
from geoconcept_cli.model.clip_id import ClipId
from geoconcept_cli.model.geoclip import load_geoclip_head
from geoconcept_cli.model.spec import ModelSpec, StoredFeatures

ROWS = 40_000  # indexed from here on in this module (see the docstring)
REPEATED = 1_000  # the last rows repeat the first ones: 39,000 places
FEATURES = StoredFeatures(ClipId("ViT-L-14", "openai"), 768)  # given directly: no CLIP loads


def sphere_points(n: int, seed: int = 0) -> np.ndarray:
    """``n`` (lat, lon) uniform on the sphere."""
    v = np.random.default_rng(seed).normal(size=(n, 3))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return np.c_[np.degrees(np.arcsin(v[:, 2])), np.degrees(np.arctan2(v[:, 1], v[:, 0]))]


@pytest.fixture(scope="module", autouse=True)
def indexed_from_rows():
    """The indexing threshold at this module's gallery size, and chunks it takes several of."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gallery_index, "INDEX_MIN_ROWS", ROWS)
        mp.setattr(gallery_index, "CHUNK", 16_384)
        yield


@pytest.fixture(scope="module")
def big_gallery(tmp_path_factory):
    points = sphere_points(ROWS)
    points[-REPEATED:] = points[:REPEATED]
    path = tmp_path_factory.mktemp("big") / "gallery.parquet"
    pd.DataFrame({"lat": points[:, 0], "lon": points[:, 1]}).to_parquet(path)
    return path


@pytest.fixture(scope="module")
def big(big_gallery, session_cache):
    """The indexed predictor, encoded once into the session's cache (as the CLI finds it)."""
    return load_predictor(ModelSpec(gallery=big_gallery, features=FEATURES))


def exact_place_probs(p: Predictor, feats: torch.Tensor) -> torch.Tensor:
    """(B, places) probabilities under the softmax over every gallery row (the float16
    embeddings, in float32)."""
    return p.logits(feats).softmax(-1)[:, p.places]


def test_a_large_gallery_is_indexed_and_stored_compactly(big, big_gallery, session_cache):
    assert big.index is not None and big.gallery_emb.dtype == torch.float16
    assert len(big.places) == ROWS - REPEATED
    files = sorted((session_cache / "gallery").glob("*"))
    emb_file = next(f for f in files if f.name.endswith(".f16.safetensors"))
    key = emb_file.name.split(".")[0]
    assert {f.name for f in files if f.name.startswith(key)} == {
        f"{key}.f16.safetensors", f"{key}.{gallery_index.INDEX_KIND}.faiss"}  # fmt: skip
    # 2 bytes a dimension, and the index 1 byte per projected dimension of each place
    assert emb_file.stat().st_size == pytest.approx(ROWS * (512 * 2 + 8), abs=1000)
    index_file = session_cache / "gallery" / f"{key}.{gallery_index.INDEX_KIND}.faiss"
    assert index_file.stat().st_size < 1.1 * len(big.places) * gallery_index.PROJECTED_DIM + 1e6
    with safe_open(emb_file, framework="pt") as f:  # a plain safetensors file
        assert f.get_slice("embeddings").get_dtype() == "F16"
        assert torch.equal(f.get_tensor("gps"), load_gallery(big_gallery))
        row = f.get_tensor("embeddings")[12345]
    assert torch.equal(row, big.gallery_emb[12345])
    # float16 keeps the float32 encoder's embeddings to 1e-3
    fresh = gallery_mod.encode_locations(big.gallery_gps[:2000], big.head)
    torch.testing.assert_close(big.gallery_emb[:2000].float(), fresh, atol=1e-3, rtol=0)


def test_top_k_are_distinct_places_ranked_as_the_exact_softmax_ranks_them(big):
    feats = torch.randn(40, 768, generator=torch.Generator().manual_seed(3))
    probs, rows = big.topk(feats, 5)
    exact = exact_place_probs(big, feats)
    best = big.places[exact.argmax(1)]
    assert (rows[:, 0] == best).float().mean() >= 0.975  # recall@1 against exact search
    for q in range(len(feats)):
        assert len(set(rows[q].tolist())) == 5 and int(rows[q].max()) < ROWS - REPEATED
        assert probs[q].tolist() == sorted(probs[q].tolist(), reverse=True)
        # normalised over the retrieved candidates: the exact probabilities times one factor
        # (>= 1: the candidates hold part of the gallery's mass)
        pos = torch.searchsorted(big.places, rows[q])
        ratio = probs[q].double() / exact[q, pos].double()
        torch.testing.assert_close(ratio, ratio[:1].expand(5), rtol=2e-3, atol=0)
        assert ratio[0] >= 1
    assert probs.sum(1).max() <= 1 + 1e-6


def test_a_repeated_place_is_listed_once_and_weighted_by_its_copies(big):
    index = big.index
    assert index is not None
    # the unit embedding of a place that rows 7 and ROWS - REPEATED + 7 both hold
    target = F.normalize(big.gallery_emb[7:8].float(), dim=1)
    copy = ROWS - REPEATED + 7
    probs, rows = index.topk(target, 10, scale=50.0, temperature=1.0)
    assert rows[0, 0] == 7 and copy not in rows[0].tolist()
    logits = 50.0 * (target @ big.gallery_emb[rows[0]].float().T)[0]
    # its probability counts one copy, its softmax mass both: p1 / p2 = exp(z1 - z2) still
    torch.testing.assert_close(probs[0, 1] / probs[0, 0], (logits[1] - logits[0]).exp(),
                               rtol=1e-3, atol=0)  # fmt: skip


def test_a_large_gallery_is_read_back_from_the_cache(big_gallery, session_cache, monkeypatch):
    monkeypatch.setattr(gallery_index, "encode_locations", lambda *a, **k: pytest.fail("encoded"))
    monkeypatch.setattr(gallery_index, "build_index", lambda *a: pytest.fail("index rebuilt"))
    p = load_predictor(ModelSpec(gallery=big_gallery, features=FEATURES))
    assert p.index is not None and p.index.index.ntotal == ROWS - REPEATED
    # the index lost (pruned by hand, or unreadable): rebuilt from the cached embeddings
    (index_file,) = (session_cache / "gallery").glob(f"*.{gallery_index.INDEX_KIND}.faiss")
    index_file.write_bytes(b"not an index")
    monkeypatch.undo()
    monkeypatch.setattr(gallery_index, "encode_locations", lambda *a, **k: pytest.fail("encoded"))
    feats = torch.randn(3, 768, generator=torch.Generator().manual_seed(0))
    again = load_predictor(ModelSpec(gallery=big_gallery, features=FEATURES))
    assert again.index is not None and index_file.stat().st_size > 1e6
    assert torch.equal(again.topk(feats, 5)[1], p.topk(feats, 5)[1])
    assert not list(session_cache.rglob("*.tmp"))


def test_the_cache_key_and_bound_hold_for_indexed_galleries(small_gallery, tmp_path, monkeypatch):
    """On 500 points (indexed as a large gallery is): new weights are a new entry, and the
    LRU bound removes an entry's embeddings and index together."""
    gps = load_gallery(small_gallery)
    heads = [load_geoclip_head() for _ in range(2)]
    with torch.no_grad():
        heads[1].location_encoder.LocEnc0.head[0].bias.add_(0.1)
    folder = tmp_path / "gallery"
    gallery_index.indexed_gallery(gps, heads[0], tmp_path)
    first = {f.name for f in folder.iterdir()}
    assert len(first) == 2
    monkeypatch.setenv("GEOCONCEPT_GALLERY_CACHE_GB", "0")  # only the entry just written stays
    emb, index = gallery_index.indexed_gallery(gps, heads[1], tmp_path)
    second = {f.name for f in folder.iterdir()}
    assert len(second) == 2 and not first & second
    with torch.no_grad():
        fresh = heads[1].embed_locations(gps[:50])
    torch.testing.assert_close(emb[:50].float(), fresh, atol=1e-3, rtol=0)
    # a truncated embeddings file is encoded again (a rename, as every cache write is: a
    # process still mapping the old file keeps it), and its index rebuilt
    expected, (emb_file,) = emb.clone(), folder.glob("*.f16.safetensors")
    cut = emb_file.with_suffix(".cut")
    cut.write_bytes(emb_file.read_bytes()[:5000])
    cut.replace(emb_file)
    emb2, index2 = gallery_index.indexed_gallery(gps, heads[1], tmp_path)
    assert torch.equal(emb2, expected) and index2.index.ntotal == len(index2.places)


def test_batch_prediction_searches_the_index(big, tmp_path):
    world = make_world(tmp_path / "world", n_regions=3, per_region=8, clip_model="ViT-L-14")
    meta = predict_features(big, world["test"], tmp_path / "out", Request(top_k=3))
    assert "not the whole gallery" in meta["normalised_over"]
    table = pd.read_parquet(tmp_path / "out")
    from geoconcept_cli.data.features import read_shard

    _, feats, _ = read_shard(world["test"], 0)
    ranked = big.ranked(feats, 3, Request().merge_km)  # as predict lists a photo's
    rows, first = ranked.rows, table.iloc[: len(ranked.rows)]
    np.testing.assert_allclose(first["lat"], big.gallery_gps[rows[:, 0], 0].numpy(), atol=1e-5)
    np.testing.assert_allclose(first["prob"], ranked.probs[:, 0].numpy(), rtol=1e-6)


def test_predict_says_what_the_probabilities_are_normalised_over(big, big_gallery, tiny_clip,
                                                                 tmp_path):  # fmt: skip
    photo = tmp_path / "p.jpg"
    Image.new("RGB", (64, 48), (30, 90, 150)).save(photo)
    res = CliRunner().invoke(app, ["predict", str(photo), "--clip-model", tiny_clip,
                                   "--clip-pretrained", "none", "--gallery", str(big_gallery),
                                   "--json"])  # fmt: skip
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert len({(c["lat"], c["lon"]) for c in out["predictions"]}) == 5
    note = out["probabilities"]["normalised_over"]
    assert note == f"the 1024 places the index retrieved, of {ROWS - REPEATED:,}; not the " \
        "whole gallery"  # fmt: skip


def test_commands_that_score_every_point_refuse_a_large_gallery(big_gallery, tmp_path):
    world = make_world(tmp_path / "world", n_regions=3, per_region=8, clip_model="tiny-clip-768")
    args = ["calibrate", str(world["train"]), "--gallery", str(big_gallery)]
    res = CliRunner().invoke(app, [*args, "--cache-dir", str(tmp_path / "cache")])
    assert f"calibrate scores every gallery point; this gallery has {ROWS:,} (from {ROWS:,}" \
        in one_line_error(res)  # fmt: skip
    assert not (tmp_path / "cache" / "gallery").exists()  # refused before any encoding
    gps = load_gallery(big_gallery)
    with pytest.raises(GeoconceptError, match="evaluate scores every gallery point"):
        gallery_index.refuse_large(gps, "evaluate")
    gallery_index.refuse_large(gps[: ROWS - 1], "evaluate")  # one fewer: served exactly
