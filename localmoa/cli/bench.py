"""`localmoa bench`: tokens/sec per agent and per layer over many prompts, with a timeline."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..bench import load_prompts, run_bench
from ..config import Config
from ..errors import UsageError
from ..fileio import atomic_write
from ..memory.probe import format_bytes
from ..recipe import parse_self, self_moa_profile
from ..timeline import draw_timelines
from ._options import BenchSelfOpt, ConfigOpt, JsonOpt, MemoryBudgetOpt, NoBatchOpt
from ._output import Output
from ._prepare import load_command_config

EPILOG = """\
Examples:

\b
  localmoa bench                                  # tiny, 6 built-in prompts, 1 round

\b
  localmoa bench --repeat 3 --baseline single     # the MoA's cost against its aggregator alone

\b
  localmoa bench -p tiny -p mine --prompts my.jsonl --out results/   # two profiles, side by side

\b
  localmoa bench -p tiny --self smollm2-135m:3    # tiny's personas against Self-MoA

\b
  localmoa bench --no-batch --out unbatched/      # then compare with a batched run
"""


def bench(
    profile: Annotated[list[str] | None, typer.Option(
        "--profile", "-p", help="A profile to measure; repeat to compare several (measured "
        "interleaved).", show_default=False)] = None,
    prompts: Annotated[Path | None, typer.Option(
        "--prompts", help='JSONL file, one {"prompt": "..."} per line. Default: 6 built-in '
        "prompts.", show_default=False, dir_okay=False)] = None,
    repeat: Annotated[int, typer.Option("--repeat", "-r", help="Rounds over the prompts.")] = 1,
    warmup: Annotated[int, typer.Option("--warmup", help="Unmeasured runs per profile first.")
                      ] = 1,
    baseline: Annotated[str | None, typer.Option(
        "--baseline", help="`single`: also run each profile's aggregator model alone.",
        show_default=False)] = None,
    self_moa: BenchSelfOpt = None,
    no_batch: NoBatchOpt = False,
    memory_budget: MemoryBudgetOpt = None,
    out_dir: Annotated[Path | None, typer.Option(
        "--out", help="Folder for results.json and timeline.png/.svg. Default: "
        "./localmoa-bench-DATE-TIME", show_default=False, file_okay=False)] = None,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Measure profiles over a prompt set: per agent and per layer, median and p90 of
    time to first token, prompt and decode tokens/s, layer wall time and aggregate
    tokens/s; loads, load time, peak memory, end-to-end latency and time to the
    final answer's first token. Writes results.json (every raw sample and the
    machine) and timeline.png/.svg (where the time went)."""
    if baseline not in (None, "single"):
        raise UsageError(f"--baseline {baseline}: the only baseline is `single`")
    if repeat < 1:
        raise UsageError(f"--repeat {repeat}: give at least 1")
    cfg = load_command_config(config, no_batch)
    texts = load_prompts(prompts)
    names = list(profile or ([] if self_moa is not None else [cfg.default_profile]))
    if self_moa is not None:
        cfg, name = with_self_moa(cfg, self_moa)
        names.append(name)
    target = out_dir or Path(f"localmoa-bench-{time.strftime('%Y%m%d-%H%M%S')}")
    out = Output(json_mode=json_out)
    contenders = len(names) * (2 if baseline else 1)
    total = contenders * (len(texts) * repeat + warmup)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=out.err, transient=True,
                  disable=json_out or not out.err.is_terminal) as bar:
        task = bar.add_task("benchmarking", total=total)

        def progress(message: str) -> None:
            bar.update(task, advance=1, description=escape(message))

        results = run_bench(cfg, names, texts, repeat=repeat, warmup=warmup,
                            memory_budget=memory_budget, baseline=baseline == "single",
                            progress=progress)
    target.mkdir(parents=True, exist_ok=True)
    atomic_write(target / "results.json",
                 json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    first_runs = {name: samples[0]["report"] for name, samples in results["samples"].items()}
    pictures = draw_timelines(first_runs, target)
    if json_out:
        out.document({"out": str(target), "summaries": results["summaries"],
                      "comparison": results["comparison"]})
        return
    out.show(summary_table(results["summaries"]))
    for name, summary in results["summaries"].items():
        out.show(layer_table(name, summary))
    for moa, ratio in results["comparison"].items():
        out.show(f"[bold]{escape(moa)}[/] vs its aggregator alone: "
                 f"{ratio['e2e_latency_ratio']:.2f}x the latency, "
                 f"{ratio['tokens_ratio']:.2f}x the tokens generated")
    out.show(f"wrote {escape(str(target / 'results.json'))} and "
             f"{', '.join(escape(p.name) for p in pictures)}")


def with_self_moa(config: Config, value: str) -> tuple[Config, str]:
    """``--self MODEL[:N]`` as one more profile, named ``self:MODEL``, of a config copy."""
    chosen = parse_self(value, config)
    assert chosen is not None  # a value was given
    model, samples = chosen
    name = f"self:{model}"
    return replace(config, profiles={**config.profiles,
                                     name: self_moa_profile(model, samples)}), name


def _ms(stats: dict[str, float]) -> str:
    return f"{stats['median']:.2f} / {stats['p90']:.2f}"


def summary_table(summaries: dict[str, Any]) -> Table:
    table = Table(title="profiles (median / p90)", title_justify="left", header_style="bold")
    for col in ("profile", "runs", "end-to-end s", "final TTFT s", "tokens", "loads",
                "load s", "peak RSS"):
        table.add_column(col, justify="left" if col == "profile" else "right")
    for name, s in summaries.items():
        table.add_row(escape(name), str(s["runs"]), _ms(s["e2e_s"]), _ms(s["final_ttft_s"]),
                      f"{s['completion_tokens']['median']:.0f}", f"{s['loads']['median']:.0f}",
                      f"{s['load_s']['median']:.2f}", format_bytes(s["peak_rss_bytes"]))
    return table


def layer_table(name: str, summary: dict[str, Any]) -> Table:
    table = Table(title=f"{name}: agents and layers (median / p90)", title_justify="left",
                  header_style="bold")
    for col in ("agent", "model", "TTFT s", "prompt tok/s", "decode tok/s"):
        table.add_column(col, justify="left" if col in ("agent", "model") else "right")
    for agent_id, a in summary["agents"].items():
        table.add_row(agent_id, escape(a["model"] or "-"), _ms(a["ttft_s"]),
                      _ms(a["prompt_tok_per_s"]), _ms(a["decode_tok_per_s"]))
    for layer, s in summary["layers"].items():
        table.add_row(f"layer {layer}", s["role"], f"wall {_ms(s['wall_s'])}", "",
                      f"agg {_ms(s['agg_tok_per_s'])}")
    return table
