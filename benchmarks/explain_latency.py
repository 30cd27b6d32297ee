"""Warm `explain` vs warm `predict` of one photo, same random ViT-L/14 and 100K gallery.

Zero-shot mode (shipped concept set, CLIP text embeddings) and checkpoint mode (a concept-
aware head over the shipped concepts; untrained, which does not change the cost).
Target: explain <= 1.3x predict.

    python benchmarks/explain_latency.py [--check]
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path

import torch
from common import default_device, median_time, photos


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--check", action="store_true", help="include the deletion check")
    ap.add_argument("--device", default=default_device())
    args = ap.parse_args()
    dev, sync = args.device, args.device.startswith("cuda")
    warnings.simplefilter("ignore")
    torch.set_grad_enabled(False)

    from geoconcept_cli.inference.factory import load_explainer
    from geoconcept_cli.inference.request import Request
    from geoconcept_cli.model.checkpoints import save_checkpoint
    from geoconcept_cli.model.concept_head import ConceptAwareHead, init_from_geoclip
    from geoconcept_cli.model.spec import ModelSpec

    photo = photos(1)[0]
    zero = load_explainer(ModelSpec(clip_pretrained="none", device=dev))
    predictor = zero.predictor
    asked = Request(check=args.check)
    t_pred = median_time(lambda: predictor.predict(photo), args.repeats, sync=sync)
    t_zero = median_time(lambda: zero.explain(photo, asked), args.repeats, sync=sync)

    with tempfile.TemporaryDirectory() as tmp:
        head = init_from_geoclip(ConceptAwareHead(zero.text))
        meta = {"concepts": zero.concepts.names, "categories": zero.concepts.categories,
                "subcategories": zero.concepts.subcategories}  # fmt: skip
        ckpt = Path(tmp) / "checkpoint.safetensors"
        save_checkpoint(ckpt, head, {}, concepts=meta, step=0)
        full = load_explainer(ModelSpec(checkpoint=ckpt, clip_pretrained="none", device=dev))
        t_full = median_time(lambda: full.explain(photo, asked), args.repeats,
                             sync=sync)  # fmt: skip
        t_full_pred = median_time(lambda: full.predictor.predict(photo), args.repeats,
                                  sync=sync)  # fmt: skip

    print(f"device {dev}, photo {photo.name}, check={args.check}")
    print(f"predict (GeoCLIP head)        : {t_pred * 1000:8.1f} ms")
    print(f"explain zero-shot             : {t_zero * 1000:8.1f} ms  "
          f"ratio {t_zero / t_pred:.2f}x (target <= 1.3x)")  # fmt: skip
    print(f"predict (concept-aware head)  : {t_full_pred * 1000:8.1f} ms")
    print(f"explain with checkpoint       : {t_full * 1000:8.1f} ms  "
          f"ratio {t_full / t_full_pred:.2f}x (target <= 1.3x)")  # fmt: skip


if __name__ == "__main__":
    main()
