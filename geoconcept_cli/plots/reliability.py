"""Reliability diagrams: observed frequency against stated confidence, before and after
calibration, for the two events evaluate scores (top-1 within 25 km, right country)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..io.artifacts import atomic_path


def plot_reliability(bins: dict[str, dict[str, dict[str, Any]]], model: str, folder: str | Path
                     ) -> Path:  # fmt: skip
    """One PNG per model in ``folder``: a panel per event, a line per kind of probability
    (``bins[event][kind]`` as ``metrics.reliability`` returns), the diagonal for reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(bins), figsize=(5 * len(bins), 4.6), squeeze=False)
    for ax, (event, kinds) in zip(axes[0], bins.items(), strict=True):
        ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="perfectly calibrated")
        for kind, b in kinds.items():
            pts = [(c, f) for c, f, n in zip(b["confidence"], b["frequency"], b["count"],
                                              strict=True) if n > 0]  # fmt: skip
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, marker="o", label=f"{kind} (ECE {b['ece']:.3f})")
        label = "top-1 within 25 km" if event.endswith("km") else "right country"
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="stated confidence", ylabel="observed frequency",
               title=label)  # fmt: skip
        ax.legend(loc="upper left", fontsize=8)
    fig.suptitle(model, fontsize=10)
    fig.tight_layout()
    path = Path(folder) / f"reliability-{re.sub(r'[^A-Za-z0-9._-]+', '_', model).strip('_')}.png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path
