"""Top-k GPS retrieval for photos: CLIP features -> retrieval head -> cached gallery softmax."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from PIL import Image

from ..errors import GeoconceptError
from ..gallery.index import GalleryIndex, indexed_gallery, is_large
from ..gallery.store import cached_gallery_embeddings, distinct_places, load_gallery
from ..geo.geocode import place_names, reverse_geocode
from ..io.images import load_image
from ..model.clip import (
    DEFAULT_CLIP_MODEL,
    DEFAULT_CLIP_PRETRAINED,
    ClipBackbone,
    ClipId,
    clip_embed_dim,
    load_clip,
)
from ..model.geoclip import (
    check_geoclip_width,
    load_geoclip_head,
    warn_unless_geoclip_clip,
)
from .calibration import (
    Calibration,
    geoclip_calibration_path,
    place_areas,
    read_calibration,
    region_mask,
)

if TYPE_CHECKING:
    from ..model.concept_head import RetrievalHead


@dataclass
class Candidate:
    """One predicted location: rank 1 is the best."""

    rank: int
    lat: float
    lon: float
    prob: float
    gallery_index: int
    place: str

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))  # its fields, in order (asdict's deep copy costs 10x more)


class Predictor:
    """Retrieval over a GPS gallery with any head that has ``embed_images``,
    ``embed_locations`` and ``logit_scale`` (GeoCLIP's, or a trained concept-aware one).

    A large gallery comes with its ``index`` (see gallery_index): top-k is searched there, and
    ``gallery_emb`` is its memory-mapped float16 embeddings, multiplied in chunks."""

    def __init__(
        self,
        head: RetrievalHead,
        gallery_gps: torch.Tensor,
        gallery_emb: torch.Tensor,
        clip: ClipBackbone | None = None,
        calibration: Calibration | None = None,
        cache_dir: str | Path | None = None,
        index: GalleryIndex | None = None,
    ):
        self.head = head.eval()
        self.clip = clip
        self.calibration = calibration
        self.cache_dir = cache_dir
        self._areas: torch.Tensor | None = None
        self.device = next(head.parameters()).device
        self.gallery_gps = gallery_gps
        self.gallery_emb = gallery_emb.to(self.device)
        self.index = index
        places, copies = (index.places, index.copies) if index else distinct_places(gallery_gps)
        self.places = places.to(self.device)  # gallery rows, one per place
        self.place_copies = copies.to(self.device)  # rows holding each

    @classmethod
    def load(
        cls,
        clip_model: str = DEFAULT_CLIP_MODEL,
        clip_pretrained: str = DEFAULT_CLIP_PRETRAINED,
        gallery: str | Path | None = None,
        head: RetrievalHead | None = None,
        cache_dir: str | Path | None = None,
        device: str = "cpu",
        progress: Callable[[int, int], None] | None = None,
        calibration: str | Path | None = None,
        features_of: ClipId | None = None,
        features_dim: int | None = None,
    ) -> Predictor:
        """GeoCLIP's pretrained head (unless ``head`` is given) over a cached gallery.

        Probabilities are calibrated by the ``calibration`` file of a trained head, or, for
        pretrained GeoCLIP, by its calibration for this gallery in the cache, where one exists;
        a calibration made for another model, gallery or CLIP is refused. ``features_of``
        (for ``features_dim``-d features embedded before, by that CLIP) skips loading the CLIP
        weights. Pretrained GeoCLIP refuses a CLIP of another width than ViT-L/14's."""
        pretrained = head is None
        width = clip_embed_dim(clip_model) if features_of is None else features_dim
        if pretrained and width is not None:  # refused before minutes of CLIP loading
            check_geoclip_width(
                width, f"CLIP {features_of or ClipId.of(clip_model, clip_pretrained)}"
            )
        clip = None
        if features_of is None:
            clip = load_clip(clip_model, clip_pretrained, device)
        identity = clip.identity if clip is not None else features_of
        assert identity is not None
        if pretrained:
            warn_unless_geoclip_clip(identity)
        head = (head or load_geoclip_head()).to(device)
        gps = load_gallery(gallery)
        if pretrained:
            calibration = geoclip_calibration_path(gps, head, identity, cache_dir)
        cal = read_calibration(calibration) if calibration else None
        if cal is not None:
            cal.check_for(head, gps, identity, calibration)
        if is_large(gps):
            emb, index = indexed_gallery(gps, head, cache_dir, progress=progress)
            return cls(head, gps, emb, clip, cal, cache_dir, index)
        emb = cached_gallery_embeddings(gps, head, cache_dir, progress=progress)
        return cls(head, gps, emb, clip, cal, cache_dir)

    def image_features(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Projected CLIP embeddings (B, D) of RGB images, with the model's own preprocessing."""
        if self.clip is None:
            raise RuntimeError("this predictor has no CLIP backbone; pass features instead")
        pixels = torch.stack([self.clip.preprocess(img) for img in images])
        return self.clip.encode_images(pixels)

    @torch.no_grad()
    def gallery_cosines(self, embeddings: torch.Tensor, out: torch.Tensor | None = None
                        ) -> torch.Tensor:  # fmt: skip
        """(B, N) products of embeddings (B, D) with every gallery row (cosines for unit ones),
        into ``out`` if given; a float16 gallery is taken in float32 chunks, never copied
        whole."""
        if self.gallery_emb.dtype == embeddings.dtype:
            return torch.mm(embeddings, self.gallery_emb.T, out=out)
        step = 65_536
        return torch.cat([embeddings @ self.gallery_emb[s : s + step].to(embeddings.dtype).T
                          for s in range(0, len(self.gallery_emb), step)], dim=1,
                         out=out)  # fmt: skip

    @torch.no_grad()
    def logits(self, clip_features: torch.Tensor, out: torch.Tensor | None = None
               ) -> torch.Tensor:  # fmt: skip
        """(B, N) gallery logits: logit_scale.exp() * cosine(image, location), the scale taken
        on the image side (a pass less over the product); into ``out`` if given (a buffer
        reused over batches spares mapping fresh memory for each)."""
        img = self.head.embed_images(clip_features.to(self.device).float())
        return self.gallery_cosines(self.head.logit_scale.exp() * img, out)

    @cached_property
    def place_emb(self) -> torch.Tensor:
        """(places, D) embeddings, one row per distinct place, contiguous: made once, for
        the batch runs that score places (copying 100K rows costs a 2,048-photo batch 5%)."""
        return self.gallery_emb[self.places].contiguous()

    @cached_property
    def gallery_countries(self) -> np.ndarray:
        """ISO country code of each gallery row ('' at sea), reverse-geocoded once."""
        return reverse_geocode(self.gallery_gps.numpy()).country.astype(str)

    @property
    def temperature(self) -> float:
        return self.calibration.temperature if self.calibration else 1.0

    @torch.no_grad()
    def probabilities(self, clip_features: torch.Tensor) -> torch.Tensor:
        """(B, N) softmax over the gallery rows, at the calibrated temperature if any."""
        return (self.logits(clip_features) / self.temperature).softmax(dim=-1)

    @torch.no_grad()
    def topk(self, clip_features: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The k most probable distinct places as (probabilities, gallery rows), each (B, k) (k
        at most the number of places), under the softmax over all gallery rows, as GeoCLIP's;
        for an indexed gallery, over the candidates it retrieves."""
        if self.index is not None:
            img = self.head.embed_images(clip_features.to(self.device).float())
            scale = float(self.head.logit_scale.exp())
            return self.index.topk(img, k, scale, self.temperature)
        probs = self.probabilities(clip_features)[:, self.places]
        top = probs.topk(max(1, min(k, probs.shape[1])), dim=-1)
        return top.values.cpu(), self.places[top.indices].cpu()

    def candidates(self, probs: torch.Tensor, idx: torch.Tensor) -> list[Candidate]:
        """Turn one row of :meth:`topk` into named candidates."""
        return self.candidate_rows(probs[None], idx[None])[0]

    def candidate_rows(self, probs: torch.Tensor, idx: torch.Tensor) -> list[list[Candidate]]:
        """Turn each row of :meth:`topk`'s (B, k) into named candidates."""
        places, each = idx.unique(return_inverse=True)  # each place named once
        names = np.array(place_names(self.gallery_gps[places].tolist()), dtype=object)[each.numpy()]
        rows = zip(self.gallery_gps[idx].tolist(), probs.tolist(), idx.tolist(), names.tolist(),
                   strict=True)  # fmt: skip
        return [[Candidate(rank, lat, lon, p, i, name)
                 for rank, ((lat, lon), p, i, name) in enumerate(zip(*row, strict=True), start=1)]
                for row in rows]  # fmt: skip

    def strongest(self, scores: torch.Tensor, n: int) -> list[list[float]]:
        """The ``n`` distinct places with the highest of (N,) ``scores`` (a probability or an
        activation per gallery row) as [lat, lon, score] rows, highest first: a heatmap's
        points, small enough to send to a browser."""
        rows = self.places.cpu()
        top = scores.cpu()[rows].topk(max(1, min(n, len(rows))))
        gps = self.gallery_gps[rows[top.indices]].tolist()
        return [[round(a, 5), round(b, 5), float(v)]
                for (a, b), v in zip(gps, top.values.tolist(), strict=True)]  # fmt: skip

    def calibration_note(self) -> dict[str, Any]:
        """What the probabilities are: calibrated (by what) or not."""
        cal = self.calibration
        over = {"normalised_over": self.index.note()} if self.index else {}
        if cal is None:
            return {
                "calibrated": False,
                "note": "probabilities uncalibrated (geoconcept calibrate fits them)",
                **over,
            }
        return {**over, "calibrated": True, "temperature": cal.temperature, "photos": cal.photos,
                "note": f"probabilities calibrated (temperature {cal.temperature:.3g}, "
                        f"fitted on {cal.photos} photos)"}  # fmt: skip

    @torch.no_grad()
    def regions(self, clip_features: torch.Tensor, max_points: int = 500
                ) -> list[dict[str, Any]]:  # fmt: skip
        """Each photo's conformal confidence region (needs a calibration): its coverage, area
        (km²), places, the countries it spans by probability mass, and its most probable
        points (at most ``max_points``, for a map)."""
        cal = self.calibration
        if cal is None:
            raise GeoconceptError("no calibration: run geoconcept calibrate for this model")
        if self._areas is None:
            self._areas = place_areas(self.gallery_gps, cal.radius_km, self.cache_dir)
        probs = self.probabilities(clip_features).cpu()
        inside = region_mask(probs, cal.threshold)
        out = []
        for p, m in zip(probs, inside, strict=True):
            rows = torch.nonzero(m)[:, 0]
            distinct = rows[torch.isin(rows, self.places.cpu())]  # repeated points once
            order = distinct[p[distinct].argsort(descending=True)]
            mass = pd.Series(p[rows].double().numpy(), index=self.gallery_countries[rows.numpy()])
            by_country = mass.groupby(level=0).sum().sort_values(ascending=False)
            top = order[:max_points]
            out.append({
                "coverage": 1 - cal.alpha, "radius_km": cal.radius_km,
                "area_km2": float(self._areas[rows].sum()), "places": len(distinct),
                "mass": float(p[rows].sum()),
                "countries": [{"country": c or "(none)", "mass": round(float(v), 5)}
                              for c, v in by_country.items()],
                "points": [[round(float(a), 5), round(float(b), 5)]
                           for a, b in self.gallery_gps[top].tolist()],
            })  # fmt: skip
        return out

    def describe(self, path: str | Path, top_k: int = 5) -> dict[str, Any]:
        """Top-k candidates of one photo file, what their probabilities are and, for a
        calibrated model, the conformal region (JSON-able)."""
        return self.describe_features(self.image_features([load_image(path)]), top_k)

    def describe_features(self, feats: torch.Tensor, top_k: int = 5) -> dict[str, Any]:
        """:meth:`describe` of one photo's CLIP features (1, D)."""
        probs, idx = self.topk(feats, top_k)
        out = {"predictions": [c.to_dict() for c in self.candidates(probs[0], idx[0])],
               "probabilities": self.calibration_note()}  # fmt: skip
        if self.calibration is not None:
            out["region"] = self.regions(feats)[0]
        return out

    def predict(self, path: str | Path, top_k: int = 5) -> list[Candidate]:
        """Top-k candidates for one photo file (raises GeoconceptError on a bad file)."""
        feats = self.image_features([load_image(path)])
        probs, idx = self.topk(feats, top_k)
        return self.candidates(probs[0], idx[0])


def load_run(
    checkpoint: str | Path | None = None,
    clip_model: str = DEFAULT_CLIP_MODEL,
    clip_pretrained: str = DEFAULT_CLIP_PRETRAINED,
    gallery: str | Path | None = None,
    cache_dir: str | Path | None = None,
    device: str = "cpu",
    progress: Callable[[int, int], None] | None = None,
    features_of: ClipId | None = None,
    features_dim: int | None = None,
) -> tuple[Predictor, dict[str, Any]]:
    """A predictor of a trained run (its head and calibration) or, without ``checkpoint``,
    of pretrained GeoCLIP, with the run's checkpoint dict ({} for GeoCLIP). A run trained on
    features of another CLIP (or width) is refused, naming the options that would match. With
    ``features_of`` (the CLIP of ``features_dim``-d features embedded before) no CLIP weights
    are loaded."""
    from ..model.checkpoints import check_trained_on, load_head, run_calibration_path
    from ..model.concept_head import check_head_takes

    head: RetrievalHead | None = None
    ckpt: dict[str, Any] = {}
    if checkpoint:
        head, ckpt = load_head(checkpoint, device)
        given = features_of or ClipId.of(clip_model, clip_pretrained)
        check_trained_on(ckpt, given, checkpoint, hint=features_of is None)
        width = features_dim if features_of else clip_embed_dim(clip_model)
        if width is not None:
            check_head_takes(head, width, checkpoint)
    calibration = run_calibration_path(checkpoint) if checkpoint else None
    predictor = Predictor.load(clip_model, clip_pretrained, gallery, head, cache_dir, device,
                               progress, calibration, features_of, features_dim)  # fmt: skip
    return predictor, ckpt


def load_predictor(
    checkpoint: str | Path | None = None,
    clip_model: str = DEFAULT_CLIP_MODEL,
    clip_pretrained: str = DEFAULT_CLIP_PRETRAINED,
    gallery: str | Path | None = None,
    cache_dir: str | Path | None = None,
    device: str = "cpu",
    progress: Callable[[int, int], None] | None = None,
) -> Predictor:
    """A ready predictor: pretrained GeoCLIP, or a run folder, checkpoint or exported bundle;
    ``progress(n, total)`` reports the gallery's encoding when it is not cached yet."""
    return load_run(checkpoint, clip_model, clip_pretrained, gallery, cache_dir, device,
                    progress)[0]  # fmt: skip
