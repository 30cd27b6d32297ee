"""Downstream probes: how much a location embedding knows about a variable measured on the map.

Each location of a table is embedded by one or more encoders (GeoCLIP's pretrained location
encoder, a concept-aware checkpoint, raw coordinates as a floor). Linear and small MLP probes
are fitted on every embedding with k-fold cross-validation; the folds are shared by all
encoders and probes so their scores are comparable, features are standardised inside each fold
(fitted on the training rows only), and every seed is fixed. Random folds leak neighbours
(stations 10 km apart land on both sides of the split), so folds can instead be whole
latitude/longitude blocks.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import pandas as pd
import torch
from sklearn.base import BaseEstimator
from sklearn.compose import TransformedTargetRegressor
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.metrics import accuracy_score, f1_score, mean_absolute_error, r2_score
from sklearn.model_selection import GroupKFold, KFold, StratifiedKFold
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ..errors import GeoconceptError
from ..geo.distance import unit_vectors, valid_latlon
from ..io.tables import LAT_NAMES, LON_NAMES, find_column, read_table
from ..model.checkpoints import load_head
from ..model.concept_head import ConceptAwareHead
from ..model.geoclip import load_geoclip_head
from ..model.spec import ModelSpec
from ..runtime.progress import Report, silent

TASKS = ("regression", "classification")
PROBES = ("linear", "mlp")
METRICS = {"regression": ("r2", "mae"), "classification": ("accuracy", "macro_f1")}
METRIC_LABELS = {"r2": "R^2", "mae": "MAE", "accuracy": "accuracy", "macro_f1": "macro-F1"}

# Ridge's penalty is picked per training fold by efficient leave-one-out over this grid.
RIDGE_ALPHAS = np.logspace(-3, 5, 17)
# A small MLP: one hidden layer, L2 weight decay, early stopping on 10% of the training rows.
# The iteration cap keeps a 512-d probe on ~3k rows at a few seconds per fold on 2 cores.
MLP_PARAMS = dict(
    hidden_layer_sizes=(128,),
    alpha=1.0,
    learning_rate_init=3e-3,
    batch_size=256,
    early_stopping=True,
    validation_fraction=0.1,
    n_iter_no_change=10,
    max_iter=100,
)

# An encoder for probing: (N, 2) float32 (lat, lon) degrees -> (N, D) features.
Embedder = Callable[[torch.Tensor], np.ndarray | torch.Tensor]


# --------------------------------------------------------------------------- encoders
def batched_embedder(
    fn: Callable[[torch.Tensor], torch.Tensor],
    device: str | torch.device = "cpu",
    batch_size: int = 8192,
) -> Embedder:
    """Wrap a torch location function: batches, no autograd, float32 numpy on the CPU."""

    @torch.no_grad()
    def embed(latlon: torch.Tensor) -> np.ndarray:
        chunks = [
            fn(latlon[i : i + batch_size].to(device)).float().cpu()
            for i in range(0, len(latlon), batch_size)
        ]
        return torch.cat(chunks).numpy()

    return embed


def geoclip_embedder(normalize: bool = False, device: str | torch.device = "cpu") -> Embedder:
    """GeoCLIP's pretrained location encoder: raw 512-d features, or L2-normalised ones.

    Raw is the default: it is what reproduces the reference ridge figure on air temperature
    (R^2 0.928 shuffled 5-fold; normalised 0.918). On US income normalised is a little better
    (0.521 vs 0.503): the two differ by about 0.01-0.02 R^2 either way.
    """
    head = load_geoclip_head(device)
    return batched_embedder(head.embed_locations if normalize else head.location_encoder, device)


def raw_coordinates_embedder(unit_sphere: bool = True) -> Embedder:
    """Latitude and longitude in degrees, plus (optionally) the 3-D unit vector: the floor."""

    def embed(latlon: torch.Tensor) -> np.ndarray:
        parts = [latlon.double()] + ([unit_vectors(latlon)] if unit_sphere else [])
        return torch.cat(parts, dim=1).float().numpy()

    return embed


def default_embedders(device: str | torch.device = "cpu") -> dict[str, Embedder]:
    """The two encoders every run has: pretrained GeoCLIP and raw coordinates."""
    return {"geoclip": geoclip_embedder(device=device), "coords": raw_coordinates_embedder()}


def checkpoint_embedders(spec: ModelSpec) -> dict[str, Embedder]:
    """A trained run's location features and, for a concept-aware head, its activations."""
    assert spec.checkpoint is not None  # a run's spec
    head, _ = load_head(spec.checkpoint, spec.device)
    device, name = spec.device, Path(spec.checkpoint).name
    if isinstance(head, ConceptAwareHead):
        return {f"{name}:features": batched_embedder(head.location_latent, device),
                f"{name}:concepts": batched_embedder(head.location_concepts, device)}  # fmt: skip
    return {f"{name}:features": batched_embedder(head.embed_locations, device)}


def compute_features(
    latlon: np.ndarray, embedders: Mapping[str, Embedder]
) -> dict[str, np.ndarray]:
    """Run every embedder on the same (N, 2) locations; check shapes and finiteness."""
    points = torch.as_tensor(np.asarray(latlon), dtype=torch.float32)
    features = {}
    for name, embedder in embedders.items():
        out = embedder(points)
        x = out.detach().cpu().numpy() if isinstance(out, torch.Tensor) else np.asarray(out)
        if x.ndim != 2 or x.shape[0] != len(points):
            raise GeoconceptError(
                f"encoder '{name}' returned shape {x.shape}, expected ({len(points)}, D)"
            )
        if not np.isfinite(x).all():
            raise GeoconceptError(f"encoder '{name}' returned non-finite features")
        features[name] = x.astype(np.float32, copy=False)
    return features


# ------------------------------------------------------------------------------ tables
@dataclass(frozen=True)
class DownstreamTable:
    """Valid rows of a downstream table; skipped rows are counted, coordinates checked first."""

    latlon: np.ndarray  # (N, 2) float64 degrees
    y: np.ndarray  # float64 (regression) or str labels (classification)
    task: str
    n_skipped_coords: int
    n_skipped_target: int
    source: str


# A comma between digit groups of three ("45,123", "1,234,567.5"); "3,5" is left to fail.
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?:\D|$))")


def parse_numbers(values: pd.Series) -> npt.NDArray[np.float64]:
    """Numbers, numeric strings or strings with thousands separators -> float64 (NaN if not)."""
    # pandas is untyped here: to_numpy(dtype=np.float64) is a float64 array
    if pd.api.types.is_numeric_dtype(values):
        return cast(npt.NDArray[np.float64], values.to_numpy(dtype=np.float64, na_value=np.nan))
    text = values.astype("string").str.strip().str.replace(_THOUSANDS, "", regex=True)
    return cast(
        npt.NDArray[np.float64],
        pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan),
    )


def _column(df: pd.DataFrame, name: str, what: str, source: str) -> str:
    """``name`` itself if present, else its case-insensitive match."""
    return name if name in df.columns else find_column(df, (name.lower(),), what, source)


def table_from_frame(
    df: pd.DataFrame,
    target: str,
    lat: str | None = None,
    lon: str | None = None,
    task: str = "regression",
    source: str = "table",
) -> DownstreamTable:
    """Pick the coordinate and target columns of ``df`` and keep the rows where both are valid.

    ``lat``/``lon`` default to the usual names (lat, latitude, lon, lng, ...), any case.
    """
    if task not in TASKS:
        raise GeoconceptError(f"unknown task '{task}' (use {' or '.join(TASKS)})")
    lat_col = (
        _column(df, lat, "latitude", source)
        if lat
        else find_column(df, LAT_NAMES, "latitude", source)
    )
    lon_col = (
        _column(df, lon, "longitude", source)
        if lon
        else find_column(df, LON_NAMES, "longitude", source)
    )
    target_col = _column(df, target, "target", source)
    lat_v, lon_v = parse_numbers(df[lat_col]), parse_numbers(df[lon_col])
    coords_ok = valid_latlon(lat_v, lon_v)
    if task == "regression":
        y = parse_numbers(df[target_col])
        target_ok = np.isfinite(y)
    else:
        labels = df[target_col].astype("string").str.strip()
        target_ok = (labels.notna() & (labels != "")).to_numpy(dtype=bool)
        y = labels.to_numpy(dtype=object, na_value="")
    keep = coords_ok & target_ok
    if not keep.any():
        raise GeoconceptError(
            f"{source}: no row has valid coordinates ({lat_col}, {lon_col}) and target {target_col}"
        )
    y = y[keep].astype(np.float64 if task == "regression" else str)
    return DownstreamTable(
        latlon=np.stack([lat_v[keep], lon_v[keep]], axis=1),
        y=y,
        task=task,
        n_skipped_coords=int((~coords_ok).sum()),
        n_skipped_target=int((coords_ok & ~target_ok).sum()),
        source=source,
    )


def load_table(
    path: str | Path,
    target: str,
    lat: str | None = None,
    lon: str | None = None,
    task: str = "regression",
) -> DownstreamTable:
    """A CSV/Parquet downstream table: rows with invalid coordinates or targets skipped."""
    return table_from_frame(read_table(path), target, lat, lon, task, source=str(path))


PRESETS = ("air-temperature", "us-income")


def downstream_table(path: str | Path, target: str | None = None, preset: str | None = None,
                     lat: str | None = None, lon: str | None = None, task: str = "regression"
                     ) -> DownstreamTable:  # fmt: skip
    """The table to probe: a ``preset`` built from the downstream data folder ``path``, or
    ``path`` itself with its ``target`` column (coordinates found, or named)."""
    if preset == "air-temperature":
        return air_temperature_table(path)
    if preset == "us-income":
        return us_county_income_table(path)
    if preset is not None:
        raise GeoconceptError(f"--preset must be {' or '.join(PRESETS)}")
    if target is None:
        raise GeoconceptError("give --target COLUMN (or a --preset)")
    return load_table(path, target, lat, lon, task)


def air_temperature_table(downstream_dir: str | Path) -> DownstreamTable:
    """Annual mean air temperature (deg C) at 3,076 stations (Hooker et al. 2018)."""
    path = Path(downstream_dir) / "air_temperature" / "stationDataAll.csv"
    return table_from_frame(read_table(path), "meanT", "Lat", "Lon", source=str(path))


def county_fips(values: pd.Series) -> pd.Series:
    """FIPS codes as 5-digit strings ("1001" or 1001 -> "01001"); <NA> where not a number."""
    codes = pd.to_numeric(values, errors="coerce").astype("Int64")
    return codes.map(lambda c: f"{c:05d}", na_action="ignore").astype("string")


def us_county_income_frame(downstream_dir: str | Path, year: int = 2016) -> pd.DataFrame:
    """County median household income joined to county centroids by zero-padded FIPS.

    The USA row (0) and state rows (xx000) are dropped; counties without a centroid keep NaN
    coordinates (and are then counted as skipped).
    """
    folder = Path(downstream_dir) / "us_county"
    income_path = folder / "income.csv"
    income = read_table(income_path)
    column = _column(income, f"MedianIncome{year}", f"{year} income", str(income_path))
    centroids = read_table(folder / "county_centroids_from_zip_median.csv")
    income = pd.DataFrame(
        {"fips": county_fips(income["FIPS"]), "median_income": parse_numbers(income[column])}
    )
    income = income[income["fips"].notna() & ~income["fips"].str.endswith("000")]
    centroids = pd.DataFrame(
        {"fips": county_fips(centroids["FIPS"]), "lat": centroids["lat"], "lon": centroids["lon"]}
    )
    return income.merge(centroids, on="fips", how="left", validate="one_to_one").reset_index(
        drop=True
    )


def us_county_income_table(downstream_dir: str | Path, year: int = 2016) -> DownstreamTable:
    """US county median household income in ``year`` at county centroids (Jia & Benson 2020)."""
    source = str(Path(downstream_dir) / "us_county" / f"income.csv:{year}")
    frame = us_county_income_frame(downstream_dir, year)
    return table_from_frame(frame, "median_income", "lat", "lon", source=source)


# ------------------------------------------------------------------------------- folds
def spatial_blocks(latlon: np.ndarray, block_deg: float) -> np.ndarray:
    """An integer block id per row: the (floor(lat / b), floor(lon / b)) cell it falls in."""
    cells = np.floor(np.asarray(latlon, dtype=np.float64) / block_deg).astype(np.int64)
    return np.unique(cells, axis=0, return_inverse=True)[1].reshape(-1)


def fold_splits(
    table: DownstreamTable, folds: int = 5, seed: int = 0, spatial_block_deg: float | None = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) row indices: shuffled (stratified for classes) or whole spatial blocks.

    Spatial folds use GroupKFold, which balances rows per fold deterministically (no seed).
    """
    n = len(table.y)
    if folds < 2 or n < 2 * folds:
        raise GeoconceptError(f"{n} rows cannot make {folds} folds (need folds >= 2, rows >= 2x)")
    if spatial_block_deg is not None:
        if spatial_block_deg <= 0:
            raise GeoconceptError(
                f"spatial block size must be > 0 degrees, not {spatial_block_deg}"
            )
        groups = spatial_blocks(table.latlon, spatial_block_deg)
        n_blocks = int(groups.max()) + 1
        if n_blocks < folds:
            raise GeoconceptError(
                f"only {n_blocks} blocks of {spatial_block_deg} degrees hold data: fewer than "
                f"{folds} folds (use smaller blocks or fewer folds)"
            )
        return list(GroupKFold(n_splits=folds).split(table.latlon, groups=groups))
    if table.task == "classification":
        return list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(table.y, table.y))
    return list(KFold(folds, shuffle=True, random_state=seed).split(table.y))


# ------------------------------------------------------------------------------ probes
def make_probe(kind: str, task: str, seed: int = 0) -> BaseEstimator:
    """A fresh probe: StandardScaler then Ridge/LogisticRegression or a small MLP.

    Regression targets are standardised too (undone at prediction), so the MLP trains on unit
    scale whether the target is degrees or dollars; ridge predictions are unchanged by it.
    """
    if kind not in PROBES:
        raise GeoconceptError(f"unknown probe '{kind}' (use {', '.join(PROBES)})")
    if task == "regression":
        model = (
            RidgeCV(alphas=RIDGE_ALPHAS)
            if kind == "linear"
            else MLPRegressor(**MLP_PARAMS, random_state=seed)
        )
        return TransformedTargetRegressor(
            make_pipeline(StandardScaler(), model), transformer=StandardScaler()
        )
    model = (
        LogisticRegression(max_iter=1000)
        if kind == "linear"
        else MLPClassifier(**MLP_PARAMS, random_state=seed)
    )
    return make_pipeline(StandardScaler(), model)


def _scores(task: str, y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    if task == "regression":
        return {"r2": r2_score(y_true, y_pred), "mae": mean_absolute_error(y_true, y_pred)}
    return {
        "accuracy": accuracy_score(y_true, y_pred),
        "macro_f1": f1_score(y_true, y_pred, average="macro", zero_division=0),
    }


@dataclass(frozen=True)
class ProbeResult:
    """One (encoder, probe) pair: each metric's value on every test fold."""

    encoder: str
    probe: str
    dim: int
    folds: dict[str, list[float]]

    def mean(self, metric: str) -> float:
        return float(np.mean(self.folds[metric]))

    def std(self, metric: str) -> float:
        """Population standard deviation over folds."""
        return float(np.std(self.folds[metric]))


@dataclass
class ProbeResults:
    """All probe results of one table, with the protocol that produced them."""

    table: DownstreamTable
    folds: int
    seed: int
    spatial_block_deg: float | None
    rows: list[ProbeResult] = field(default_factory=list)

    @property
    def metrics(self) -> tuple[str, ...]:
        return METRICS[self.table.task]

    def split_description(self) -> str:
        if self.spatial_block_deg is None:
            kind = "stratified shuffled" if self.table.task == "classification" else "shuffled"
            return f"{kind} {self.folds}-fold CV (seed {self.seed})"
        return f"{self.folds}-fold CV over {self.spatial_block_deg:g}-degree lat/lon blocks"

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: table counts, protocol, and per-fold, mean and std of every metric."""
        t = self.table
        return {
            "source": t.source,
            "task": t.task,
            "rows": int(len(t.y)),
            "skipped": {"coordinates": t.n_skipped_coords, "target": t.n_skipped_target},
            "protocol": {
                "split": self.split_description(),
                "folds": self.folds,
                "seed": self.seed,
                "spatial_block_deg": self.spatial_block_deg,
                "features": "standardised per fold (fitted on the training rows)",
                "linear": (
                    f"RidgeCV, alpha by leave-one-out over 1e-3..1e5 ({len(RIDGE_ALPHAS)} values)"
                    if t.task == "regression"
                    else "LogisticRegression(C=1)"
                ),
                "mlp": {k: list(v) if isinstance(v, tuple) else v for k, v in MLP_PARAMS.items()},
                "std": "population std over folds",
            },
            "results": [
                {
                    "encoder": r.encoder,
                    "probe": r.probe,
                    "dim": r.dim,
                    "metrics": {
                        m: {"mean": r.mean(m), "std": r.std(m), "folds": r.folds[m]}
                        for m in self.metrics
                    },
                }
                for r in self.rows
            ],
        }


def probe_locations(
    table: DownstreamTable, models: Sequence[ModelSpec], folds: int = 5, seed: int = 0,
    spatial_block_deg: float | None = None, probes: Sequence[str] | None = None,
    report: Report = silent,
) -> ProbeResults:  # fmt: skip
    """`geoconcept downstream`: embed the table's locations with each model's location encoder
    (pretrained GeoCLIP's and raw coordinates for a spec without checkpoint, a run's features
    and concept activations) and cross-validate each probe (default: all of PROBES) on each
    (see ``run_probes``)."""
    probes = tuple(probes or PROBES)
    embedders: dict[str, Embedder] = {}
    for spec in models:
        embedders |= checkpoint_embedders(spec) if spec.checkpoint else default_embedders(
            spec.device)  # fmt: skip
    feats = compute_features(table.latlon, embedders)
    with report("probing", "") as advance:
        total = len(feats) * len(probes) * folds
        return run_probes(table, feats, folds, seed, spatial_block_deg, probes,
                          (lambda n: advance(n, total)) if advance else None)  # fmt: skip


def run_probes(
    table: DownstreamTable,
    features: Mapping[str, np.ndarray],
    folds: int = 5,
    seed: int = 0,
    spatial_block_deg: float | None = None,
    probes: Sequence[str] = PROBES,
    progress: Callable[[int], None] | None = None,
) -> ProbeResults:
    """Cross-validate every probe on every encoder's features, on one shared set of folds.

    ``features`` maps encoder names to (N, D) arrays aligned with ``table`` (see
    ``compute_features``). ``progress(1)`` is called after each of the
    len(features) * len(probes) * folds fits.
    """
    for kind in probes:
        make_probe(kind, table.task)  # reject unknown probe names before any fitting
    splits = fold_splits(table, folds, seed, spatial_block_deg)
    results = ProbeResults(table, folds, seed, spatial_block_deg)
    for name, x in features.items():
        if len(x) != len(table.y):
            raise GeoconceptError(f"encoder '{name}': {len(x)} feature rows for {len(table.y)}")
        for kind in probes:
            per_fold: dict[str, list[float]] = {m: [] for m in results.metrics}
            for i, (train, test) in enumerate(splits):
                if table.task == "classification" and len(np.unique(table.y[train])) < 2:
                    raise GeoconceptError(
                        f"fold {i + 1} trains on a single class: use fewer folds or smaller blocks"
                    )
                probe = make_probe(kind, table.task, seed)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ConvergenceWarning)  # the cap is deliberate
                    probe.fit(x[train], table.y[train])
                for m, v in _scores(table.task, table.y[test], probe.predict(x[test])).items():
                    per_fold[m].append(float(v))
                if progress:
                    progress(1)
            results.rows.append(ProbeResult(name, kind, int(x.shape[1]), per_fold))
    return results


def _mean_std(mean: float, std: float) -> str:
    """'0.9284 ± 0.0064'; whole numbers for large values such as dollars ('6,512 ± 180')."""
    if max(abs(mean), std) >= 100:
        return f"{mean:,.0f} ± {std:,.0f}"
    return f"{mean:.4f} ± {std:.4f}"


def results_table_markdown(results: ProbeResults) -> str:
    """A markdown table: one row per (encoder, probe), each metric as mean ± std over folds."""
    metrics = results.metrics
    header = ["encoder", "probe", "dim", *(METRIC_LABELS[m] for m in metrics)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in results.rows:
        cells = [r.encoder, r.probe, str(r.dim)]
        cells += [_mean_std(r.mean(m), r.std(m)) for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary_line(results: ProbeResults) -> str:
    """One line on what was probed: rows used and skipped, and the split."""
    t = results.table
    return (
        f"{t.source}: {len(t.y):,} rows ({t.task}; skipped {t.n_skipped_coords} with invalid "
        f"coordinates, {t.n_skipped_target} with invalid targets); {results.split_description()}"
    )
