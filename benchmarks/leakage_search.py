"""The leakage search of `evaluate --train-features`: 3,000 test photos against 1M training
photos' features (768-d, random: CLIP's weights are not here), read shard by shard from an
embed-images folder. Target: <= 60 s on 2 cores. Peer in the same run: the same exact search
(faiss IndexFlatIP, k=1) over the same features already in memory as one index: what reading
the shards, searching them one by one and finding the nearest training location add.

The training folder is written once to --cache (3 GB) and reused.

    python benchmarks/leakage_search.py
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from geoconcept_cli.data.features import load_features, save_features
from geoconcept_cli.evaluation.leakage import find_leakage
from geoconcept_cli.model.clip_id import ClipId


def training_folder(root: Path, n: int, dim: int = 768) -> Path:
    """``n`` random features with random locations, written once."""
    folder = root / f"train-{n}"
    if not (folder / "meta.json").is_file():
        gen = torch.Generator().manual_seed(0)
        feats = torch.randn(n, dim, generator=gen)
        latlon = torch.stack([torch.rand(n, generator=gen) * 140 - 60,
                              torch.rand(n, generator=gen) * 360 - 180], dim=1)  # fmt: skip
        save_features(folder, [f"t{i}" for i in range(n)], feats, latlon, shard_size=65_536,
                      clip_model="ViT-L-14", clip_pretrained="none")  # fmt: skip
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=1_000_000)
    ap.add_argument("--test", type=int, default=3000)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/geoconcept-bench"))
    args = ap.parse_args()
    import faiss

    folder = training_folder(args.cache, args.train)
    gen = torch.Generator().manual_seed(1)
    test = torch.randn(args.test, 768, generator=gen)
    where = torch.stack([torch.rand(args.test, generator=gen) * 140 - 60,
                         torch.rand(args.test, generator=gen) * 360 - 180], dim=1)  # fmt: skip
    t = time.perf_counter()
    found = find_leakage(test, where, ClipId("ViT-L-14", "none"), folder)
    ours = time.perf_counter() - t
    train = F.normalize(load_features(folder).features, dim=1).numpy()
    index = faiss.IndexFlatIP(train.shape[1])
    index.add(train)
    t = time.perf_counter()
    cos, _ = index.search(F.normalize(test, dim=1).numpy(), 1)
    peer = time.perf_counter() - t
    assert np.allclose(cos[:, 0], found.cosine, atol=1e-4)  # the same answer
    print(f"{args.test:,} test photos x {args.train:,} training photos, "
          f"{torch.get_num_threads()} threads")  # fmt: skip
    print(f"find_leakage (shards read, cosines, nearest locations): {ours:7.1f} s (target <= 60 s)")
    print(f"faiss IndexFlatIP k=1, features in memory             : {peer:7.1f} s")
    print(f"ratio: {ours / peer:.2f}x")


if __name__ == "__main__":
    main()
