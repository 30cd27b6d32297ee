"""Warm single-photo prediction: geoconcept vs GeoCLIP.predict vs the floor, and cold CLI start.

All three use a random ViT-L/14 (no CLIP weights are obtainable offline) with GeoCLIP's real
MLP, location encoder and 100K gallery. The floor is the bare ViT-L/14 image forward plus one
(1 x 512) @ (512 x 100K) product: what any retrieval predictor must at least do.

    python benchmarks/predict_latency.py [--repeats 5] [--photo PATH]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch
from common import default_device, median_time, photos


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--geoclip-repeats", type=int, default=3)
    ap.add_argument("--photo")
    ap.add_argument("--device", default=default_device())
    args = ap.parse_args()
    photo = Path(args.photo) if args.photo else photos(1)[0]
    dev = args.device
    sync = dev.startswith("cuda")
    torch.set_grad_enabled(False)
    warnings.simplefilter("ignore")
    print(f"photo: {photo}  device: {dev}  torch threads: {torch.get_num_threads()}")

    from geoconcept_cli.inference.factory import load_predictor
    from geoconcept_cli.io.images import load_image
    from geoconcept_cli.model.spec import ModelSpec

    ours = load_predictor(ModelSpec(clip_pretrained="none", device=dev))  # caches the gallery
    t_ours = median_time(lambda: ours.predict(photo), args.repeats, sync=sync)

    pixels = ours.clip.preprocess(load_image(photo)).unsqueeze(0).to(dev)
    gallery = torch.nn.functional.normalize(torch.randn(100_000, 512, device=dev), dim=1)
    vec = torch.randn(1, 512, device=dev)
    t_floor = median_time(
        lambda: (ours.clip.model.encode_image(pixels), (vec @ gallery.T).cpu()), args.repeats,
        sync=sync,
    )  # fmt: skip

    import geoclip

    peer = geoclip.GeoCLIP(from_pretrained=True, clip_pretrained=False).eval().to(dev)
    t_peer = median_time(lambda: peer.predict(str(photo), 5), args.geoclip_repeats, sync=sync)

    cmd = [sys.executable, "-m", "geoconcept_cli", "predict", str(photo),
           "--clip-pretrained", "none", "--device", dev]  # fmt: skip
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    t_cold = time.perf_counter() - t0

    print(f"geoconcept warm predict : {t_ours * 1000:9.1f} ms (median of {args.repeats})")
    print(f"GeoCLIP.predict         : {t_peer * 1000:9.1f} ms (median of {args.geoclip_repeats})")
    print(f"floor (ViT-L + matmul)  : {t_floor * 1000:9.1f} ms (median of {args.repeats})")
    print(f"geoconcept cold CLI     : {t_cold * 1000:9.1f} ms (one new process)")
    print(f"ratio vs GeoCLIP : {t_ours / t_peer:.3f}x  (target <= 0.1x)")
    print(f"ratio vs floor   : {t_ours / t_floor:.3f}x  (target <= 1.2x)")
    print(f"cold / warm      : {t_cold / t_ours:.2f}x  (target < 2x)")


if __name__ == "__main__":
    main()
