"""A search limited to a country against the same search of the whole gallery.

One photo at a time (random 768-d features, stored: no CLIP runs), `predict`'s path with its
defaults, over GeoCLIP's 100K gallery (exact product, masked) and over the 1M-point gallery of
``gallery_query.py`` (faiss, with an ID selector), the limited and the free queries
interleaved. The limit's mask is made once per predictor (reverse-geocoding every gallery
point): that setup is printed apart. Targets: limited <= 1.1x free at 100K, <= 1.2x at 1M.

    python benchmarks/limited_query.py [--photos 50] [--points 1000000] [--within FR]
"""

from __future__ import annotations

import argparse
import time

from common import median_times
from gallery_query import load, photo_features

from geoconcept_cli.geo.limits import Limits
from geoconcept_cli.inference.factory import load_predictor
from geoconcept_cli.inference.predictor import Predictor
from geoconcept_cli.inference.request import Request
from geoconcept_cli.model.clip_id import ClipId
from geoconcept_cli.model.spec import ModelSpec, StoredFeatures


def compare(name: str, predictor: Predictor, limits: Limits, photos: int, target: float) -> None:
    feats = photo_features(photos)
    t = time.perf_counter()
    inside = predictor.limited(limits).place_count
    setup = time.perf_counter() - t
    free, kept = Request(), Request(limits=limits)

    def run(request: Request):
        return lambda: [predictor.predict_features(feats[i : i + 1], request)
                        for i in range(photos)]  # fmt: skip

    times = median_times({"free": run(free), "limited": run(kept)}, repeats=3)
    ratio = times["limited"] / times["free"]
    print(f"{name}: {len(predictor.places):,} places, {inside:,} inside {limits.describe()} "
          f"(mask made once: {setup:.2f} s)")  # fmt: skip
    print(f"  free   : {1000 * times['free'] / photos:7.2f} ms a photo")
    print(f"  limited: {1000 * times['limited'] / photos:7.2f} ms a photo  ratio {ratio:.2f}x "
          f"(target <= {target}x)")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=int, default=50)
    ap.add_argument("--points", type=int, default=1_000_000)
    ap.add_argument("--within", default="FR")
    args = ap.parse_args()
    limits = Limits.parse([args.within])
    exact = load_predictor(ModelSpec(features=StoredFeatures(ClipId("ViT-L-14", "openai"), 768)))
    compare("GeoCLIP's 100K gallery (exact)", exact, limits, args.photos, 1.1)
    compare(f"{args.points:,}-point gallery (indexed)", load(args.points), limits, args.photos,
            1.2)  # fmt: skip


if __name__ == "__main__":
    main()
