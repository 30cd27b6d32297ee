"""Typed answers of the library: a prediction, an explanation, a where-answer. Each one's
``to_json()`` is exactly what the matching command prints with ``--json`` (and what ``serve``
sends, plus its map); the nested parts are typed dictionaries, as JSON holds them."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, TypedDict

if TYPE_CHECKING:  # an ONNX bundle's answers are these, with no torch loaded
    import torch

    from ..concepts.set import ConceptWeight


@dataclass
class Candidate:
    """One predicted location: rank 1 is the best; ``place`` its name (see geo.geocode);
    ``points`` the gallery rows it holds (within the request's ``merge_km`` of its own point,
    which is the most probable of them; see inference.sites), ``prob`` their summed
    probability."""

    rank: int
    lat: float
    lon: float
    prob: float
    gallery_index: int
    place: str
    points: int = 1

    def to_json(self) -> dict[str, Any]:
        return dict(vars(self))  # its fields, in order (asdict's deep copy costs 10x more)


class Spread(TypedDict):
    """How far apart the top-k candidates are: a confidence cue (small = consistent)."""

    max_pairwise_km: float
    mean_to_top1_km: float


class CountryMass(TypedDict):
    country: str
    mass: float


class ConfidenceRegion(TypedDict):
    """A calibrated model's conformal region: the true location lies within ``radius_km`` of
    one of its ``places`` with probability ``coverage``; ``points`` are its most probable."""

    coverage: float
    radius_km: float
    area_km2: float
    places: int
    mass: float
    countries: list[CountryMass]
    points: list[list[float]]


class Confidence(TypedDict):
    """A calibrated model's confidence in a photo (inference.abstention): the ``probability``
    that its top-1 lies within ``radius_km`` of the truth; ``answered`` False where it is
    below ``level`` ("not localizable at this confidence"; the candidates are still the best
    guess); ``guarantee`` what the level promises, where calibrate chose it."""

    probability: float
    radius_km: float
    level: float
    answered: bool
    guarantee: str | None


NOT_JSON = {"json": False}  # a field the library returns that --json does not print


def _json(obj: Prediction | Explanation | WhereAnswer | Album) -> dict[str, Any]:
    """The fields of a result that are set, in order, as JSON values."""
    out: dict[str, Any] = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        if value is None or not f.metadata.get("json", True):
            continue
        if isinstance(value, list) and value and isinstance(value[0], Candidate):
            value = [c.to_json() for c in value]
        out[f.name] = value
    return out


@dataclass(kw_only=True)
class Prediction:
    """Top-k candidates of one photo (``image``, when it has a name; gallery points within
    ``merge_km`` of each other are one candidate, see inference.sites), what their
    probabilities are (calibrated or not, and how), for a calibrated model the conformal
    region, and, when asked for, the heatmap (``Predictor.heat``)."""

    image: str | None = None
    predictions: list[Candidate]
    merge_km: float | None = None
    hints: list[dict[str, Any]] | None = None
    probabilities: dict[str, Any]
    confidence: Confidence | None = None
    region: ConfidenceRegion | None = None
    heat: list[list[float]] | None = field(default=None, metadata=NOT_JSON)

    def to_json(self) -> dict[str, Any]:
        """``geoconcept predict --json``."""
        return _json(self)


@dataclass(kw_only=True)
class Explanation:
    """Where a photo was taken and why (see inference.explainer). Concept-aware models fill
    ``score_logit``, ``why_here``, ``rather_than``, ``rule`` and, when asked, ``check``;
    zero-shot ones ``note``. Lists of concepts hold ``ConceptWeight``s."""

    image: str | None = None
    mode: str
    predictions: list[Candidate]
    merge_km: float | None = None
    hints: list[dict[str, Any]] | None = None
    spread: Spread
    probabilities: dict[str, Any]
    note: str | None = None
    photo_concepts: list[ConceptWeight] | None = None
    photo_concepts_source: str | None = None
    place_concepts: list[ConceptWeight] | None = None
    place_concepts_source: str | None = None
    score_logit: float | None = None
    why_here: list[ConceptWeight] | None = None
    rather_than: dict[str, Any] | None = None
    rule: str | None = None
    check: dict[str, Any] | None = None
    confidence: Confidence | None = None
    region: ConfidenceRegion | None = None
    heat: list[list[float]] | None = field(default=None, metadata=NOT_JSON)

    def to_json(self) -> dict[str, Any]:
        """``geoconcept explain --json``."""
        return _json(self)


def _empty() -> torch.Tensor:
    import torch

    return torch.empty(0)


@dataclass(kw_only=True)
class WhereAnswer:
    """Where a text or a concept points: the top distinct places and countries by ``score``
    ("probability" or "activation"), and ``scores``, that score at every gallery row."""

    query: str
    mode: str
    note: str
    score: str
    probabilities: dict[str, Any] | None = None
    merge_km: float | None = None
    places: list[dict[str, Any]]
    countries: list[dict[str, Any]]
    scores: torch.Tensor = field(default_factory=_empty, metadata=NOT_JSON)

    def to_json(self) -> dict[str, Any]:
        """``geoconcept where --json``."""
        return _json(self)


@dataclass(kw_only=True)
class Album:
    """Photos of one place (a manifest's ``group``) located together (inference.album): the
    joint top candidates, what their probabilities are, the rival the photos' shares are
    measured against, and per photo its own top place, its part and whether it disagrees."""

    group: str | None = None
    images: list[str]
    predictions: list[Candidate]
    merge_km: float | None = None
    probabilities: dict[str, Any]
    rival_gallery_index: int | None  # None: no place inside the limits far enough away
    photos: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        """``geoconcept predict DIR --together --json``."""
        return _json(self)
