"""Run checkpoints and exported models, read as data: loading a file given to geoconcept never
runs code, and a damaged or foreign one is refused in one line.

Three layouts, one reader (``read_model``) that returns the same dict for each, so every command
treats a run folder, a checkpoint file and an exported bundle alike:

- ``RUN/checkpoint.safetensors`` (format ``geoconcept-checkpoint/2``, written by ``train``):
  every tensor of the training state in safetensors (weights under ``model/``, the optimizer's
  moments, the GPS queue) and the rest (options, step, provenance, optimizer and scheduler
  settings) as JSON in the file's header: one atomically written file holds a resumable run.
- ``RUN/checkpoint.pt`` (format 1, a torch pickle, written by geoconcept before this format):
  still read, with ``torch.load(weights_only=True)``, whose unpickler builds tensors and plain
  containers only and refuses anything else. ``train --resume`` and ``export`` convert it.
- ``MODEL_DIR/`` (format ``geoconcept-model/1``, written by ``export``): ``model.safetensors``,
  ``config.json`` (which records the weights' sha256), ``concepts.json`` and a model card.
"""

from __future__ import annotations

import json
import pickle
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard

import pandas as pd
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ..concepts.set import concept_set_hash
from ..errors import GeoconceptError, first_line, require_file
from ..io.artifacts import (
    atomic_path,
    file_sha256,
)
from .clip_id import ClipId, check_same_clip
from .concept_head import ConceptAwareHead, RetrievalHead
from .geoclip import GEOCLIP_FEATURE_DIM, GeoCLIPHead, image_mlp_record
from .spec import CALIBRATION_NAME

if TYPE_CHECKING:
    from .concept_head import RetrievalHead

CHECKPOINT_FORMAT = "geoconcept-checkpoint/2"
LEGACY_FORMAT = "geoconcept-checkpoint/1"
BUNDLE_FORMAT = "geoconcept-model/1"
CHECKPOINT_NAME = "checkpoint.safetensors"
LEGACY_NAME = "checkpoint.pt"
BUNDLE_WEIGHTS, BUNDLE_CONFIG, BUNDLE_CONCEPTS = "model.safetensors", "config.json", "concepts.json"
KINDS = {"concept": "concept-aware", "geoclip": "plain GeoCLIP"}
RESUME_STATE = ("optimizer", "scheduler", "queue")

# What a malformed header or tree raises while it is decoded: all mean "damaged file".
_DECODE_ERRORS = (SafetensorError, KeyError, TypeError, ValueError, RecursionError, OSError)


# ------------------------------------------------------------------------------ writing
def save_checkpoint(path: str | Path, head: RetrievalHead, config: dict[str, Any],
                    **state: Any) -> None:  # fmt: skip
    """Atomically write a run checkpoint: weights, the config that made it, its image MLP (the
    features' width, GeoCLIP's MLP or a fresh one), training state."""
    write_checkpoint(path, {"kind": "concept" if isinstance(head, ConceptAwareHead) else "geoclip",
                            "model": head.state_dict(), "config": config,
                            "image_mlp": image_mlp_record(head.image_width), **state})  # fmt: skip


def write_checkpoint(path: str | Path, ckpt: dict[str, Any]) -> None:
    """Atomically write a checkpoint dict (as ``read_checkpoint`` returns it)."""
    tensors: dict[str, torch.Tensor] = {}
    tree = _encode({k: v for k, v in ckpt.items() if k != "format"}, tensors, "")
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": CHECKPOINT_FORMAT,
                                               "state": json.dumps(tree)})  # fmt: skip


def _encode(obj: Any, tensors: dict[str, torch.Tensor], key: str) -> Any:
    """A JSON tree of ``obj`` whose tensors move to ``tensors`` (named by their path). Tuples
    and dicts with non-string keys (the optimizer's parameter ids) are tagged, so they come back
    as they were."""
    if isinstance(obj, torch.Tensor):
        tensors[key] = obj.detach().to("cpu", copy=True).contiguous()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        items = [[k, _encode(v, tensors, f"{key}/{k}" if key else str(k))] for k, v in obj.items()]
        return dict(items) if all(isinstance(k, str) for k in obj) else {"__items__": items}
    if isinstance(obj, list | tuple):
        seq = [_encode(v, tensors, f"{key}/{i}") for i, v in enumerate(obj)]
        return {"__tuple__": seq} if isinstance(obj, tuple) else seq
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise TypeError(f"a checkpoint cannot store {type(obj).__name__} (at {key})")


def _decode(node: Any, f: Any) -> Any:
    """The inverse of ``_encode``, tensors read from the open safetensors file ``f``."""
    if isinstance(node, list):
        return [_decode(v, f) for v in node]
    if not isinstance(node, dict):
        return node
    if node.keys() == {"__tensor__"}:
        return f.get_tensor(node["__tensor__"])
    if node.keys() == {"__tuple__"}:
        return tuple(_decode(v, f) for v in node["__tuple__"])
    if node.keys() == {"__items__"}:
        return {k: _decode(v, f) for k, v in node["__items__"]}
    return {k: _decode(v, f) for k, v in node.items()}


# ------------------------------------------------------------------------------ reading
def run_checkpoint(folder: str | Path) -> Path | None:
    """The checkpoint of a run folder: the safetensors one, else a legacy .pt, else None."""
    for name in (CHECKPOINT_NAME, LEGACY_NAME):
        if (Path(folder) / name).is_file():
            return Path(folder) / name
    return None


def read_model(path: str | Path) -> dict[str, Any]:
    """A run folder, a checkpoint file or an exported bundle, as a checkpoint dict:
    ``kind``, ``model`` (weights), ``config`` (training options), ``clip``, ``image_mlp``
    (absent before backbones other than ViT-L/14: see ``image_mlp_of``), ``concepts``,
    ``step``, ``total_steps``, ``features`` (and the training state, for a run)."""
    path = Path(path)
    if path.is_dir():
        if (path / BUNDLE_WEIGHTS).is_file() or (path / BUNDLE_CONCEPTS).is_file():
            return read_bundle(path)
        found = run_checkpoint(path)
        if found is None:
            raise GeoconceptError(f"{path}: no {CHECKPOINT_NAME} (a train run) nor "
                                  f"{BUNDLE_WEIGHTS} (an exported model) in it")  # fmt: skip
        path = found
    return read_checkpoint(path)


def read_checkpoint(path: str | Path, resume: bool = False) -> dict[str, Any]:
    """One checkpoint file (safetensors, legacy pickle read safely, or a bundle's weights);
    with ``resume``, it must also hold the training state a run continues from."""
    path = require_file(path, "checkpoint")
    with path.open("rb") as f:
        start = f.read(9)
    safetensors = start[8:] == b"{"  # an 8-byte header size, then JSON (checked first: the
    # size's low byte may be 0x80, like a pickle's first)
    if not safetensors and start[:2] != b"PK" and start[:1] != b"\x80":
        raise GeoconceptError(f"{path}: not a geoconcept checkpoint (neither safetensors nor a "
                              "torch file)")  # fmt: skip
    if not safetensors:  # a torch zip archive or a raw pickle
        ckpt = _read_legacy(path)
    else:
        meta = _header(path)
        if meta.get("format") == BUNDLE_FORMAT:  # MODEL_DIR/model.safetensors
            return read_bundle(path.parent)
        _check_format(meta.get("format"), CHECKPOINT_FORMAT, path, "checkpoint")
        try:
            with safe_open(str(path), "pt") as f:
                ckpt = _decode(json.loads(meta["state"]), f)
        except _DECODE_ERRORS as exc:
            raise GeoconceptError(f"{path}: damaged checkpoint ({first_line(exc)})") from None
    _check_contents(ckpt, path)
    missing = [k for k in RESUME_STATE if resume and not isinstance(ckpt.get(k), dict)]
    if missing:
        raise GeoconceptError(f"{path}: no {', '.join(missing)} state to resume from (an "
                              "exported or damaged checkpoint?); use a new --out")  # fmt: skip
    return ckpt


def _read_legacy(path: Path) -> dict[str, Any]:
    """A format-1 ``checkpoint.pt``, unpickled with torch's tensors-and-containers allow-list."""
    try:
        with warnings.catch_warnings():  # torch's notes on pickle protocols are not for users
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise GeoconceptError(
            f"{path}: refused: this pickle holds Python objects other than tensors, and loading "
            "them could run code (geoconcept's own checkpoints hold none)"
        ) from None
    except Exception as exc:  # torch raises RuntimeError, EOFError... for cut or foreign files
        raise GeoconceptError(f"{path}: not a readable checkpoint ({first_line(exc)})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != LEGACY_FORMAT:
        raise GeoconceptError(f"{path}: not a geoconcept checkpoint (a torch file of another kind)")
    return ckpt


def _header(path: Path) -> dict[str, str]:
    """The string metadata of a safetensors file; one line for anything else."""
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
    except _DECODE_ERRORS as exc:
        raise GeoconceptError(
            f"{path}: not a geoconcept checkpoint or model (not a whole safetensors file: "
            f"{first_line(exc)})"
        ) from None
    return meta


def _check_format(found: object, expected: str, path: Path, what: str) -> None:
    """Refuse a file of another format, naming a version mismatch as such."""
    if found == expected:
        return
    family = expected.rsplit("/", 1)[0]
    if isinstance(found, str) and found.startswith(family + "/"):
        raise GeoconceptError(f"{path}: {what} format {found}, but this geoconcept reads "
                              f"{expected}; use the geoconcept release that wrote it")  # fmt: skip
    raise GeoconceptError(f"{path}: not a geoconcept {what} (no '{expected}' format tag)")


def _check_contents(ckpt: Any, path: Path) -> None:
    """The fields every reader relies on, with the right types."""
    ok = (isinstance(ckpt, dict) and ckpt.get("kind") in KINDS
          and isinstance(ckpt.get("model"), dict)
          and all(isinstance(t, torch.Tensor) for t in ckpt["model"].values())
          and isinstance(ckpt.get("config"), dict) and isinstance(ckpt.get("step", 0), int)
          and isinstance(ckpt.get("total_steps", 0), int)
          and all(isinstance(ckpt.get(k) or {}, dict) for k in ("clip", "concepts", "features"))
          and all(isinstance(v, str | None)
                  for v in (ckpt.get("clip") or {}).values())
          and _image_mlp_ok(ckpt.get("image_mlp", image_mlp_record(GEOCLIP_FEATURE_DIM)))
          )  # fmt: skip
    if not ok:
        raise GeoconceptError(f"{path}: damaged checkpoint (kind, weights, config, steps, image "
                              "MLP or provenance missing or of the wrong type)")  # fmt: skip


def _image_mlp_ok(record: Any) -> bool:
    """An ``image_mlp`` record: a positive width, and GeoCLIP's MLP (768 only) or a fresh one."""
    return (isinstance(record, dict) and isinstance(record.get("width"), int)
            and not isinstance(record["width"], bool) and record["width"] > 0
            and record.get("init") == image_mlp_record(record["width"])["init"])  # fmt: skip


def image_mlp_of(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The image MLP a checkpoint records; one written before other backbones were accepted
    records none, and had GeoCLIP's on ViT-L/14's 768-d features."""
    return dict(ckpt.get("image_mlp") or image_mlp_record(GEOCLIP_FEATURE_DIM))


def read_bundle(folder: str | Path) -> dict[str, Any]:
    """An exported model folder, checked against its own config (weights hash, concept set)."""
    folder = Path(folder)
    config = read_json(require_file(folder / BUNDLE_CONFIG, "model config"))
    _check_format(config.get("format"), BUNDLE_FORMAT, folder / BUNDLE_CONFIG, "model")
    evaluation, concept_set = config.get("evaluation"), config.get("concept_set")
    if not (isinstance(config.get("training"), dict)
            and (evaluation is None or (isinstance(evaluation, dict)
                                        and isinstance(evaluation.get("model"), dict)
                                        and isinstance(evaluation.get("file"), str)))
            and (concept_set is None or isinstance(concept_set, dict))):  # fmt: skip
        raise GeoconceptError(f"{folder / BUNDLE_CONFIG}: damaged (training, evaluation or "
                              "concept_set of the wrong type)")  # fmt: skip
    weights = require_file(folder / BUNDLE_WEIGHTS, "model weights file")
    if file_sha256(weights) != config.get("weights_sha256"):
        raise GeoconceptError(f"{weights}: not the weights {folder / BUNDLE_CONFIG} was written "
                              "for (sha256 differs): damaged or replaced")  # fmt: skip
    try:
        model = load_file(str(weights))
    except _DECODE_ERRORS as exc:
        raise GeoconceptError(f"{weights}: damaged ({first_line(exc)})") from None
    concepts = None
    if config.get("kind") == "concept":
        concepts = read_json(require_file(folder / BUNDLE_CONCEPTS, "concept list"))
        expected = (config.get("concept_set") or {}).get("sha256")
        if not _concept_lists(concepts) or concept_list_hash(concepts) != expected:
            raise GeoconceptError(f"{folder / BUNDLE_CONCEPTS}: another concept set than the one "
                                  "this model was trained with (its hash differs)")  # fmt: skip
    ckpt = {"format": BUNDLE_FORMAT, "kind": config.get("kind"), "model": model,
            "config": config.get("training"), "clip": config.get("clip"), "concepts": concepts,
            "step": config.get("step"), "total_steps": config.get("total_steps"),
            "features": config.get("features"), "image_mlp": config.get("image_mlp"),
            "bundle": config}  # fmt: skip
    ckpt = {k: v for k, v in ckpt.items() if v is not None}  # absent, as in a run's checkpoint
    _check_contents(ckpt, folder)
    return ckpt


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from a file, with a one-line error for anything else."""
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise GeoconceptError(f"{path}: not valid JSON ({first_line(exc)})") from None
    if not isinstance(data, dict):
        raise GeoconceptError(f"{path}: expected a JSON object")
    return data


def _concept_lists(concepts: Any) -> TypeGuard[dict[str, Any]]:
    """Three equally long lists of strings: concepts, categories, subcategories."""
    keys = ("concepts", "categories", "subcategories")
    lists: list[Any] = [concepts.get(k) if isinstance(concepts, dict) else None for k in keys]
    return all(isinstance(v, list) and all(isinstance(s, str) for s in v) for v in lists) and (
        len({len(v) for v in lists}) == 1)  # fmt: skip


def concept_list_hash(concepts: dict[str, Any]) -> str:
    """The concept set's hash (as embed-concepts records it) of a checkpoint's concept list."""
    return concept_set_hash(pd.DataFrame({"concept": concepts["concepts"],
                                          "category": concepts["categories"]}))  # fmt: skip


# ------------------------------------------------------------------------------ heads
def head_from(ckpt: dict[str, Any], source: str | Path) -> RetrievalHead:
    """The head a checkpoint dict describes, with its weights (one line if they do not fit):
    its image MLP takes the width the checkpoint records."""
    sd = ckpt["model"]
    width = image_mlp_of(ckpt)["width"]
    if ckpt["kind"] == "concept":
        basis = sd.get("concept_embeddings")
        if basis is None or basis.ndim != 2 or not basis.is_floating_point():
            raise GeoconceptError(f"{source}: a concept-aware checkpoint without its concept "
                                  "basis (concept_embeddings)")  # fmt: skip
        concepts = ckpt.get("concepts")
        if not _concept_lists(concepts) or len(concepts["concepts"]) != len(basis):
            raise GeoconceptError(f"{source}: its concept list does not match its "
                                  f"{len(basis)} concept weights")  # fmt: skip
        try:
            head: RetrievalHead = ConceptAwareHead(basis, clip_dim=width)
        except GeoconceptError as exc:
            raise GeoconceptError(f"{source}: {exc}") from None
    else:
        head = GeoCLIPHead(width)
    load_weights(head, sd, source)
    return head


def load_weights(head: RetrievalHead, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """``head.load_state_dict(state)``, refused in one line when the weights do not fit."""
    expected = head.state_dict()
    problems = []
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    shaped = sorted(k for k in expected.keys() & state.keys()
                    if state[k].shape != expected[k].shape)  # fmt: skip
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    if shaped:
        k = shaped[0]
        problems.append(f"{len(shaped)} of another shape (e.g. {k}: {tuple(state[k].shape)}, "
                        f"not {tuple(expected[k].shape)})")  # fmt: skip
    if not problems:
        bad = [k for k in expected if not state[k].is_floating_point()
               or not bool(torch.isfinite(state[k]).all())]  # fmt: skip
        if bad:
            problems.append(f"{len(bad)} not finite numbers (e.g. {bad[0]})")
    if problems:
        kind = "concept-aware" if isinstance(head, ConceptAwareHead) else "GeoCLIP"
        raise GeoconceptError(f"{source}: weights that do not fit a {kind} head: "
                              + "; ".join(problems))  # fmt: skip
    head.load_state_dict(state)


def load_head(path: str | Path, device: str | torch.device = "cpu"
              ) -> tuple[RetrievalHead, dict[str, Any]]:  # fmt: skip
    """The trained head of a run folder, checkpoint file or exported bundle (eval mode), with
    its checkpoint dict."""
    ckpt = read_model(path)
    return head_from(ckpt, path).eval().to(device), ckpt


def check_trained_on(ckpt: dict[str, Any], clip: ClipId, what: object, hint: bool = False) -> None:
    """Refuse to use a checkpoint with image features of another CLIP model or weights;
    ``hint`` adds the CLIP options that would match (where the user chooses the model)."""
    trained = ClipId.from_meta(ckpt.get("clip") or {}, prefix="")
    check_same_clip(trained, clip, f"{what} was trained on features of", hint=hint)


# ------------------------------------------------------------------------------ storage
def run_calibration_path(checkpoint: str | Path) -> Path:
    """Where a run's calibration lives: ``calibration.json`` in its folder."""
    checkpoint = Path(checkpoint)
    return (checkpoint if checkpoint.is_dir() else checkpoint.parent) / CALIBRATION_NAME
