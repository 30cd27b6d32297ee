"""`visualize`: the modality gap of a checkpoint, as a number and as a UMAP picture.

Images, locations and (for a concept-aware head) the concept basis all live in one space:
CLIP's d-dim text space (z_img, z_loc and the rows of B); for plain GeoCLIP, its 512-d space.
The gap is reported as the distance between the image and location centroids of the unit
vectors (Liang et al. 2022) and the mean cosine of each photo with its own location.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data.features import load_features
from ..geo.geocode import reverse_geocode
from ..model.checkpoints import check_trained_on, load_head
from ..model.clip_id import ClipId
from ..model.concept_head import ConceptAwareHead, RetrievalHead

COLOURS = {"image": "#1f77b4", "location": "#d62728", "concept": "#2ca02c"}


@torch.no_grad()
def latents(head: RetrievalHead, feats: torch.Tensor, latlon: torch.Tensor
            ) -> dict[str, np.ndarray]:  # fmt: skip
    """Unit vectors of images, locations and (concept-aware) the basis, in one space."""
    if isinstance(head, ConceptAwareHead):
        return {"image": head.image_latent(feats).numpy(),
                "location": head.location_latent(latlon).numpy(),
                "concept": F.normalize(head.basis, dim=1).numpy()}  # fmt: skip
    return {"image": head.embed_images(feats).numpy(),
            "location": head.embed_locations(latlon).numpy()}  # fmt: skip


def modality_gap(z: dict[str, np.ndarray]) -> dict[str, float]:
    """Centroid distance between image and location vectors, and their mean paired cosine."""
    img, loc = z["image"], z["location"]
    return {
        "centroid_distance": float(np.linalg.norm(img.mean(0) - loc.mean(0))),
        "mean_paired_cosine": float((img * loc).sum(1).mean()),
    }


def plot_umap(
    z: dict[str, np.ndarray],
    path: str | Path,
    latlon: torch.Tensor | None = None,
    by_continent: bool = False,
    seed: int = 0,
) -> Path:
    """One UMAP of all vectors, coloured by modality (markers by continent if asked)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import umap

    from ..io.artifacts import atomic_path

    names = list(z)
    stacked = np.concatenate([z[n] for n in names])
    xy = umap.UMAP(n_neighbors=15, min_dist=0.1, metric="cosine", random_state=seed,
                   n_jobs=1).fit_transform(stacked)  # fmt: skip
    fig, ax = plt.subplots(figsize=(8, 7), dpi=100)
    start = 0
    for name in names:
        part = xy[start : start + len(z[name])]
        start += len(z[name])
        if by_continent and name != "concept" and latlon is not None:
            conts = [c or "?" for c in reverse_geocode(latlon.numpy()).continent]
            for i, c in enumerate(sorted(set(conts))):
                sel = np.array([x == c for x in conts])
                ax.scatter(part[sel, 0], part[sel, 1], s=6, marker="os^vD<>p*"[i % 9],
                           c=COLOURS[name], alpha=0.6, label=f"{name} / {c}")  # fmt: skip
        else:
            ax.scatter(part[:, 0], part[:, 1], s=6, c=COLOURS[name], alpha=0.6, label=name)
    gap = modality_gap(z)
    ax.set_title(f"modality gap: centroid distance {gap['centroid_distance']:.3f}, "
                 f"paired cosine {gap['mean_paired_cosine']:.3f}", fontsize=10)  # fmt: skip
    ax.legend(fontsize=7, markerscale=2)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def plot_modality_gap(features: str | Path, checkpoint: str | Path, out: str | Path,
                      max_points: int = 3000, by_continent: bool = False, seed: int = 0
                      ) -> dict[str, float]:  # fmt: skip
    """`geoconcept visualize`: the modality gap of a trained run on at most ``max_points``
    photos of an ``embed-images`` folder (a seeded sample), and its UMAP in the PNG ``out``."""
    data = load_features(features)
    pick = torch.randperm(len(data.ids), generator=torch.Generator().manual_seed(seed))
    pick = pick[:max_points]
    head, ckpt = load_head(checkpoint)
    check_trained_on(ckpt, ClipId.from_meta(data.meta), checkpoint)
    z = latents(head, data.features[pick], data.latlon[pick])
    plot_umap(z, out, data.latlon[pick], by_continent, seed)
    return modality_gap(z)
