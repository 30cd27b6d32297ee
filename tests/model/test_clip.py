"""The CLIP backbone's text tower, run only as far as a batch's last end-of-text token, gives
what the whole 77 positions give: concept embedding is several times faster for the same
vectors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from geoconcept_cli.concepts.set import default_concepts_path, load_concepts
from geoconcept_cli.model.clip import load_clip
from geoconcept_cli.model.concept_embeddings import DEFAULT_TEMPLATES, encode_concepts

# the last prompt is longer than the tower's 77 positions: the tokenizer cuts it there
PROMPTS = ["a photo of a yurt.", "a street view photo showing a red telephone box.",
           "a landscape photo with " + "very " * 90 + "tall trees."]  # fmt: skip


def _both(model: str) -> tuple[torch.Tensor, torch.Tensor]:
    with pytest.warns(UserWarning, match="random weights"):
        clip = load_clip(model, "none")
    full = clip.model.encode_text(clip.tokenizer(PROMPTS[:2])).float()  # every position
    return clip.encode_texts(PROMPTS[:2]), full


def test_the_text_tower_up_to_the_end_token_is_the_whole_tower(tiny_clip, monkeypatch):
    with pytest.warns(UserWarning, match="random weights"):
        clip = load_clip(tiny_clip, "none")
    tower = clip.model.encode_text
    ran: list[tuple[int, int]] = []  # (positions given, positions the tower holds) per call

    def counted(text, *args, **kwargs):
        ran.append((text.shape[1], clip.model.positional_embedding.shape[0]))
        return tower(text, *args, **kwargs)

    for prompts in (PROMPTS[:2], PROMPTS):  # 12 positions; all 77 where one prompt fills them
        full = tower(clip.tokenizer(prompts)).float()
        monkeypatch.setattr(clip.model, "encode_text", counted)
        torch.testing.assert_close(clip.encode_texts(prompts), full, atol=1e-5, rtol=0)
        monkeypatch.undo()
    assert ran == [(12, 12), (77, 77)]  # the tower ran cut, not whole
    assert clip.model.positional_embedding.shape[0] == 77  # the tower is whole again after
    assert tuple(clip.model.attn_mask.shape) == (77, 77)


@pytest.mark.slow
def test_the_same_holds_for_vit_l14():
    cut, full = _both("ViT-L-14")
    torch.testing.assert_close(cut, full, atol=1e-5, rtol=0)


def test_concepts_embed_as_they_did_prompt_by_prompt(tiny_clip):
    """The prompts of a batch under every template now go through the tower at once, as far
    as the longest: the basis is the one embedded template by template at full length."""
    with pytest.warns(UserWarning, match="random weights"):
        clip = load_clip(tiny_clip, "none")
    names = load_concepts(default_concepts_path())["concept"].tolist()[:70]
    per_template = [F.normalize(clip.model.encode_text(clip.tokenizer(
        [t.format(n) for n in names])).float(), dim=-1) for t in DEFAULT_TEMPLATES]  # fmt: skip
    want = F.normalize(torch.stack(per_template).mean(0), dim=-1)
    torch.testing.assert_close(encode_concepts(names, clip), want, atol=1e-5, rtol=0)
