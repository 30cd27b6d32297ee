"""The frozen open_clip backbone: built from a registered name or a JSON config, with a
pretrained tag (downloaded once by open_clip), local weights (built on the meta device and
loaded in place) or random weights; one-line errors where weights cannot be had offline."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn
from torch.nn.modules.module import (
    register_module_buffer_registration_hook,
    register_module_parameter_registration_hook,
)

from ..errors import GeoconceptError, first_line, require_file
from .clip_id import ClipId, resolve_model_name
from .spec import DEFAULT_CLIP_MODEL, DEFAULT_CLIP_PRETRAINED

if TYPE_CHECKING:
    from PIL import Image


class RandomWeightsWarning(UserWarning):
    """CLIP runs with random weights: the mechanics work, the predictions mean nothing."""


def warn_if_random(clip: ClipId) -> None:
    """Stored features made by a CLIP with random weights: say that what is computed from them
    means nothing (``load_clip`` says so of a CLIP it builds)."""
    if str(clip.pretrained).lower() == "none":
        warnings.warn(f"these features were made by CLIP {clip.model} with random weights "
                      "(--clip-pretrained none): scores and predictions from them are "
                      "meaningless", RandomWeightsWarning, stacklevel=3)  # fmt: skip


@dataclass
class ClipBackbone:
    """A frozen open_clip model with its preprocessing transform and tokenizer."""

    model: nn.Module
    preprocess: Callable[[Image.Image], torch.Tensor]
    tokenizer: Callable[[list[str]], torch.Tensor]
    identity: ClipId

    @property
    def model_name(self) -> str | None:
        return self.identity.model

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def embed_dim(self) -> int:
        """The width of its image (and text) embeddings, from the model's config: timm-built
        towers (SigLIP, EVA) have no ``output_dim``."""
        import open_clip

        return int(open_clip.get_model_config(self.model_name)["embed_dim"])

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Projected, unnormalised image embeddings (what GeoCLIP's MLP consumes)."""
        model: Any = self.model  # open_clip's CLIP (untyped)
        encoded = model.encode_image(pixels.to(self.device, non_blocking=True))
        return cast(torch.Tensor, encoded).float()

    @torch.no_grad()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """Projected, unnormalised text embeddings."""
        tokens = self.tokenizer(texts).to(self.device)
        model: Any = self.model  # open_clip's CLIP (untyped)
        with _text_up_to_the_end(model, tokens) as cut:
            return cast(torch.Tensor, model.encode_text(cut)).float()


@contextmanager
def _text_up_to_the_end(model: nn.Module, tokens: torch.Tensor) -> Iterator[torch.Tensor]:
    """The tokens up to the batch's last end-of-text token, with the text tower's positions
    and causal mask cut alike while open_clip's own ``encode_text`` runs on them.

    CLIP's text tower is causal and pools at the end-of-text token (the highest token id), so
    no position after it changes the result: a batch of short prompts needs ~15 of the 77
    positions (exact, up to the float rounding of smaller products). Towers of another kind
    (no causal mask, pooled elsewhere: SigLIP's, Hugging Face's) run whole."""
    mask = getattr(model, "attn_mask", None)
    positions = getattr(model, "positional_embedding", None)
    if not (isinstance(mask, torch.Tensor) and mask.shape[0] == tokens.shape[1]
            and getattr(model, "text_pool_type", None) == "argmax"
            and isinstance(positions, nn.Parameter)):  # fmt: skip
        yield tokens
        return
    length = int(tokens.argmax(dim=-1).max()) + 1
    model.positional_embedding = nn.Parameter(positions[:length], requires_grad=False)
    model.attn_mask = mask[:length, :length]
    try:
        yield tokens[:, :length]
    finally:
        model.positional_embedding, model.attn_mask = positions, mask


def clip_embed_dim(model_name: str) -> int:
    """Width of a registered open_clip model's image embedding, read from its config only."""
    import open_clip

    return int(open_clip.get_model_config(resolve_model_name(model_name))["embed_dim"])


NO_WEIGHTS_HINT = (
    "pass --clip-pretrained /path/to/checkpoint (.pt or .safetensors), run once on a machine "
    "with internet to fill open_clip's cache, or use --clip-pretrained none (random weights, "
    "meaningless predictions)"
)


def check_weights_reachable(name: str, tag: str) -> None:
    """Fail in seconds when an open_clip tag's weights are neither cached nor downloadable.

    Without a route to the hub, open_clip's Hugging Face download retries for about a minute
    before it gives up; a cache lookup and one TCP connection answer at once. With a proxy
    configured this machine's own route proves nothing, so the download is left to try.
    """
    import os
    import socket
    import urllib.parse
    import urllib.request

    import open_clip
    from huggingface_hub import constants, is_offline_mode, try_to_load_from_cache
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    cfg = open_clip.get_pretrained_cfg(name, tag)
    if "file" in cfg:
        return
    if cfg.get("hf_hub"):
        repo, filename = os.path.split(cfg["hf_hub"])
        filename = filename or HF_WEIGHTS_NAME  # open_clip tries a .safetensors twin first
        names = (filename, str(Path(filename).with_suffix(".safetensors")), HF_SAFE_WEIGHTS_NAME)
        if any(isinstance(try_to_load_from_cache(repo, f), str) for f in names):
            return
        if is_offline_mode():
            raise GeoconceptError(
                f"CLIP weights '{tag}' for {name} are not in the Hugging Face cache and "
                f"HF_HUB_OFFLINE is set: {NO_WEIGHTS_HINT}"
            )
        url = constants.ENDPOINT
    else:
        url = cfg["url"]
        if (Path("~/.cache/clip").expanduser() / os.path.basename(url)).is_file():
            return
    if set(urllib.request.getproxies()) - {"no"}:  # NO_PROXY alone configures no proxy
        return
    where = urllib.parse.urlparse(url)
    if not where.hostname:  # not a URL this check understands: leave it to the download
        return
    port = where.port or (443 if where.scheme == "https" else 80)
    try:
        socket.create_connection((where.hostname, port), timeout=10).close()
    except OSError as exc:
        raise GeoconceptError(
            f"could not get CLIP weights '{tag}' for {name}: they are not cached and "
            f"{where.hostname} cannot be reached ({exc.strerror or exc}); {NO_WEIGHTS_HINT}"
        ) from None


def check_device(device: str | torch.device) -> None:
    """A torch device this machine has (before minutes of model loading, not after)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise GeoconceptError(f"--device {device}: not a torch device (e.g. cpu, cuda, cuda:1)") \
            from None  # fmt: skip
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise GeoconceptError(f"--device {device}: this machine has no CUDA GPU (use cpu)")


@contextmanager
def _weights_on_meta() -> Iterator[dict[tuple[nn.Module, str], torch.Tensor]]:
    """While a model is built whose weights a checkpoint will replace: create every parameter
    on the meta device (no memory, no random initialisation: ~3 s for ViT-L/14 on a CPU), and
    keep each buffer as its code computed it, for those no checkpoint holds (a causal mask)."""
    buffers: dict[tuple[nn.Module, str], torch.Tensor] = {}

    def param_to_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> object:
        if param is None or param.is_meta:
            return None
        return nn.Parameter(param.detach().to("meta"), requires_grad=param.requires_grad)

    def keep_buffer(module: nn.Module, name: str, buffer: torch.Tensor | None) -> None:
        if buffer is not None and not buffer.is_meta:
            buffers[(module, name)] = buffer

    # torch annotates hooks as returning None, but registers the parameter a hook returns
    hooks = (register_module_parameter_registration_hook(cast("Callable[..., None]",
                                                              param_to_meta)),
             register_module_buffer_registration_hook(keep_buffer))  # fmt: skip
    try:
        yield buffers
    finally:
        for h in hooks:
            h.remove()


def _build_from_file(
    name: str, path: str, device: str | torch.device
) -> tuple[nn.Module, Callable[[Image.Image], torch.Tensor]]:
    """open_clip's model and transform with weights from a local file, built on the meta
    device and loaded in place (open_clip's own checkpoint conversion, strict: every weight
    must come from the file), instead of randomly initialised and then overwritten."""
    import open_clip

    with _weights_on_meta() as computed:
        model, _, preprocess = open_clip.create_model_and_transforms(name, device="meta")
    model.load_state_dict = functools.partial(model.load_state_dict, assign=True)
    try:
        open_clip.load_checkpoint(model, path, strict=True)
    finally:
        del model.load_state_dict
    for (module, key), value in computed.items():
        current = module._buffers.get(key)
        if current is not None and current.is_meta:
            module._buffers[key] = value
    left = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if left:
        raise GeoconceptError(f"{path} lacks weights of {name}: {', '.join(left[:5])}")
    # assigned tensors keep the file's dtype: a float16 file must still give open_clip's fp32
    return model.float().to(device), cast("Callable[[Image.Image], torch.Tensor]", preprocess)


def load_clip(
    model_name: str = DEFAULT_CLIP_MODEL,
    pretrained: str = DEFAULT_CLIP_PRETRAINED,
    device: str | torch.device = "cpu",
) -> ClipBackbone:
    """Build a frozen open_clip model.

    ``pretrained`` is an open_clip tag (downloaded once by open_clip), a local ``.pt`` /
    ``.bin`` / ``.safetensors`` checkpoint, or ``none`` for random weights (tests, benchmarks).
    """
    import open_clip

    name = resolve_model_name(model_name)
    check_device(device)
    if pretrained.lower() == "none":
        warnings.warn(
            f"CLIP {name} has random weights (--clip-pretrained none): predictions are "
            "meaningless; GeoCLIP's MLP, location encoder and gallery are real",
            RandomWeightsWarning,
            stacklevel=2,
        )
        tag = None
        torch.manual_seed(0)  # the same random backbone in every process: reproducible runs
    elif Path(pretrained).suffix in {".pt", ".pth", ".bin", ".safetensors"} or "/" in pretrained:
        require_file(pretrained, "CLIP checkpoint")
        tag = pretrained
    else:
        known = open_clip.list_pretrained_tags_by_model(name)
        if pretrained not in known:
            raise GeoconceptError(
                f"no pretrained tag '{pretrained}' for {name} (known: {', '.join(known) or 'none'})"
            )
        tag = pretrained
        check_weights_reachable(name, tag)
    try:
        if tag is not None and Path(tag).is_file():
            model, preprocess = _build_from_file(name, tag, device)
        else:
            model, _, preprocess = open_clip.create_model_and_transforms(
                name, pretrained=tag, device=device
            )
    except Exception as exc:  # open_clip raises many kinds for unreachable hubs / bad files
        if tag is not None and not Path(tag).is_file():
            raise GeoconceptError(
                f"could not get CLIP weights '{tag}' for {name} ({type(exc).__name__}). This "
                f"machine may have no internet: {NO_WEIGHTS_HINT}"
            ) from None
        raise GeoconceptError(f"could not load CLIP {name} from {tag}: {first_line(exc)}") \
            from None  # fmt: skip
    model.eval().requires_grad_(False)
    return ClipBackbone(model, preprocess, lazy_tokenizer(name), ClipId.of(model_name, pretrained))


def lazy_tokenizer(name: str) -> Callable[[list[str]], torch.Tensor]:
    """open_clip's tokenizer of ``name``, loaded at its first use: embedding images needs none,
    and some (SigLIP's, from the Hugging Face hub) cannot load on a machine without internet."""

    @functools.cache
    def load() -> Callable[[list[str]], torch.Tensor]:
        import open_clip

        try:
            return cast("Callable[[list[str]], torch.Tensor]", open_clip.get_tokenizer(name))
        except Exception as exc:  # transformers raises OSError, ValueError... when offline
            raise GeoconceptError(
                f"could not load the text tokenizer of CLIP {name} ({first_line(exc)}); run once "
                "on a machine with internet to fill the Hugging Face cache"
            ) from None

    return lambda texts: load()(texts)
