"""Batch prediction from features (`predict FEATS --out`) against a bare product + top-k.

Both over GeoCLIP's 100K gallery from its cached embeddings, for the same random 768-d
features. Ours reads the shards, runs the image MLP, scores places, writes the Parquet parts
(top-1, probability, error, country, top-k); the peer is (N x 512) @ (512 x 100K) and a top-k,
in chunks of the same size, from features already in memory. Throughput ratio: target >= 0.8x.
Then `explain FEATS --out` (``explain_feature_folder``, its Parquet parts included) on the
first ``--explain`` photos, with a concept-aware head on 645 random concept embeddings (not
trained: the cost is the same), against the bare product + top-k of that head's own 645-d
embeddings (photos already embedded, all 100K gallery rows), timed in the same way.
Candidates are the gallery's 5 km sites by default, which takes every photo's full gallery
probabilities (inference.sites); ``--merge-km 0`` measures the blocked kernel alone.

    python benchmarks/batch_predict_speed.py [--photos 20000] [--top-k 5] [--explain 2048]
                                             [--merge-km 0]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import default_device

from geoconcept_cli.concepts.set import ConceptSet
from geoconcept_cli.data.features import save_features
from geoconcept_cli.gallery.store import cached_gallery_embeddings
from geoconcept_cli.inference.batch.explain import explain_feature_folder
from geoconcept_cli.inference.batch.predict import predict_features
from geoconcept_cli.inference.explainer import Explainer
from geoconcept_cli.inference.factory import load_predictor
from geoconcept_cli.inference.predictor import Predictor
from geoconcept_cli.inference.request import MERGE_KM, Request
from geoconcept_cli.model.clip_id import ClipId
from geoconcept_cli.model.concept_head import build_head
from geoconcept_cli.model.spec import ModelSpec, StoredFeatures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=int, default=20000)
    ap.add_argument("--top-k", type=int, default=5)
    ap.add_argument(
        "--merge-km",
        type=float,
        default=MERGE_KM,
        help="candidates' radius (0: gallery points, the kernel alone)",
    )
    ap.add_argument("--explain", type=int, default=2048, help="photos explained")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved explain/peer timings")
    ap.add_argument("--device", default=default_device())
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    asked = Request(top_k=args.top_k, merge_km=args.merge_km)
    stored = StoredFeatures(ClipId("ViT-L-14", "openai"), 768)
    predictor = load_predictor(ModelSpec(device=args.device, features=stored))
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(args.photos, 768, generator=gen)
    gps = predictor.gallery_gps
    latlon = gps[torch.randint(len(gps), (args.photos,), generator=gen)]
    sync = args.device.startswith("cuda")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "feats"
        save_features(folder, [str(i) for i in range(args.photos)], feats, latlon,
                      clip_model="ViT-L-14", clip_pretrained="openai")  # fmt: skip
        predict_features(predictor, folder, Path(tmp) / "warm", asked)  # warm-up
        shutil.rmtree(Path(tmp) / "warm")
        t = time.perf_counter()
        predict_features(predictor, folder, Path(tmp) / "out", asked)
        if sync:
            torch.cuda.synchronize()
        ours = time.perf_counter() - t

        torch.manual_seed(0)
        head = build_head(torch.nn.functional.normalize(torch.randn(645, 768), dim=1))
        head = head.eval().to(args.device)
        concept_aware = Predictor(head, gps, cached_gallery_embeddings(gps, head))
        names = [f"concept {i}" for i in range(645)]
        explainer = Explainer(concept_aware, ConceptSet(names, ["natural"] * 645, ["x"] * 645))
        few = Path(tmp) / "few"
        n = args.explain
        save_features(few, [str(i) for i in range(n)], feats[:n], latlon[:n],
                      clip_model="ViT-L-14", clip_pretrained="openai")  # fmt: skip
        img = head.embed_images(feats[:n].to(args.device))
        explain_feature_folder(explainer, few, Path(tmp) / "explained", asked)  # warm-up
        times, peers = [], []
        for r in range(args.repeats):  # interleaved: this machine's speed drifts
            t = time.perf_counter()
            explain_feature_folder(explainer, few, Path(tmp) / f"explained-{r}", asked)
            if sync:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
            peers.append(bare_seconds(img, concept_aware.gallery_emb, args.top_k, sync))
        explained, explain_peer = statistics.median(times), statistics.median(peers)

    q = torch.nn.functional.normalize(torch.randn(args.photos, 512, device=args.device), dim=1)
    peer = bare_seconds(q, predictor.gallery_emb, args.top_k, sync)
    print(f"device {args.device}: {args.photos:,} photos x {len(gps):,} gallery points, "
          f"top-{args.top_k}")  # fmt: skip
    print(f"predict FEATS --out : {ours:7.2f} s  ({args.photos / ours:9.0f} photos/s)")
    print(f"bare product + top-k: {peer:7.2f} s  ({args.photos / peer:9.0f} photos/s)")
    print(f"throughput ratio: {peer / ours:.2f}x  (target >= 0.8x)")
    print(
        f"explain FEATS --out : {1000 * explained / n:7.2f} ms a photo ({n} photos); bare "
        f"product + top-k of its 645-d embeddings {1000 * explain_peer / n:.2f} ms: "
        f"{explain_peer / explained:.2f}x  (target >= 0.8x; medians of {args.repeats})"
    )


def bare_seconds(q: torch.Tensor, gallery: torch.Tensor, k: int, sync: bool) -> float:
    """Seconds of the peer: unit embeddings (N, D) times all gallery rows, then top-k, in
    chunks of 4096 photos; the second of two runs."""

    def bare() -> None:
        for s in range(0, len(q), 4096):
            (q[s : s + 4096] @ gallery.T).topk(k, dim=1).indices.cpu()

    bare()
    t = time.perf_counter()
    bare()
    if sync:
        torch.cuda.synchronize()
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
