"""Predicting from an ONNX bundle (export --onnx) with numpy, onnxruntime, Pillow and the
gazetteer: no torch, no open_clip. Nothing in a bundle runs as code: its files' hashes are
checked against runtime.json first, and a graph that asks for operators outside ONNX's own
(custom ops) is refused.

A photo is read as `predict` reads it (io.images), preprocessed as open_clip preprocesses for
the bundle's backbone (resize of the shorter side, bicubic, centre crop, [0, 1], normalised),
and the graph gives its query vector; a gallery place's logit is their product, and the
probabilities, candidates (sites of the bundle's radius, or single points), calibrated
regions and confidence follow as the torch predictor makes them, one photo at a time, read
out by inference.readout (inference.onnx_explainer explains from the same bundle). Hints,
albums, the deletion check, batch runs, training and embedding at scale stay on torch.
"""

from __future__ import annotations

import hashlib
import json
import re
from contextlib import suppress
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from ..errors import GeoconceptError
from ..geo.distance import chord, unit_vectors
from ..geo.geocode import Places, place_names, reverse_geocode
from ..io.artifacts import default_cache_dir, file_sha256
from ..io.images import load_image
from ..model.spec import CALIBRATION_NAME
from .calibration_record import TOLERANCE
from .readout import (
    HEAT_POINTS,
    abstain_level,
    confidence_answer,
    probabilities_note,
    region_summary,
    strongest,
)
from .request import Request, say_if_capped
from .results import Candidate, Prediction

if TYPE_CHECKING:
    import onnxruntime

    from .calibration_record import Calibration

RUNTIME_FORMAT = "geoconcept-onnx/1"  # export.onnx_bundle writes it
ONNX_DIR, GRAPH, GRAPH_INT8, GALLERY, RUNTIME, CONCEPTS, CONCEPTS_JSON = (
    "onnx", "model.onnx", "model.int8.onnx", "gallery.safetensors", "runtime.json",
    "concepts.safetensors", "concepts.json")  # fmt: skip
TORCH_ONLY = ("hints, albums, the deletion check (--check), batch runs, training and embedding "
              "need the torch runtime (leave out --runtime)")  # fmt: skip
NEEDED = {"files": dict, "preprocess": dict, "merge_km": float | int, "graph": dict}


def bundle_folder(checkpoint: str | Path) -> Path:
    """The ONNX folder of an exported model (or the folder itself); one line if it has none."""
    path = Path(checkpoint)
    for folder in (path / ONNX_DIR, path):
        if (folder / RUNTIME).is_file():
            return folder
    raise GeoconceptError(f"--runtime onnx: {path} holds no ONNX bundle ({ONNX_DIR}/{RUNTIME}); "
                          "make one with geoconcept export RUN --out DIR --onnx")  # fmt: skip


@dataclass(frozen=True)
class Preprocess:
    """open_clip's image transform for one backbone, in numpy: the shorter side resized to
    ``size`` (bicubic, as torchvision's Resize does it on a PIL image), the centre cropped,
    scaled to [0, 1] and normalised by ``mean`` and ``std``."""

    size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def from_config(cls, cfg: dict[str, Any], source: object) -> Preprocess:
        if cfg.get("interpolation") != "bicubic" or cfg.get("resize_mode") != "shortest":
            raise GeoconceptError(f"{source}: preprocessing {cfg.get('resize_mode')} / "
                                  f"{cfg.get('interpolation')} is not the runtime's (shortest "
                                  "side, bicubic); export with such a backbone")  # fmt: skip
        h, w = (int(s) for s in cfg["size"])
        mean, std = (tuple(float(v) for v in cfg[k]) for k in ("mean", "std"))
        return cls((h, w), (mean[0], mean[1], mean[2]), (std[0], std[1], std[2]))

    def __call__(self, image: Image.Image) -> npt.NDArray[np.float32]:
        """(3, H, W) float32 pixels of an RGB image."""
        h, w = self.size
        iw, ih = image.size
        if (iw, ih) != (w, h):  # torchvision's Resize of the shorter side, then CenterCrop
            short, long = (iw, ih) if iw <= ih else (ih, iw)
            target = min(h, w)
            new_long = int(target * long / short)
            new = (target, new_long) if iw <= ih else (new_long, target)
            if new != (iw, ih):
                image = image.resize(new, Image.Resampling.BICUBIC)
            iw, ih = image.size
            top, left = int(round((ih - h) / 2.0)), int(round((iw - w) / 2.0))
            image = image.crop((left, top, left + w, top + h))
        x = np.asarray(image.convert("RGB"), dtype=np.float32) / np.float32(255)
        mean, std = np.asarray(self.mean, np.float32), np.asarray(self.std, np.float32)
        return np.ascontiguousarray(((x - mean) / std).transpose(2, 0, 1), dtype=np.float32)


@dataclass(frozen=True)
class Scored:
    """One photo's (N,) probabilities per gallery row, the rows its limits allow (None: all)
    and how many distinct places they hold."""

    probs: npt.NDArray[np.float64]
    allowed: npt.NDArray[np.bool_] | None
    inside: int


class OnnxPredictor:
    """`predict` from an ONNX bundle (module docstring): ``folder`` is its ``onnx/``;
    ``calibration`` False leaves its calibration unused; ``int8`` runs the quantized graph;
    ``cache_dir`` keeps the stamps of verified files (default: $GEOCONCEPT_CACHE);
    ``prepack`` lets onnxruntime repack the weights for its kernels when the graph opens: a
    few percent off every later run, for a server, but a ViT-L/14 then opens in 1.4 s where
    its weights otherwise are read in 0.1 s, so one photo's command leaves it off."""

    def __init__(self, folder: str | Path, calibration: bool = True, int8: bool = False,
                 cache_dir: str | Path | None = None, prepack: bool = False):  # fmt: skip
        from safetensors.numpy import load_file

        self.folder, self.int8 = Path(folder), int8
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.config = self._read_config()
        graph = GRAPH_INT8 if int8 else GRAPH
        if graph not in self.config["files"]:
            raise GeoconceptError(f"{self.folder}: no {graph} in this bundle (export with "
                                  "--quantize int8 for one)")  # fmt: skip
        for path in sorted(self.folder.iterdir()):  # nothing loads that was not hashed
            if path.name != RUNTIME and path.name not in self.config["files"]:
                raise GeoconceptError(f"{path}: not recorded in {RUNTIME}; export the bundle "
                                      "again")  # fmt: skip
        for name in sorted(self.config["files"]):  # the graph, its weights, the gallery
            if name == GALLERY or name == graph or name.startswith(f"{graph}."):
                self.check_file(name)
        try:
            g = load_file(str(self.folder / GALLERY))
            self.place_emb, self.gps = g["place_emb"], g["gps"]
            self.places, self.copies, self.sites = g["places"], g["copies"], g["sites"]
            self.place_of_row = g["place_of_row"]
        except Exception as exc:  # safetensors' own errors, or arrays missing: damaged
            raise GeoconceptError(f"{self.folder / GALLERY}: unreadable ({exc})") from None
        self.areas, self.slots = g.get("areas"), g.get("slots")
        self.place_concept_norms = g.get("place_concept_norms")
        self.session = self._session(graph, prepack)
        self._check_input()
        self.preprocess = Preprocess.from_config(self.config["preprocess"], self.folder)
        self.calibration = self._calibration() if calibration else None
        self.merge_km = float(self.config["merge_km"])

    def _session(self, graph: str, prepack: bool) -> onnxruntime.InferenceSession:
        """onnxruntime's session of the graph. No custom operator library is ever registered,
        so an operator onnxruntime does not ship cannot run: it is named in one line."""
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if not prepack:
            opts.add_session_config_entry("session.disable_prepacking", "1")
        try:
            return ort.InferenceSession(str(self.folder / graph), opts,
                                        providers=["CPUExecutionProvider"])  # fmt: skip
        except Exception as exc:  # onnxruntime's own errors: an invalid graph
            raise GeoconceptError(_unrunnable(self.folder / graph, str(exc))) from None

    def _read_config(self) -> dict[str, Any]:
        path = self.folder / RUNTIME
        try:
            config = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            raise GeoconceptError(f"{path}: not a readable runtime.json") from None
        if not isinstance(config, dict) or config.get("format") != RUNTIME_FORMAT:
            raise GeoconceptError(f"{path}: not a geoconcept ONNX bundle ({RUNTIME_FORMAT})")
        wrong = [k for k, kind in NEEDED.items() if not isinstance(config.get(k), kind)]
        if wrong:
            raise GeoconceptError(f"{path}: damaged ({', '.join(wrong)} missing or malformed); "
                                  "export the bundle again")  # fmt: skip
        return config

    def _calibration(self) -> Calibration | None:
        """The bundle's calibration; one line where the model's folder was calibrated again
        since the export (its regions' areas and groups are the export's) or it is damaged."""
        from .calibration_record import Calibration, read_calibration

        data = self.config.get("calibration")
        cal = Calibration.from_json(data, self.folder / RUNTIME) if data else None
        beside = read_calibration(self.folder.parent / CALIBRATION_NAME)
        if beside is not None and beside != cal:
            raise GeoconceptError(
                f"{self.folder.parent / CALIBRATION_NAME} is not the "
                "calibration the ONNX bundle was exported with (calibrated "
                "again since): export --onnx again, or --no-calibration"
            )
        if cal is not None and self.areas is None:
            raise GeoconceptError(f"{self.folder / GALLERY}: a calibrated bundle without its "
                                  "region areas; export the bundle again")  # fmt: skip
        return cal

    def check_file(self, name: str) -> None:
        """Refuse a bundle file that is missing or is not the one runtime.json hashed. A file
        verified before and unchanged since (size, times, inode) is not read again: the
        hashes catch a damaged or replaced file, not a forger who rewrites runtime.json."""
        path = self.folder / name
        if not path.is_file():
            raise GeoconceptError(f"{path}: missing from the bundle; export it again")
        want = self.config["files"][name]
        s = path.stat()
        seen = f"{want}:{s.st_size}:{s.st_mtime_ns}:{s.st_ctime_ns}:{s.st_ino}:{path.resolve()}"
        stamp = self.cache_dir / "verified" / hashlib.sha256(seen.encode()).hexdigest()
        if stamp.is_file():
            return
        if file_sha256(path) != want:
            raise GeoconceptError(f"{path}: its sha256 is not the one {RUNTIME} records (a "
                                  "changed or damaged file); export the bundle again")  # fmt: skip
        with suppress(OSError):  # a cache that cannot be written only costs the next check
            stamp.parent.mkdir(parents=True, exist_ok=True)
            stamp.touch()

    def _check_input(self) -> None:
        """The graph takes the bundle's photos: (photos, 3, H, W) at the recorded size."""
        shape = self.session.get_inputs()[0].shape
        size = list(self.config["preprocess"]["size"])
        if len(shape) != 4 or list(shape[2:]) != size:
            raise GeoconceptError(
                f"{self.folder}: its graph takes {shape}, not photos of "
                f"{size[0]}x{size[1]} as {RUNTIME} says; export it again"
            )

    # -------------------------------------------------------------------------- the gallery
    @cached_property
    def is_place(self) -> npt.NDArray[np.bool_]:
        out = np.zeros(len(self.gps), dtype=bool)
        out[self.places] = True
        return out

    @cached_property
    def gallery_places(self) -> Places:
        return reverse_geocode(self.gps)

    @cached_property
    def units(self) -> npt.NDArray[np.float64]:
        """The gallery's unit vectors (the confidence's neighbourhoods)."""
        return unit_vectors(self.gps)

    def outputs(self, pixels: npt.NDArray[np.float32]) -> list[npt.NDArray[np.float32]]:
        """The graph's outputs for (B, 3, H, W) pixels: (B, D) query vectors, then what
        explanations read (export.onnx_bundle)."""
        out = self.session.run(None, {self.session.get_inputs()[0].name: pixels})
        return [np.asarray(o, dtype=np.float32) for o in out]

    def query(self, pixels: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """(B, D) query vectors of (B, 3, H, W) pixels."""
        return self.outputs(pixels)[0]

    def pixels(self, image: Image.Image) -> npt.NDArray[np.float32]:
        """(1, 3, H, W) pixels of one photo, preprocessed for the graph."""
        return self.preprocess(image)[None]

    # -------------------------------------------------------------------------- one photo
    def predict(self, photo: str | Path, request: Request = Request()) -> Prediction:
        """Top-k candidates of one photo file, what their probabilities are and, for a
        calibrated model, its confidence and region (GeoconceptError on a bad file)."""
        return self.predict_query(self.query(self.pixels(load_image(photo)))[0], request,
                                  image=str(photo))  # fmt: skip

    def predict_query(self, q: npt.NDArray[np.float32], request: Request = Request(),
                      image: str | None = None) -> Prediction:  # fmt: skip
        """:meth:`predict` of one photo's query vector (D,)."""
        return self.answer(q, request, image)[0]

    def answer(self, q: npt.NDArray[np.float32], request: Request, image: str | None = None
               ) -> tuple[Prediction, Scored]:  # fmt: skip
        """:meth:`predict_query`, with the scores it was read from (for an explanation)."""
        self.refuse(request)
        scored = self.scored(q, request)
        say_if_capped("--top-k", request.top_k, scored.inside, "places in the gallery")
        probs, allowed = scored.probs, scored.allowed
        candidates = self._candidates(probs, request, allowed)
        cal = self.calibration
        confidence = region = None
        if cal is not None:
            level = abstain_level(cal, request)
            assert level is not None  # a calibrated model always has one
            confidence = confidence_answer(self._confidence(probs, cal.radius_km), cal, level,
                                           steered=bool(request.limits))  # fmt: skip
            region = self._region(probs, cal, allowed)
        heat = None
        if request.heat:
            rows = self.places if allowed is None else self.places[allowed[self.places]]
            heat = strongest(probs, rows, self.gps, HEAT_POINTS)
        prediction = Prediction(
            image=image,
            predictions=candidates,
            merge_km=request.merge_km,
            probabilities=self.note(request, scored.inside),
            confidence=confidence,
            region=region,
            heat=heat,
        )
        return prediction, scored

    def note(self, request: Request, inside: int) -> dict[str, Any]:
        """What the probabilities are (readout.probabilities_note)."""
        return probabilities_note(self.calibration, request.limits, inside, len(self.places))

    def scored(self, q: npt.NDArray[np.float32], request: Request) -> Scored:
        """One photo's probabilities over the gallery rows within ``request``'s limits."""
        allowed = (request.limits.mask(self.gps, self.gallery_places) if request.limits
                   else None)  # fmt: skip
        inside = int(allowed[self.places].sum()) if allowed is not None else len(self.places)
        if inside == 0:
            raise GeoconceptError(f"no gallery place inside {request.limits.describe()}: widen "
                                  "the limit, or give another --gallery")  # fmt: skip
        t = self.calibration.temperature if self.calibration else 1.0
        z = (self.place_emb @ q) / np.float32(t)  # each place's logit
        return Scored(np.exp(self.logprob_rows(z, allowed)), allowed, inside)

    def refuse(self, request: Request) -> None:
        """One line for what a bundle cannot answer."""
        if request.hints:
            raise GeoconceptError(f"--hint: {TORCH_ONLY}")
        if request.merge_km not in (0, self.merge_km):
            raise GeoconceptError(
                f"--merge-km {request.merge_km:g}: this bundle holds sites "
                f"of {self.merge_km:g} km; give {self.merge_km:g} or 0"
            )
        if request.abstain_below is not None:
            abstain_level(self.calibration, request)  # one line without a calibration

    def logprob_rows(
        self, z: npt.NDArray[np.float32], allowed: npt.NDArray[np.bool_] | None
    ) -> npt.NDArray[np.float64]:
        """(N,) each gallery row's log-probability from its place's logit (``z``, (places,):
        a repeated place scores the same at each of its rows), -inf outside the limits (at least
        one place is inside: ``scored`` says so first). The log-sum-exp is numpy's, not scipy's,
        whose import would take a quarter of a second from a one-photo command."""
        zz = z.astype(np.float64)
        if allowed is not None:
            zz = np.where(allowed[self.places], zz, -np.inf)
        weighted = zz + np.log(self.copies)
        top = weighted.max()
        rows = (zz - top - np.log(np.exp(weighted - top).sum()))[self.place_of_row]
        return np.asarray(rows, dtype=np.float64)

    def _candidates(self, probs: npt.NDArray[np.float64], request: Request,
                    allowed: npt.NDArray[np.bool_] | None) -> list[Candidate]:  # fmt: skip
        """The top-k sites by summed probability (each at its most probable point), or for
        --merge-km 0 the top-k places, as ``Predictor.ranked`` lists them."""
        if request.merge_km <= 0:
            p = probs[self.places]
            k = min(request.top_k, int((p > 0).sum()) or 1)
            top = self.places[np.argsort(-p, kind="stable")[:k]]
            return self._named(top, probs[top], np.ones(len(top), dtype=np.int64))
        inside = np.ones(len(self.gps), dtype=bool) if allowed is None else allowed
        sums = np.bincount(self.sites, weights=probs, minlength=int(self.sites.max()) + 1)
        size = np.bincount(self.sites[inside], minlength=len(sums))
        order = np.argsort(-np.where(size > 0, sums, -np.inf), kind="stable")
        chosen = [s for s in order[: max(1, min(request.top_k, int((size > 0).sum())))]
                  if sums[s] > 0]  # fmt: skip
        best = []
        for s in chosen:  # its most probable row (the first of equal ones)
            members = np.flatnonzero(self.sites == s)
            best.append(members[int(np.argmax(probs[members]))])
        rows = np.asarray(best, dtype=np.int64)
        return self._named(rows, sums[chosen].astype(np.float64), size[chosen])

    def _named(self, rows: npt.NDArray[np.int64], probs: npt.NDArray[np.float64],
               points: npt.NDArray[np.int64]) -> list[Candidate]:  # fmt: skip
        names = place_names(self.gps[rows].tolist())
        return [Candidate(rank, float(self.gps[r, 0]), float(self.gps[r, 1]), float(p), int(r),
                          name, int(n))
                for rank, (r, p, name, n) in enumerate(zip(rows, probs, names, points,
                                                           strict=True), start=1)]  # fmt: skip

    def _confidence(self, probs: npt.NDArray[np.float64], radius_km: float) -> float:
        """The mass within ``radius_km`` of the most probable row (inference.abstention)."""
        top = int(np.argmax(probs))  # one photo: a pass over the gallery, no KD-tree to build
        near = np.linalg.norm(self.units - self.units[top], axis=1) <= chord(radius_km)
        return float(probs[near].sum())

    def _region(self, probs: npt.NDArray[np.float64], cal: Calibration,
                allowed: npt.NDArray[np.bool_] | None) -> Any:  # fmt: skip
        """The conformal region of one photo's (N,) probabilities: the rows whose mass ranked
        strictly above is at most their threshold (their group's, or the pooled one)."""
        assert self.areas is not None, "a calibrated bundle carries its areas"
        order = np.argsort(-probs, kind="stable")
        ranked = probs[order]
        above = np.empty_like(ranked)
        above[order] = np.cumsum(ranked) - ranked  # strictly above, ties aside
        # equal probabilities share the mass above the first of them
        _, first = np.unique(-ranked, return_index=True)
        tie_start = np.repeat(first, np.diff(np.r_[first, len(ranked)]))
        above[order] = (np.cumsum(ranked) - ranked)[tie_start]
        thresholds = [*cal.groups.values(), cal.threshold]
        limit = (np.asarray(thresholds)[self.slots] if self.slots is not None
                 else np.full(len(probs), cal.threshold))  # fmt: skip
        inside = above <= limit + TOLERANCE
        if allowed is not None:
            inside &= allowed
        return region_summary(
            probs,
            inside,
            cal,
            self.is_place,
            self.gps,
            self.gallery_places.country.astype(str),
            self.areas,
        )


def _unrunnable(path: Path, error: str) -> str:
    """One line for a graph onnxruntime refuses: a custom operator named as such."""
    custom = re.search(r"(\S+):(\w+)\(-?\d+\) is not a registered function/op", error)
    if custom:
        return (
            f"{path}: uses custom operators ({custom[1]}: {custom[2]}); this runtime runs "
            "ONNX's own only"
        )
    return f"{path}: not a graph onnxruntime can run ({error.splitlines()[0][:200]})"
