"""`where` and `atlas` against their peers, measured in one run.

1. Warm ``where`` (a zero-shot text query: text encoder, image MLP, 100K-gallery softmax,
   distinct places, countries) vs a warm ``predict`` of one photo, both through a random
   ViT-L/14 with GeoCLIP's real MLP and 100K gallery. Target: <= 1.2x.
2. The atlas of 645 concepts over the 100K gallery (``country_means`` of one product, then the
   ranked per-country table) vs the bare product and per-country means written directly in
   torch, from the same location latents. Target: <= 2x.

    python benchmarks/where_atlas_speed.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
import torch
from common import default_device, median_time, photos

from geoconcept_cli.evaluation.atlas import atlas_table, country_means
from geoconcept_cli.gallery.store import load_gallery
from geoconcept_cli.geo.geocode import reverse_geocode
from geoconcept_cli.inference.factory import load_predictor
from geoconcept_cli.inference.locator import Locator
from geoconcept_cli.inference.request import Request
from geoconcept_cli.model.spec import ModelSpec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default=default_device())
    args = ap.parse_args()
    dev, sync = args.device, args.device.startswith("cuda")
    torch.set_grad_enabled(False)
    warnings.simplefilter("ignore")

    predictor = load_predictor(ModelSpec(clip_pretrained="none", device=dev))
    photo = photos(1)[0]
    locator = Locator(predictor)
    t_predict = median_time(lambda: predictor.predict(photo), args.repeats, sync=sync)
    t_where = median_time(lambda: locator.where("rice terraces", Request(top_k=5)), args.repeats,
                          sync=sync)  # fmt: skip
    print(f"device {dev}; random ViT-L/14, GeoCLIP's 100K gallery")
    print(f"warm predict (one photo)        : {t_predict * 1000:8.1f} ms")
    print(f"warm where (zero-shot text)     : {t_where * 1000:8.1f} ms")
    print(f"ratio: {t_where / t_predict:.2f}x  (target <= 1.2x)")

    gps = load_gallery()
    codes, index = np.unique(reverse_geocode(gps.numpy()).country.astype(str),
                             return_inverse=True)  # fmt: skip
    country = torch.from_numpy(index)
    gen = torch.Generator().manual_seed(0)
    z = torch.nn.functional.normalize(torch.randn(len(gps), 768, generator=gen), dim=1)
    basis = torch.nn.functional.normalize(torch.randn(645, 768, generator=gen), dim=1)
    names = [f"concept {i}" for i in range(645)]

    def library() -> None:
        atlas_table(country_means(z @ basis.T, country, len(codes)), codes, names)

    def bare() -> None:
        acts = z @ basis.T
        sums = torch.zeros(len(codes), 645).index_add_(0, country, acts)
        _ = sums / torch.bincount(country, minlength=len(codes))[:, None]

    t_lib = median_time(library, args.repeats)
    t_bare = median_time(bare, args.repeats)
    print(f"atlas of 645 concepts x {len(gps):,} points (table included): {t_lib * 1000:8.1f} ms")
    print(f"bare product + per-country means in torch            : {t_bare * 1000:8.1f} ms")
    print(f"ratio: {t_lib / t_bare:.2f}x  (target <= 2x)")


if __name__ == "__main__":
    main()
