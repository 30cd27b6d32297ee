"""`export`: a trained run as a self-contained model folder to publish, with a model card.

``MODEL_DIR/`` holds ``model.safetensors`` (the head's weights), ``config.json`` (format, kind,
CLIP backbone, its image MLP (width; GeoCLIP's or fresh), concept-set hash, training options,
step, the training features' identity, the weights' sha256 and, when found, the evaluation
figures), ``concepts.json`` (concept-aware models) and ``README.md``, a model card generated
from the same facts. No file is a pickle.
The folder is written under a temporary name beside ``MODEL_DIR`` and renamed into place, so
a crash never leaves half a bundle.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from .._version import __version__
from ..errors import GeoconceptError
from ..geo.distance import THRESHOLDS_KM
from ..inference.calibration_record import Calibration, read_calibration, save_calibration
from ..io.artifacts import current_umask, file_sha256, hash_state_dict
from ..model.checkpoints import (
    BUNDLE_CONCEPTS,
    BUNDLE_CONFIG,
    BUNDLE_FORMAT,
    BUNDLE_WEIGHTS,
    CHECKPOINT_NAME,
    LEGACY_NAME,
    concept_list_hash,
    head_from,
    image_mlp_of,
    read_json,
    read_model,
    run_calibration_path,
)
from ..model.spec import CALIBRATION_NAME
from .card import model_card

EVAL_NAME = "eval.json"
_LOCAL_PATHS = ("features", "concepts")  # options that name files on the trainer's machine


@dataclass(frozen=True)
class Exported:
    """An exported bundle's config, and the file its figures came from (None: no figures)."""

    config: dict[str, Any]
    figures_from: Path | None


def export_model(source: str | Path, out: str | Path, evaluation: str | Path | None = None
                 ) -> Exported:  # fmt: skip
    """Write ``source`` (a run folder, checkpoint file or bundle) as a bundle in ``out``.
    ``evaluation`` is an ``evaluate --json-out`` file holding the run's figures (default: the
    run's own, ``eval.json`` in its folder, if it names the run; a re-exported bundle keeps
    its figures). Figures are never taken from a file elsewhere unless it is given."""
    source, out = Path(source), Path(out)
    ckpt = read_model(source)
    head = head_from(ckpt, source)  # weights that do not fit are refused before any write
    _check_out(out)
    if ckpt.get("step") is not None and ckpt["step"] < (ckpt.get("total_steps") or 0):
        warnings.warn(f"{source} is an unfinished run (step {ckpt['step']} of "
                      f"{ckpt['total_steps']}); the card says so", stacklevel=2)  # fmt: skip
    figures, figures_from = find_evaluation(source, evaluation)
    if figures is None and ckpt.get("bundle"):
        figures = ckpt["bundle"].get("evaluation")  # re-exporting a bundle keeps its figures
        run = source.parent if source.is_file() else source
        figures_from = run / BUNDLE_CONFIG if figures else None
    calibration = read_calibration(run_calibration_path(source))
    if calibration is not None and calibration.model != hash_state_dict(head):
        warnings.warn(f"{run_calibration_path(source)} was made for other weights than "
                      f"{source}'s; not exported: calibrate again", stacklevel=2)  # fmt: skip
        calibration = None
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        weights = tmp / BUNDLE_WEIGHTS
        state = {k: v.detach().contiguous() for k, v in head.state_dict().items()}
        save_file(state, str(weights), metadata={"format": BUNDLE_FORMAT})
        config = bundle_config(ckpt, file_sha256(weights), figures, calibration)
        if calibration is not None:  # where predict, explain and evaluate look for it
            save_calibration(tmp / CALIBRATION_NAME, calibration)
        if ckpt["kind"] == "concept":
            _write_text(tmp / BUNDLE_CONCEPTS, json.dumps(ckpt["concepts"], indent=1) + "\n")
        _write_text(tmp / BUNDLE_CONFIG, json.dumps(config, indent=2) + "\n")
        _write_text(tmp / "README.md", model_card(config, out.name))
        replace_folder(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Exported(config, figures_from)


BUNDLE_FILES = {
    BUNDLE_WEIGHTS,
    BUNDLE_CONFIG,
    BUNDLE_CONCEPTS,
    "README.md",
    CALIBRATION_NAME,
    "onnx",
}  # export --onnx's folder (export.onnx_bundle)


def _check_out(out: Path) -> None:
    """``out`` may be new, empty or an earlier export (replaced); nothing else is overwritten."""
    if out.exists() and not out.is_dir():
        raise GeoconceptError(f"--out {out}: a file; give a folder for the model")
    if not out.is_dir() or not any(out.iterdir()):
        return
    try:
        earlier = read_json(out / BUNDLE_CONFIG).get("format") == BUNDLE_FORMAT
    except (GeoconceptError, OSError):  # none, a folder, unreadable, not JSON
        earlier = False
    others = {p.name for p in out.iterdir()} - BUNDLE_FILES
    if not earlier or others:
        raise GeoconceptError(f"--out {out}: a folder that holds other files than an earlier "
                              "export; give a new one")  # fmt: skip


def _write_text(path: Path, text: str) -> None:
    with path.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def replace_folder(new: Path, out: Path) -> None:
    """Rename the finished folder ``new`` to ``out``, replacing an earlier export there."""
    new.chmod(0o777 & ~current_umask())  # mkdtemp makes 0700: others should read a published model
    old = None
    if out.is_dir() and any(out.iterdir()):
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
        os.replace(out, old)
    elif out.is_dir():
        out.rmdir()
    os.replace(new, out)
    if old is not None:
        shutil.rmtree(old)


def bundle_config(ckpt: dict[str, Any], weights_sha256: str, evaluation: dict[str, Any] | None,
                  calibration: Calibration | None = None) -> dict[str, Any]:  # fmt: skip
    """The bundle's config.json: what the model is, what made it, how it scored."""
    training = {k: v for k, v in ckpt["config"].items() if k != "out"}
    for key in _LOCAL_PATHS:  # the trainer's paths mean nothing elsewhere: keep their names
        if isinstance(training.get(key), str):
            training[key] = Path(training[key]).name
    concepts = ckpt.get("concepts") if ckpt["kind"] == "concept" else None
    return {
        "format": BUNDLE_FORMAT,
        "kind": ckpt["kind"],
        "clip": ckpt.get("clip") or {},
        "image_mlp": image_mlp_of(ckpt),
        "concept_set": {"count": len(concepts["concepts"]),
                        "sha256": concept_list_hash(concepts)} if concepts else None,
        "training": training,
        "step": ckpt.get("step"),
        "total_steps": ckpt.get("total_steps"),
        "features": ckpt.get("features"),
        "weights_sha256": weights_sha256,
        "evaluation": evaluation,
        "calibration": calibration.to_json() if calibration else None,
        "geoconcept_version": __version__,
    }  # fmt: skip


# ------------------------------------------------------------------------------ figures
def find_evaluation(source: Path, given: str | Path | None
                    ) -> tuple[dict[str, Any] | None, Path | None]:  # fmt: skip
    """This run's figures from an ``evaluate --json-out`` file, with the baselines and the
    gallery ceiling measured in the same evaluation, and that file. ``given`` must name the
    run; by default only the run's own ``eval.json`` (in its folder) is read, if it does."""
    run = source.parent if source.is_file() else source
    if given is not None:
        given = Path(given)
        data = read_json(given) if given.is_file() else None
        if data is None:
            raise GeoconceptError(f"--figures/--eval {given}: no such file")
        figures = _figures_for(data, run, given)
        if figures is None:
            names = ", ".join(map(str, (data.get("models") or {}).keys())) or "none"
            raise GeoconceptError(f"--figures/--eval {given}: no figures for {run} (models there: "
                                  f"{names})")  # fmt: skip
        return figures, given
    path = run / EVAL_NAME
    figures = _figures_for(read_json(path), run, path) if path.is_file() else None
    return figures, path if figures is not None else None


def _figures_for(data: dict[str, Any], run: Path, path: Path) -> dict[str, Any] | None:
    """The entry of ``data['models']`` that names ``run`` (by path, else by folder name)."""
    models = data.get("models")
    if not isinstance(models, dict):
        raise GeoconceptError(f"{path}: not an evaluate --json-out file (no 'models')")

    def folder(key: str) -> Path:
        p = Path(key)
        return p.parent if p.name in (CHECKPOINT_NAME, LEGACY_NAME) else p

    def resolved(p: Path, base: Path) -> Path:
        return (p if p.is_absolute() else base / p).resolve()

    here = run.resolve()
    exact = [k for k in models if here in (resolved(folder(k), Path.cwd()),
                                          resolved(folder(k), path.parent))]  # fmt: skip
    named = [k for k in models if folder(k).name == run.name]
    key = exact[0] if exact else named[0] if len(named) == 1 else None
    if key is None:
        return None
    return {
        "file": path.name,
        "model": _scores(models[key], path),
        "baselines": {k: _scores(v, path) for k, v in models.items() if "GeoCLIP" in k},
        "ceiling": _scores(data["ceiling"], path) if "ceiling" in data else None,
    }


def _scores(entry: object, path: Path) -> dict[str, float]:
    """Accuracy per threshold (%), median km and n of one evaluated model, as numbers."""
    keys = [f"{t}km" for t in THRESHOLDS_KM]
    if not isinstance(entry, dict):
        raise GeoconceptError(f"{path}: a model entry is not a JSON object")
    try:
        scores = {k: float(entry[k]) for k in keys}
        scores |= {k: float(entry[k]) for k in ("median_km", "n") if k in entry}
    except (KeyError, TypeError, ValueError):
        raise GeoconceptError(f"{path}: a model entry lacks accuracy at {', '.join(keys)}") \
            from None  # fmt: skip
    return scores
