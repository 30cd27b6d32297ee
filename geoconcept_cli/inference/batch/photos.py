"""Batch runs over photo files: a folder of photos, or a manifest's image column, into one
Parquet file of rows (``rows``), each photo read and explained, or predicted, with its CLIP."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ...data.manifests import ID_NAMES, image_path
from ...errors import GeoconceptError
from ...io.images import load_image, photos_in
from ...io.tables import find_column, read_table
from ...runtime.progress import Log, Report, quiet, silent
from ..album import locate_album, name_concepts
from ..explainer import Explainer
from ..loading import PhotoPredictor
from ..request import Request
from ..results import Album
from .rows import (
    ALBUM_SCHEMA,
    PREDICTION_SCHEMA,
    album_row,
    explanation_row,
    prediction_row,
    rows_to_parquet,
)


def batch_photos(
    target: str | Path, images_dir: str | Path | None = None
) -> tuple[list[Path], list[str]]:
    """Photos of a folder, or of a manifest's image column (no coordinates needed), relative
    to ``images_dir`` (default: the manifest's folder, as in ``read_manifest``).

    Returns (existing photo paths, one message per listed photo that is missing).
    """
    target = Path(target)
    if target.is_dir():
        return photos_in(target), []
    df = read_table(target)
    base = Path(images_dir) if images_dir else target.parent
    paths = [image_path(base, str(v)) for v in df[find_column(df, ID_NAMES, "image", target)]]
    return [p for p in paths if p.is_file()], [f"{p}: no such file" for p in paths
                                                if not p.is_file()]  # fmt: skip


def explain_photos(
    explainer: Explainer, target: str | Path, out: str | Path, images: str | Path | None = None,
    request: Request = Request(), report: Report = silent, log: Log = quiet,
) -> tuple[int, list[str]]:  # fmt: skip
    """`explain DIR|MANIFEST --out`: one row per photo of ``target`` (see ``batch_photos``)
    into the Parquet file ``out``; photos missing or unreadable are skipped and each ``log``ged.
    Returns (photos explained, why each skipped one was)."""
    rows, failed = _rows(target, images, "explaining", report, log,
                         lambda path: explanation_row(explainer.explain(path, request),
                                                      str(path)))  # fmt: skip
    rows_to_parquet(rows, out)
    return len(rows), failed


def predict_photos(
    predictor: PhotoPredictor, target: str | Path, out: str | Path,
    images: str | Path | None = None, request: Request = Request(), report: Report = silent,
    log: Log = quiet,
) -> tuple[int, list[str]]:  # fmt: skip
    """`predict DIR|MANIFEST --out`: as ``explain_photos``, with prediction rows."""
    rows, failed = _rows(target, images, "predicting", report, log,
                         lambda path: prediction_row(predictor.predict(path, request),
                                                     str(path)))  # fmt: skip
    rows_to_parquet(rows, out, PREDICTION_SCHEMA)
    return len(rows), failed


def album_of_photos(explainer: Explainer, folder: str | Path, request: Request = Request(),
                    report: Report = silent, log: Log = quiet) -> Album:  # fmt: skip
    """`predict DIR --together`: the photos of ``folder`` located as one question
    (inference.album), each with the concepts it shows; photos that cannot be read are
    skipped and each ``log``ged."""
    album = _albums(explainer, {str(folder): photos_in(Path(folder))}, request, report, log)
    if not album:
        raise GeoconceptError(f"{folder}: no photo there could be read")
    return album[0]


def albums_of_manifest(explainer: Explainer, manifest: str | Path, column: str, out: str | Path,
                       images: str | Path | None = None, request: Request = Request(),
                       report: Report = silent, log: Log = quiet) -> int:  # fmt: skip
    """`predict MANIFEST --together --group-by COLUMN --out`: each group of the manifest's
    photos (rows sharing ``column``'s value) located as one question, a row per group in the
    Parquet file ``out`` (ALBUM_SCHEMA); returns the groups written."""
    df = read_table(manifest)
    if column not in df.columns:
        raise GeoconceptError(f"--group-by {column}: {manifest} has no such column (it has "
                              f"{', '.join(map(str, df.columns))})")  # fmt: skip
    base = Path(images) if images else Path(manifest).parent
    ids = df[find_column(df, ID_NAMES, "image", manifest)].astype(str)
    groups = {str(g): [image_path(base, i) for i in rows]
              for g, rows in ids.groupby(df[column].astype(str), sort=True)}  # fmt: skip
    albums = _albums(explainer, groups, request, report, log)
    rows_to_parquet([album_row(a) for a in albums], out, ALBUM_SCHEMA)
    return len(albums)


def _albums(explainer: Explainer, groups: dict[str, list[Path]], request: Request,
            report: Report, log: Log) -> list[Album]:  # fmt: skip
    """Each group of photos located as one question (named by the group), its photos read
    and embedded in turn; photos that cannot be read are skipped and logged, and a group
    left with none is skipped."""
    total, albums = sum(len(paths) for paths in groups.values()), []
    predictor = explainer.predictor
    with report("reading photos", "photos") as advance:
        for group, paths in groups.items():
            read, feats = [], []
            for path in paths:
                try:
                    feats.append(predictor.image_features([load_image(path)]))
                    read.append(str(path))
                except GeoconceptError as exc:
                    log(f"skipped {exc}")
                if advance:
                    advance(1, total)
            if read:
                joined = torch.cat(feats)
                album = name_concepts(locate_album(predictor, joined, read, request),
                                      explainer, joined)  # fmt: skip
                album.group = group
                albums.append(album)
            else:
                log(f"skipped group {group}: no photo of it could be read")
    return albums


Row = dict[str, Any]


def _rows(target: str | Path, images: str | Path | None, doing: str, report: Report, log: Log,
          row_of: Callable[[Path], Row]) -> tuple[list[Row], list[str]]:  # fmt: skip
    """``row_of`` each photo of ``target``; those missing or unreadable skipped, each logged
    in a line."""
    paths, failed = batch_photos(target, images)
    rows = []
    with report(doing, "photos") as advance:
        for path in paths:
            try:
                rows.append(row_of(path))
            except GeoconceptError as exc:
                failed.append(str(exc))
            if advance:
                advance(1, len(paths))
    for line in failed:
        log(f"skipped {line}")
    if failed and not rows:
        hint = "; --images names the manifest's photo folder" if not Path(target).is_dir() else ""
        raise GeoconceptError(f"none of the {len(failed)} photos could be read{hint}")
    return rows, failed
