"""How closely an ONNX bundle answers as the torch path, on real photos: pretrained GeoCLIP's
bundle of a random ViT-L/14 (common.geoclip_bundle; no pretrained CLIP is obtainable here),
predicting and explaining Im2GPS3k photos both ways (each photo read once per runtime), and
its INT8 graph against its fp32 one. Printed: how many photos get the same top-5 places (and
points) in the same order, the largest difference of a top-5 probability, how many get the
same zero-shot concepts (photo's and place's) with the largest difference of their weights,
and for INT8 the top-1 agreement and the cosine of its query vectors with fp32's (no target:
random weights have no accuracy to keep).

    python benchmarks/onnx_parity.py [--photos 200]
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np
from common import ONNX_BUNDLE, VIT_L14, geoclip_bundle, photos, random_vit_l14
from PIL import Image

from geoconcept_cli.inference.factory import load_explainer
from geoconcept_cli.inference.onnx_explainer import OnnxExplainer
from geoconcept_cli.inference.onnx_runtime import OnnxPredictor, bundle_folder
from geoconcept_cli.inference.request import Request
from geoconcept_cli.model.spec import ModelSpec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=int, default=200)
    ap.add_argument("--weights", type=Path, default=VIT_L14)
    ap.add_argument("--bundle", type=Path, default=ONNX_BUNDLE)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    bundle = geoclip_bundle(random_vit_l14(args.weights), args.bundle)
    torch_e = load_explainer(ModelSpec(clip_pretrained=str(args.weights)))
    torch_p = torch_e.predictor
    fp32 = OnnxExplainer(OnnxPredictor(bundle_folder(bundle)))
    int8 = OnnxPredictor(bundle_folder(bundle), int8=True)
    same, diffs, top1, cosines = 0, [], 0, []
    same_concepts, concept_diffs = 0, []
    chosen = photos(args.photos)
    for photo in chosen:
        image = Image.open(photo).convert("RGB")
        feats = torch_p.image_features([image])
        want = torch_p.predict_features(feats, Request()).predictions
        query, second = (o[0] for o in fp32.predictor.outputs(fp32.predictor.pixels(image)))
        got = fp32.predictor.predict_query(query, Request()).predictions
        key = [(c.gallery_index, c.points) for c in want]
        same += key == [(c.gallery_index, c.points) for c in got]
        diffs += [abs(a.prob - b.prob) for a, b in zip(got, want, strict=False)]
        want_e = torch_e.explain_features(feats, Request())
        got_e = fp32.explain_outputs(query, second, Request())
        lists = [(getattr(got_e, k) or [], getattr(want_e, k) or [])
                 for k in ("photo_concepts", "place_concepts")]  # fmt: skip
        same_concepts += all([c["concept"] for c in g] == [c["concept"] for c in w]
                             for g, w in lists)  # fmt: skip
        concept_diffs += [abs(a["weight"] - b["weight"]) for g, w in lists
                          for a, b in zip(g, w, strict=False)]  # fmt: skip
        b = int8.query(int8.pixels(image))[0]
        cosines.append(float(query @ b / np.linalg.norm(query) / np.linalg.norm(b)))
        top1 += (got[0].gallery_index
                 == int8.predict_query(b).predictions[0].gallery_index)  # fmt: skip
    n = len(chosen)
    print(f"{n} Im2GPS3k photos, random ViT-L/14, GeoCLIP's head and 100K gallery")
    print(
        f"fp32 ONNX vs torch: same top-5 places and points {same}/{n}; largest top-5 "
        f"probability difference {max(diffs):.2e}"
    )
    print(
        f"fp32 ONNX vs torch explain: same photo and place concepts {same_concepts}/{n}; "
        f"largest weight difference {max(concept_diffs):.2e}"
    )
    print(
        f"INT8 vs fp32 ONNX: same top-1 {top1}/{n}; query cosine mean {np.mean(cosines):.4f}, "
        f"min {np.min(cosines):.4f}"
    )


if __name__ == "__main__":
    main()
