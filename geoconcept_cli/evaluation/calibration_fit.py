"""`calibrate`: fit each model's temperature and conformal threshold on held-out photos and
store them where predict, explain and evaluate find them (see ``inference.calibration``)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..errors import GeoconceptError
from ..gallery.index import refuse_large
from ..gallery.store import cached_gallery_embeddings, load_gallery
from ..geo.distance import haversine_km, unit_vectors
from ..geo.geocode import reverse_geocode
from ..inference.abstention import abstention_level, check_target
from ..inference.calibration import (
    MAX_CALIBRATION_PHOTOS,
    _nll_derivatives,
    best_near,
    conformal_threshold,
    fit_temperature,
    gallery_tree,
    mass_above,
    pairs_within,
    top_confidence,
)
from ..inference.calibration_record import MAX_RADIUS_KM, Calibration, save_calibration
from ..inference.mondrian import check_grouping, group_keys, group_scores, group_thresholds
from ..inference.predictor import Predictor
from ..io.artifacts import (
    hash_state_dict,
    hash_tensors,
)
from ..model.clip_id import ClipId
from ..model.spec import ModelSpec
from ..runtime.progress import Report, silent
from .scores import contenders

FEW_PHOTOS = 200  # below, calibrate warns: the fit is rough and every later answer uses it


# ------------------------------------------------------------------------------ calibrate
def check_options(alpha: float, radius_km: float, by: str | None = None,
                  target_accuracy: float | None = None) -> None:  # fmt: skip
    """One line for a miscoverage, radius, grouping or target that cannot be fitted."""
    if by is not None:
        check_grouping(by)
    if target_accuracy is not None:
        check_target(target_accuracy)
    if not 0 < alpha < 1:
        raise GeoconceptError(f"--alpha {alpha:g}: must be between 0 and 1")
    if not 0 < radius_km <= MAX_RADIUS_KM:
        raise GeoconceptError(f"--radius-km {radius_km:g}: must be > 0 and at most "
                              f"{MAX_RADIUS_KM:.0f} (half the Earth's circumference)")  # fmt: skip


@torch.no_grad()
def calibrate_predictor(
    predictor: Predictor, feats: torch.Tensor, truth: torch.Tensor, clip: ClipId,
    alpha: float = 0.1, radius_km: float = 25.0, seed: int = 0, chunk: int = 256,
    by: str | None = None, target_accuracy: float | None = None,
) -> Calibration:  # fmt: skip
    """Fit the temperature and the conformal threshold of ``predictor``'s head and gallery on
    calibration features (at most MAX_CALIBRATION_PHOTOS, a seeded sample beyond that); with
    ``by``, a threshold per group of places too (inference.mondrian); with
    ``target_accuracy``, the level below which no answer is given (inference.abstention)."""
    check_options(alpha, radius_km, by, target_accuracy)
    if len(feats) < 20:
        raise GeoconceptError(f"{len(feats)} calibration photos: too few (20 at least; "
                              "hundreds for a useful region)")  # fmt: skip
    if len(feats) < FEW_PHOTOS:
        warnings.warn(f"calibrating on {len(feats)} photos: the temperature and the region "
                      f"will be rough (hundreds of held-out photos, {FEW_PHOTOS}+, make them "
                      "trustworthy); every later answer of this model uses them",
                      stacklevel=2)  # fmt: skip
    order = torch.randperm(len(feats), generator=torch.Generator().manual_seed(seed))
    order = order[:MAX_CALIBRATION_PHOTOS]
    half = len(order) // 2  # the temperature is fitted on one half, the threshold on the other
    gps = predictor.gallery_gps
    tree = gallery_tree(gps)
    logits = torch.cat([predictor.logits(feats[order[s : s + chunk]]).cpu()
                        for s in range(0, len(order), chunk)])  # fmt: skip
    truth = truth[order]
    target = torch.from_numpy(tree.query(unit_vectors(truth).numpy(), k=1)[1]).long()
    temperature = fit_temperature(logits[:half], target[:half])

    def nll(t: float, rows: slice) -> float:
        z, y = logits[rows], target[rows]
        parts = [_nll_derivatives(z[s : s + chunk], y[s : s + chunk], 1 / t)[0]
                 * len(z[s : s + chunk]) for s in range(0, len(z), chunk)]  # fmt: skip
        return float(sum(parts) / len(z))

    if by is not None:  # group numbers of the truths and of the gallery's places
        keys, each = np.unique(np.r_[group_keys(reverse_geocode(truth.numpy()), by),
                                     group_keys(predictor.gallery_places, by)],
                               return_inverse=True)  # fmt: skip
        photo_group = torch.from_numpy(each[: len(truth)])
        place_group = torch.from_numpy(each[len(truth) :])
    scores, own, conf, hit = [], [], [], []  # hit: whether each top-1 is within the radius
    for s in range(half, len(logits), chunk):
        probs = (logits[s : s + chunk] / temperature).softmax(dim=1)
        near = pairs_within(tree, truth[s : s + chunk], radius_km)
        scores.append(mass_above(probs, best_near(probs, *near)))
        if by is not None:
            own.append(group_scores(probs, *near, photo_group[s : s + chunk], place_group))
        if target_accuracy is not None:
            c, top = top_confidence(probs, gps, tree, radius_km)
            t, g = truth[s : s + chunk].double().numpy(), gps[top].double().numpy()
            conf.append(c)
            hit.append(haversine_km(t[:, 0], t[:, 1], g[:, 0], g[:, 1]) <= radius_km)
    threshold = conformal_threshold(torch.cat(scores).numpy(), alpha)
    groups = {} if by is None else group_thresholds(
        torch.cat(own).numpy(), keys[photo_group[half:].numpy()], alpha)  # fmt: skip
    abstention = None if target_accuracy is None else abstention_level(
        torch.cat(conf).numpy(), np.concatenate(hit), target_accuracy)  # fmt: skip
    if math.isinf(threshold):
        warnings.warn(
            f"{len(order) - half} photos set the region (half of those given): too few for "
            f"--alpha {alpha} (or too many truths farther than {radius_km:g} km from every "
            "gallery place), so the region is the whole gallery; give more photos",
            stacklevel=2,
        )
    return Calibration(
        temperature=temperature, alpha=alpha, radius_km=radius_km, threshold=threshold,
        photos=len(order), nll_before=nll(1.0, slice(half, None)),
        nll_after=nll(temperature, slice(half, None)),
        model=hash_state_dict(predictor.head), gallery=hash_tensors(gps),
        clip=clip.as_meta(prefix=""), by=by, groups=groups, abstention=abstention,
    )  # fmt: skip


def calibrate(features: str | Path, models: Sequence[ModelSpec], alpha: float = 0.1,
              radius_km: float = 25.0, report: Report = silent, by: str | None = None,
              target_accuracy: float | None = None,
              ) -> dict[str, tuple[Calibration, Path]]:  # fmt: skip
    """`geoconcept calibrate`: per model (pretrained GeoCLIP where a spec has no checkpoint),
    fit the temperature and the conformal threshold (per group ``by``; with the abstention
    level of ``target_accuracy``) on the held-out photos of an
    ``embed-images`` folder and store them where the model's predictions find them (beside a
    run; pretrained GeoCLIP's in the cache). Returns each calibration and where it went."""
    check_options(alpha, radius_km, by, target_accuracy)  # before any model loads
    c = contenders(features, models, "calibrate")
    gps = load_gallery(c.spec.gallery)
    refuse_large(gps, "calibrate")
    out = {}
    for name, head in c.heads.items():
        with report(f"encoding gallery for {name} (once; cached)", "points") as advance:
            emb = cached_gallery_embeddings(gps, head, c.spec.cache_dir, progress=advance)
        predictor = Predictor(head, gps, emb, cache_dir=c.spec.cache_dir)
        cal = calibrate_predictor(predictor, c.data.features, c.data.latlon, c.clip, alpha,
                                  radius_km, by=by, target_accuracy=target_accuracy)  # fmt: skip
        save_calibration(c.calibrations[name], cal)
        out[name] = (cal, c.calibrations[name])
    return out
