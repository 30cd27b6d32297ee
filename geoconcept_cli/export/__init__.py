"""Export: a trained run as a self-contained model folder with a model card."""

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:
    from .bundle import export_model as export_model
    from .onnx_bundle import export_onnx as export_onnx
    from .onnx_bundle import onnx_spec as onnx_spec

__getattr__ = lazy_exports(
    __name__, {"export_model": "bundle", "export_onnx": "onnx_bundle", "onnx_spec": "onnx_bundle"}
)
