"""`localmoa run`: one prompt through a Mixture-of-Agents, the answer streamed."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from ..backends.base import Message
from ..errors import RunFailedError, UsageError
from ..fileio import (
    PROMPT_CAP_HINT,
    FileRefused,
    prompt_cap_bytes,
    read_prompt_bytes,
    read_stream_capped,
)
from ..metrics import RunReport
from ..recipe import Overrides, parse_self
from ..runtime import Request
from ._errors import EXIT_RUNTIME
from ._options import (
    AgentTimeoutOpt,
    AggregateOpt,
    AggregatorOpt,
    ConfigOpt,
    ExecuteOpt,
    JsonOpt,
    LayersOpt,
    MaxTokensOpt,
    MemoryBudgetOpt,
    NoBatchOpt,
    ProfileOpt,
    ProposerOpt,
    SeedOpt,
    SelectOpt,
    SelfOpt,
    StaircaseChunkOpt,
    StaircaseOpt,
    StreamRefsOpt,
    TemperatureOpt,
)
from ._output import Output
from ._prepare import command_runtime, load_command_config
from ._progress import RunDisplay

EPILOG = """\
Examples:

\b
  localmoa run "Which is larger, 9.11 or 9.9?"

\b
  echo "Write a haiku about RAM" | localmoa run - --layers 2 --show-layers

\b
  localmoa run "Explain mmap" --temperature 0 --seed 7 --json > run.json

\b
  localmoa run --self smollm2-135m:6 "Which is larger, 9.11 or 9.9?"

\b
  localmoa run --staircase "Explain mmap"    # starts while proposers write

\b
  localmoa run --staircase-chunk 4 "Explain mmap"    # after 4 of their tokens

\b
  localmoa run --no-stream-references --json "..."    # wait for the layer
"""


def read_prompt(prompt: str | None, file: Path | None = None) -> str:
    """The prompt argument, a file, or standard input for ``-``; refuse empty or
    non-UTF-8 input, and files that are not regular or are over the prompt cap
    (LOCALMOA_MAX_PROMPT_BYTES), before reading more than the cap."""
    if file is not None:
        if prompt is not None:
            raise UsageError("give the prompt as an argument or with --file, not both")
        try:
            data, where = read_prompt_bytes(file), str(file)
        except FileRefused as exc:
            raise UsageError(f"--file {file}: {exc.reason}") from None
        except OSError as exc:
            raise UsageError(f"--file {file}: {exc.strerror}") from None
    elif prompt == "-":
        data, where = _read_stdin(), "standard input"
    else:
        data, where = None, ""
    if data is not None:
        try:
            prompt = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UsageError(f"the prompt in {where} is not UTF-8 text (bad byte at offset "
                             f"{exc.start}); convert it, e.g. with iconv -t UTF-8") from None
    if prompt is None:
        raise UsageError("no prompt: give it as an argument, `-` for stdin, or --file FILE")
    if not prompt.strip():
        raise UsageError("the prompt is empty; give it as an argument or pipe it in with `-`")
    return prompt.strip()


def _read_stdin() -> bytes:
    """Standard input (a pipe, a file, a device), at most the prompt cap and one byte."""
    try:
        return read_stream_capped(sys.stdin.buffer, prompt_cap_bytes(), "standard input",
                                  "prompts", PROMPT_CAP_HINT)
    except FileRefused as exc:
        raise UsageError(f"standard input {exc.reason}") from None
    except OSError as exc:
        raise UsageError(f"cannot read the prompt from standard input: {exc.strerror}") from None


def run(
    prompt: Annotated[str | None, typer.Argument(
        help="The question or instruction; `-` reads stdin.", show_default=False)] = None,
    file: Annotated[Path | None, typer.Option(
        "--file", "-f", help="Read the prompt from this UTF-8 file.", show_default=False,
        dir_okay=False)] = None,
    profile: ProfileOpt = None,
    config: ConfigOpt = None,
    layers: LayersOpt = None,
    proposer: ProposerOpt = None,
    aggregator: AggregatorOpt = None,
    temperature: TemperatureOpt = None,
    max_tokens: MaxTokensOpt = None,
    seed: SeedOpt = None,
    agent_timeout: AgentTimeoutOpt = None,
    self_moa: SelfOpt = None,
    aggregate: AggregateOpt = None,
    select: SelectOpt = None,
    execute: ExecuteOpt = False,
    stream_references: StreamRefsOpt = None,
    staircase: StaircaseOpt = False,
    staircase_chunk: StaircaseChunkOpt = None,
    no_batch: NoBatchOpt = False,
    show_layers: Annotated[bool, typer.Option(
        "--show-layers", help="Print each layer's answers to stderr as the layer finishes.")
    ] = False,
    memory_budget: MemoryBudgetOpt = None,
    json_out: JsonOpt = False,
    no_stats: Annotated[bool, typer.Option(
        "--no-stats", help="Do not print the metrics tables after the answer.")] = False,
) -> int:
    """Answer PROMPT with a Mixture-of-Agents: proposers, aggregation layers, a final aggregator.

    The final answer streams to stdout; progress, per-layer answers (--show-layers)
    and the metrics tables go to stderr, so `localmoa run ... > answer.txt` keeps
    only the answer. Everything runs locally; nothing is downloaded.

    The run follows a memory plan (see `localmoa plan`): agents of a layer run
    together when their models fit in the budget, else one after another with
    models swapped in and out; a model that cannot fit is refused before loading.
    """
    out = Output(json_mode=json_out)
    text = read_prompt(prompt, file)
    cfg = load_command_config(config, no_batch)
    overrides = Overrides(
        layers=layers, proposers=tuple(proposer or ()), aggregator=aggregator,
        temperature=temperature, max_tokens=max_tokens, seed=seed, timeout_s=agent_timeout,
        self_moa=parse_self(self_moa, cfg),
        aggregate=staircase_of(aggregate, staircase or staircase_chunk is not None),
        select=select, execute=execute, stream_references=stream_references,
        staircase_chunk=staircase_chunk)
    request = Request.for_profile(cfg, profile, overrides, [Message(role="user", content=text)])
    with command_runtime(out, cfg, memory_budget, start_early=True) as runtime:
        prepared = runtime.prepare(request)  # routed, planned: refuses here, before any load
        with RunDisplay(out, prepared.graph, show_layers=show_layers) as display:
            try:
                report = runtime.run(prepared, display.events())
            except RunFailedError as exc:
                if isinstance(exc.report, RunReport):
                    _finish(out, exc.report, json_out, no_stats, show_layers,
                            display.streamed)
                raise
    _finish(out, report, json_out, no_stats, show_layers, display.streamed)
    return 0 if report.ok else EXIT_RUNTIME


def _finish(out: Output, report: RunReport, json_out: bool, no_stats: bool,
            show_layers: bool, streamed: bool) -> None:
    if json_out:
        out.document(report.to_dict())
        return
    if streamed:
        out.end_stream()
    elif report.answer:  # no aggregator wrote it (aggregation skipped): the proposers' answer
        out.stream(report.answer)
        out.end_stream()
    if not report.answer and not show_layers:
        # The run stopped before its answer: nothing the user waited for is lost.
        for run in report.agents:
            if run.answer and not run.is_aggregator:
                partial = "" if run.ok else " [partial]"
                out.note(f"[bold]{run.agent}[/] ({escape(run.model)}){partial}:\n"
                         f"{escape(run.answer)}\n")
    if not no_stats:
        out.report(report)


def staircase_of(aggregate: str | None, staircase: bool) -> str | None:
    """``--aggregate``, or ``staircase`` with ``--staircase`` (both: one line, exit 2)."""
    if not staircase:
        return aggregate
    if aggregate not in (None, "staircase"):
        raise UsageError(f"--staircase is an aggregate mode; --aggregate {aggregate} is "
                         "another: give one of the two")
    return "staircase"
