"""How closely an ONNX bundle answers as the torch path, on real photos: pretrained GeoCLIP's
bundle of a random ViT-L/14 (the weights file cold_start.py writes; no pretrained CLIP is
obtainable here), predicting Im2GPS3k photos both ways, and its INT8 graph against its fp32
one. Printed: how many photos get the same top-5 places (and points) in the same order, the
largest difference of a top-5 probability, and for INT8 the top-1 agreement and the cosine of
its query vectors with fp32's (no target: random weights have no accuracy to keep).

    python benchmarks/onnx_parity.py [--photos 200]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
from common import photos
from PIL import Image

from geoconcept_cli.inference.factory import load_predictor
from geoconcept_cli.inference.onnx_runtime import OnnxPredictor, bundle_folder
from geoconcept_cli.inference.request import Request
from geoconcept_cli.model.spec import ModelSpec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=int, default=200)
    ap.add_argument("--weights", default="/tmp/geoconcept-bench-vit-l-14.safetensors")
    ap.add_argument("--bundle", default="/tmp/geoconcept-bench-onnx-int8")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    bundle = Path(args.bundle)
    if not (bundle / "onnx" / "runtime.json").is_file():
        subprocess.run([sys.executable, "-m", "geoconcept_cli", "export", "--onnx", "--quantize",
                        "int8", "--out", str(bundle), "--clip-pretrained", args.weights],
                       check=True)  # fmt: skip
    torch_p = load_predictor(ModelSpec(clip_pretrained=args.weights))
    fp32 = OnnxPredictor(bundle_folder(bundle))
    int8 = OnnxPredictor(bundle_folder(bundle), int8=True)
    same, diffs, top1, cosines = 0, [], 0, []
    chosen = photos(args.photos)
    for photo in chosen:
        want = torch_p.predict(photo, Request()).predictions
        got = fp32.predict(photo, Request()).predictions
        key = [(c.gallery_index, c.points) for c in want]
        same += key == [(c.gallery_index, c.points) for c in got]
        diffs += [abs(a.prob - b.prob) for a, b in zip(got, want, strict=False)]
        pixels = fp32.preprocess(Image.open(photo).convert("RGB"))[None]
        a, b = fp32.query(pixels)[0], int8.query(pixels)[0]
        cosines.append(float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)))
        top1 += (fp32.predict_query(a).predictions[0].gallery_index
                 == int8.predict_query(b).predictions[0].gallery_index)  # fmt: skip
    n = len(chosen)
    print(f"{n} Im2GPS3k photos, random ViT-L/14, GeoCLIP's head and 100K gallery")
    print(
        f"fp32 ONNX vs torch: same top-5 places and points {same}/{n}; largest top-5 "
        f"probability difference {max(diffs):.2e}"
    )
    print(
        f"INT8 vs fp32 ONNX: same top-1 {top1}/{n}; query cosine mean {np.mean(cosines):.4f}, "
        f"min {np.min(cosines):.4f}"
    )


if __name__ == "__main__":
    main()
