"""The concept set: its Parquet file and schema, the shipped set, and the names, types and
region associations that explanations show (``ConceptSet``)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import GeoconceptError
from ..geo.geocode import country_and_continent


def default_concepts_path() -> Path:
    """The curated concept set shipped inside the package (``shipped/``; the checkout's
    ``concepts/`` folder, where people review and rebuild it, links to that folder), read
    through importlib.resources so that an installed wheel finds it too."""
    found = resources.files(__package__).joinpath("shipped", "concepts.parquet")
    if not isinstance(found, Path):  # a package run from a zip archive
        raise GeoconceptError(f"the shipped concept set is not a file ({found}); install "
                              "geoconcept unzipped, or give --concepts")  # fmt: skip
    return found


class ConceptWeight(TypedDict):
    """A concept with the weight it has in a list (an activation, a score term...)."""

    concept: str
    category: str
    subcategory: str
    weight: float


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

    def entry(self, i: int, weight: float) -> ConceptWeight:
        return {
            "concept": self.names[i],
            "category": self.categories[i],
            "subcategory": self.subcategories[i],
            "weight": round(float(weight), 5),
        }

    def top_rows(self, values: npt.ArrayLike, n: int, where: npt.ArrayLike | None = None
                 ) -> list[list[ConceptWeight]]:  # fmt: skip
        """The ``n`` largest of each row of (B, k) values (numpy, or CPU tensors) as entries,
        largest first; with ``where``, only those concepts, if > 0. A partial sort, so a
        batch's rows cost their n, not their k: where values tie at the n-th place, which of
        them are kept is arbitrary (equal ones kept list in concept order)."""
        v = np.asarray(values)
        v = v if v.dtype.kind == "f" else v.astype(np.float64)
        if where is not None:
            v = np.where(np.asarray(where, dtype=bool) & (v > 0), v, -np.inf)
        m = min(n, v.shape[1])
        idx = (np.argpartition(-v, m - 1, axis=1)[:, :m] if m < v.shape[1]
               else np.broadcast_to(np.arange(m), v.shape))  # fmt: skip
        vals = np.take_along_axis(v, idx, axis=1)
        top = np.take_along_axis(idx, np.lexsort((idx, -vals), axis=1), axis=1)
        return [[self.entry(i, row[i]) for i in ids if row[i] > -np.inf]
                for ids, row in zip(top.tolist(), v, strict=True)]  # fmt: skip

    def place_weights(self, lat: float, lon: float) -> npt.NDArray[np.float64]:
        """Salience of each concept for a place: its country's weight, else its continent's."""
        cc, continent = country_and_continent(lat, lon)
        return np.array([max(r.get(cc, 0.0), r.get(continent, 0.0)) for r in self.regions or []])


CONCEPTS_SCHEMA = pa.schema(
    [
        ("concept", pa.string()),
        ("category", pa.string()),
        ("subcategory", pa.string()),
        (
            "regions",
            pa.list_(pa.struct([("region", pa.string()), ("weight", pa.float32())])),
        ),
        ("sources", pa.list_(pa.string())),
    ]
)


def concept_set_hash(df: pd.DataFrame) -> str:
    """sha256 of the ordered (concept, category) pairs: identifies a concept set's content."""
    h = hashlib.sha256()
    for concept, category in zip(df["concept"], df["category"], strict=True):
        h.update(f"{concept}\t{category}\n".encode())
    return h.hexdigest()


def meta_path(concepts_path: str | Path) -> Path:
    """The sidecar beside a concept set: ``concepts.parquet`` -> ``concepts.meta.json``."""
    path = Path(concepts_path)
    return path.with_name(path.name.removesuffix(".parquet") + ".meta.json")


def load_concepts(path: str | Path) -> pd.DataFrame:
    """Read a concept set written by ``finalize`` (regions/sources as Python lists)."""
    path = Path(path)
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise GeoconceptError(f"cannot read concept set {path}: {reason}") from err
    missing = [c for c in CONCEPTS_SCHEMA.names if c not in table.column_names]
    if missing:
        raise GeoconceptError(f"{path} is not a concept set: missing column(s) {missing}")
    records = table.select(CONCEPTS_SCHEMA.names).to_pylist()
    return pd.DataFrame(records, columns=CONCEPTS_SCHEMA.names)
