"""`export --onnx`: a model that predicts with no torch: ``MODEL_DIR/onnx/``.

- ``model.onnx`` (its weights in ``model.onnx.data``): one graph from pixels (photos x 3 x H x
  W, the CLIP's preprocessing done) to each photo's query vector: the CLIP vision tower, the
  model's image head and its logit scale, so that a gallery place's logit is the query's
  product with the place's embedding; and what explanations read: a concept-aware model's
  image concept activations (``concepts``, photos x k), else the CLIP features
  (``features``) for zero-shot concepts; ``model.int8.onnx`` (and its data) with
  ``--quantize int8`` (dynamic quantization of its weights);
- ``gallery.safetensors`` (numpy arrays): ``place_emb`` (places x D), ``gps`` (rows x 2),
  ``places`` (each place's first row), ``copies`` (rows holding it), ``sites`` (each row's
  site of ``merge_km``, gallery.sites), and for a calibrated model ``areas`` (each row's ground
  within the calibration radius) and, where it has groups, ``slots`` (each row's threshold);
  for a concept-aware model ``place_concept_norms`` (each place's location concept
  activations are its unit embedding times this norm: what the place is known for);
- ``concepts.json``: the concept set's names, categories, subcategories and region tags;
  ``concepts.safetensors``: for zero-shot concepts, their unit CLIP text embeddings
  (``text``, k x D);
- ``runtime.json``: the format, the preprocessing (size, mean, std, interpolation, resize mode,
  read from open_clip for the backbone), the CLIP, what the graph takes and gives, the logit
  scale, the merge radius, the calibration (or null), and the sha256 of every file, checked
  before anything runs.

The folder is written under a temporary name and renamed into place.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import GeoconceptError
from ..gallery.sites import site_ids
from ..inference.calibration import place_areas
from ..inference.explainer import Explainer
from ..inference.factory import load_explainer
from ..inference.onnx_runtime import (
    CONCEPTS,
    CONCEPTS_JSON,
    GALLERY,
    GRAPH,
    GRAPH_INT8,
    ONNX_DIR,
    RUNTIME,
    RUNTIME_FORMAT,
)
from ..inference.predictor import Predictor
from ..inference.request import MERGE_KM
from ..io.artifacts import atomic_path, file_sha256, write_json
from ..model.checkpoints import read_model
from ..model.clip_id import ClipId
from ..model.concept_head import ConceptAwareHead, location_latents
from ..model.spec import ModelSpec
from ..runtime.progress import Report, silent
from .bundle import replace_folder

QUANTIZATIONS = ("int8",)
OUTPUTS = {True: "concepts", False: "features"}  # the graph's second output, by concept-awareness
MAX_PHOTOS = 64  # photos one run of the graph takes at most


class QueryGraph(nn.Module):
    """Pixels to query vectors (CLIP's image tower, the head's image side, its logit scale)
    and what explanations read: a concept-aware head's image concept activations, else the
    CLIP features."""

    def __init__(self, predictor: Predictor):
        super().__init__()
        assert predictor.clip is not None, "a query graph starts from pixels"
        self.clip = predictor.clip.model
        self.head = predictor.head
        self.scale = float(predictor.head.logit_scale.detach().exp())
        self.concept_aware = isinstance(predictor.head, ConceptAwareHead)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        clip: Any = self.clip  # open_clip's CLIP (untyped)
        feats = clip.encode_image(pixels).float()
        query = self.head.embed_images(feats) * self.scale
        if isinstance(self.head, ConceptAwareHead):
            return query, self.head.image_concepts(feats)
        return query, feats


def onnx_spec(checkpoint: str | Path | None, clip_model: str | None = None,
              clip_pretrained: str | None = None, **model: Any) -> ModelSpec:  # fmt: skip
    """The spec `export --onnx` exports: ``checkpoint`` (None: pretrained GeoCLIP) read by the
    CLIP given, by default the one the run records (GeoCLIP's for none)."""
    recorded = ClipId.from_meta(read_model(checkpoint).get("clip") or {}, prefix="") if (
        checkpoint is not None) else ClipId(None, None)  # fmt: skip
    return ModelSpec(checkpoint=checkpoint,
                     clip_model=clip_model or recorded.model or ModelSpec.clip_model,
                     clip_pretrained=clip_pretrained or recorded.pretrained
                     or ModelSpec.clip_pretrained, **model)  # fmt: skip


def export_onnx(spec: ModelSpec, out: str | Path, quantize: str | None = None,
                report: Report = silent) -> dict[str, Any]:  # fmt: skip
    """Write ``spec``'s model (a run, or pretrained GeoCLIP) as ``out/onnx/`` (module
    docstring); returns its runtime.json."""
    import open_clip

    if quantize is not None and quantize not in QUANTIZATIONS:
        raise GeoconceptError(f"--quantize {quantize}: give {' or '.join(QUANTIZATIONS)}")
    if spec.features is not None:
        raise GeoconceptError("--onnx exports a model that reads photos: it needs its CLIP")
    explainer = load_explainer(spec, report)
    predictor = explainer.predictor
    if predictor.index is not None:
        raise GeoconceptError("--onnx takes a gallery under 200K points (its places travel "
                              "in the bundle); give a smaller --gallery")  # fmt: skip
    assert predictor.clip is not None  # a spec without stored features loads its CLIP
    pre = open_clip.get_model_preprocess_cfg(predictor.clip.model)
    size = [int(s) for s in (pre["size"] if isinstance(pre["size"], tuple | list)
                             else (pre["size"], pre["size"]))]  # fmt: skip
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{ONNX_DIR}.", suffix=".tmp", dir=out))
    try:
        _write_graph(predictor, size, tmp / GRAPH)
        if quantize == "int8":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantize_dynamic(tmp / GRAPH, tmp / GRAPH_INT8, weight_type=QuantType.QInt8,
                             use_external_data_format=True)  # fmt: skip
        _write_gallery(predictor, tmp / GALLERY)
        _write_concepts(explainer, tmp)
        files = {p.name: file_sha256(p) for p in sorted(tmp.iterdir())}
        cal = predictor.calibration
        concept_aware = explainer.concept_aware
        config = {
            "format": RUNTIME_FORMAT,
            "clip": predictor.clip.identity.as_meta(prefix=""),
            "preprocess": {"size": size, "mean": [float(m) for m in pre["mean"]],
                           "std": [float(s) for s in pre["std"]],
                           "interpolation": pre["interpolation"],
                           "resize_mode": pre["resize_mode"]},
            "graph": {"input": "pixels", "outputs": ["query", OUTPUTS[concept_aware]],
                      "max_photos": MAX_PHOTOS, "dim": int(predictor.place_emb.shape[1])},
            "logit_scale": float(predictor.head.logit_scale.detach().exp()),
            "kind": "concept-aware" if concept_aware else "GeoCLIP",
            "retrained_geoclip": explainer.retrained_geoclip,
            "merge_km": MERGE_KM,
            "calibration": cal.to_json() if cal is not None else None,
            "files": files,
        }  # fmt: skip
        write_json(tmp / RUNTIME, config, sort_keys=False)
        replace_folder(tmp, out / ONNX_DIR)
        _card(out, config)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return config


def _write_graph(predictor: Predictor, size: list[int], path: Path) -> None:
    """The query graph as ONNX (torch.onnx's exporter, photos a dynamic axis), its weights in
    a file beside it (onnxruntime then starts in about half the time), checked by onnx."""
    import onnx

    graph = QueryGraph(predictor).eval().cpu()
    pixels = torch.zeros(2, 3, *size)
    photos = torch.export.Dim("photos", min=1, max=MAX_PHOTOS)
    with torch.no_grad():
        torch.onnx.export(graph, (pixels,), str(path), input_names=["pixels"],
                          output_names=["query", OUTPUTS[graph.concept_aware]],
                          dynamic_shapes=({0: photos},), dynamo=True, external_data=True,
                          verbose=False)  # fmt: skip
    onnx.checker.check_model(str(path))


def _write_gallery(predictor: Predictor, path: Path) -> None:
    """The gallery arrays the runtime scores against (module docstring)."""
    from safetensors.numpy import save_file

    cal = predictor.calibration
    arrays = {
        "place_emb": predictor.place_emb.float().cpu().numpy(),
        "gps": predictor.gallery_gps.double().numpy(),
        "places": predictor.places.cpu().numpy(),
        "copies": predictor.place_copies.cpu().numpy(),
        "place_of_row": _place_of_row(predictor),
        "sites": site_ids(predictor.gallery_gps, MERGE_KM, predictor.cache_dir).numpy(),
    }
    if cal is not None:
        arrays["areas"] = place_areas(predictor.gallery_gps, cal.radius_km,
                                      predictor.cache_dir).double().numpy()  # fmt: skip
        slots = predictor.region_slots()
        if slots is not None:
            arrays["slots"] = slots.numpy()
    head = predictor.head
    if isinstance(head, ConceptAwareHead):
        with torch.no_grad():
            latents = location_latents(head, predictor.gallery_gps[predictor.places.cpu()])
            basis = head.basis.detach().cpu()  # the latents come on the CPU
            arrays["place_concept_norms"] = (latents @ basis.T).norm(dim=1).numpy()
    save_file(arrays, str(path), metadata={"format": RUNTIME_FORMAT})


def _write_concepts(explainer: Explainer, folder: Path) -> None:
    """The concept set (names, types, region tags) and, for zero-shot concepts, their text
    embeddings."""
    from safetensors.numpy import save_file

    cs = explainer.concepts
    write_json(folder / CONCEPTS_JSON, {"names": cs.names, "categories": cs.categories,
                                        "subcategories": cs.subcategories,
                                        "regions": cs.regions}, sort_keys=False)  # fmt: skip
    if explainer.text is not None:
        save_file({"text": explainer.text.float().cpu().numpy()}, str(folder / CONCEPTS),
                  metadata={"format": RUNTIME_FORMAT})  # fmt: skip


def _place_of_row(predictor: Predictor) -> Any:
    """(N,) each gallery row's place (an index into ``places``): rows holding one point."""
    _, point = predictor.gallery_gps.unique(dim=0, return_inverse=True)
    place_of_point = torch.empty(int(point.max()) + 1, dtype=torch.long)
    place_of_point[point[predictor.places.cpu()]] = torch.arange(len(predictor.places))
    return place_of_point[point].numpy()


CARD_SECTION = "## Running without torch (onnx/)"


def _card(out: Path, config: dict[str, Any]) -> None:
    """The model card's section on the ONNX bundle: what it holds and needs (appended to the
    bundle's README.md, or the whole card of pretrained GeoCLIP's bundle)."""
    card = out / "README.md"
    text = card.read_text() if card.is_file() else f"# {out.name}\n\nPretrained GeoCLIP.\n"
    text = text.split(f"\n{CARD_SECTION}")[0].rstrip("\n")  # an earlier --onnx's section
    pre = config["preprocess"]
    graphs = ", ".join(f"`{name}`" for name in config["files"] if name.endswith(".onnx"))
    text += (
        f"\n\n{CARD_SECTION}\n\n"
        f"{graphs}: the CLIP {config['clip']['model']} image tower and this model's image "
        f"head as one graph, from {pre['size'][0]}x{pre['size'][1]} pixels (resized on the "
        f"shorter side, bicubic, centre-cropped, normalised by mean {pre['mean']} and std "
        f"{pre['std']}) to the vector scored against `gallery.safetensors`. It needs "
        "numpy, scipy, onnxruntime, Pillow, safetensors, pandas, pyarrow and geoconcept's "
        "gazetteer "
        "(and fastapi, uvicorn and python-multipart to serve), not torch:\n\n"
        "    geoconcept predict PHOTO --checkpoint THIS_FOLDER --runtime onnx\n"
        "    geoconcept explain PHOTO --checkpoint THIS_FOLDER --runtime onnx\n"
        "    geoconcept serve --checkpoint THIS_FOLDER --runtime onnx\n\n"
        "Hints, albums, `where`, `explain --check` and batch runs use the torch runtime. "
        "`runtime.json` "
        "records the sha256 of each file; a file that does not match is refused.\n"
    )
    with atomic_path(card) as tmp:
        tmp.write_text(text)
