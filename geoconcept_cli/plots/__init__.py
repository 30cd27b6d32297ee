"""Plots: world maps, reliability diagrams, risk-coverage curves and the modality-gap UMAP
(PNG, offline)."""

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:
    from .maps import render_heatmap as render_heatmap
    from .maps import render_map as render_map
    from .modality_gap import plot_modality_gap as plot_modality_gap
    from .reliability import plot_reliability as plot_reliability
    from .risk_coverage import plot_risk_coverage as plot_risk_coverage

__getattr__ = lazy_exports(
    __name__,
    {
        "render_heatmap": "maps",
        "render_map": "maps",
        "plot_reliability": "reliability",
        "plot_risk_coverage": "risk_coverage",
        "plot_modality_gap": "modality_gap",
    },
)
