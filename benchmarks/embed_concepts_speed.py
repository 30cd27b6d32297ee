"""Concept embedding (`embed-concepts`, a first zero-shot explain): the shipped 645 concepts
under the 4 prompt templates through CLIP's text tower, as `encode_concepts` runs it (every
template of a batch at once, as far as the longest prompt), against the way it ran before
(template by template, all 77 positions), interleaved, with the largest difference between
their vectors. Random ViT-L/14 weights: the work is the same as with OpenAI's.

    python benchmarks/embed_concepts_speed.py [--concepts 645] [--repeats 1]
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from common import default_device, median_times

from geoconcept_cli.concepts.set import default_concepts_path, load_concepts
from geoconcept_cli.model.clip import ClipBackbone, load_clip
from geoconcept_cli.model.concept_embeddings import DEFAULT_TEMPLATES, encode_concepts


def full_length(names: list[str], clip: ClipBackbone, batch_size: int = 64) -> torch.Tensor:
    """The basis as it was embedded before: each template's prompts of a batch apart, through
    all 77 positions of the text tower."""
    out = []
    for start in range(0, len(names), batch_size):
        chunk = names[start : start + batch_size]
        per_template = [F.normalize(clip.model.encode_text(clip.tokenizer(
            [t.format(c) for c in chunk]).to(clip.device)).float(), dim=-1)
            for t in DEFAULT_TEMPLATES]  # fmt: skip
        out.append(F.normalize(torch.stack(per_template).mean(0), dim=-1).cpu())
    return torch.cat(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concepts", type=int, default=645)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--model", default="ViT-L-14")
    ap.add_argument("--device", default=default_device())
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    warnings.simplefilter("ignore")
    clip = load_clip(args.model, "none", args.device)
    names = load_concepts(default_concepts_path())["concept"].tolist()[: args.concepts]
    found: dict[str, torch.Tensor] = {}

    def run(name: str, fn: Callable[[list[str], ClipBackbone], torch.Tensor]
            ) -> Callable[[], None]:  # fmt: skip
        """``fn``, timed, its vectors kept for the comparison."""
        return lambda: found.__setitem__(name, fn(names, clip))

    runs = {"ours": run("ours", encode_concepts), "before": run("before", full_length)}
    times = median_times(runs, args.repeats, warmup=0)
    diff = float((found["ours"] - found["before"]).abs().max())
    print(
        f"{len(names)} concepts x {len(DEFAULT_TEMPLATES)} templates, {args.model}, "
        f"{args.device}, torch threads {torch.get_num_threads()}"
    )
    print(f"encode_concepts: {times['ours']:.1f} s, {len(names) / times['ours']:.1f} concepts/s")
    print(
        f"before (template by template, 77 positions): {times['before']:.1f} s, "
        f"{len(names) / times['before']:.1f} concepts/s"
    )
    print(
        f"speed-up: {times['before'] / times['ours']:.2f}x (target >= 3x); largest difference "
        f"between the vectors: {diff:.2e}"
    )


if __name__ == "__main__":
    main()
