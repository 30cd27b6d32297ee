"""embed-concepts: the concept basis is written once, skipped when unchanged, refused when
made otherwise."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from geoconcept_cli.cli.app import app
from geoconcept_cli.errors import GeoconceptError
from geoconcept_cli.model.clip_id import ClipId

runner = CliRunner()


def test_embed_concepts_skips_when_unchanged_and_refuses_mismatch(tmp_path, tiny_clip, monkeypatch):
    from geoconcept_cli.model.concept_embeddings import load_concept_embeddings

    monkeypatch.chdir(tmp_path)  # the shipped concept set is found from any folder
    out = tmp_path / "basis.safetensors"
    args = ["embed-concepts", "--out", str(out), "--clip-model", tiny_clip,
            "--clip-pretrained", "none"]  # fmt: skip
    bad = runner.invoke(app, [*args, "--template", "a photo"])  # no {}: every row the same
    assert bad.exit_code == 2 and "--template 'a photo': needs exactly one {}" in bad.stderr
    assert "random weights" not in bad.stderr  # refused before CLIP loads
    first = runner.invoke(app, [*args[:2], str(tmp_path / "basis"), *args[3:]])  # no suffix
    assert first.exit_code == 0 and f"wrote {out} (" in first.stdout  # the file written
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "up to date" in again.stdout
    emb = load_concept_embeddings(out)
    assert emb.embeddings.shape == (len(emb.concepts), 768) and len(emb.concepts) >= 500
    torch.testing.assert_close(emb.embeddings.norm(dim=1), torch.ones(len(emb.concepts)))
    with pytest.raises(GeoconceptError, match=r"not ViT-L-14 \(none\); rerun embed-concepts"):
        load_concept_embeddings(out, ClipId("ViT-L-14", "none"))
    for wrong in (tmp_path, tmp_path / "manifest.csv"):  # named as given, not as *.safetensors
        with pytest.raises(GeoconceptError, match=f"^{wrong}: not concept embeddings"):
            load_concept_embeddings(wrong)
