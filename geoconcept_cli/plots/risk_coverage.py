"""Risk-coverage curves: how accurate a model's answers are as it answers fewer photos, the
most confident first (inference.abstention), one line per model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..io.artifacts import atomic_path


def plot_risk_coverage(answering: dict[str, dict[str, Any]], folder: str | Path) -> Path:
    """``risk-coverage.png`` in ``folder``: accuracy of the photos answered against the share
    answered, per model (``answering[model]`` as evaluate's summary holds it), with each
    model's AURC and a calibrated abstention level's point where there is one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.6))
    for model, a in answering.items():
        xs, ys = zip(*a["curve"], strict=True) if a["curve"] else ((), ())
        (line,) = ax.plot(xs, ys, label=f"{model}: within {a['radius_km']:g} km "
                                            f"(AURC {a['aurc']:.3f})")  # fmt: skip
        level = a.get("abstention")
        if level and level["accuracy_here"] is not None:
            ax.plot(
                [level["kept_here"]],
                [level["accuracy_here"]],
                "o",
                color=line.get_color(),
                label=f"abstain below {level['level']:g} (target {level['target']:.0%})",
            )
            ax.axhline(level["target"], color=line.get_color(), lw=0.8, ls=":")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="share of photos answered (most confident first)",
           ylabel="accuracy of the answers (top-1 within each model's radius)",
           title="When to answer: risk-coverage")  # fmt: skip
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    path = Path(folder) / "risk-coverage.png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path
