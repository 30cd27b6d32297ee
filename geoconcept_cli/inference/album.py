"""Photos taken at one place, located as one question (`predict DIR --together`).

The joint distribution is the product of the photos' distributions over the same gallery,
tempered by the square root of their number (the sum of their log-probabilities over sqrt(n),
then renormalised), inside the request's limits and with its hints. Photos of one place are not
independent evidence: on a planted world (12 regions, noisy photos) the true region's mass was
best predicted at sqrt(n) (negative log-mass 0.337 against 0.375 untempered and 0.339 at n for
2 photos; 0.178 against 0.192 and 0.245 for 4; 0.101 against 0.095 and 0.213 for 8); the
tempering never changes which place is first, unless hints weigh in (their prior is added
after it, so each hint counts sqrt(n) times more against the tempered photos).

Each photo's part in the answer is its log-probability at the joint top place over its
log-probability at the rival (the joint's most probable place at least RIVAL_KM away, the
explainer's runner-up rule): a photo pulling elsewhere has a negative share. A photo whose own
most probable place is farther than AGREE_KM from every place of the joint's most probable MASS
is flagged: it disagrees with the rest. With an explainer, each photo also names the concepts
it shows (:func:`name_concepts`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..errors import GeoconceptError
from ..geo.distance import haversine_km
from ..geo.geocode import place_names
from .explainer import Explainer
from .hints import RIVAL_KM
from .predictor import Predictor
from .request import Request, say_if_capped
from .results import Album

MASS = 0.9  # the joint's most probable places holding this much: where the album points
AGREE_KM = 25.0  # a photo's own answer this near the album's agrees: the city level of the metrics


@torch.no_grad()
def locate_album(predictor: Predictor, feats: torch.Tensor, images: Sequence[str],
                 request: Request = Request()) -> Album:  # fmt: skip
    """The joint answer of photos' CLIP features (n, D), named ``images`` (module docstring).
    An album is answered as a whole: a request to abstain is refused in one line."""
    if request.abstain_below is not None:
        raise GeoconceptError(
            "--abstain-below: photos located together are answered as "
            "a whole, with no abstention; leave it out with --together"
        )
    p = predictor.steered(request)
    say_if_capped("--top-k", request.top_k, p.place_count, "places in the gallery")
    lp = (p.logits(feats) / p.temperature).log_softmax(dim=1).cpu()  # (n, N)
    joint = lp.clamp_min(-1e30).sum(0) / math.sqrt(len(feats))
    joint = joint + (0 if p.prior is None else p.prior.cpu())
    if p.allowed is not None:
        joint = joint.masked_fill(~p.allowed.cpu(), -torch.inf)
    probs = joint.softmax(0)
    ranked = p.rank_scores(probs[None], request.top_k, request.merge_km)
    candidates = p.candidate_rows(ranked)[0]
    top = int(ranked.rows[0, 0])
    gps = p.gallery_gps.double().numpy()
    far = torch.from_numpy(haversine_km(gps[top, 0], gps[top, 1], gps[:, 0], gps[:, 1])
                           >= RIVAL_KM)  # fmt: skip
    if p.allowed is not None:
        far &= p.allowed.cpu()
    # the rival: the joint's best place far away and inside; none there: the answer itself
    rival = int(torch.where(far, probs, -1.0).argmax()) if bool(far.any()) else top
    gain = lp[:, top] - lp[:, rival]  # (n,): all 0 without a rival
    share = gain / gain.abs().sum().clamp_min(1e-12)
    order = probs.argsort(descending=True)
    held = order[: int((probs[order].cumsum(0) < MASS).sum()) + 1].numpy()  # the joint's region
    inside = lp if p.allowed is None else lp.masked_fill(~p.allowed.cpu(), -torch.inf)
    own = inside.argmax(1).numpy()  # each photo's own most probable point
    apart = [float(haversine_km(gps[o, 0], gps[o, 1], gps[held, 0], gps[held, 1]).min())
             for o in own]  # fmt: skip
    names = place_names(gps[own])
    photos = [{"image": image, "lat": float(gps[o, 0]), "lon": float(gps[o, 1]), "place": name,
               "logit_gain": round(float(g), 5), "share": round(float(s), 5),
               "km_from_joint_region": round(km, 1),
               "disagrees": km > AGREE_KM}
              for image, o, name, g, s, km in zip(images, own, names, gain.tolist(),
                                                   share.tolist(), apart, strict=True)]  # fmt: skip
    return Album(images=list(images), predictions=candidates, merge_km=request.merge_km,
                 probabilities={**p.calibration_note(), "album": (
                     f"the product of the {len(images)} photos' distributions, tempered by "
                     f"sqrt({len(images)}) and renormalised")},
                 rival_gallery_index=rival if rival != top else None, photos=photos)  # fmt: skip


@torch.no_grad()
def name_concepts(album: Album, explainer: Explainer, feats: torch.Tensor, n: int = 3) -> Album:
    """``album`` with each photo's ``n`` strongest concepts (what it shows, as `explain` lists
    them), so that a photo's part in the answer comes with what the photo is of."""
    shown = explainer.explain_batch(feats, Request(top_k=1, concepts_shown=n),
                                    place_concepts=False)  # fmt: skip
    for photo, exp in zip(album.photos, shown, strict=True):
        photo["concepts"] = [c["concept"] for c in exp.photo_concepts or []]
    return album
