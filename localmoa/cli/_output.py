"""The one output layer: text on stdout, tables and progress on stderr, or JSON.

Commands never print directly; they go through Output so ``--json`` always
yields exactly one JSON document on stdout and nothing else there.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..memory.probe import format_bytes
from ..metrics import AgentRun, RunReport


def _console(stderr: bool) -> Console:
    console = Console(stderr=stderr, highlight=False, soft_wrap=False)
    if not console.is_terminal and console.width < 120:
        # Logs and pipes: wide enough that the metrics tables are not truncated.
        console = Console(stderr=stderr, highlight=False, soft_wrap=False, width=120)
    return console


class Output:
    def __init__(self, json_mode: bool = False) -> None:
        self.json_mode = json_mode
        self.err = _console(stderr=True)
        self.out = _console(stderr=False)
        self._lock = threading.Lock()

    # --- stdout -----------------------------------------------------------
    def stream(self, text: str) -> None:
        """Write a piece of the answer to stdout as it arrives."""
        if self.json_mode:
            return
        with self._lock:
            sys.stdout.write(text)
            sys.stdout.flush()

    def end_stream(self) -> None:
        if not self.json_mode:
            sys.stdout.write("\n")
            sys.stdout.flush()

    def show(self, renderable: Any) -> None:
        """A listing (table) on stdout: it is the command's output."""
        self.out.print(renderable)

    def document(self, data: Any) -> None:
        """The single JSON document of --json mode."""
        sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        sys.stdout.flush()

    # --- stderr -----------------------------------------------------------
    def note(self, message: str) -> None:
        """A message on stderr; never hard-wrapped, so paths and commands copy whole."""
        if not self.json_mode:
            self.err.print(message, soft_wrap=True)

    def notice(self, message: str) -> None:
        """``localmoa: notice: ...``, one line on stderr, in every mode (--json too)."""
        with self._lock:
            sys.stderr.write(f"localmoa: notice: {' '.join(message.split())}\n")
            sys.stderr.flush()

    def rule(self, title: str) -> None:
        """A titled separator on stderr (between layers and the final answer)."""
        if not self.json_mode:
            with self._lock:
                self.err.rule(escape(title), style="cyan")

    @contextmanager
    def status(self, message: str) -> Iterator[Any]:
        """A spinner on an interactive stderr; nothing otherwise."""
        if self.json_mode or not self.err.is_terminal:
            yield None
            return
        with self.err.status(message) as st:
            yield st

    def layer_answers(self, layer: int, runs: list[AgentRun]) -> None:
        """--show-layers: every answer of a finished layer, on stderr."""
        with self._lock:
            self.err.rule(f"layer {layer}", style="cyan")
            for run in runs:
                head = f"[bold]{run.agent}[/] [dim]{escape(run.model)}[/]"
                if run.ok:
                    self.err.print(f"{head}\n{escape(run.answer)}\n")
                else:
                    self.err.print(f"{head} [red]failed:[/] {escape(run.error or '')}\n")

    def report(self, report: RunReport) -> None:
        """The per-agent and per-layer tables, on stderr."""
        if self.json_mode:
            return
        self.err.print(agent_table(report))
        self.err.print(layer_table(report))
        for line in recipe_lines(report.recipe):
            self.err.print(line, soft_wrap=True)
        if report.plan and report.actual:
            p, a = report.plan, report.actual
            ram_peak = p["predicted_peak_bytes"].get("ram", 0)
            self.err.print(
                f"[bold]memory[/] planned {p['waves']} waves, {p['loads']} loads, peak "
                f"{format_bytes(ram_peak)} (budget {format_bytes(p['budget_bytes'].get('ram', 0))})"
                f"; measured {a['loads']} loads in {a['load_s']:.2f} s, peak "
                f"+{format_bytes(a['peak_pss_growth_bytes'])} PSS")
        restarts = report.actual.get("worker_restarts", 0)
        if restarts:
            self.err.print(f"[bold]workers[/] {restarts} restarted in the middle of a batch "
                           "after a crash; its agents went on from the text they had written",
                           soft_wrap=True)
        repack = report.runtime.get("cpu_repack")
        if repack and not repack.get("enabled"):
            self.err.print(f"[bold]cpu[/] llama.cpp weight repacking off: "
                           f"{escape(str(repack.get('reason', '')))}", soft_wrap=True)
        for name, facts in report.models.items():
            if facts.get("partly_on_cpu"):
                self.err.print(
                    f"[yellow]warning[/] {escape(name)}: Ollama put only "
                    f"{format_bytes(facts['size_vram_bytes'])} of "
                    f"{format_bytes(facts['size_bytes'])} on the GPU; the rest runs on the CPU "
                    "(slower). A smaller num_ctx or quant would fit.", soft_wrap=True)
        latency = latency_line(report.latency)
        if latency:
            self.err.print(latency, soft_wrap=True)
        t = report.totals
        self.err.print(
            f"[bold]total[/] {t.wall_s:.2f} s wall, {t.load_s:.2f} s loading, "
            f"{t.completion_tokens} tokens generated by {t.agents} agents "
            f"({t.tok_per_s:.1f} tok/s overall), {report.cores} cores"
            + (f", [red]{t.failed} failed[/]" if t.failed else ""))


def latency_line(latency: dict[str, Any]) -> str:
    """When the answer's first text came: from the start, and after the last reference."""
    first = latency.get("answer_first_text_s")
    if first is None:
        return ""
    after = latency.get("aggregator_first_text_after_references_s")
    streamed = ""
    if latency.get("references_streamed"):
        streamed = (f"; references streamed in as they ended "
                    f"({', '.join(latency.get('reference_order', []))}), "
                    f"{latency.get('references_prefilled_early_tokens', 0)} tokens read early")
    when = ""
    if after is not None:
        when = (f", {after:.2f} s after its last reference ended" if after >= 0 else
                f", {-after:.2f} s before its last reference ended (staircase)")
    return f"[bold]answer[/] first text at {first:.2f} s" + when + streamed


def agent_table(report: RunReport) -> Table:
    table = Table(title="agents", title_justify="left", header_style="bold")
    for col in ("agent", "model", "thr", "load s", "in tok", "out tok", "TTFT s",
                "in tok/s", "out tok/s", "span s", "status"):
        table.add_column(col, justify="left" if col in ("agent", "model", "status") else "right")
    for r in report.agents:
        status = "ok" if r.ok else f"[red]failed[/]: {escape(r.error or '')[:60]}"
        if r.worker_restarts:
            status += " (resumed)"
        mark = {"server": " s", "client": " c"}.get(r.timing, "")
        table.add_row(r.agent, escape(r.model), str(r.threads) if r.threads else "-",
                      f"{r.load_s:.2f}", str(r.prompt_tokens), str(r.completion_tokens),
                      f"{r.ttft_s:.2f}" + (mark if r.timing == "client" else ""),
                      f"{r.prompt_tok_per_s:.0f}",
                      f"{r.decode_tok_per_s:.1f}{mark}", f"{r.start_s:.2f}-{r.end_s:.2f}",
                      status)
    table.caption = ("in = prompt (prefill), out = generated (decode); "
                     "span = start-end from the run's start"
                     + ("; s: the server's own timing, c: timed by localmoa over HTTP (TTFT "
                        "includes the network)" if any(r.timing != "local" for r in report.agents)
                        else ""))
    table.caption_justify = "left"
    return table


def layer_table(report: RunReport) -> Table:
    table = Table(title="layers", title_justify="left", header_style="bold")
    for col in ("layer", "role", "agents", "batch", "failed", "load s", "wall s", "in tok",
                "out tok", "agg tok/s"):
        table.add_column(col, justify="left" if col in ("layer", "role") else "right")
    for s in report.layers:
        evaluated = (f"{s.prompt_tokens_evaluated}/{s.prompt_tokens}"
                     if s.prompt_tokens_evaluated != s.prompt_tokens else str(s.prompt_tokens))
        table.add_row(str(s.layer), s.role, str(s.agents), str(s.batch), str(s.failed),
                      f"{s.load_s:.2f}", f"{s.wall_s:.2f}", evaluated, str(s.completion_tokens),
                      f"{s.agg_tok_per_s:.1f}")
    table.caption = ("batch: agents decoded together in one context; in tok: prompt tokens "
                     "evaluated/sent (a batch's shared prefix is evaluated once)")
    table.caption_justify = "left"
    return table


def recipe_lines(recipe: dict[str, Any]) -> list[str]:
    """What the recipe decided, one line each: routing, early exit, consensus, selection."""
    lines = []
    routing = recipe.get("routing")
    if routing:
        chosen = ", ".join(routing.get("chosen", []))
        lines.append(f"[bold]router[/] {escape(str(routing.get('router', '')))} chose "
                     f"{escape(chosen)} ({escape(str(routing.get('reason', '')))}); "
                     f"{routing.get('wall_s', 0):.2f} s, TTFT {routing.get('ttft_s', 0):.2f} s, "
                     f"{routing.get('tokens', 0)} tokens")
    early = recipe.get("early_exit")
    if early:
        lines.append(f"[bold]early exit[/] after layer {early['after_layer']}: "
                     f"{escape(early['agreement'])}; {early['layers_skipped']} layer(s) "
                     f"skipped, ~{early['estimated_time_saved_s']:.1f} s saved (estimated)")
    agreed = recipe.get("consensus")
    if agreed and agreed.get("aggregation") == "skipped":
        lines.append(f"[bold]consensus[/] {escape(agreed['summary'])}; the answer of "
                     f"{agreed['answer_from']}, ~{agreed['estimated_time_saved_s']:.1f} s "
                     "saved (estimated)")
    elif agreed:
        lines.append(f"[bold]consensus[/] aggregation ran: {escape(agreed['agreement'])}")
    selected = recipe.get("selection")
    if selected:
        fallback = f" ({escape(selected['fallback'])})" if selected.get("fallback") else ""
        lines.append(
            f"[bold]selection[/] {escape(selected['summary'])}{fallback}; "
            f"{selected['seconds']:.2f} s"
        )
    return lines
