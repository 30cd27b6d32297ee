"""Export: a trained run as a self-contained model folder with a model card."""

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:
    from .bundle import export_model as export_model

__getattr__ = lazy_exports(__name__, {"export_model": "bundle"})
