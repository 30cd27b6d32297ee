"""`explain`: where a photo was taken, and why, from the model's own computation.

With a concept-aware checkpoint the retrieval score is s * cos(a_img, a_loc) over k concepts,
so it splits exactly into per-concept terms s * â_img[c] * â_loc[c] (â: unit-normalised
activations). "Why here" lists the largest terms; "rather than" splits the logit gap to the
runner-up, s * â_img[c] * (â_loc1[c] - â_loc2[c]), which also sums exactly. The faithfulness
check removes the top explaining concepts from the photo's representation and compares the
fall of the predicted place's score and rank with removing random concepts (`faithfulness`).

Without a checkpoint (GeoCLIP's 512-d space has no concept axes) the photo's concepts are
CLIP's zero-shot image-text similarities, the place's are the concept set's region
associations, and no decomposition is claimed.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import pandas as pd
import torch
import torch.nn.functional as F

from .artifacts import default_cache_dir
from .concepts.embed import embed_concepts, load_concept_embeddings
from .concepts.regions import country_and_continent
from .concepts.review import load_concepts
from .encoders import DEFAULT_CLIP_MODEL, DEFAULT_CLIP_PRETRAINED, ClipBackbone, ClipId
from .errors import GeoconceptError
from .geo import haversine_km, place_name
from .images import load_image
from .model import ConceptAwareHead
from .predict import Candidate, Predictor, load_run

RUNNER_UP_MIN_KM = 200.0  # the runner-up is the best *other place*, not a neighbouring point
RANKED = 200  # places ranked per photo: the top-k, and the pool the runner-up is drawn from
FAITHFUL_SHARE = 0.95  # the explanation's removal must hurt more than 95% of random removals
MIN_DRAWS = 20  # fewer random draws cannot tell 95% apart from "all of them"


def faithfulness(top_drop: float, top_rank: int, rand_drops: npt.ArrayLike,
                 rand_ranks: npt.ArrayLike) -> dict[str, Any]:  # fmt: skip
    """Verdict of the deletion test: is removing the explaining concepts worse than chance?

    Faithful when the score falls (top_drop > 0), by more than under at least FAITHFUL_SHARE
    of the random draws, *and* the place ends at least as far down the ranking as under the
    median random draw. Beating the random mean is not enough: random removals that raise the
    score pull the mean down, so an explanation that most draws beat could pass it.
    """
    rand_drops, rand_ranks = np.asarray(rand_drops, float), np.asarray(rand_ranks, float)
    share = float(np.mean(top_drop > rand_drops))
    unmet = [why for why, met in (
        ("the score does not fall", top_drop > 0),
        (f"it beats fewer than {FAITHFUL_SHARE:.0%} of the draws", share >= FAITHFUL_SHARE),
        ("the place stays higher in the ranking than under the median draw",
         top_rank >= float(np.median(rand_ranks))),
    ) if not met]  # fmt: skip
    return {
        "random_concepts_removed": {
            "score_drop": float(rand_drops.mean()), "score_drop_std": float(rand_drops.std()),
            "rank_after": float(rand_ranks.mean()),
            "rank_after_median": float(np.median(rand_ranks)),
        },
        "beats_random_share": share,
        "faithful": not unmet,
        "unmet": unmet,
    }  # fmt: skip


def default_concepts_path() -> Path:
    """The curated concept set shipped in the repository's ``concepts/`` folder."""
    return Path(__file__).resolve().parents[1] / "concepts" / "concepts.parquet"


@dataclass
class ConceptSet:
    """Concept names and types, with region associations when known (the shipped set)."""

    names: list[str]
    categories: list[str]
    subcategories: list[str]
    regions: list[dict[str, float]] | None = None

    @classmethod
    def from_parquet(cls, path: str | Path) -> ConceptSet:
        df = load_concepts(path)
        regions = [{r["region"]: float(r["weight"]) for r in rs} for rs in df["regions"]]
        return cls(df["concept"].tolist(), df["category"].tolist(),
                   df["subcategory"].tolist(), regions)  # fmt: skip

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> ConceptSet:
        return cls(meta["concepts"], meta["categories"], meta["subcategories"])

    def entry(self, i: int, weight: float | torch.Tensor) -> dict[str, Any]:
        return {
            "concept": self.names[i],
            "category": self.categories[i],
            "subcategory": self.subcategories[i],
            "weight": round(float(weight), 5),
        }

    def top(self, values: torch.Tensor | npt.NDArray[np.float64], n: int,
            where: torch.Tensor | None = None) -> list[dict[str, Any]]:  # fmt: skip
        """The ``n`` largest values as entries; with ``where``, only those concepts, if > 0."""
        values = torch.as_tensor(values)
        if where is not None:
            values = torch.where(where & (values > 0), values, torch.tensor(-torch.inf))
        idx = values.argsort(descending=True)[:n]
        return [self.entry(int(i), values[i]) for i in idx if values[i] > -torch.inf]

    def place_weights(self, lat: float, lon: float) -> npt.NDArray[np.float64]:
        """Salience of each concept for a place: its country's weight, else its continent's."""
        cc, continent = country_and_continent(lat, lon)
        return np.array([max(r.get(cc, 0.0), r.get(continent, 0.0)) for r in self.regions or []])


def remove_concepts(z: torch.Tensor, basis: torch.Tensor, concepts: torch.Tensor) -> torch.Tensor:
    """``z`` minus its least-squares component in the span of the given basis rows."""
    rows = basis[concepts]
    coef: torch.Tensor = torch.linalg.lstsq(rows.T, z.unsqueeze(1)).solution
    return z - (rows.T @ coef).squeeze(1)


def spread_km(cands: list[Candidate]) -> dict[str, float]:
    """How far apart the top-k candidates are: a confidence cue (small = consistent)."""
    lat = np.array([c.lat for c in cands])
    lon = np.array([c.lon for c in cands])
    to_first = haversine_km(lat[0], lon[0], lat, lon)
    pair = haversine_km(lat[:, None], lon[:, None], lat[None], lon[None])
    return {"max_pairwise_km": float(pair.max()), "mean_to_top1_km": float(to_first[1:].mean())
            if len(cands) > 1 else 0.0}  # fmt: skip


class Explainer:
    """Explanations for one predictor and concept set (see the module docstring)."""

    def __init__(
        self,
        predictor: Predictor,
        concepts: ConceptSet,
        text_embeddings: torch.Tensor | None = None,
        retrained_geoclip: bool = False,
    ):
        self.predictor = predictor
        self.concepts = concepts
        self.concept_aware = isinstance(predictor.head, ConceptAwareHead)
        self.retrained_geoclip = retrained_geoclip  # a `train --concepts none` checkpoint
        self.text = F.normalize(text_embeddings.float(), dim=1) if text_embeddings is not None \
            else None  # fmt: skip

    def explain(self, path: str | Path, **kw: Any) -> dict[str, Any]:
        """Explain one photo file (GeoconceptError on an unreadable file)."""
        feats = self.predictor.image_features([load_image(path)])
        return {"image": str(path), **self.explain_features(feats, **kw)}

    @torch.no_grad()
    def explain_features(
        self, feats: torch.Tensor, top_k: int = 5, n_concepts: int = 8, check: bool = False,
        m: int = 3, draws: int = 20, seed: int = 0,
        ranked: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        """The full explanation of one photo's CLIP features (1, D) as a JSON-able dict.
        ``ranked``: its (probabilities, gallery rows), (1, >= max(top_k, RANKED)), when a batch
        has ranked many photos at once."""
        p = self.predictor
        probs, idx = ranked if ranked is not None else p.topk(feats, max(top_k, RANKED))
        cands = p.candidates(probs[0, :top_k], idx[0, :top_k])
        mode = (
            "concept-aware checkpoint"
            if self.concept_aware
            else (
                "GeoCLIP checkpoint, zero-shot concepts" if self.retrained_geoclip else "zero-shot"
            )
        )
        out: dict[str, Any] = {"mode": mode, "predictions": [c.to_dict() for c in cands],
                               "spread": spread_km(cands),
                               "probabilities": p.calibration_note()}  # fmt: skip
        if p.calibration is not None:
            out["region"] = p.regions(feats)[0]
        if self.concept_aware:
            parts, terms, unit = self._decompose(feats, cands[0], idx[0], n_concepts)
            out.update(parts)
            if check:
                out["check"] = self._check(feats, terms, unit, cands[0], m, draws, seed)
        else:
            out.update(self._zero_shot(feats, cands[0], n_concepts))
            if check:
                out["note"] += "; --check needs a concept-aware checkpoint too"
        return out

    def _decompose(self, feats: torch.Tensor, top: Candidate, idx: torch.Tensor, n: int
                   ) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor]:  # fmt: skip
        """Photo/place concepts, per-concept score terms, contrast with the runner-up.

        Reasons only name concepts the photo shows (positive image activation): a term is
        also positive when both activations are negative, which is no reason to name it.
        """
        head, p, cs = self.predictor.head, self.predictor, self.concepts
        assert isinstance(head, ConceptAwareHead)  # called for a concept-aware head only
        a_img = head.image_concepts(feats.to(p.device).float())[0].cpu()
        unit = a_img / a_img.norm()
        shown = unit > 0
        scale = float(head.logit_scale.exp())
        loc1 = p.gallery_emb[top.gallery_index].float().cpu()
        terms = scale * unit * loc1
        gps = p.gallery_gps
        far = haversine_km(top.lat, top.lon, gps[idx, 0].numpy(), gps[idx, 1].numpy())
        others = [int(i) for i, d in zip(idx.tolist(), far, strict=True) if d >= RUNNER_UP_MIN_KM]
        place_act = head.location_concepts(gps[top.gallery_index : top.gallery_index + 1]
                                           .to(p.device))[0].cpu()  # fmt: skip
        out: dict[str, Any] = {
            "photo_concepts": cs.top(a_img, n),
            "photo_concepts_source": "image activations in the learned concept space",
            "place_concepts": cs.top(place_act, n),
            "place_concepts_source": "location-encoder activations in the learned concept space",
            "score_logit": float(terms.sum()),
            "why_here": cs.top(terms, n, where=shown),
        }
        if others:
            j = others[0]
            gap = scale * unit * (loc1 - p.gallery_emb[j].float().cpu())
            lat2, lon2 = (float(v) for v in gps[j])
            runner = {"lat": lat2, "lon": lon2, "place": place_name(lat2, lon2),
                      "gallery_index": j, "logit_gap": float(gap.sum())}  # fmt: skip
            pro, con = cs.top(gap, 3, where=shown), cs.top(-gap, 2, where=shown)
            for e in con:
                e["weight"] = -e["weight"]
            out["rather_than"] = {"runner_up": runner, "for": pro, "against": con}
            if pro:
                names = " + ".join(e["concept"] for e in pro[:2])
                gap_txt = f"logit gap {runner['logit_gap']:+.3g}"
                out["rule"] = (
                    f"IF the photo shows {names} THEN {top.place} rather than {runner['place']} "
                    f"({gap_txt})"
                )
            else:
                out["rule"] = (
                    f"no concept shown in the photo favours {top.place} over {runner['place']}"
                )
        return out, terms, unit

    def _check(self, feats: torch.Tensor, terms: torch.Tensor, unit: torch.Tensor,
               top: Candidate, m: int, draws: int, seed: int) -> dict[str, Any]:  # fmt: skip
        """Deletion test in the photo's latent: project out the concepts' text directions.

        The photo's unit vector z loses its components along the removed concepts' basis
        rows (B_m), then every activation is recomputed: correlated concepts move too, so the
        outcome is not fixed by the decomposition that chose the concepts.
        """
        head, p = self.predictor.head, self.predictor
        assert isinstance(head, ConceptAwareHead)  # called for a concept-aware head only
        k = len(unit)
        if not 1 <= m < k:
            raise GeoconceptError(f"--m must be between 1 and {k - 1}")
        if draws < MIN_DRAWS:
            raise GeoconceptError(f"--draws must be at least {MIN_DRAWS} (the verdict needs "
                                  f"{FAITHFUL_SHARE:.0%} of the random draws beaten)")  # fmt: skip
        z = head.image_latent(feats.to(p.device).float())[0]
        basis = head.basis
        scale = head.logit_scale.exp()
        target = top.gallery_index

        def after_removing(concepts: torch.Tensor) -> tuple[float, int]:
            a = remove_concepts(z, basis, concepts) @ basis.T
            logits = scale * p.gallery_cosines(F.normalize(a, dim=0)[None])[0]
            score = float(logits[target])
            return score, int((logits[p.places] > score).sum()) + 1  # rank among places

        base = float(scale * unit.to(p.device) @ p.gallery_emb[target].float())
        shown_terms = torch.where(unit > 0, terms, torch.tensor(-torch.inf))
        top_score, top_rank = after_removing(shown_terms.argsort(descending=True)[:m])
        gen = torch.Generator().manual_seed(seed)
        rand = [after_removing(torch.randperm(k, generator=gen)[:m]) for _ in range(draws)]
        return {
            "m": m, "draws": draws, "score_before": base,
            "top_concepts_removed": {"score_drop": base - top_score, "rank_after": top_rank},
            **faithfulness(base - top_score, top_rank, [base - s for s, _ in rand],
                           [r for _, r in rand]),
        }  # fmt: skip

    def _zero_shot(self, feats: torch.Tensor, top: Candidate, n: int) -> dict[str, Any]:
        cs = self.concepts
        why = ("a plain GeoCLIP checkpoint (train --concepts none)" if self.retrained_geoclip
               else "no concept-aware checkpoint")  # fmt: skip
        out: dict[str, Any] = {
            "note": f"{why}: GeoCLIP's score has no concept decomposition (pass a concept-aware "
            "--checkpoint for why-here, rather-than and --check)"
        }
        photo = None
        if self.text is not None:
            photo = F.normalize(feats.float().cpu(), dim=1)[0] @ self.text.T
            out["photo_concepts"] = cs.top(photo, n)
            out["photo_concepts_source"] = "CLIP zero-shot image-text similarity"
        if cs.regions:
            w = cs.place_weights(top.lat, top.lon)
            out["place_concepts"] = [e for e in cs.top(w, n) if e["weight"] > 0]
            out["place_concepts_source"] = "concept set region associations"
            if photo is not None:
                both = torch.as_tensor(w, dtype=torch.float32) * photo.clamp_min(0)
                out["overlap"] = [e for e in cs.top(both, n) if e["weight"] > 0]
        return out


def load_explainer(
    checkpoint: str | Path | None = None,
    concepts: str | Path | None = None,
    concept_embeddings: str | Path | None = None,
    clip_model: str = DEFAULT_CLIP_MODEL,
    clip_pretrained: str = DEFAULT_CLIP_PRETRAINED,
    gallery: str | Path | None = None,
    cache_dir: str | Path | None = None,
    device: str = "cpu",
    progress: Callable[[int, int], None] | None = None,
    concept_progress: Callable[[int, int], None] | None = None,
    features_of: ClipId | None = None,
    features_dim: int | None = None,
) -> Explainer:
    """A ready explainer: a checkpoint's concept space, or zero-shot over a concept set.

    In zero-shot mode the concept text embeddings come from ``concept_embeddings`` or are
    computed once with the CLIP model's text encoder and cached (``embed-concepts``; minutes
    for ViT-L/14 on a CPU). ``progress(n, total)`` reports gallery encoding and
    ``concept_progress(n, total)`` concept embedding, each only when it is not cached. With
    ``features_of`` (the CLIP of ``features_dim``-d features embedded before) no CLIP weights
    are loaded, so zero-shot mode then needs ``concept_embeddings``.
    """
    predictor, ckpt = load_run(checkpoint, clip_model, clip_pretrained, gallery, cache_dir,
                               device, progress, features_of, features_dim)  # fmt: skip
    if ckpt.get("kind") == "concept":
        if concepts or concept_embeddings:
            warnings.warn(
                "--concepts and --concept-embeddings are ignored: the concept-aware "
                f"checkpoint {checkpoint} carries its own concept basis",
                stacklevel=2,
            )
        return Explainer(predictor, ConceptSet.from_meta(ckpt["concepts"]))
    concepts = Path(concepts) if concepts else default_concepts_path()
    cset = ConceptSet.from_parquet(concepts)
    if concept_embeddings:
        clip = features_of or cast(ClipBackbone, predictor.clip).identity
        emb = load_concept_embeddings(concept_embeddings, clip)
    elif predictor.clip is None:
        raise GeoconceptError(
            "explaining stored features without a concept-aware --checkpoint needs "
            "--concept-embeddings made with their CLIP (embed-concepts)"
        )
    else:
        key = hashlib.sha256(json.dumps([predictor.clip.identity.as_meta(), cset.names]).encode())
        out = Path(cache_dir or default_cache_dir()) / "concepts" / key.hexdigest()[:16]
        report = (lambda n: concept_progress(n, len(cset.names))) if concept_progress else None
        emb, _ = embed_concepts(concepts, predictor.clip, out, progress=report)
    if emb.concepts != cset.names:
        raise GeoconceptError(f"{concept_embeddings} was made for another concept set")
    retrained = ckpt.get("kind") == "geoclip"
    return Explainer(predictor, cset, emb.embeddings, retrained_geoclip=retrained)


def explanation_row(exp: dict[str, Any]) -> dict[str, Any]:
    """One flat row of a batch run (top-k as JSON, top concepts, the rule)."""
    top = exp["predictions"][0]
    return {
        "image": exp["image"], "lat": top["lat"], "lon": top["lon"], "prob": top["prob"],
        "place": top["place"], "mode": exp["mode"],
        "top_k": json.dumps(exp["predictions"]),
        "photo_concepts": [e["concept"] for e in exp.get("photo_concepts", [])],
        "why_here": [e["concept"] for e in exp.get("why_here", [])],
        "rule": exp.get("rule", ""),
    }  # fmt: skip


ROW_COLUMNS = ["image", "lat", "lon", "prob", "place", "mode", "top_k", "photo_concepts",
               "why_here", "rule"]  # fmt: skip


def rows_to_parquet(rows: list[dict[str, Any]], path: str | Path) -> None:
    """Write batch rows atomically (the documented columns even when there are none)."""
    from .artifacts import atomic_path

    with atomic_path(path) as tmp:
        pd.DataFrame(rows, columns=ROW_COLUMNS).to_parquet(tmp, index=False)


def explain_feature_folder(
    explainer: Explainer, folder: str | Path, progress: Callable[[int], object],
    **opts: Any,
) -> list[dict[str, Any]]:  # fmt: skip
    """Batch rows of every photo of an embed-images folder (``image`` holds its id), from the
    stored features: no CLIP runs; each shard's photos are ranked over the gallery at once, as
    batch predict ranks them, then explained one by one."""
    from .batch_predict import PlaceScorer
    from .features import read_meta, read_shard

    scorer = PlaceScorer(explainer.predictor)
    rows = []
    for s in range(read_meta(folder)["shards"]):
        ids, feats, _ = read_shard(folder, s)
        probs, idx = scorer.topk(feats, max(opts.get("top_k", 5), RANKED))
        for i, ident in enumerate(ids):
            ranked = (probs[i : i + 1], idx[i : i + 1])
            exp = explainer.explain_features(feats[i : i + 1], ranked=ranked, **opts)
            rows.append(explanation_row({"image": ident, **exp}))
            progress(1)
    return rows


def batch_photos(
    target: str | Path, images_dir: str | Path | None = None
) -> tuple[list[Path], list[str]]:
    """Photos of a folder, or of a manifest's image column (no coordinates needed), relative
    to ``images_dir`` (default: the manifest's folder, as in ``read_manifest``).

    Returns (existing photo paths, one message per listed photo that is missing).
    """
    from .features import ID_NAMES, image_path
    from .gallery import find_column, read_table
    from .images import IMAGE_SUFFIXES

    target = Path(target)
    if target.is_dir():
        return sorted(p for p in target.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), []
    df = read_table(target)
    base = Path(images_dir) if images_dir else target.parent
    paths = [image_path(base, str(v)) for v in df[find_column(df, ID_NAMES, "image", target)]]
    return [p for p in paths if p.is_file()], [f"{p}: no such file" for p in paths
                                                if not p.is_file()]  # fmt: skip
