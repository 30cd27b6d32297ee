"""Evaluation of 2,997 queries over the 100K gallery vs a bare matmul + top-1 of those sizes.

Both start from cached gallery embeddings (evaluate reads them from the cache); evaluate also
runs the image head, the distances and the threshold statistics. Target: <= 1.5x.

    python benchmarks/evaluate_speed.py
"""

from __future__ import annotations

import argparse

import torch
from common import default_device, median_time

from geoconcept_cli.encoders import load_geoclip_head
from geoconcept_cli.evaluate import summarize, top1_errors
from geoconcept_cli.gallery import cached_gallery_embeddings, load_gallery
from geoconcept_cli.predict import Predictor


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=2997)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default=default_device())
    args = ap.parse_args()
    dev, sync = args.device, args.device.startswith("cuda")
    head = load_geoclip_head(dev)
    gps = load_gallery()
    emb = cached_gallery_embeddings(gps, head)
    predictor = Predictor(head, gps, emb)
    feats = torch.randn(args.queries, 768, device=dev)
    truth = gps[torch.randint(len(gps), (args.queries,))]

    t_eval = median_time(lambda: summarize(top1_errors(predictor, feats, truth)), args.repeats,
                         sync=sync)  # fmt: skip
    q = torch.nn.functional.normalize(torch.randn(args.queries, 512, device=dev), dim=1)
    g = predictor.gallery_emb
    t_bare = median_time(lambda: (q @ g.T).argmax(dim=1).cpu(), args.repeats, sync=sync)
    print(f"device {dev}: {args.queries} queries x {len(gps):,} gallery points")
    print(f"evaluate (head + retrieval + distances + stats): {t_eval * 1000:8.1f} ms")
    print(f"bare matmul + top-1                            : {t_bare * 1000:8.1f} ms")
    print(f"ratio: {t_eval / t_bare:.2f}x  (target <= 1.5x)")


if __name__ == "__main__":
    main()
