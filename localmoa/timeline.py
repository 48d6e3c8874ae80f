"""Where the time of a run went, as a picture: one row per agent, bars for load,
prefill and decode, the plan's waves shaded. Needs matplotlib (the `plot` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import UsageError

COLOURS = {"load": "#9e9e9e", "prefill": "#f4a261", "decode": "#2a9d8f", "failed": "#e63946"}


def draw_timelines(runs: dict[str, dict[str, Any]], out_dir: Path) -> list[Path]:
    """One panel per profile (``runs``: profile -> a RunReport as a dict); writes
    timeline.png and timeline.svg into ``out_dir``."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch
    except ImportError:
        raise UsageError("the timeline needs matplotlib: pip install 'localmoa[plot]'") from None

    heights = [len(r["agents"]) * 0.45 + 1.2 for r in runs.values()]
    # One time axis for all: profiles compare at a glance.
    fig, axes = plt.subplots(len(runs), 1, figsize=(11, sum(heights)), squeeze=False,
                             sharex=True, gridspec_kw={"height_ratios": heights})
    for ax, (name, report) in zip(axes[:, 0], runs.items(), strict=True):
        _draw(ax, name, report)
    handles = [Patch(color=c, label=k) for k, c in COLOURS.items()]
    fig.legend(handles=handles, loc="upper right", ncols=4, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    paths = [out_dir / "timeline.png", out_dir / "timeline.svg"]
    for path in paths:
        fig.savefig(path, dpi=120)
    plt.close(fig)
    return paths


def _draw(ax: Any, name: str, report: dict[str, Any]) -> None:
    agents = report["agents"]
    waves: dict[int, list[float]] = {}
    for row, a in enumerate(agents):
        y = len(agents) - 1 - row
        begin = a["start_s"]
        if a.get("load_start_s") is not None and a["load_s"] > 0:
            ax.barh(y, a["load_s"], left=a["load_start_s"], color=COLOURS["load"], height=0.6)
            begin = min(begin, a["load_start_s"])
        if not a["ok"] and not a["completion_tokens"]:
            ax.barh(y, max(a["end_s"] - a["start_s"], 0.02), left=a["start_s"],
                    color=COLOURS["failed"], height=0.6)
        else:
            prefill_end = min(a["start_s"] + a["ttft_s"], a["end_s"])
            ax.barh(y, prefill_end - a["start_s"], left=a["start_s"], color=COLOURS["prefill"],
                    height=0.6)
            ax.barh(y, a["end_s"] - prefill_end, left=prefill_end, color=COLOURS["decode"],
                    height=0.6)
        span = waves.setdefault(a["wave"], [begin, a["end_s"]])
        span[0], span[1] = min(span[0], begin), max(span[1], a["end_s"])
    for i, (wave, (lo, hi)) in enumerate(sorted(waves.items())):
        ax.axvspan(lo, hi, color="#e9ecef" if i % 2 == 0 else "#f8f9fa", zorder=0)
        ax.text((lo + hi) / 2, len(agents) - 0.35, f"wave {wave}", ha="center", fontsize=8,
                color="#495057")
    ax.set_yticks(range(len(agents)))
    ax.set_yticklabels([f"{a['agent']} {a['model']}" for a in reversed(agents)], fontsize=8)
    ax.set_xlabel("seconds from the start of the run")
    loads = report["actual"].get("loads", 0)
    ax.set_title(f"{name}: {report['totals']['wall_s']:.2f} s, "
                 f"{report['totals']['completion_tokens']} tokens, "
                 f"{loads} load{'' if loads == 1 else 's'}", fontsize=10, loc="left")
    ax.set_ylim(-0.6, len(agents) + 0.1)
