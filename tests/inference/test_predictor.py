"""Predictor, gallery cache and CLIP loading on a tiny random 768-d open_clip model."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest
import torch
from PIL import Image

from geoconcept_cli.errors import GeoconceptError
from geoconcept_cli.gallery import store as gallery_mod
from geoconcept_cli.gallery.store import cached_gallery_embeddings, load_gallery
from geoconcept_cli.inference.factory import load_predictor
from geoconcept_cli.inference.predictor import Predictor
from geoconcept_cli.inference.request import Request
from geoconcept_cli.model.clip import RandomWeightsWarning, check_weights_reachable, load_clip
from geoconcept_cli.model.geoclip import load_geoclip_head
from geoconcept_cli.model.spec import ModelSpec


@pytest.fixture(scope="module")
def tiny_predictor(tiny_clip, small_gallery):
    with pytest.warns(RandomWeightsWarning):
        return load_predictor(
            ModelSpec(clip_model=tiny_clip, clip_pretrained="none", gallery=small_gallery)
        )


def test_predict_photo(tiny_predictor, tmp_path):
    photo = tmp_path / "p.jpg"
    Image.new("RGB", (120, 80), (20, 140, 60)).save(photo)
    cands = tiny_predictor.predict(photo, Request(top_k=3)).predictions
    assert [c.rank for c in cands] == [1, 2, 3]
    probs = [c.prob for c in cands]
    assert probs == sorted(probs, reverse=True) and 0 < probs[0] <= 1
    for c in cands:
        assert tuple(tiny_predictor.gallery_gps[c.gallery_index].tolist()) == pytest.approx(
            (c.lat, c.lon)
        )
        assert c.place  # offline reverse geocoding always names something


def test_probabilities_sum_to_one_over_the_gallery_rows(tiny_predictor):
    feats = torch.randn(3, 768)
    rows = tiny_predictor.logits(feats).softmax(-1)
    torch.testing.assert_close(rows.sum(-1), torch.ones(3))
    probs, idx = tiny_predictor.topk(feats, len(tiny_predictor.gallery_gps))
    assert probs.shape == (3, len(tiny_predictor.places))  # every place, once
    torch.testing.assert_close(probs, rows.gather(1, idx))


def test_a_place_the_gallery_repeats_is_one_candidate_ranked_as_geoclip_ranks_it():
    torch.manual_seed(0)
    head = load_geoclip_head()
    gps = torch.tensor([[48.85, 2.35], [40.71, -74.0], [48.85, 2.35], [-33.87, 151.2]])
    predictor = Predictor(head, gps, cached_gallery_embeddings(gps, head))
    feats = torch.randn(2, 768)
    rows = predictor.logits(feats).softmax(-1)
    probs, idx = predictor.topk(feats, 5)
    assert probs.shape == (2, 3)  # three distinct places
    for q in range(2):
        assert sorted(idx[q].tolist()) == [0, 1, 3]  # a place is named by its first row
        torch.testing.assert_close(probs[q], rows[q, idx[q]])  # each row's own probability
        assert probs[q].tolist() == sorted(probs[q].tolist(), reverse=True)
        assert idx[q, 0] == [0, 1, 0, 3][rows[q].argmax()]  # the argmax row's place


def test_random_backbone_is_reproducible(tiny_clip):
    with pytest.warns(RandomWeightsWarning):
        a = load_clip(tiny_clip, "none")
    with pytest.warns(RandomWeightsWarning):
        b = load_clip(tiny_clip, "none")
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(a.encode_images(x), b.encode_images(x))


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_local_checkpoint_loads(tiny_clip, tmp_path, suffix):
    from safetensors.torch import save_file

    with pytest.warns(RandomWeightsWarning):
        ref = load_clip(tiny_clip, "none")
    sd = {k: v.clone() * 1.5 for k, v in ref.model.state_dict().items()}
    path = tmp_path / f"ckpt{suffix}"
    save_file(sd, str(path)) if suffix == ".safetensors" else torch.save(sd, path)
    loaded = load_clip(tiny_clip, str(path))
    for k, v in loaded.model.state_dict().items():
        assert torch.equal(v, sd[k]), k
    # built on the meta device and loaded in place: the same model as open_clip's own path,
    # buffers no checkpoint holds (the text tower's causal mask) included
    import open_clip

    from geoconcept_cli.model.clip_id import resolve_model_name

    theirs = open_clip.create_model(resolve_model_name(tiny_clip), pretrained=str(path)).eval()
    ours = loaded.model
    assert not any(t.is_meta for t in (*ours.parameters(), *ours.buffers()))
    assert torch.equal(ours.attn_mask, theirs.attn_mask)
    x, text = torch.randn(2, 3, 64, 64), loaded.tokenizer(["a harbour", "rice terraces"])
    assert torch.allclose(ours.encode_image(x), theirs.encode_image(x), rtol=1e-5, atol=1e-5)
    assert torch.allclose(ours.encode_text(text), theirs.encode_text(text), rtol=1e-5, atol=1e-5)
    assert not ours.training and not any(p.requires_grad for p in ours.parameters())


def test_a_half_precision_weights_file_gives_a_float32_model(tiny_clip, tmp_path):
    from safetensors.torch import save_file

    with pytest.warns(RandomWeightsWarning):
        ref = load_clip(tiny_clip, "none")
    half = {k: v.half() if v.is_floating_point() else v for k, v in ref.model.state_dict().items()}
    save_file(half, str(tmp_path / "half.safetensors"))
    clip = load_clip(tiny_clip, str(tmp_path / "half.safetensors"))
    assert {t.dtype for t in clip.model.parameters()} == {torch.float32}
    x = torch.randn(1, 3, 64, 64)
    assert torch.allclose(clip.encode_images(x), ref.encode_images(x), atol=0.05, rtol=0.05)


def test_a_checkpoint_missing_weights_is_refused_in_one_line(tiny_clip, tmp_path):
    from safetensors.torch import save_file

    with pytest.warns(RandomWeightsWarning):
        ref = load_clip(tiny_clip, "none")
    sd = dict(ref.model.state_dict())
    del sd["visual.proj"]
    save_file(sd, str(tmp_path / "partial.safetensors"))
    with pytest.raises(GeoconceptError, match="could not load CLIP .*visual.proj") as err:
        load_clip(tiny_clip, str(tmp_path / "partial.safetensors"))
    assert "\n" not in str(err.value)


def test_clip_errors_are_one_line(tiny_clip, tmp_path):
    with pytest.raises(GeoconceptError, match="unknown CLIP model"):
        load_clip("ViT-Nope-99", "none")
    with pytest.raises(GeoconceptError, match="no pretrained tag"):
        load_clip("ViT-B-32", "not-a-tag")
    with pytest.raises(GeoconceptError, match="missing.pt: no such CLIP checkpoint"):
        load_clip(tiny_clip, str(tmp_path / "missing.pt"))
    with pytest.raises(GeoconceptError, match="is a folder, expected a CLIP checkpoint"):
        load_clip(tiny_clip, str(tmp_path) + "/")
    with pytest.raises(GeoconceptError, match="no such CLIP model config"):
        load_clip(str(tmp_path / "nope.json"), "none")
    with pytest.raises(GeoconceptError, match="--device gpu: not a torch device"):
        load_clip(tiny_clip, "none", "gpu")
    if not torch.cuda.is_available():
        with pytest.raises(GeoconceptError, match="--device cuda: this machine has no CUDA GPU"):
            load_clip(tiny_clip, "none", "cuda")


@pytest.fixture
def unreachable_hub(tmp_path, monkeypatch):
    """An empty Hugging Face cache and a hub endpoint where nothing listens."""
    from huggingface_hub import constants

    from geoconcept_cli.runtime.distributed import free_port

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"https://127.0.0.1:{free_port()}")
    for var in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(var.upper(), raising=False)
    return tmp_path / "hub"


def test_unreachable_weights_explain_what_to_do(unreachable_hub, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # as HF_HUB_OFFLINE=1 at import
    with pytest.raises(GeoconceptError) as info:
        load_clip("ViT-B-32", "openai")
    msg = str(info.value)
    assert "HF_HUB_OFFLINE is set" in msg and "\n" not in msg
    assert "--clip-pretrained /path/to/checkpoint" in msg


def test_weights_neither_cached_nor_reachable_fail_before_the_model_is_built(unreachable_hub):
    with pytest.raises(GeoconceptError, match=r"not cached and 127\.0\.0\.1 cannot be reached"):
        load_clip("ViT-L-14", "openai")


def _in_hub_cache(hub: Path, repo: str, filename: str) -> None:
    """Lay out one cached file as huggingface_hub does (refs/main -> snapshots/REV/FILE)."""
    folder = hub / f"models--{repo.replace('/', '--')}"
    (folder / "snapshots" / "abc").mkdir(parents=True, exist_ok=True)
    (folder / "snapshots" / "abc" / filename).write_bytes(b"weights")
    (folder / "refs").mkdir(exist_ok=True)
    (folder / "refs" / "main").write_text("abc")


def test_cached_weights_or_a_proxy_skip_the_reachability_check(unreachable_hub, monkeypatch):
    with pytest.raises(GeoconceptError):
        check_weights_reachable("ViT-L-14", "openai")
    _in_hub_cache(unreachable_hub, "timm/vit_large_patch14_clip_224.openai",
                  "open_clip_model.safetensors")  # fmt: skip
    check_weights_reachable("ViT-L-14", "openai")  # cached: open_clip loads it offline
    # a tag naming its file (.../pytorch_model.bin): its .safetensors twin counts as cached
    with pytest.raises(GeoconceptError):
        check_weights_reachable("ViTamin-S", "datacomp1b")
    _in_hub_cache(unreachable_hub, "jienengchen/ViTamin-S", "pytorch_model.safetensors")
    check_weights_reachable("ViTamin-S", "datacomp1b")
    with pytest.raises(GeoconceptError):
        check_weights_reachable("ViT-L-14", "laion2b_s32b_b82k")  # another repo: not cached
    monkeypatch.setenv("NO_PROXY", "localhost")  # names no proxy: still checked
    with pytest.raises(GeoconceptError):
        check_weights_reachable("ViT-L-14", "laion2b_s32b_b82k")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    check_weights_reachable("ViT-L-14", "laion2b_s32b_b82k")  # the proxy may reach the hub


def test_gallery_cache_encodes_once(tmp_path, small_gallery, monkeypatch):
    head = load_geoclip_head()
    gps = load_gallery(small_gallery)
    calls = []
    real = gallery_mod.encode_locations
    monkeypatch.setattr(
        gallery_mod, "encode_locations", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    first = cached_gallery_embeddings(gps, head, tmp_path)
    second = cached_gallery_embeddings(gps, head, tmp_path)
    assert len(calls) == 1 and torch.equal(first, second)
    torch.testing.assert_close(first.norm(dim=1), torch.ones(len(gps)))
    with torch.no_grad():
        head.image_mlp[0].bias.add_(0.0)  # untouched weights keep the key ...
        head.location_encoder.LocEnc0.head[0].bias.add_(0.1)  # ... changed weights do not
    cached_gallery_embeddings(gps, head, tmp_path)
    assert len(calls) == 2
    assert not [p for p in tmp_path.rglob("*.tmp")]  # nothing half-written left behind


def test_gallery_cache_keeps_the_most_recently_used_within_its_bound(
    tmp_path, small_gallery, monkeypatch
):
    gps = load_gallery(small_gallery)
    heads = [load_geoclip_head() for _ in range(3)]
    for i, head in enumerate(heads):  # three checkpoints: three cache entries
        with torch.no_grad():
            head.logit_scale.add_(i)
    entry_mb = len(gps) * 512 * 4 / 1e6
    monkeypatch.setenv("GEOCONCEPT_GALLERY_CACHE_GB", str(2.5 * entry_mb / 1e3))  # room for 2
    folder = tmp_path / "gallery"

    def entries() -> set[str]:
        return {p.name for p in folder.glob("*.safetensors")}

    def later() -> None:  # 100 s pass: no tie, whatever the filesystem's time resolution
        for p in folder.glob("*.safetensors"):
            os.utime(p, (p.stat().st_atime - 100, p.stat().st_mtime - 100))

    cached_gallery_embeddings(gps, heads[0], tmp_path)
    a = entries()
    later()
    cached_gallery_embeddings(gps, heads[1], tmp_path)
    b = entries() - a
    later()
    cached_gallery_embeddings(gps, heads[0], tmp_path)  # a hit: the first is used again
    later()
    cached_gallery_embeddings(gps, heads[2], tmp_path)
    assert len(entries()) == 2 and a <= entries() and not b & entries()  # the second went
    monkeypatch.setenv("GEOCONCEPT_GALLERY_CACHE_GB", "0")  # the entry just written stays
    cached_gallery_embeddings(gps, heads[1], tmp_path)
    assert entries() == b

    # a read-only shared cache: the hit cannot be stamped, and is still used
    def read_only(*args):
        raise PermissionError("read-only file system")

    monkeypatch.setattr(gallery_mod.os, "utime", read_only)
    monkeypatch.setattr(gallery_mod, "encode_locations", lambda *a, **k: pytest.fail("encoded"))
    cached_gallery_embeddings(gps, heads[1], tmp_path)
    monkeypatch.setenv("GEOCONCEPT_GALLERY_CACHE_GB", "lots")
    with pytest.raises(GeoconceptError, match="GEOCONCEPT_GALLERY_CACHE_GB=lots: expected"):
        cached_gallery_embeddings(gps, heads[2], tmp_path)


def test_cache_command_shows_and_clears_only_what_it_can_remake(tmp_path):
    from typer.testing import CliRunner

    from geoconcept_cli.cli.app import app

    for part, size in (("gallery", 3_000_000), ("concepts", 2_000_000), ("concept-sources", 700),
                       ("gazetteer", 8_000_000)):  # fmt: skip
        (tmp_path / part / "x").mkdir(parents=True)
        (tmp_path / part / "x" / "data.bin").write_bytes(b"0" * size)
    res = CliRunner().invoke(app, ["cache", "--cache-dir", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith(f"cache {tmp_path} (gallery embeddings kept within ")
    assert res.stdout.splitlines()[1:] == [
        "concept-sources: 1 files, 0 MB",
        "concepts: 1 files, 2 MB",
        "gallery: 1 files, 3 MB",
        "gazetteer: 1 files, 8 MB",
    ]
    res = CliRunner().invoke(app, ["cache", "--clear", "--cache-dir", str(tmp_path)])
    assert res.exit_code == 0 and f"removed 3 files (13 MB) from {tmp_path}" in res.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["concept-sources"]
    res = CliRunner().invoke(app, ["cache", "--cache-dir", str(tmp_path / "concept-sources" /
                                                               "x" / "data.bin")])  # fmt: skip
    assert res.exit_code == 2 and "not a folder" in res.stderr


def test_gallery_formats(tmp_path):
    df = pd.DataFrame({"Latitude": [10.0, -20.5], "LONGITUDE": [30.0, 120.25]})
    df.to_parquet(tmp_path / "g.parquet")
    assert load_gallery(tmp_path / "g.parquet").tolist() == [[10.0, 30.0], [-20.5, 120.25]]
    pd.DataFrame({"x": [1], "y": [2]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(GeoconceptError, match="no latitude column"):
        load_gallery(tmp_path / "bad.csv")
    pd.DataFrame({"lat": [95.0], "lon": [0.0]}).to_csv(tmp_path / "off.csv", index=False)
    with pytest.raises(GeoconceptError, match="invalid coordinates"):
        load_gallery(tmp_path / "off.csv")


def test_gallery_progress_reports_its_real_total(small_gallery):
    gps = load_gallery(small_gallery)
    calls = []
    gallery_mod.encode_locations(gps, load_geoclip_head(), 128, lambda n, t: calls.append((n, t)))
    assert sum(n for n, _ in calls) == len(gps) and {t for _, t in calls} == {len(gps)}


def test_galleries_are_indexed_from_200k_rows():
    """GeoCLIP's 100K gallery is served exactly; from 200,000 rows a gallery is indexed
    (tests/gallery/test_index.py runs the indexed path on a smaller one)."""
    from geoconcept_cli.gallery.index import is_large

    assert not is_large(torch.zeros(199_999, 2)) and is_large(torch.zeros(200_000, 2))
