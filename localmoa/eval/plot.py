"""The picture of an eval: accuracy against seconds per answer, one point per
contender, its 95% interval as an error bar. Needs matplotlib (the `plot` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import UsageError

#: One colour per kind of contender (contenders.KINDS); others grey.
COLOURS = {"single": "#6c757d", "vote": "#f4a261", "self-consistency": "#e76f51",
           "self-moa": "#2a9d8f", "moa": "#264653", "consensus": "#8338ec"}
NAMES = ("accuracy_vs_time.png", "accuracy_vs_time.svg")


def require_matplotlib() -> None:
    """Fail before the eval runs, not after, when the picture cannot be drawn."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError("the accuracy plot needs matplotlib: pip install 'localmoa[plot]'"
                         ) from None


def draw_accuracy_vs_time(summaries: dict[str, dict[str, Any]], out_dir: Path,
                          title: str = "") -> list[Path]:
    """Writes accuracy_vs_time.png and .svg into ``out_dir``; returns their paths."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    fig, ax = plt.subplots(figsize=(9, 6))
    for name, s in summaries.items():
        x, y = s["s_per_answer"], s["accuracy"]
        low, high = s["ci95"]
        colour = COLOURS.get(s.get("kind", ""), "#adb5bd")
        ax.errorbar([x], [y], yerr=[[max(0.0, y - low)], [max(0.0, high - y)]], fmt="o",
                    color=colour, ecolor=colour, elinewidth=1.2, capsize=4, markersize=8)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(7, 5), fontsize=8)
    ax.set_xlabel("seconds per answer (model loading excluded)")
    ax.set_ylabel("accuracy (95% Wilson interval)")
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlim(left=0, right=max([s["s_per_answer"] for s in summaries.values()] + [0.1])
                * 1.25)
    ax.grid(True, color="#e9ecef")
    answers = max((s["answers"] for s in summaries.values()), default=0)
    ax.set_title(title or f"accuracy against time per answer ({answers} answers each)",
                 fontsize=10, loc="left")
    kinds = list(dict.fromkeys(s.get("kind", "") for s in summaries.values()))
    handles = [Line2D([], [], marker="o", linestyle="", color=COLOURS.get(k, "#adb5bd"),
                      label=k) for k in kinds]
    ax.legend(handles=handles, loc="lower right", frameon=False, fontsize=8)
    fig.tight_layout()
    paths = [out_dir / name for name in NAMES]
    for path in paths:
        fig.savefig(path, dpi=120)
    plt.close(fig)
    return paths
