"""Evaluation of 2,997 queries over the 100K gallery, against two peers in the same run.

1. The distance statistics alone (image head, retrieval, distances, thresholds) vs a bare
   matmul + top-1 of those sizes, both from cached gallery embeddings. Target: <= 1.5x.
2. ``evaluate_models`` with every metric (GeoScore, country/region/city, continents, ECE before
   and after calibration, conformal coverage, region areas and recall-vs-area of a calibrated
   model) vs the evaluation before those metrics existed (gallery and cached embeddings loaded,
   distance statistics, gallery ceiling by a product with the whole gallery, as it was then).
   Target: <= 1.5x. Also printed: the same peer with today's ceiling (a KD-tree), which
   isolates what the new metrics cost. The true locations are Im2GPS3k's where ../shared/data
   has them (reverse geocoding depends on where they are), else gallery points; the features
   are random, as the CLIP weights are.

    python benchmarks/evaluate_speed.py
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import pandas as pd
import torch
from common import IM2GPS, default_device, median_time, median_times

from geoconcept_cli.evaluation.calibration_fit import calibrate_predictor
from geoconcept_cli.evaluation.scores import evaluate_models, nearest_gallery_km, summarize
from geoconcept_cli.gallery.store import cached_gallery_embeddings, load_gallery
from geoconcept_cli.geo.distance import haversine_km, unit_vectors
from geoconcept_cli.inference.calibration_record import save_calibration
from geoconcept_cli.inference.predictor import Predictor
from geoconcept_cli.model.clip_id import ClipId
from geoconcept_cli.model.geoclip import load_geoclip_head


@torch.no_grad()
def top1_errors(predictor: Predictor, feats: torch.Tensor, truth: torch.Tensor, chunk=4096):
    """Great-circle error (km) of each query's top-1 gallery point: evaluate before the new
    metrics, the peer of the second comparison."""
    embed = predictor.head.embed_images
    idx = torch.cat(
        [predictor.gallery_cosines(embed(feats[s : s + chunk])).argmax(dim=1).cpu()
         for s in range(0, len(feats), chunk)]
    )  # fmt: skip
    pred = predictor.gallery_gps[idx]
    return haversine_km(truth[:, 0], truth[:, 1], pred[:, 0], pred[:, 1])


def product_ceiling_km(test: torch.Tensor, gallery: torch.Tensor, chunk: int = 4096):
    """The gallery ceiling as evaluate computed it before the new metrics: each test point's
    nearest gallery point by a product of unit vectors with the whole gallery (a copy of the
    old nearest_gallery_km, kept as the peer's; the library's now uses a KD-tree)."""
    g = unit_vectors(gallery)
    best = [(unit_vectors(test[s : s + chunk]) @ g.T).argmax(dim=1)
            for s in range(0, len(test), chunk)]  # fmt: skip
    j = torch.cat(best)
    return haversine_km(test[:, 0], test[:, 1], gallery[j, 0], gallery[j, 1])


def true_locations(n: int, gps: torch.Tensor) -> torch.Tensor:
    labels = IM2GPS / "im2gps3k_places365.csv"
    if labels.is_file():
        df = pd.read_csv(labels)
        latlon = torch.tensor(df[["LAT", "LON"]].to_numpy(), dtype=torch.float32)
        return latlon[torch.arange(n) % len(latlon)]
    return gps[torch.randint(len(gps), (n,), generator=torch.Generator().manual_seed(0))]


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
    truth = true_locations(args.queries, gps)

    t_eval = median_time(lambda: summarize(top1_errors(predictor, feats, truth)), args.repeats,
                         sync=sync)  # fmt: skip
    q = torch.nn.functional.normalize(torch.randn(args.queries, 512, device=dev), dim=1)
    g = predictor.gallery_emb
    t_bare = median_time(lambda: (q @ g.T).argmax(dim=1).cpu(), args.repeats, sync=sync)
    print(f"device {dev}: {args.queries} queries x {len(gps):,} gallery points")
    print(f"evaluate (head + retrieval + distances + stats): {t_eval * 1000:8.1f} ms")
    print(f"bare matmul + top-1                            : {t_bare * 1000:8.1f} ms")
    print(f"ratio: {t_eval / t_bare:.2f}x  (target <= 1.5x)")

    def before(ceiling=product_ceiling_km) -> dict:  # evaluate as it was: distances, ceiling
        g = load_gallery()
        p = Predictor(head, g, cached_gallery_embeddings(g, head))
        return {"model": summarize(top1_errors(p, feats, truth)),
                "ceiling": summarize(ceiling(truth, g))}  # fmt: skip

    with tempfile.TemporaryDirectory() as tmp:
        cal_path = Path(tmp) / "calibration.json"
        calib = torch.randn(1000, 768, device=dev)
        cal = calibrate_predictor(predictor, calib, true_locations(1000, gps), ClipId(None, None))
        save_calibration(cal_path, cal)

        def after() -> None:
            evaluate_models({"GeoCLIP": head}, feats, truth, calibrations={"GeoCLIP": cal_path})

        # the first run builds the reverse-geocoding tables and the region areas (then cached)
        t = median_times(
            {"before": before, "after": after, "same": lambda: before(nearest_gallery_km)},
            args.repeats,
            sync=sync,
        )
        t_before, t_after, t_same = t["before"], t["after"], t["same"]
    print(f"evaluate before the new metrics               : {t_before * 1000:8.1f} ms")
    print(f"evaluate, every metric, calibrated model       : {t_after * 1000:8.1f} ms")
    print(f"ratio: {t_after / t_before:.2f}x  (target <= 1.5x)")
    print(f"the same peer with today's ceiling (KD-tree)   : {t_same * 1000:8.1f} ms")
    print(f"ratio, what the new metrics alone cost: {t_after / t_same:.2f}x")


if __name__ == "__main__":
    main()
