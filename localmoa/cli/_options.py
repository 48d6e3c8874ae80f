"""Options shared by several commands, declared once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ProfileOpt = Annotated[
    str | None,
    typer.Option("--profile", "-p", help="Profile (MoA recipe) from models.yaml. Default: tiny.",
                 show_default=False),
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="A models.yaml that extends or overrides the shipped "
                 "one. Default: $LOCALMOA_CONFIG or ~/.config/localmoa/models.yaml.",
                 show_default=False, dir_okay=False),
]
JsonOpt = Annotated[
    bool,
    typer.Option("--json", help="Print one JSON document on stdout instead of text and tables."),
]
MemoryBudgetOpt = Annotated[
    str | None,
    typer.Option("--memory-budget", "-m", help="RAM the models may use, e.g. 1.5GiB, 800MiB, "
                 "2GB. Default: $LOCALMOA_MEMORY_BUDGET, else 90% of the RAM available now.",
                 show_default=False),
]
AggregateOpt = Annotated[
    str | None,
    typer.Option(
        "--aggregate",
        help="always: the aggregator writes the answer; auto: "
        "skip it when the proposers agree; never: majority vote of the proposers; "
        "select: one proposer's answer, chosen (--select); staircase: the answer starts "
        "while the proposers still write (--staircase). Default: the profile's (always).",
        show_default=False,
    ),
]
StaircaseOpt = Annotated[
    bool,
    typer.Option(
        "--staircase",
        help="Staircase aggregation (aggregate: staircase): the final answer starts "
        "after the proposers' first words and goes on as their answers come, instead "
        "of after they all end. Needs the aggregator beside the proposers (`localmoa "
        "plan` says when it is not; then it aggregates as always).",
    ),
]
StaircaseChunkOpt = Annotated[
    int | None,
    typer.Option(
        "--staircase-chunk", min=1, max=1024, metavar="N",
        help="Staircase aggregation with a first chunk of N tokens (implies --staircase): "
        "the answer starts once every proposer still writing has written N tokens, and "
        "each round after doubles N. Smaller starts sooner on less of their text. "
        "Default: the profile's staircase_chunk (8).",
        show_default=False,
    ),
]
StreamRefsOpt = Annotated[
    bool | None,
    typer.Option(
        "--stream-references/--no-stream-references",
        help="Whether the aggregator reads each proposer's answer as soon as it ends "
        "(its prompt is evaluated while the others still write), or only after the "
        "whole layer, in agent order (--no-stream-references, for A/B runs). Default: "
        "the profile's stream_references (on).",
        show_default=False,
    ),
]
SelectOpt = Annotated[
    str | None,
    typer.Option(
        "--select",
        metavar="confidence|judge|verify",
        help="Choose one "
        "proposer's answer instead of writing a new one (aggregate: select). "
        "confidence: the model whose samples agree most; judge: the aggregator's "
        "model names the best by its number; verify: the code that passes the "
        "prompt's examples (needs --execute).",
        show_default=False,
    ),
]
ExecuteOpt = Annotated[
    bool,
    typer.Option(
        "--execute",
        help="Allow running model-written code for --select verify "
        "(and code compared by behaviour): each program in the sandbox, with a "
        "timeout, limits, an empty folder and no network. Read README's HumanEval "
        "section first.",
    ),
]
LayersOpt = Annotated[
    int | None,
    typer.Option("--layers", "-l", help="Number of proposer layers: the profile's are truncated "
                 "or its last one repeated.", show_default=False),
]
ProposerOpt = Annotated[
    list[str] | None,
    typer.Option("--proposer", help="Model of a proposer (repeat the option for several); "
                 "replaces the profile's proposers in every layer.", show_default=False),
]
AggregatorOpt = Annotated[
    str | None,
    typer.Option("--aggregator", help="Model of the final aggregator.", show_default=False),
]
TemperatureOpt = Annotated[
    float | None,
    typer.Option("--temperature", "-t", help="Sampling temperature for every agent (0 = greedy).",
                 show_default=False),
]
MaxTokensOpt = Annotated[
    int | None,
    typer.Option("--max-tokens", "-n", help="Most tokens each agent may generate.",
                 show_default=False),
]
SeedOpt = Annotated[
    int | None,
    typer.Option("--seed", help="Random seed; agent k gets seed+k, so a run is reproducible "
                 "while agents on one model still differ (with --temperature 0 exactly so "
                 "with --no-stream-references; streamed, up to near ties).",
                 show_default=False),
]
AgentTimeoutOpt = Annotated[
    float | None,
    typer.Option("--agent-timeout", help="Give up on an agent after this many seconds; it is "
                 "dropped and reported like any failed proposer.", show_default=False),
]
NoBatchOpt = Annotated[
    bool,
    typer.Option("--no-batch", help="Run each agent on its own model instance instead of "
                 "batching agents that share a model into one context (for A/B comparisons)."),
]
SelfOpt = Annotated[
    str | None,
    typer.Option("--self", metavar="MODEL[:N]", help="Self-MoA: N samples of MODEL at varied "
                 "temperatures and seeds, aggregated by MODEL (default N=4), instead of the "
                 "profile's agents.", show_default=False),
]
BenchSelfOpt = Annotated[
    str | None,
    typer.Option("--self", metavar="MODEL[:N]", help="Self-MoA: N samples of MODEL at varied "
                 "temperatures and seeds, aggregated by MODEL (default N=4), measured as one "
                 "more contender beside the --profile ones (alone when no --profile is given).",
                 show_default=False),
]
