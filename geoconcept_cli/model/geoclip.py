"""GeoCLIP's pretrained heads, read from the weights inside the installed ``geoclip`` wheel.

Its image MLP (768->768->512), location encoder and logit scale come from that package, never
from a hub. The MLP was trained on CLIP ViT-L/14 (openai) features only: a backbone of another
width gets a fresh MLP of the same shape (width->768->512), which only a trained run has. The
location encoder is re-implemented here (same parameter names, loaded with ``strict=True``) so
that importing geoconcept does not import ``transformers`` through ``geoclip/__init__``.
"""

from __future__ import annotations

import importlib.util
import math
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import GeoconceptError
from .clip_id import ClipId
from .spec import DEFAULT_CLIP_MODEL, DEFAULT_CLIP_PRETRAINED

if TYPE_CHECKING:
    pass


GEOCLIP_FEATURE_DIM = 768  # GeoCLIP's image MLP expects ViT-L/14's projected embedding.


GEOCLIP_HIDDEN_DIM = 768  # the MLP's hidden width, kept for any backbone (GeoCLIP's shape)


TRAIN_FIRST = "train a run on these features first (train FEATURES --concepts none trains " \
    "GeoCLIP's shape with a fresh image MLP) and pass it as --checkpoint"  # fmt: skip


class ForeignBackboneWarning(UserWarning):
    """Pretrained GeoCLIP fed 768-d features of another CLIP than ViT-L/14 (openai)."""


# ---------------------------------------------------------------- GeoCLIP location encoder
# Equal Earth projection constants (Savric et al. 2018), as in GeoCLIP.
_A1, _A2, _A3, _A4, _SF = 1.340264, -0.081106, 0.000893, 0.003796, 66.50336


def equal_earth_projection(latlon: torch.Tensor) -> torch.Tensor:
    """(lat, lon) degrees -> GeoCLIP's scaled Equal Earth (x, y)."""
    lat, lon = torch.deg2rad(latlon[:, 0]), torch.deg2rad(latlon[:, 1])
    theta = torch.asin((math.sqrt(3.0) / 2) * torch.sin(lat))
    denom = 3 * (9 * _A4 * theta**8 + 7 * _A3 * theta**6 + 3 * _A2 * theta**2 + _A1)
    x = (2 * math.sqrt(3.0) * lon * torch.cos(theta)) / denom
    y = _A4 * theta**9 + _A3 * theta**7 + _A2 * theta**3 + _A1 * theta
    return torch.stack((x, y), dim=1) * _SF / 180


class FourierFeatures(nn.Module):
    """Random Fourier features [cos 2piBv, sin 2piBv]; B is fixed (stored in the weights)."""

    def __init__(self, sigma: float, n_freq: int = 256):
        super().__init__()
        self.b = nn.Parameter(torch.randn(n_freq, 2) * sigma, requires_grad=False)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        vp = 2 * math.pi * v @ self.b.T
        return torch.cat((torch.cos(vp), torch.sin(vp)), dim=-1)


class LocationBranch(nn.Module):
    """One GeoCLIP scale: Fourier features -> 3 x (Linear, ReLU) -> Linear(1024, 512)."""

    def __init__(self, sigma: float):
        super().__init__()
        self.capsule = nn.Sequential(
            FourierFeatures(sigma),
            nn.Linear(512, 1024), nn.ReLU(),
            nn.Linear(1024, 1024), nn.ReLU(),
            nn.Linear(1024, 1024), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Sequential(nn.Linear(1024, 512))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cast(torch.Tensor, self.head(self.capsule(x)))  # Module calls return Any


class LocationEncoder(nn.Module):
    """GeoCLIP's location encoder: three Fourier-feature branches (sigma 2^0, 2^4, 2^8), summed."""

    def __init__(self, sigmas: tuple[float, ...] = (2**0, 2**4, 2**8)):
        super().__init__()
        self.n = len(sigmas)
        for i, s in enumerate(sigmas):
            self.add_module(f"LocEnc{i}", LocationBranch(s))

    def forward(self, latlon: torch.Tensor) -> torch.Tensor:
        # float32 always: under bf16 autocast the sigma=2^8 branch's phases (|2 pi B v| up to
        # ~6,000, bf16 spacing 4 there) turn cos/sin into noise, so training would see other
        # location features than inference.
        with torch.autocast(latlon.device.type, enabled=False):
            x = equal_earth_projection(latlon.float())
            out = torch.zeros(x.shape[0], 512, device=x.device, dtype=x.dtype)
            for i in range(self.n):
                out = out + cast(nn.Module, self._modules[f"LocEnc{i}"])(x)
        return out


def image_mlp(width: int = GEOCLIP_FEATURE_DIM) -> nn.Sequential:
    """GeoCLIP's image head shape: Linear(width, 768) - ReLU - Linear(768, 512)."""
    return nn.Sequential(nn.Linear(width, GEOCLIP_HIDDEN_DIM), nn.ReLU(),
                         nn.Linear(GEOCLIP_HIDDEN_DIM, 512))  # fmt: skip


def image_mlp_record(width: int) -> dict[str, Any]:
    """The one place that decides the image MLP of a head on ``width``-d features, as
    checkpoints record it: GeoCLIP's pretrained one for its 768, else fresh (seeded), trained."""
    return {"width": width, "init": "geoclip" if width == GEOCLIP_FEATURE_DIM else "fresh"}


def geoclip_package_dir() -> Path:
    """The installed ``geoclip/model`` folder (weights and gallery), found without importing it."""
    spec = importlib.util.find_spec("geoclip")
    if spec is None or not spec.submodule_search_locations:
        raise GeoconceptError("the 'geoclip' package is not installed: pip install geoclip")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


class GeoCLIPHead(nn.Module):
    """GeoCLIP's trainable parts: image MLP, location encoder and (log) logit scale.

    Any retrieval head in geoconcept offers the same three members, so the predictor, the
    gallery cache and the evaluator work unchanged for GeoCLIP and the concept-aware model.
    """

    def __init__(self, width: int = GEOCLIP_FEATURE_DIM) -> None:
        super().__init__()
        self.image_mlp = image_mlp(width)
        self.location_encoder = LocationEncoder()
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    @property
    def image_width(self) -> int:
        """The width of the CLIP image features this head takes."""
        return cast(nn.Linear, self.image_mlp[0]).in_features

    def embed_images(self, clip_features: torch.Tensor) -> torch.Tensor:
        """CLIP image features (B, width) -> L2-normalised GeoCLIP image embeddings (B, 512)."""
        return F.normalize(self.image_mlp(clip_features), dim=1)

    def embed_locations(self, latlon: torch.Tensor) -> torch.Tensor:
        """(B, 2) degrees -> L2-normalised location embeddings (B, 512)."""
        return F.normalize(self.location_encoder(latlon), dim=1)

    def embed(self, clip_features: torch.Tensor, latlon: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """Both embeddings of a training step (image, location)."""
        return self.embed_images(clip_features), self.embed_locations(latlon)


def load_geoclip_head(device: str | torch.device = "cpu") -> GeoCLIPHead:
    """GeoCLIP's released weights, read from the installed wheel (eval mode)."""
    weights = geoclip_package_dir() / "weights"

    def load(name: str) -> Any:
        return torch.load(weights / name, map_location="cpu", weights_only=True)

    head = GeoCLIPHead()
    head.image_mlp.load_state_dict(load("image_encoder_mlp_weights.pth"))
    head.location_encoder.load_state_dict(load("location_encoder_weights.pth"))
    with torch.no_grad():
        head.logit_scale.copy_(load("logit_scale_weights.pth"))
    return head.eval().to(device)


GEOCLIP_CLIP = ClipId(DEFAULT_CLIP_MODEL, DEFAULT_CLIP_PRETRAINED)  # GeoCLIP's MLP learned on it


def check_geoclip_width(width: int, source: object) -> None:
    """Pretrained GeoCLIP (no trained run) takes ViT-L/14's 768-d features only: another
    width is refused in one line."""
    if width != GEOCLIP_FEATURE_DIM:
        raise GeoconceptError(
            f"{source}: {width}-d image features, but pretrained GeoCLIP's image MLP takes "
            f"{GEOCLIP_FEATURE_DIM}-d ones of CLIP {GEOCLIP_CLIP}; {TRAIN_FIRST}"
        )


def warn_unless_geoclip_clip(clip: ClipId) -> None:
    """Pretrained GeoCLIP on another 768-d CLIP runs, but its features lie in another space
    than the MLP learned on: say so (random weights are warned about already). A local file
    of ViT-L/14 weights may be OpenAI's own, offline: then the warning says "if"."""
    if not clip.differs(GEOCLIP_CLIP) or str(clip.pretrained).lower() == "none":
        return
    if clip.model == GEOCLIP_CLIP.model and Path(str(clip.pretrained)).suffix:  # a local file
        why = (f"if {clip.pretrained} holds other weights than OpenAI's (which cannot be told "
               "from the file), its predictions are unreliable")  # fmt: skip
    else:
        why = (f"those of {clip} have their width but lie in another space, so its "
               "predictions are unreliable")  # fmt: skip
    warnings.warn(
        f"pretrained GeoCLIP's image MLP learned on CLIP {GEOCLIP_CLIP} features; {why}: "
        f"{TRAIN_FIRST}",
        ForeignBackboneWarning,
        stacklevel=2,
    )
