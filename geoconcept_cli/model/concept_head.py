"""The concept-aware retrieval head (arXiv 2509.01910 on top of GeoCLIP); stored by ``checkpoints``.

Projection (the paper leaves it open; this is the choice, and why):
- concept basis  B = E + Delta, E (k x d) the frozen L2-normalised CLIP text embeddings of
  the concepts, Delta learnable (zero at start);
- image   z_img = norm( norm(x) + W_img MLP(x) ),  x the d-d CLIP image embedding (d = the
  text width: one open_clip model embeds both), MLP GeoCLIP's pretrained image MLP
  (768->768->512) for ViT-L/14's d = 768, else a fresh, seeded one of its shape
  (d->768->512), W_img (512->d) initialised at ZERO. At
  step 0 the image activations are exactly CLIP's zero-shot image-concept similarities, so
  concepts mean what their names say from the start; training only adds a correction;
- location z_loc = norm( W_loc LocEnc(g) ), LocEnc GeoCLIP's pretrained location encoder
  (partially trainable), W_loc (512->d) learned: no zero-shot meaning exists for GPS;
- activations a = z B^T (k-dim), retrieval score = s * cos(a_img, a_loc).
Because the score is a dot product of two normalised k-vectors, it splits exactly into
per-concept terms s * a_img[c] * a_loc[c] / (|a_img| |a_loc|): the explanation of ``explain``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypeAlias, cast

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import GeoconceptError
from .geoclip import (
    GEOCLIP_FEATURE_DIM,
    GeoCLIPHead,
    LocationEncoder,
    image_mlp,
    image_mlp_record,
    load_geoclip_head,
)

LOCATION_TRAINABLE = ("none", "partial", "all")


class ConceptAwareHead(nn.Module):
    """GeoCLIP's image MLP and location encoder, projected onto a learnable concept basis."""

    concept_embeddings: torch.Tensor  # a buffer (E), registered in __init__

    def __init__(self, concept_embeddings: torch.Tensor, clip_dim: int | None = None):
        super().__init__()
        k, d = concept_embeddings.shape
        if clip_dim is not None and d != clip_dim:
            raise GeoconceptError(
                f"concept embeddings are {d}-d but the CLIP image features are {clip_dim}-d: "
                "embed the concepts with the same CLIP model as the images"
            )
        self.register_buffer("concept_embeddings", F.normalize(concept_embeddings.float(), dim=1))
        self.delta = nn.Parameter(torch.zeros(k, d))
        self.image_mlp = image_mlp(d)
        self.image_proj = nn.Linear(512, d, bias=False)
        nn.init.zeros_(self.image_proj.weight)
        self.location_encoder = LocationEncoder()
        self.location_proj = nn.Linear(512, d, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    @property
    def image_width(self) -> int:
        """The width of the CLIP image features this head takes (its basis's)."""
        return int(self.concept_embeddings.shape[1])

    @property
    def basis(self) -> torch.Tensor:
        """B = E + Delta, (k, d)."""
        return self.concept_embeddings + self.delta

    def _image_direction(self, clip_features: torch.Tensor) -> torch.Tensor:
        """norm(x) + W_img MLP(x), not yet normalised (one fused addmm for the residual)."""
        x = clip_features.float()
        return torch.addmm(F.normalize(x, dim=1), self.image_mlp(x), self.image_proj.weight.T)

    def image_latent(self, clip_features: torch.Tensor) -> torch.Tensor:
        """z_img (B, d): the unit image vector in CLIP's text space, before the basis."""
        return F.normalize(self._image_direction(clip_features), dim=1)

    def location_latent(self, latlon: torch.Tensor) -> torch.Tensor:
        """z_loc (B, d): the unit location vector in CLIP's text space, before the basis."""
        return F.normalize(self.location_proj(self.location_encoder(latlon)), dim=1)

    def image_concepts(self, clip_features: torch.Tensor) -> torch.Tensor:
        """Concept activations (B, k) of CLIP image features."""
        return self.image_latent(clip_features) @ self.basis.T

    def location_concepts(self, latlon: torch.Tensor) -> torch.Tensor:
        """Concept activations (B, k) of (lat, lon) points."""
        return self.location_latent(latlon) @ self.basis.T

    # Retrieval embeddings normalise the activations, so the latents' own normalisation (a
    # positive scale) is skipped, and W_loc is folded into the basis, (W_loc l) B^T =
    # l (B W_loc)^T: one product over the GPS batch and queue instead of two. Training a step
    # is launch-bound on GPU and FLOP-bound on CPU; both counts drop.
    def _image_activations(self, clip_features: torch.Tensor, basis: torch.Tensor
                           ) -> torch.Tensor:  # fmt: skip
        return self._image_direction(clip_features) @ basis.T

    def _location_activations(self, latlon: torch.Tensor, basis: torch.Tensor
                              ) -> torch.Tensor:  # fmt: skip
        encoded = cast(torch.Tensor, self.location_encoder(latlon))  # Module calls return Any
        return encoded @ (basis @ self.location_proj.weight).T

    def embed_images(self, clip_features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self._image_activations(clip_features, self.basis), dim=1)

    def embed_locations(self, latlon: torch.Tensor) -> torch.Tensor:
        return F.normalize(self._location_activations(latlon, self.basis), dim=1)

    def embed(self, clip_features: torch.Tensor, latlon: torch.Tensor
              ) -> tuple[torch.Tensor, ...]:  # fmt: skip
        """Both embeddings of a training step, normalised together."""
        basis = self.basis
        both = torch.cat([self._image_activations(clip_features, basis),
                          self._location_activations(latlon, basis)])  # fmt: skip
        parts = F.normalize(both, dim=1).split([len(clip_features), len(latlon)])
        return cast(tuple[torch.Tensor, ...], parts)  # Tensor.split is unannotated


# Any retrieval head: both offer embed_images, embed_locations, embed, logit_scale, image_mlp,
# image_width and location_encoder, so the predictor, the gallery cache and the evaluator
# take either.
RetrievalHead: TypeAlias = ConceptAwareHead | GeoCLIPHead


def same_basis(embeddings: torch.Tensor, stored: torch.Tensor) -> bool:
    """Whether concept embeddings are the ones a head stored (unit rows, up to rounding)."""
    unit = F.normalize(embeddings.float(), dim=1)
    return unit.shape == stored.shape and torch.allclose(unit, stored, atol=1e-6)


def init_from_geoclip(head: RetrievalHead) -> RetrievalHead:
    """Copy GeoCLIP's pretrained location encoder and logit scale into ``head``, and its image
    MLP where ``image_mlp_record`` says so (ViT-L/14's width; else the head's stays fresh)."""
    ref = load_geoclip_head()
    if image_mlp_record(head.image_width)["init"] == "geoclip":
        head.image_mlp.load_state_dict(ref.image_mlp.state_dict())
    head.location_encoder.load_state_dict(ref.location_encoder.state_dict())
    with torch.no_grad():
        head.logit_scale.copy_(ref.logit_scale)
    return head


def check_head_takes(head: RetrievalHead, width: int, source: object) -> None:
    """Refuse, in one line, image features of another width than ``head`` takes."""
    if head.image_width != width:
        raise GeoconceptError(
            f"{source} takes {head.image_width}-d image features, not {width}-d ones: features "
            "of another CLIP than the one it was trained on"
        )


def set_location_trainable(head: RetrievalHead, mode: str) -> None:
    """Which location-encoder layers train: none, partial (each branch's last layers), all."""
    if mode not in LOCATION_TRAINABLE:
        raise GeoconceptError(f"--train-location must be one of {', '.join(LOCATION_TRAINABLE)}")
    enc = head.location_encoder
    for name, p in enc.named_parameters():
        if name.endswith(".b"):  # the Fourier frequencies are fixed in GeoCLIP
            p.requires_grad_(False)
        elif mode == "partial":
            p.requires_grad_(".head." in name or ".capsule.5." in name)
        else:
            p.requires_grad_(mode == "all")


def build_head(concept_embeddings: torch.Tensor | None, width: int | None = None
               ) -> RetrievalHead:  # fmt: skip
    """A GeoCLIP-initialised head on ``width``-d image features (default: the embeddings',
    else ViT-L/14's 768): concept-aware with embeddings, plain GeoCLIP with None. A fresh
    image MLP (``image_mlp_record``) draws its weights from torch's seed."""
    if concept_embeddings is None:
        width = width or GEOCLIP_FEATURE_DIM
        if image_mlp_record(width)["init"] == "geoclip":
            return load_geoclip_head().train()
        return init_from_geoclip(GeoCLIPHead(width)).train()
    return init_from_geoclip(ConceptAwareHead(concept_embeddings, clip_dim=width))


@torch.no_grad()
def location_latents(head: ConceptAwareHead, gps: torch.Tensor, chunk: int = 8192,
                     progress: Callable[[int, int], object] | None = None
                     ) -> torch.Tensor:  # fmt: skip
    """(N, d) unit location vectors of the gallery, before the basis (on the CPU)."""
    device = head.delta.device
    out = []
    for s in range(0, len(gps), chunk):
        out.append(head.location_latent(gps[s : s + chunk].to(device)).cpu())
        if progress:
            progress(len(out[-1]), len(gps))
    return torch.cat(out)
