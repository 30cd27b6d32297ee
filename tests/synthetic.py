"""A planted world for training tests: image features are location-dependent concept mixtures.

``n_regions`` places on the globe each have a sparse mixture over ``k`` concepts; a photo taken
there has CLIP-like features = mixture @ E + noise, E being the concepts' (random) text
embeddings. A model that aligns images and GPS through the concepts can locate the photos.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from geoconcept_cli.data.features import save_features
from geoconcept_cli.model.concept_embeddings import save_concept_embeddings


def make_world(
    root: Path, n_regions=12, per_region=64, k=24, dim=768, distractors=300, seed=0,
    clip_model="synthetic", centers=None, gallery_per_center=0, continents=None,
) -> dict:  # fmt: skip
    """Feature folders, a concept basis and a gallery; ``clip_model`` names their provenance.
    ``centers`` (n_regions, 2) places the regions (default: random); the gallery holds each
    centre, ``gallery_per_center`` points within ~10 km of it, and random distractors.
    With ``continents`` (names as the geocoder gives them), each region is a continent
    instead: photos and ``gallery_per_center`` gallery points per region lie anywhere on its
    land, and the gallery holds nothing else."""
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    if continents is not None:
        n_regions, centers = len(continents), None
    elif centers is None:
        centers = np.c_[rng.uniform(-55, 65, n_regions), rng.uniform(-170, 170, n_regions)]
    centers = np.asarray(centers, dtype=np.float64)
    concepts = F.normalize(torch.randn(k, dim, generator=gen), dim=1)
    mixtures = torch.zeros(n_regions, k)
    for r in range(n_regions):
        mixtures[r, torch.randperm(k, generator=gen)[:3]] = torch.rand(3, generator=gen) + 0.5

    def sample(n_per):
        region = torch.arange(n_regions).repeat_interleave(n_per)
        feats = mixtures[region] @ concepts * 8 + 0.8 * torch.randn(len(region), dim, generator=gen)
        if continents is not None:
            return (
                feats,
                torch.tensor(land_points(continents, n_per, rng), dtype=torch.float32),
                region,
            )
        latlon = torch.tensor(centers, dtype=torch.float32)[region]
        latlon = latlon + 0.05 * torch.randn(latlon.shape, generator=gen)  # a few km of spread
        return feats, latlon, region

    out = {}
    for split, n_per in (("train", per_region), ("test", per_region // 4)):
        feats, latlon, region = sample(n_per)
        ids = [f"{split}-{i}" for i in range(len(region))]
        save_features(root / split, ids, feats, latlon, shard_size=256, clip_model=clip_model,
                      clip_pretrained="none")  # fmt: skip
        out[split] = root / split
        out[f"{split}_region"] = region
    names = [f"concept {i}" for i in range(k)]
    out["concepts"] = save_concept_embeddings(
        root / "concepts", concepts,
        {"concepts": names, "categories": ["natural"] * k, "subcategories": ["terrain"] * k,
         "clip_model": clip_model, "clip_pretrained": "none"},
    )  # fmt: skip
    if continents is not None:
        gallery = land_points(continents, gallery_per_center, rng)
    else:
        near = np.repeat(centers, gallery_per_center, axis=0)
        near = near + rng.normal(0, 0.05, near.shape)
        gallery = np.r_[centers, near, np.c_[rng.uniform(-60, 70, distractors),
                                             rng.uniform(-180, 180, distractors)]]  # fmt: skip
    out["gallery"] = root / "gallery.csv"
    pd.DataFrame({"LAT": gallery[:, 0], "LON": gallery[:, 1]}).to_csv(out["gallery"], index=False)
    out["centers"] = centers
    out["mixtures"] = mixtures
    out["concept_names"] = names
    return out


def land_points(continents: list[str], n_per: int, rng: np.random.Generator) -> np.ndarray:
    """``n_per`` points spread uniformly over the land of each continent, continent by
    continent (rejection sampling on the sphere, with the offline geocoder)."""
    from geoconcept_cli.geo.geocode import reverse_geocode

    found: dict[str, list[np.ndarray]] = {c: [] for c in continents}
    while min(len(v) for v in found.values()) < n_per:
        lat = np.degrees(np.arcsin(rng.uniform(-1, 1, 20_000)))
        points = np.c_[lat, rng.uniform(-180, 180, 20_000)]
        continent = reverse_geocode(points).continent.astype(str)
        for c in continents:
            found[c] += list(points[continent == c])
    return np.concatenate([np.array(found[c][:n_per]) for c in continents])


def tiny_trained_world(root: Path) -> dict:
    """A 6-region, 40-concept world of the tiny test CLIP's width and a concept-aware run
    trained on it for 4 steps (``world["run"]``, its config ``world["cfg"]``)."""
    from geoconcept_cli.training.config import TrainConfig
    from geoconcept_cli.training.loop import train

    world = make_world(root, n_regions=6, per_region=32, k=40, clip_model="tiny-clip-768")
    cfg = TrainConfig(features=str(world["train"]), out=str(root / "run"),
                      concepts=str(world["concepts"]), max_steps=4, batch_size=32, lr=3e-3,
                      warmup_steps=1, queue_size=32)  # fmt: skip
    train(cfg)
    world["run"], world["cfg"] = root / "run", cfg
    return world
