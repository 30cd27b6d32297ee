"""Evaluation: metrics, evaluate, calibrate, interpretability, downstream probes, the atlas
and the concept-set ablation."""

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:
    from .ablations import ablate as ablate
    from .atlas import make_atlas as make_atlas
    from .calibration_fit import calibrate as calibrate
    from .downstream import downstream_table as downstream_table
    from .downstream import probe_locations as probe_locations
    from .downstream import results_table_markdown as results_table_markdown
    from .downstream import summary_line as summary_line
    from .scores import Evaluation as Evaluation
    from .scores import evaluate as evaluate
    from .scores import markdown_table as markdown_table

__getattr__ = lazy_exports(
    __name__,
    {
        "Evaluation": "scores",
        "evaluate": "scores",
        "markdown_table": "scores",
        "calibrate": "calibration_fit",
        "ablate": "ablations",
        "make_atlas": "atlas",
        "downstream_table": "downstream",
        "probe_locations": "downstream",
        "results_table_markdown": "downstream",
        "summary_line": "downstream",
    },
)
