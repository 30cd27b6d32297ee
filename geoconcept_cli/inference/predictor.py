"""Top-k GPS retrieval for photos: CLIP features -> retrieval head -> cached gallery softmax."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import GeoconceptError
from ..gallery.index import CANDIDATES, GalleryIndex
from ..gallery.sites import site_ids
from ..gallery.store import distinct_places
from ..geo.geocode import Places, place_names, reverse_geocode
from ..geo.limits import Limits
from ..io.images import load_image
from ..model.clip import ClipBackbone
from ..model.concept_embeddings import DEFAULT_TEMPLATES
from ..runtime.scratch import Scratch
from .calibration import (
    gallery_tree,
    place_areas,
    region_cuts,
    region_mask,
    top_confidence,
)
from .calibration_record import Calibration
from .hints import hint_gains
from .mondrian import GROUPINGS, group_keys, grouped_mask, place_slots
from .readout import (
    HEAT_POINTS,
    REGION_POINTS,
    abstain_level,
    confidence_answer,
    probabilities_note,
    region_summary,
    strongest,
)
from .reasons import POOL
from .request import Request, say_if_capped
from .results import Candidate, Confidence, ConfidenceRegion, Prediction
from .sites import CHUNK, Rank, Ranked, Sites

if TYPE_CHECKING:
    from scipy.spatial import cKDTree

    from ..model.concept_head import RetrievalHead


class Predictor:
    """Retrieval over a GPS gallery with any head that has ``embed_images``,
    ``embed_locations`` and ``logit_scale`` (GeoCLIP's, or a trained concept-aware one).

    A large gallery comes with its ``index`` (see gallery_index): top-k is searched there, and
    ``gallery_emb`` is its memory-mapped float16 embeddings, multiplied in chunks.
    ``gallery_places``: the rows' reverse-geocoded places, where the caller has them."""

    def __init__(
        self,
        head: RetrievalHead,
        gallery_gps: torch.Tensor,
        gallery_emb: torch.Tensor,
        clip: ClipBackbone | None = None,
        calibration: Calibration | None = None,
        cache_dir: str | Path | None = None,
        index: GalleryIndex | None = None,
        gallery_places: Places | None = None,
    ):
        self.head = head.eval()
        if gallery_places is not None:  # known already (evaluate has them): not geocoded again
            self.__dict__["gallery_places"] = gallery_places
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
        self.limits = Limits()  # where answers may come from (see limited)
        self.allowed: torch.Tensor | None = None  # (N,) rows inside the limits; None: all
        # (N,) log-weights added to every photo's tempered logits: hints, an album's other
        # photos (products of experts); None: the photo alone
        self.prior: torch.Tensor | None = None
        self._masks: dict[Limits, tuple[torch.Tensor, int]] = {}  # of limited views, and counts
        self._sites: dict[tuple[Limits, float], Sites] = {}  # per limits and merge radius
        self.place_count = len(places)  # distinct places an answer can come from
        self._scratch = Scratch()  # the buffers of ranked(), reused over chunks
        self._whole = self
        self._texts: dict[tuple[str, tuple[str, ...]], torch.Tensor] = {}  # text_features
        self._tree: cKDTree | None = None  # of the gallery, for confidences
        self._slots: dict[tuple[str, tuple[str, ...]], torch.Tensor] = {}  # region_of

    def limited(self, limits: Limits) -> Predictor:
        """This predictor answering only from the gallery rows inside ``limits`` (itself for
        none): its scores are masked in every kernel, so probabilities, top-k, heatmaps and
        regions are renormalised over the places inside. A view sharing the gallery (its mask
        made once per limits); GeoconceptError where no gallery place is inside."""
        if self is not self._whole:  # a view's limits replace, not narrow; its prior goes
            return self._whole.limited(limits)
        if not limits:
            return self
        if limits not in self._masks:
            allowed = torch.from_numpy(limits.mask(self.gallery_gps.double().numpy(),
                                                   self.gallery_places))  # fmt: skip
            count = int(allowed[self.places.cpu()].sum())
            if count == 0:
                raise GeoconceptError(f"no gallery place inside {limits.describe()}: widen "
                                      "the limit, or give another --gallery")  # fmt: skip
            self._masks = dict(list(self._masks.items())[-15:])  # a few, not every query's
            self._masks[limits] = (allowed.to(self.device), count)
        view = copy.copy(self)  # made afresh: it follows this predictor's calibration
        view.limits, (view.allowed, view.place_count) = limits, self._masks[limits]
        return view

    def with_prior(self, prior: torch.Tensor | None) -> Predictor:
        """This predictor with (N,) ``prior`` log-weights added to each photo's tempered
        logits (a product of experts: the photo's distribution times exp(prior)); a view."""
        if prior is None:
            return self
        view = copy.copy(self)
        view.prior = prior.to(self.device) if self.prior is None else self.prior + prior
        return view

    def steered(self, request: Request) -> Predictor:
        """This predictor as ``request`` steers it: inside its limits, and with its text hints
        as a prior (:meth:`hint_prior`)."""
        p = self._whole.limited(request.limits)
        if request.hints:
            p = p.with_prior(p.hint_prior(p.hint_features(request.hints), request.hint_weight))
        return p

    @torch.no_grad()
    def text_features(self, text: str, templates: Sequence[str] = DEFAULT_TEMPLATES
                      ) -> torch.Tensor:  # fmt: skip
        """(1, D) prompt-ensembled CLIP text embedding, at the mean norm of its unnormalised
        template embeddings (the MLP expects CLIP's scale, not unit vectors)."""
        if self.clip is None:
            raise GeoconceptError("a text (a where query, a hint) needs the CLIP backbone")
        key = (text, tuple(templates))
        if key not in self._texts:  # a hint is read again for its gains and its concepts
            raw = self.clip.encode_texts([t.format(text) for t in templates])
            unit = F.normalize(F.normalize(raw, dim=1).mean(0, keepdim=True), dim=1)
            norm = cast(torch.Tensor, raw.norm(dim=1)).mean()  # Tensor.norm is unannotated
            if len(self._texts) >= 64:  # shared with the views: kept small, oldest out
                self._texts.pop(next(iter(self._texts)))
            self._texts[key] = unit * norm
        return self._texts[key]

    @torch.no_grad()
    def hint_logprobs(self, features: torch.Tensor) -> torch.Tensor:
        """(H, N) log-probabilities of each hint's own where-distribution (its CLIP text
        features (H, D) scored as `where` scores a text), inside the limits."""
        return (self.logits(features) / self.temperature).log_softmax(dim=-1)

    def hint_features(self, hints: Sequence[str]) -> torch.Tensor:
        """(H, D) the CLIP text features of each hint (:meth:`text_features`)."""
        return torch.cat([self.text_features(h) for h in hints])

    def hint_prior(self, features: torch.Tensor, weight: float) -> torch.Tensor:
        """(N,) the prior of hints' CLIP text features (H, D): ``weight`` times the sum of
        their log-probabilities (finite outside the limits, which the mask excludes)."""
        return weight * self.hint_logprobs(features).clamp_min(-1e30).sum(0)

    @torch.no_grad()
    def hint_gains(self, feats: torch.Tensor, rows: torch.Tensor, hints: torch.Tensor,
                   texts: tuple[str, ...], weight: float
                   ) -> list[list[dict[str, Any]]]:  # fmt: skip
        """Per photo (CLIP features (B, D)) and hint (CLIP text features (H, D) of ``texts``):
        what it gave the answer at gallery ``rows`` (B,), as hints.hint_gains says."""
        z = self.logits(feats) / self.temperature
        return hint_gains(self.hint_logprobs(hints), z, self.gallery_gps, rows, texts, weight)

    def mask_(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, N) logits with the rows outside the limits at -inf, in place."""
        if self.allowed is not None:
            logits.masked_fill_(~self.allowed, -torch.inf)
        return logits

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
        return self.mask_(self.gallery_cosines(self.head.logit_scale.exp() * img, out))

    @cached_property
    def place_emb(self) -> torch.Tensor:
        """(places, D) embeddings, one row per distinct place, contiguous: made once, for
        the batch runs that score places (copying 100K rows costs a 2,048-photo batch 5%)."""
        return self.gallery_emb[self.places].contiguous()

    @cached_property
    def gallery_places(self) -> Places:
        """Country, region, city and continent of each gallery row, reverse-geocoded once."""
        return reverse_geocode(self.gallery_gps.numpy())

    @cached_property
    def gallery_countries(self) -> np.ndarray:
        """ISO country code of each gallery row ('' at sea)."""
        return self.gallery_places.country.astype(str)

    @property
    def temperature(self) -> float:
        return self.calibration.temperature if self.calibration else 1.0

    @torch.no_grad()
    def probabilities(self, clip_features: torch.Tensor) -> torch.Tensor:
        """(B, N) softmax over the gallery rows, at the calibrated temperature if any, times
        the prior's weights."""
        z = self.logits(clip_features) / self.temperature
        return (z if self.prior is None else z + self.prior).softmax(dim=-1)

    @torch.no_grad()
    def topk(self, clip_features: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The k most probable distinct places as (probabilities, gallery rows), each (B, k) (k
        at most the number of places), under the softmax over all gallery rows, as GeoCLIP's;
        for an indexed gallery, over the candidates it retrieves."""
        if self.index is not None:
            img = self.head.embed_images(clip_features.to(self.device).float())
            scale = float(self.head.logit_scale.exp())
            return self.index.topk(img, k, scale, self.temperature, self.allowed, self.prior)
        probs = self.probabilities(clip_features)[:, self.places]
        top = probs.topk(max(1, min(k, self.place_count)), dim=-1)  # inside the limits
        return top.values.cpu(), self.places[top.indices].cpu()

    def sites(self, merge_km: float) -> Sites:
        """The gallery's sites of radius ``merge_km`` (gallery.sites), inside the limits: made
        once per gallery and radius (cached on disk), and per limits here."""
        key = (self.limits, merge_km)
        whole = self._whole
        if key not in whole._sites:
            copies = torch.zeros(len(self.gallery_gps), dtype=torch.long)
            copies[self.places.cpu()] = self.place_copies.cpu()
            ids = site_ids(self.gallery_gps, merge_km, self.cache_dir)
            whole._sites = dict(list(whole._sites.items())[-15:])
            whole._sites[key] = Sites(ids, copies, self.allowed)
        return whole._sites[key]

    @torch.no_grad()
    def ranked(self, clip_features: torch.Tensor, k: int, merge_km: float,
               rank: Rank | None = None, pool: bool = True) -> Ranked:  # fmt: skip
        """Each photo's top-k candidates: the gallery's sites of radius ``merge_km`` by their
        summed probability (inference.sites), or for 0 the points as ``rank`` (:meth:`topk`
        by default) ranks them; with each photo's POOL most probable places (``pool``; else
        an empty (B, 0) pool)."""
        rank = rank or self.topk
        if merge_km <= 0 or self.index is not None:  # an index ranks its retrieved places
            depth = CANDIDATES if merge_km > 0 else max(k, POOL)
            probs, rows = rank(clip_features, min(depth, self.place_count))
            if merge_km <= 0:
                k = min(k, probs.shape[1])
                return Ranked(probs[:, :k], rows[:, :k], torch.ones_like(rows[:, :k]), rows)
            return Ranked(*self.sites(merge_km).merge(probs, k, rows), rows[:, :POOL])
        parts, places = [], self.places.cpu()
        for s in range(0, len(clip_features), CHUNK):
            probs = self._probabilities_into(clip_features[s : s + CHUNK])
            best = (places[probs[:, places].topk(min(POOL, self.place_count), dim=1).indices]
                    if pool else torch.empty(len(probs), 0, dtype=torch.long))  # fmt: skip
            parts.append((*self.sites(merge_km).merge(probs, k), best))
        return Ranked(*(torch.cat(part) for part in zip(*parts, strict=True)))

    def _probabilities_into(self, clip_features: torch.Tensor) -> torch.Tensor:
        """:meth:`probabilities` (on the CPU) computed in place in a reused buffer: a chunk's
        (B, N) is 100 MB, whose fresh pages would cost as much as the softmax."""
        n, rows = len(clip_features), len(self.gallery_gps)
        z = self.logits(clip_features, out=self._scratch("probs", (n, rows), torch.float32,
                                                          self.device))  # fmt: skip
        z.div_(self.temperature)
        if self.prior is not None:
            z.add_(self.prior)
        z.sub_(z.amax(1, keepdim=True)).exp_()
        return z.div_(z.sum(1, keepdim=True)).cpu()

    def rank_scores(self, scores: torch.Tensor, k: int, merge_km: float, total: bool = True
                    ) -> Ranked:  # fmt: skip
        """:meth:`ranked` of given (B, N) scores per gallery row (a text's probabilities or
        activations, an album's joint probabilities): the sites of radius ``merge_km`` by the
        sum of their rows' (``total``) or their best row's, or for 0 the places inside."""
        rows = self.places.cpu()
        if self.allowed is not None:
            rows = rows[self.allowed.cpu()[rows]]
        top = scores.cpu()[:, rows].topk(min(max(k, POOL), len(rows)), dim=1)
        pool = rows[top.indices]
        if merge_km <= 0:
            k = min(k, pool.shape[1])
            return Ranked(top.values[:, :k], pool[:, :k], torch.ones_like(pool[:, :k]), pool)
        return Ranked(*self.sites(merge_km).merge(scores, k, total=total), pool[:, :POOL])

    def candidate_rows(self, ranked: Ranked) -> list[list[Candidate]]:
        """Turn each photo's :meth:`ranked` candidates into named ones."""
        idx = ranked.rows
        places, each = idx.unique(return_inverse=True)  # each place named once
        names = np.array(place_names(self.gallery_gps[places].tolist()), dtype=object)[each.numpy()]
        rows = zip(self.gallery_gps[idx].tolist(), ranked.probs.tolist(), idx.tolist(),
                   names.tolist(), ranked.points.tolist(), strict=True)  # fmt: skip
        return [[Candidate(rank, lat, lon, p, i, name, n)
                 for rank, ((lat, lon), p, i, name, n) in enumerate(zip(*row, strict=True),
                                                                    start=1) if n > 0]
                for row in rows]  # fmt: skip

    def strongest(self, scores: torch.Tensor, n: int) -> list[list[float]]:
        """readout.strongest of (N,) ``scores`` over the distinct places inside the limits."""
        rows = self.places.cpu()
        if self.allowed is not None:
            rows = rows[self.allowed.cpu()[rows]]
        return strongest(scores.cpu().numpy(), rows.numpy(), self.gallery_gps.numpy(), n)

    def heat(self, clip_features: torch.Tensor) -> list[list[float]]:
        """[lat, lon, probability] of the HEAT_POINTS most probable places of one photo's CLIP
        features (1, D): the heatmap the page and ``explain --map`` draw."""
        return self.strongest(self.probabilities(clip_features)[0], HEAT_POINTS)

    def calibration_note(self) -> dict[str, Any]:
        """What the probabilities are: calibrated (by what) or not (readout)."""
        return probabilities_note(
            self.calibration,
            self.limits,
            self.place_count,
            len(self.places),
            self.index.note() if self.index else None,
        )

    @torch.no_grad()
    def regions(self, clip_features: torch.Tensor, max_points: int = REGION_POINTS
                ) -> list[ConfidenceRegion]:  # fmt: skip
        """Each photo's conformal confidence region (needs a calibration): its coverage, area
        (km²), places, the countries it spans by probability mass, and its most probable
        points (at most ``max_points``, for a map)."""
        cal = self.calibration
        if cal is None:
            raise GeoconceptError("no calibration: run geoconcept calibrate for this model")
        if self._areas is None:
            self._areas = place_areas(self.gallery_gps, cal.radius_km, self.cache_dir)
        # the photo's own distribution (inside the limits): the threshold was fitted on such,
        # so hints and an album's prior do not narrow a region that claims its coverage
        probs = (self.logits(clip_features) / self.temperature).softmax(dim=-1).cpu()
        inside = self.region_of(probs)
        if self.allowed is not None:  # never wider than the limits (a cut of 0 takes all)
            inside &= self.allowed.cpu()
        is_place = np.zeros(len(self.gallery_gps), dtype=bool)
        is_place[self.places.cpu().numpy()] = True
        gps, areas = self.gallery_gps.numpy(), self._areas.numpy()
        return [region_summary(p.numpy(), m.numpy(), cal, is_place, gps, self.gallery_countries,
                               areas, max_points)
                for p, m in zip(probs, inside, strict=True)]  # fmt: skip

    def region_of(self, probs: torch.Tensor) -> torch.Tensor:
        """(B, N) membership of each photo's conformal region, given its (B, N) calibrated
        probabilities: per group of places where the calibration has groups (mondrian)."""
        cal = self.calibration
        assert cal is not None, "region_of needs a calibrated predictor"
        slots = self.region_slots()
        if slots is None:
            return region_mask(probs, cal.threshold)
        return grouped_mask(probs, region_cuts(probs, self.region_thresholds()), slots)

    def region_thresholds(self) -> list[float]:
        """The calibration's thresholds by slot (:meth:`region_slots`): its groups', then the
        pooled one."""
        cal = self.calibration
        assert cal is not None, "region_thresholds needs a calibrated predictor"
        return [*cal.groups.values(), cal.threshold]

    def region_slots(self) -> torch.Tensor | None:
        """(N,) each gallery row's slot in :meth:`region_thresholds` (mondrian.place_slots),
        made once per grouping; None where the calibration has one pooled threshold."""
        cal = self.calibration
        if cal is None or cal.by is None or not cal.groups:
            return None
        if cal.by not in GROUPINGS:
            raise GeoconceptError(
                f"a damaged calibration (grouped by {cal.by!r}, not "
                f"{' or '.join(GROUPINGS)}): rerun geoconcept calibrate"
            )
        whole, key = self._whole, (cal.by, tuple(cal.groups))
        if key not in whole._slots:
            whole._slots = {key: place_slots(group_keys(self.gallery_places, cal.by), [*key[1]])}
        return whole._slots[key]

    def abstain_level(self, request: Request) -> float | None:
        """The confidence below which ``request`` gets no answer (readout.abstain_level)."""
        return abstain_level(self.calibration, request)

    @torch.no_grad()
    def confidences(self, clip_features: torch.Tensor, level: float) -> list[Confidence]:
        """Each photo's calibrated probability that its top-1 (the most probable gallery
        point) lies within the calibration's radius of the truth, under the answer's own
        distribution (limits and hints included), and whether it is answered at ``level``
        (inference.abstention); needs a calibration."""
        cal = self.calibration
        assert cal is not None, "confidences need a calibrated predictor"
        whole = self._whole
        if whole._tree is None:
            whole._tree = gallery_tree(self.gallery_gps)
        conf, _ = top_confidence(self.probabilities(clip_features), self.gallery_gps,
                                 whole._tree, cal.radius_km)  # fmt: skip
        steered = self.prior is not None or bool(self.limits)
        return [confidence_answer(c, cal, level, steered) for c in conf.tolist()]

    def confidence(self, clip_features: torch.Tensor, request: Request) -> Confidence | None:
        """:meth:`confidences` of one photo's features (1, D) at ``request``'s level (None
        for a model without a calibration)."""
        level = self.abstain_level(request)
        return None if level is None else self.confidences(clip_features, level)[0]

    def predict(self, photo: str | Path, request: Request = Request()) -> Prediction:
        """Top-k candidates of one photo file, what their probabilities are and, for a
        calibrated model, the conformal region (GeoconceptError on a bad file)."""
        feats = self.image_features([load_image(photo)])
        return self.predict_features(feats, request, image=str(photo))

    def predict_features(self, feats: torch.Tensor, request: Request = Request(),
                         image: str | None = None) -> Prediction:  # fmt: skip
        """:meth:`predict` of one photo's CLIP features (1, D); ``image`` names the photo."""
        p = self.steered(request)
        say_if_capped("--top-k", request.top_k, p.place_count, "places in the gallery")
        confidence = p.confidence(feats, request)
        ranked = p.ranked(feats, request.top_k, request.merge_km)
        region = p.regions(feats)[0] if p.calibration is not None else None
        hints = None
        if request.hints:
            hints = p.hint_gains(feats, ranked.rows[:, 0], p.hint_features(request.hints),
                                 request.hints, request.hint_weight)[0]  # fmt: skip
        return Prediction(image=image, predictions=p.candidate_rows(ranked)[0],
                          merge_km=request.merge_km, hints=hints,
                          probabilities=p.calibration_note(), confidence=confidence,
                          region=region,
                          heat=p.heat(feats) if request.heat else None)  # fmt: skip
