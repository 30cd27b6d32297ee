"""Which CLIP made an artifact, and the check that artifacts made by different CLIPs are never
mixed (features, concept bases, checkpoints, calibrations)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any

from ..errors import GeoconceptError, require_file


# ---------------------------------------------------------------------- open_clip backbone
@dataclass(frozen=True)
class ClipId:
    """Which CLIP made an artifact (features, concept basis, checkpoint): the model name, the
    weights and, for a model given as a JSON config, a hash of that config (two files may share
    a name). Built-in names carry no hash: an open_clip upgrade that edits a built-in config
    must not orphan a million embedded images. A field is None where an artifact lacks it."""

    model: str | None
    pretrained: str | None
    config: str | None = None

    @classmethod
    def of(cls, model_name: str, pretrained: str) -> ClipId:
        """The identity of ``--clip-model``/``--clip-pretrained``. A JSON config is read and
        hashed as open_clip registers it, without importing open_clip (5 s on a CPU), so a
        rerun that finds its work done loads nothing more."""
        if not model_name.endswith(".json"):
            return cls(resolve_model_name(model_name), pretrained)
        path = require_file(model_name, "CLIP model config")
        try:
            cfg = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise GeoconceptError(f"{path}: not a JSON model config ({exc})") from None
        if not isinstance(cfg, dict) or not {"embed_dim", "vision_cfg", "text_cfg"} <= set(cfg):
            raise GeoconceptError(f"{path}: not an open_clip model config (it needs embed_dim, "
                                  "vision_cfg and text_cfg)")  # fmt: skip
        digest = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:16]
        return cls(path.stem, pretrained, digest)

    @classmethod
    def from_meta(cls, meta: dict[str, Any], prefix: str = "clip_") -> ClipId:
        """Read from a meta dict (``clip_model``...) or, with ``prefix=""``, a checkpoint's."""
        return cls(*(meta.get(prefix + k) for k in ("model", "pretrained", "config")))

    def as_meta(self, prefix: str = "clip_") -> dict[str, str | None]:
        return {prefix + k: getattr(self, k) for k in ("model", "pretrained", "config")}

    def differs(self, other: ClipId) -> bool:
        """True where both record a field and it differs."""
        return any(a is not None and b is not None and a != b
                   for a, b in zip(astuple(self), astuple(other), strict=True))  # fmt: skip

    def __str__(self) -> str:
        return f"{self.model} ({self.pretrained})"


def check_same_clip(
    made: ClipId, given: ClipId, subject: str, fix: str = "", hint: bool = False
) -> None:
    """Refuse an artifact made by another CLIP than the one given. ``subject`` names it ("feats
    holds features of"), ``fix`` says what to do; ``hint`` adds the CLIP options it matches."""
    if not made.differs(given):
        return
    names_differ = (made.model, made.pretrained) != (given.model, given.pretrained)
    what = f"CLIP {made}, not {given}" if names_differ else (
        f"CLIP {made} from another model config of that name")  # fmt: skip
    model = made.model if made.config is None else f"<your {made.model}.json config>"
    advice = [f"pass --clip-model {model} --clip-pretrained {made.pretrained}"] if (
        hint and names_differ) else []  # fmt: skip
    raise GeoconceptError(f"{subject} {what}" + "".join(f"; {a}" for a in [*advice, fix] if a))


def resolve_model_name(name: str) -> str:
    """Accept a registered open_clip name, or a path to a JSON model config (registered here)."""
    import open_clip

    path = Path(name)
    if name.endswith(".json"):
        require_file(path, "CLIP model config")
        open_clip.add_model_config(path)
        return path.stem
    if name not in open_clip.list_models():
        raise GeoconceptError(
            f"unknown CLIP model '{name}' (see open_clip.list_models(), e.g. ViT-L-14, "
            "or pass a JSON model config path)"
        )
    return name
