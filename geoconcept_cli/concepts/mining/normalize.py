"""Candidate concepts: one shared record type, name normalisation, typing and duplicate merging.

Every source (Wikipedia, WorldKG, LLM) yields Candidate rows; here they get one spelling
(lower case, single spaces, singular head noun), a natural/human type with a subcategory from a
fixed keyword table, and near-duplicates merged, so the review file lists each concept once.
"""

from __future__ import annotations

import difflib
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

SUBCATEGORIES: dict[str, tuple[str, ...]] = {
    "natural": ("terrain", "vegetation", "water", "sky_climate", "soil_rock", "fauna"),
    "human": (
        "architecture",
        "roof",
        "religious_building",
        "road_marking",
        "road_sign",
        "street_furniture",
        "script",
        "vehicle",
        "utility_infrastructure",
        "agriculture",
        "urban_form",
        "people_clothing",
        "commerce",
        "leisure_sport",
        "fence_wall",
        "maritime",
    ),
}

# Head nouns (singular) that name something a photo can show, by type. The same table drives
# Wikipedia cue extraction and the typing of every candidate.
_KEYWORD_TABLE: dict[tuple[str, str], str] = {
    ("natural", "terrain"): """
        mountain hill valley plain plateau desert dune canyon cliff volcano steppe tundra
        savanna savannah prairie glacier peak ridge highland lowland badland mesa gorge
        island archipelago peninsula oasis escarpment crater ice sand slope
        """,
    ("natural", "vegetation"): """
        forest rainforest woodland jungle grassland meadow tree palm pine spruce larch fir
        birch oak eucalyptus cactus shrub shrubland scrub heath moor moss lichen fern bamboo
        mangrove vegetation grass bush taiga conifer baobab acacia cedar cypress beech
        flower wildflower maple willow
        """,
    ("natural", "water"): """
        river lake sea ocean lagoon bay gulf wetland swamp marsh bog waterfall stream reef
        delta estuary fjord coast coastline beach shore strait wadi
        """,
    ("natural", "sky_climate"): """
        climate monsoon rainfall snow snowfall fog mist cloud haze sunshine rain drought
        frost aurora snowpack
        """,
    ("natural", "soil_rock"): """
        soil rock sandstone limestone granite basalt laterite clay karst loess gravel
        boulder outcrop
        """,
    ("natural", "fauna"): """
        wildlife bird camel kangaroo elephant penguin monkey deer bear lion giraffe zebra
        reindeer koala antelope flamingo
        """,
    ("human", "architecture"): """
        house building skyscraper tower castle palace fort fortress villa cottage hut
        bungalow apartment tenement facade balcony arch dome brick timber adobe stucco
        shutter courtyard veranda manor chalet igloo yurt longhouse architecture
        """,
    ("human", "roof"): "roof rooftop thatch tile shingle gable",
    ("human", "religious_building"): """
        temple mosque church cathedral chapel monastery shrine pagoda stupa minaret
        synagogue basilica abbey gurdwara torii worship
        """,
    ("human", "road_marking"): "marking crosswalk centreline centerline",
    ("human", "road_sign"): "sign signpost signage",
    ("human", "street_furniture"): """
        bollard lamppost streetlamp streetlight bench kiosk mailbox postbox hydrant guardrail
        booth
        """,
    ("human", "script"): """
        script alphabet calligraphy inscription hieroglyph syllabary abjad abugida
        """,
    ("human", "vehicle"): """
        car tram bus train taxi truck lorry motorcycle scooter bicycle rickshaw tuk-tuk
        carriage cart tractor jeepney minibus trolleybus moped vehicle
        """,
    ("human", "utility_infrastructure"): """
        railway railroad rail pylon dam bridge canal pipeline highway road motorway freeway
        expressway tunnel airport station turbine antenna mast aqueduct levee dike reservoir
        windmill infrastructure
        """,
    ("human", "agriculture"): """
        farm farmland field paddy rice vineyard orchard plantation crop wheat maize corn
        coffee cotton sugarcane grove pasture ranch livestock cattle sheep goat yak llama
        alpaca greenhouse terrace barn silo haystack irrigation agriculture
        """,
    ("human", "urban_form"): """
        city town village settlement street alley plaza suburb neighbourhood
        neighborhood slum shantytown township skyline downtown avenue boulevard medina
        """,
    ("human", "people_clothing"): """
        clothing dress hat turban kimono sari hijab robe costume garment headscarf poncho
        """,
    ("human", "commerce"): """
        market bazaar shop store stall mall souk restaurant cafe billboard advertisement
        """,
    ("human", "leisure_sport"): """
        stadium park golf cricket football baseball rugby ski resort playground arena
        racecourse
        """,
    ("human", "fence_wall"): "fence wall hedge hedgerow gate barrier",
    ("human", "maritime"): """
        port harbour harbor boat ship ferry dock pier jetty lighthouse dhow canoe sailboat
        marina wharf quay
        """,
}

KEYWORDS: dict[str, tuple[str, str]] = {
    word: kind for kind, words in _KEYWORD_TABLE.items() for word in words.split()
}
# Whole phrases whose head noun alone is too vague to type.
PHRASES: dict[str, tuple[str, str]] = {
    "place of worship": ("human", "religious_building"),
    "traffic light": ("human", "street_furniture"),
    "traffic signal": ("human", "street_furniture"),
    "power line": ("human", "utility_infrastructure"),
    "zebra crossing": ("human", "road_marking"),
    "bus stop": ("human", "street_furniture"),
    "licence plate": ("human", "vehicle"),
    "license plate": ("human", "vehicle"),
}

CANDIDATE_COLUMNS = [
    "concept",
    "category",
    "subcategory",
    "source",
    "region",
    "evidence",
    "url",
    "score",
]


@dataclass(frozen=True)
class Candidate:
    """One source's claim that a concept is characteristic of a region (a review-key)."""

    concept: str
    category: str
    subcategory: str
    source: str
    region: str
    evidence: str
    url: str
    score: float


def is_valid_type(category: str, subcategory: str) -> bool:
    """True when ``subcategory`` belongs to ``category`` in SUBCATEGORIES."""
    return subcategory in SUBCATEGORIES.get(category, ())


_IRREGULAR = {
    "people": "person",
    "men": "man",
    "women": "woman",
    "children": "child",
    "geese": "goose",
    "mice": "mouse",
    "teeth": "tooth",
    "feet": "foot",
    "leaves": "leaf",
    "wolves": "wolf",
    "shelves": "shelf",
    "cacti": "cactus",
    "fungi": "fungus",
    "oases": "oasis",
    "buses": "bus",
    "canoes": "canoe",
    "shoes": "shoe",
}
_INVARIANT = {"species", "series", "news", "canvas", "chaos", "lens"}


def singularize(word: str) -> str:
    """A simple English singular for a lower-case noun ("paddies" -> "paddy", "roofs" -> "roof")."""
    if word in _IRREGULAR:
        return _IRREGULAR[word]
    if word in _INVARIANT or len(word) <= 3 or not word.endswith("s"):
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("sses", "ches", "shes", "xes", "oes")):
        return word[:-2]
    if word.endswith(("ss", "us", "is")):
        return word
    return word[:-1]


_SPACE = re.compile(r"\s+")
_EDGE = re.compile(r"^[^\w]+|[^\w]+$")


def normalize_name(text: str) -> str:
    """Lower case, single spaces, no edge punctuation, singular head noun."""
    name = _EDGE.sub("", _SPACE.sub(" ", text.replace("_", " ")).strip().lower())
    if not name:
        return ""
    words = name.split(" ")
    head = words.index("of") - 1 if "of" in words[1:-1] else len(words) - 1
    words[head] = singularize(words[head])
    return " ".join(words)


def classify(name: str) -> tuple[str, str] | None:
    """(category, subcategory) of a normalised name from its whole phrase or head noun."""
    if name in PHRASES:
        return PHRASES[name]
    words = name.split(" ")
    head = words[words.index("of") - 1] if "of" in words[1:-1] else words[-1]
    return KEYWORDS.get(head)


def _words_similar(a: list[str], b: list[str], threshold: float) -> bool:
    """Same word count and each word pair equal or at least ``threshold`` similar."""
    return len(a) == len(b) and all(
        x == y
        or (
            2 * min(len(x), len(y)) / (len(x) + len(y)) >= threshold
            and difflib.SequenceMatcher(None, x, y, autojunk=False).ratio() >= threshold
        )
        for x, y in zip(a, b, strict=True)
    )


def merge_near_duplicates(
    names: Sequence[str],
    *,
    threshold: float = 0.9,
    embed: Callable[[list[str]], np.ndarray] | None = None,
    embed_threshold: float = 0.9,
) -> dict[str, str]:
    """Map each name to a canonical one; earlier names win, so pass them most-trusted first.

    Two names merge when they have as many words and every word pair is equal or has a difflib
    ratio of at least ``threshold`` ("savannah forest"/"savanna forest", but not "pine"/"fine":
    short words differ in meaning by one letter), or, if ``embed`` (texts -> vectors) is given,
    when their embeddings' cosine similarity is at least ``embed_threshold``.
    """
    vectors = None
    if embed is not None and names:
        vectors = np.asarray(embed(list(names)), dtype=np.float64)
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    words = [name.split(" ") for name in names]
    canon: list[int] = []
    mapping: dict[str, str] = {}
    for i, name in enumerate(names):
        if name in mapping:
            continue
        target = next(
            (names[j] for j in canon if _words_similar(words[i], words[j], threshold)), None
        )
        if target is None and vectors is not None and canon:
            sims = vectors[canon] @ vectors[i]
            best = int(np.argmax(sims))
            if sims[best] >= embed_threshold:
                target = names[canon[best]]
        if target is None:
            canon.append(i)
            target = name
        mapping[name] = target
    return mapping


def normalize_candidates(
    candidates: Iterable[Candidate],
    *,
    threshold: float = 0.9,
    embed: Callable[[list[str]], np.ndarray] | None = None,
    embed_threshold: float = 0.9,
) -> pd.DataFrame:
    """Normalise, type, merge and deduplicate candidates into the candidates table.

    A row keeps its source's type when that is a valid (category, subcategory) pair, else the
    keyword table types it; a row neither can type is dropped. Rows repeating (concept, source,
    region) keep the highest score and its evidence.
    """
    rows = []
    for c in candidates:
        name = normalize_name(c.concept)
        if not name or len(name) > 60 or name.count(" ") > 5:
            continue
        typed: tuple[str, str] | None  # the source's type, else the keyword table's, if any
        typed = (c.category, c.subcategory)
        if not is_valid_type(*typed):
            typed = classify(name)
            if typed is None:
                continue
        rows.append({**asdict(c), "concept": name, "category": typed[0], "subcategory": typed[1]})
    if not rows:
        return pd.DataFrame({col: pd.Series(dtype=object) for col in CANDIDATE_COLUMNS}).astype(
            {"score": "float64"}
        )
    df = pd.DataFrame(rows, columns=CANDIDATE_COLUMNS)
    for _, group in df.groupby("category", sort=True):
        freq = Counter(group["concept"])
        ordered = sorted(freq, key=lambda n: (-freq[n], len(n), n))
        mapping = merge_near_duplicates(
            ordered, threshold=threshold, embed=embed, embed_threshold=embed_threshold
        )
        df.loc[group.index, "concept"] = group["concept"].map(mapping)
    # One type per concept: its most common (category, subcategory) pair (ties: alphabetical).
    types = (
        df.groupby(["concept", "category", "subcategory"])
        .size()
        .reset_index(name="n")
        .sort_values(
            ["concept", "n", "category", "subcategory"], ascending=[True, False, True, True]
        )
        .drop_duplicates("concept")
        .set_index("concept")
    )
    df["category"] = df["concept"].map(types["category"])
    df["subcategory"] = df["concept"].map(types["subcategory"])
    df = (
        df.sort_values(
            ["concept", "source", "region", "score", "evidence"],
            ascending=[True, True, True, False, True],
        )
        .drop_duplicates(["concept", "source", "region"])
        .reset_index(drop=True)
    )
    df["score"] = df["score"].astype("float64")
    return df[CANDIDATE_COLUMNS]
