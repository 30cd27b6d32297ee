"""`embed-images` throughput vs the bare open_clip forward at the same batch size.

The bare forward runs on pre-decoded, pre-processed tensors (no I/O at all); embed-images
decodes JPEGs in DataLoader workers and writes shards. Target: >= 0.9x (decoding must not be
the bottleneck).

    python benchmarks/embed_images_throughput.py [--n 3000] [--model ViT-L-14] [--images DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import pandas as pd
import torch
from common import IM2GPS, default_device, photos


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=None, help="photos (default 3000 GPU, 96 CPU)")
    ap.add_argument("--model", default="ViT-L-14")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--device", default=default_device())
    ap.add_argument(
        "--images",
        type=Path,
        default=IM2GPS / "images",
        help="photo folder (default Im2GPS3k's); fewer than --n are repeated",
    )
    args = ap.parse_args()
    gpu = args.device.startswith("cuda")
    n = args.n or (3000 if gpu else 96)
    batch = args.batch_size or (256 if gpu else 32)
    workers = args.workers if args.workers is not None else (12 if gpu else 2)
    warnings.simplefilter("ignore")

    from geoconcept_cli.data.embedding import EmbedOptions, embed_shards
    from geoconcept_cli.data.features import feature_summary
    from geoconcept_cli.data.manifests import read_manifest
    from geoconcept_cli.io.images import load_image
    from geoconcept_cli.model.clip import load_clip

    clip = load_clip(args.model, "none", args.device)
    files = photos(n, args.images)
    with tempfile.TemporaryDirectory() as tmp:
        manifest = Path(tmp) / "m.csv"
        pd.DataFrame({"path": [str(p) for p in files], "lat": 0.0, "lon": 0.0}).to_csv(
            manifest, index=False
        )
        m = read_manifest(manifest, "/")
        if m.skipped:  # a wrong folder would otherwise time the skipping of every row
            raise SystemExit(f"{len(m.skipped)} of {n} photos unusable, e.g. {m.skipped[0]}")
        # warm-up: kernels, page cache
        embed_shards(m, Path(tmp) / "warm", clip, EmbedOptions(batch, batch, workers))
        t = time.perf_counter()
        embed_shards(m, Path(tmp) / "feats", clip, EmbedOptions(batch, 4096, workers))
        if gpu:
            torch.cuda.synchronize()
        ours = n / (time.perf_counter() - t)
        embedded = len(feature_summary(Path(tmp) / "feats")[1])
        if embedded != n:
            raise SystemExit(f"only {embedded} of {n} photos were embedded (undecodable?)")

    pixels = torch.stack([clip.preprocess(load_image(p)) for p in files[:batch]])
    clip.encode_images(pixels)
    if gpu:
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(max(1, n // batch)):
        clip.encode_images(pixels)
    if gpu:
        torch.cuda.synchronize()
    bare = max(1, n // batch) * batch / (time.perf_counter() - t)
    print(
        f"device {args.device}, {args.model}, batch {batch}, workers {workers}, {n} photos "
        f"({len(set(files))} distinct)"
    )
    print(f"embed-images      : {ours:9.1f} images/s")
    print(f"bare CLIP forward : {bare:9.1f} images/s")
    print(f"ratio: {ours / bare:.2f}x  (target >= 0.9x)")


if __name__ == "__main__":
    main()
