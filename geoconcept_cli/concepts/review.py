"""The manual review file (CSV) and the final concept set (``concepts.parquet``) made from it.

Candidates enter the review file as ``pending``; a person sets each row's decision (``keep``,
``drop``, ``rename:NEW NAME``, ``recategorise:CATEGORY/SUBCATEGORY``). Rebuilding never touches a
decided row. ``finalize`` turns the kept rows into the concept set with a metadata sidecar.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .._version import __version__
from ..errors import GeoconceptError
from ..geo.regions import CONTINENTS
from ..io.artifacts import atomic_path, write_json
from .mining.normalize import SUBCATEGORIES, is_valid_type
from .regions import is_region_key
from .set import CONCEPTS_SCHEMA, concept_set_hash, meta_path

REVIEW_COLUMNS = [
    "concept",
    "category",
    "subcategory",
    "regions",
    "sources",
    "evidence",
    "decision",
    "note",
]
DECISIONS = ("keep", "drop", "pending", "rename", "recategorise")
MAX_EVIDENCE = 200


@dataclass(frozen=True)
class Decision:
    """A parsed decision cell: its kind and, for rename/recategorise, the new value(s)."""

    kind: str
    name: str = ""
    category: str = ""
    subcategory: str = ""


def parse_decision(text: str) -> Decision:
    """Parse a decision cell, or ValueError saying what is wrong with it."""
    text = text.strip()
    if text in ("keep", "drop", "pending"):
        return Decision(text)
    kind, sep, value = text.partition(":")
    value = value.strip()
    if sep and kind == "rename":
        if not value:
            raise ValueError("rename: needs a new name, e.g. 'rename:rice paddy'")
        return Decision("rename", name=" ".join(value.split()))
    if sep and kind == "recategorise":
        category, _, subcategory = (s.strip() for s in value.partition("/"))
        if not is_valid_type(category, subcategory):
            raise ValueError(f"recategorise:{value} is not a known CATEGORY/SUBCATEGORY")
        return Decision("recategorise", category=category, subcategory=subcategory)
    raise ValueError(
        f"decision {text!r} is not keep, drop, pending, rename:NEW NAME or "
        "recategorise:CATEGORY/SUBCATEGORY"
    )


def parse_regions(text: str) -> list[tuple[str, float]]:
    """Parse ``Region:weight;Region:weight`` (empty allowed), or ValueError saying what is wrong."""
    out: list[tuple[str, float]] = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        key, sep, weight_text = part.rpartition(":")
        key = key.strip()
        if not sep or not is_region_key(key):
            raise ValueError(
                f"region {part!r}: expected KEY:WEIGHT with KEY a continent "
                f"({', '.join(CONTINENTS)}) or an upper-case ISO alpha-2 code"
            )
        try:
            weight = float(weight_text)
        except ValueError:
            raise ValueError(f"region {part!r}: weight {weight_text!r} is not a number") from None
        if not 0.0 < weight <= 1.0:
            raise ValueError(f"region {part!r}: weight must be in (0, 1]")
        if key in (k for k, _ in out):
            raise ValueError(f"region {key!r} is listed twice")
        out.append((key, weight))
    return out


def format_regions(regions: list[tuple[str, float]]) -> str:
    """``Region:weight;...`` with weights to 3 decimals (at least 0.001), heaviest first."""
    ordered = sorted(regions, key=lambda kw: (-kw[1], kw[0]))
    return ";".join(f"{key}:{max(round(weight, 3), 0.001):g}" for key, weight in ordered)


def parse_sources(text: str) -> list[str]:
    """The ``;``-joined source names of a row."""
    return [s.strip() for s in text.split(";") if s.strip()]


def read_review(path: str | Path) -> pd.DataFrame:
    """Read and validate a review file; any problem is a GeoconceptError naming its line.

    The returned frame has the review columns as strings plus ``line`` (the row's first line).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as err:
        raise GeoconceptError(f"cannot read review file {path}: {err.strerror}") from err
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if header != REVIEW_COLUMNS:
        raise GeoconceptError(
            f"{path}:1: the header must be exactly {','.join(REVIEW_COLUMNS)} (got "
            f"{','.join(header or [])})"
        )
    rows = []
    first_line: dict[str, int] = {}
    start = reader.line_num + 1
    for record in reader:
        line, start = start, reader.line_num + 1
        if not any(cell.strip() for cell in record):
            continue
        if len(record) != len(REVIEW_COLUMNS):
            raise GeoconceptError(
                f"{path}:{line}: expected {len(REVIEW_COLUMNS)} fields, got {len(record)}"
            )
        row = dict(zip(REVIEW_COLUMNS, (cell.strip() for cell in record), strict=True))
        try:
            _validate_row(row)
        except ValueError as err:
            raise GeoconceptError(f"{path}:{line}: {err}") from None
        key = row["concept"].casefold()
        if key in first_line:
            raise GeoconceptError(
                f"{path}:{line}: concept {row['concept']!r} already has a row (line "
                f"{first_line[key]})"
            )
        first_line[key] = line
        rows.append({**row, "line": line})
    df = pd.DataFrame(rows, columns=[*REVIEW_COLUMNS, "line"])
    return df.astype({c: object for c in REVIEW_COLUMNS}).astype({"line": "int64"})


def _validate_row(row: dict[str, str]) -> None:
    if not row["concept"]:
        raise ValueError("empty concept")
    if not is_valid_type(row["category"], row["subcategory"]):
        raise ValueError(
            f"category/subcategory {row['category']}/{row['subcategory']} is not one of "
            + "; ".join(f"{c}: {', '.join(s)}" for c, s in SUBCATEGORIES.items())
        )
    parse_regions(row["regions"])
    parse_decision(row["decision"])


def write_review(path: str | Path, df: pd.DataFrame) -> None:
    """Write the review columns of ``df`` as CSV, atomically."""
    with atomic_path(path) as tmp:
        with tmp.open("w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(REVIEW_COLUMNS)
            writer.writerows(df[REVIEW_COLUMNS].astype(str).itertuples(index=False, name=None))


def candidates_to_review(candidates: pd.DataFrame) -> pd.DataFrame:
    """One pending review row per concept of a candidates table.

    A region's weight is the highest score any source gave the concept there; the evidence is
    each source's best-scored line, so a reviewer sees where the concept came from.
    """
    rows = []
    for concept, group in candidates.groupby("concept", sort=True):
        weights = group.groupby("region")["score"].max()
        best = group.sort_values(["score", "evidence"], ascending=[False, True])
        evidence = []
        for source, top in best.groupby("source", sort=True):
            first = top.iloc[0]
            text = str(first["evidence"])[:MAX_EVIDENCE]
            evidence.append(f"{source}: {text}" + (f" <{first['url']}>" if first["url"] else ""))
        rows.append(
            {
                "concept": concept,
                "category": group["category"].iloc[0],
                "subcategory": group["subcategory"].iloc[0],
                "regions": format_regions([(k, float(w)) for k, w in weights.items()]),
                "sources": ";".join(sorted(group["source"].unique())),
                "evidence": " | ".join(evidence),
                "decision": "pending",
                "note": "",
            }
        )
    return pd.DataFrame(rows, columns=REVIEW_COLUMNS)


def merge_review(existing: pd.DataFrame | None, candidates: pd.DataFrame) -> pd.DataFrame:
    """Merge fresh candidates into a review table without touching human decisions.

    A row whose decision is not ``pending`` is kept exactly as it is. A pending row matching a
    candidate gets the candidate's regions, sources and evidence (its type and note stay). New
    concepts are appended as pending, except names an existing row is renamed to.
    """
    fresh = candidates_to_review(candidates)
    order = ["category", "subcategory", "concept"]
    if existing is None or existing.empty:
        return fresh.sort_values(order).reset_index(drop=True)
    merged = existing[REVIEW_COLUMNS].copy().reset_index(drop=True)
    known = set(merged["concept"].str.casefold())
    for decision in merged["decision"]:
        parsed = parse_decision(decision)
        if parsed.kind == "rename":
            known.add(parsed.name.casefold())
    fresh_rows = {name.casefold(): i for i, name in enumerate(fresh["concept"])}
    for i, row in merged.iterrows():
        match = fresh_rows.get(row["concept"].casefold())
        if row["decision"] == "pending" and match is not None:
            for col in ("regions", "sources", "evidence"):
                merged.at[i, col] = fresh.at[match, col]
    new = fresh[~fresh["concept"].str.casefold().isin(known)].sort_values(order)
    return pd.concat([merged, new], ignore_index=True)[REVIEW_COLUMNS]


def kept_concepts(review: pd.DataFrame, source: str = "review file") -> pd.DataFrame:
    """The concept rows a ``read_review`` table keeps, renames and recategorisations applied.

    Raises GeoconceptError when two kept rows end up with one name (case-insensitive).
    """
    rows = []
    seen: dict[str, int] = {}
    for row in review.itertuples(index=False):
        decision = parse_decision(row.decision)
        if decision.kind in ("drop", "pending"):
            continue
        name = decision.name if decision.kind == "rename" else row.concept
        category, subcategory = (
            (decision.category, decision.subcategory)
            if decision.kind == "recategorise"
            else (row.category, row.subcategory)
        )
        key = name.casefold()
        if key in seen:
            raise GeoconceptError(
                f"{source}:{row.line}: kept concept {name!r} duplicates the one on line "
                f"{seen[key]} (after renames)"
            )
        seen[key] = row.line
        rows.append(
            {
                "concept": name,
                "category": category,
                "subcategory": subcategory,
                "regions": [{"region": k, "weight": w} for k, w in parse_regions(row.regions)],
                "sources": parse_sources(row.sources),
            }
        )
    df = pd.DataFrame(rows, columns=CONCEPTS_SCHEMA.names)
    return df.sort_values(["category", "subcategory", "concept"], kind="stable").reset_index(
        drop=True
    )


def finalize(review_path: str | Path, out_path: str | Path) -> pd.DataFrame:
    """Write ``concepts.parquet`` (kept rows only) and its ``.meta.json`` sidecar; return the set.

    The sidecar records the review file's sha256, row counts per decision, the concept-set hash,
    the creation time and the geoconcept version.
    """
    review_path, out_path = Path(review_path), Path(out_path)
    review = read_review(review_path)
    concepts = kept_concepts(review, str(review_path))
    if concepts.empty:
        raise GeoconceptError(f"{review_path}: no row is kept; nothing to finalize")
    table = pa.Table.from_pandas(concepts, schema=CONCEPTS_SCHEMA, preserve_index=False)
    with atomic_path(out_path) as tmp:
        pq.write_table(table, tmp)
    counts = Counter(parse_decision(d).kind for d in review["decision"])
    write_json(
        meta_path(out_path),
        {
            "review_file": str(review_path),
            "review_sha256": hashlib.sha256(review_path.read_bytes()).hexdigest(),
            "rows": {kind: counts.get(kind, 0) for kind in DECISIONS},
            "concepts": len(concepts),
            "concept_set_hash": concept_set_hash(concepts),
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "geoconcept_version": __version__,
        },
    )
    return concepts
