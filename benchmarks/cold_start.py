"""Cold start: `geoconcept predict photo.jpg --clip-pretrained weights.safetensors` as a new
process against GeoCLIP's own cold start + predict, each in a fresh process, same photo.

No pretrained CLIP weights are obtainable offline, so ours reads a random ViT-L/14 written to
a local safetensors file once (the real path: weights from a file), while GeoCLIP builds its
CLIP randomly and reads no weights at all, which flatters the peer. Both use GeoCLIP's real
MLP, location encoder and 100K gallery (ours from its cache, filled before timing).

A third process is the floor of any open_clip-based command: import torch and open_clip,
build ViT-L/14 on the meta device, load the same weights file in place, encode one random
224 px image. No CLI, photo, gallery or place names. GeoCLIP's time over the floor's is the
most any such command could reach on this machine. A fourth is `geoconcept predict photo.jpg
--checkpoint BUNDLE --runtime onnx` from pretrained GeoCLIP's ONNX bundle of the same weights
(export --onnx, written once): no torch, no open_clip; a fifth the same with its INT8 graph
(`--runtime onnx-int8`). The five run interleaved, one of each in turn.

    python benchmarks/cold_start.py [--repeats 3] [--photo PATH] [--weights FILE]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from common import ONNX_BUNDLE, VIT_L14, geoclip_bundle, median_times, photos, random_vit_l14

PEER = """
import sys
from geoclip import GeoCLIP
model = GeoCLIP(clip_pretrained=False)
print(model.predict(sys.argv[1], top_k=5))
"""

FLOOR = """
import sys
import open_clip
import torch
from safetensors.torch import load_file
with torch.device("meta"):
    model = open_clip.create_model("ViT-L-14", device="meta")
model.load_state_dict(load_file(sys.argv[1]), assign=True)
with torch.inference_mode():
    print(model.encode_image(torch.rand(1, 3, 224, 224)).shape)
"""


def process(cmd: list[str]) -> Callable[[], None]:
    """A new process running ``cmd`` (raises if it fails)."""

    def run() -> None:
        subprocess.run(cmd, check=True, capture_output=True)

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--photo")
    ap.add_argument("--weights", type=Path, default=VIT_L14)
    ap.add_argument("--bundle", type=Path, default=ONNX_BUNDLE)
    args = ap.parse_args()
    photo = str(Path(args.photo) if args.photo else photos(1)[0])
    weights = random_vit_l14(args.weights)
    bundle = geoclip_bundle(weights, args.bundle)
    ours = [sys.executable, "-m", "geoconcept_cli", "predict", photo, "--clip-pretrained",
            str(weights)]  # fmt: skip
    onnx = [sys.executable, "-m", "geoconcept_cli", "predict", photo, "--checkpoint",
            str(bundle), "--runtime", "onnx"]  # fmt: skip
    # the warm-up run fills the gallery cache and the page cache: all then read warm files
    t = median_times({"ours": process(ours), "floor": process([sys.executable, "-c", FLOOR,
                                                               str(weights)]),
                      "peer": process([sys.executable, "-c", PEER, photo]),
                      "onnx": process(onnx),
                      "onnx-int8": process([*onnx[:-1], "onnx-int8"])},
                     args.repeats)  # fmt: skip
    print(f"photo: {photo}  (medians of {args.repeats}, interleaved)")
    print(f"geoconcept predict, new process         : {t['ours']:6.2f} s")
    print(f"floor: torch + open_clip + ViT-L forward : {t['floor']:6.2f} s")
    print(f"GeoCLIP cold start + predict            : {t['peer']:6.2f} s")
    print(f"geoconcept predict --runtime onnx        : {t['onnx']:6.2f} s")
    print(f"geoconcept predict --runtime onnx-int8   : {t['onnx-int8']:6.2f} s")
    print(
        f"speed-up : {t['peer'] / t['ours']:.2f}x  (target >= 5x); "
        f"the floor's: {t['peer'] / t['floor']:.2f}x, the most an open_clip command can reach"
    )
    print(
        f"ONNX bundle: {t['peer'] / t['onnx']:.2f}x GeoCLIP's (target >= 6x), "
        f"{t['ours'] / t['onnx']:.2f}x the torch path's (target >= 2x); INT8: "
        f"{t['peer'] / t['onnx-int8']:.2f}x and {t['ours'] / t['onnx-int8']:.2f}x"
    )


if __name__ == "__main__":
    main()
