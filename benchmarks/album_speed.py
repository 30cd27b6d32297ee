"""An album of 16 photos located together against the same 16 photos predicted one by one.

GeoCLIP's 100K gallery, random 768-d features (stored: no CLIP runs, which both would pay
alike), `predict`'s defaults; the two interleaved, medians of 5. Target: the album <= 1.1x the
16 single predictions.

    python benchmarks/album_speed.py [--photos 16]
"""

from __future__ import annotations

import argparse

import torch
from common import median_times

from geoconcept_cli.inference.album import locate_album
from geoconcept_cli.inference.factory import load_predictor
from geoconcept_cli.inference.request import Request
from geoconcept_cli.model.clip_id import ClipId
from geoconcept_cli.model.spec import ModelSpec, StoredFeatures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=int, default=16)
    n = ap.parse_args().photos
    p = load_predictor(ModelSpec(features=StoredFeatures(ClipId("ViT-L-14", "openai"), 768)))
    feats = torch.randn(n, 768, generator=torch.Generator().manual_seed(0)) * 3
    names = [f"photo {i}" for i in range(n)]
    times = median_times({
        "album": lambda: locate_album(p, feats, names, Request()),
        "single": lambda: [p.predict_features(feats[i : i + 1], Request()) for i in range(n)],
    }, repeats=5)  # fmt: skip
    ratio = times["album"] / times["single"]
    print(f"{n} photos over {len(p.places):,} places")
    print(f"  one by one: {1000 * times['single']:8.1f} ms")
    print(f"  together  : {1000 * times['album']:8.1f} ms  ratio {ratio:.2f}x (target <= 1.1x)")


if __name__ == "__main__":
    main()
