"""What a run cost: per agent, per layer, in total. Plain values, JSON in and out.

Times are seconds; ``start_s``/``end_s`` are measured from the start of the run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

SCHEMA_VERSION = 1


@dataclass
class AgentRun:
    """One agent's call: its answer, or its error, and its timings."""

    agent: str
    model: str
    layer: int
    role: str  # "proposer" | "aggregator"
    ok: bool
    answer: str = ""
    error: str | None = None
    threads: int = 0
    wave: int = 0  # the plan's wave this agent ran in
    load_s: float = 0.0  # loading the model instance this agent used; 0 when reused
    load_start_s: float | None = None  # when that load began (from the run's start)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft_s: float = 0.0
    prompt_tok_per_s: float = 0.0
    decode_tok_per_s: float = 0.0
    start_s: float = 0.0
    end_s: float = 0.0
    finish_reason: str | None = None
    #: Set when the references were shortened to fit n_ctx: counts before and after.
    references_trimmed: dict[str, int] | None = None
    #: Sequences decoded together in its model's context (1: it ran alone).
    batch: int = 1
    #: Tokens of its prompt shared with the rest of its batch, evaluated once for all.
    shared_prompt_tokens: int = 0
    #: Who measured its times: "local" (per token, by localmoa or its worker), "server"
    #: (the server's own timings), "client" (an HTTP stream timed by localmoa: TTFT
    #: includes the network, the decode rate counts streamed chunks).
    timing: str = "local"
    #: Times its model's worker died while it decoded in a batch and a fresh one went on
    #: from the text it had written (nothing it wrote was lost).
    worker_restarts: int = 0
    #: When its first piece of text arrived, from the run's start (None: it wrote none).
    first_text_s: float | None = None
    #: Its references streamed in (reference streaming): the agents whose answers it
    #: read, in the order they came; None when it read them whole, in agent order.
    reference_order: list[str] | None = None
    #: Prompt tokens it evaluated before its last reference came (streamed references).
    early_prompt_tokens: int = 0

    @property
    def is_aggregator(self) -> bool:
        return self.role == "aggregator"

    @property
    def wall_s(self) -> float:
        return max(0.0, self.end_s - self.start_s)


@dataclass
class LayerStats:
    """One layer: its agents ran concurrently between ``start_s`` and ``end_s``."""

    layer: int
    role: str
    agents: int
    failed: int
    load_s: float
    wall_s: float
    prompt_tokens: int
    completion_tokens: int
    agg_tok_per_s: float  # all completion tokens / layer wall time
    start_s: float
    end_s: float
    batch: int = 1  # the largest batch of its agents (1: none decoded together)
    #: Prompt tokens actually evaluated: a batch's shared prefix counts once.
    prompt_tokens_evaluated: int = 0

    @classmethod
    def of(cls, layer: int, runs: list[AgentRun]) -> LayerStats:
        started = [r.start_s for r in runs]
        ended = [r.end_s for r in runs]
        start = min(started) if started else 0.0
        end = max(ended) if ended else 0.0
        wall = max(0.0, end - start)
        completion = sum(r.completion_tokens for r in runs)
        return cls(
            layer=layer,
            role=runs[0].role if runs else "proposer",
            agents=len(runs),
            failed=sum(not r.ok for r in runs),
            load_s=round(sum(r.load_s for r in runs), 4),
            wall_s=round(wall, 4),
            prompt_tokens=sum(r.prompt_tokens for r in runs),
            completion_tokens=completion,
            agg_tok_per_s=round(completion / wall, 2) if wall > 0 else 0.0,
            start_s=round(start, 4),
            end_s=round(end, 4),
            batch=max((r.batch for r in runs), default=1),
            prompt_tokens_evaluated=_evaluated(runs),
        )


def _evaluated(runs: list[AgentRun]) -> int:
    """Prompt tokens evaluated by ``runs``: each batch's shared prefix once."""
    shared: dict[tuple[int, str], int] = {}
    for run in runs:
        if run.batch > 1:
            key = (run.wave, run.model)
            shared[key] = max(shared.get(key, 0), run.shared_prompt_tokens)
    return sum(r.prompt_tokens - r.shared_prompt_tokens for r in runs) + sum(shared.values())


@dataclass
class Totals:
    wall_s: float
    load_s: float
    prompt_tokens: int
    completion_tokens: int
    agents: int
    failed: int
    tok_per_s: float  # all completion tokens / run wall time


@dataclass
class RunReport:
    """A whole run: the answer, every intermediate answer, and the metrics."""

    profile: str
    prompt: str
    answer: str
    agents: list[AgentRun]
    layers: list[LayerStats]
    totals: Totals
    cores: int
    schema_version: int = SCHEMA_VERSION
    ok: bool = True
    error: str | None = None
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: What the planner predicted: waves, loads, unloads, peak bytes and budget per pool.
    plan: dict[str, Any] = field(default_factory=dict)
    #: What happened: loads, unloads, load seconds, peak RSS / PSS growth in bytes,
    #: agents abandoned after their timeout and the bytes their instances still hold,
    #: model workers that crashed and those restarted mid-batch (``worker_restarts``).
    actual: dict[str, Any] = field(default_factory=dict)
    #: How the backends ran on this machine, e.g. ``cpu_repack`` (llama.cpp weight
    #: repacking: enabled, mode, why).
    runtime: dict[str, Any] = field(default_factory=dict)
    #: Things that went wrong without costing an answer (e.g. a display callback failed).
    warnings: list[str] = field(default_factory=list)
    #: What the recipe decided: ``routing`` (the router's choice, why, what it cost),
    #: ``consensus`` (aggregation skipped: who agreed, time saved), ``early_exit``.
    recipe: dict[str, Any] = field(default_factory=dict)
    #: How soon the answer came (``latency_of``): its first text from the run's start,
    #: the aggregator's after its last reference ended, the references' order.
    latency: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def build(cls, *, profile: str, prompt: str, answer: str, runs: list[AgentRun],
              wall_s: float, cores: int, models: dict[str, dict[str, Any]],
              error: str | None = None, plan: dict[str, Any] | None = None,
              actual: dict[str, Any] | None = None, runtime: dict[str, Any] | None = None,
              warnings: list[str] | None = None,
              recipe: dict[str, Any] | None = None) -> RunReport:
        by_layer: dict[int, list[AgentRun]] = {}
        for run in runs:
            by_layer.setdefault(run.layer, []).append(run)
        layers = [LayerStats.of(n, by_layer[n]) for n in sorted(by_layer)]
        completion = sum(r.completion_tokens for r in runs)
        totals = Totals(
            wall_s=round(wall_s, 4),
            load_s=round(sum(r.load_s for r in runs), 4),
            prompt_tokens=sum(r.prompt_tokens for r in runs),
            completion_tokens=completion,
            agents=len(runs),
            failed=sum(not r.ok for r in runs),
            tok_per_s=round(completion / wall_s, 2) if wall_s > 0 else 0.0,
        )
        return cls(profile=profile, prompt=prompt, answer=answer, agents=runs, layers=layers,
                   totals=totals, cores=cores, models=models, ok=error is None, error=error,
                   plan=plan or {}, actual=actual or {}, runtime=runtime or {},
                   warnings=warnings or [], recipe=recipe or {}, latency=latency_of(runs))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunReport:
        return cls(
            profile=data["profile"], prompt=data["prompt"], answer=data["answer"],
            agents=[AgentRun(**a) for a in data["agents"]],
            layers=[LayerStats(**s) for s in data["layers"]],
            totals=Totals(**data["totals"]), cores=data["cores"],
            schema_version=data.get("schema_version", SCHEMA_VERSION),
            ok=data.get("ok", True), error=data.get("error"), models=data.get("models", {}),
            plan=data.get("plan", {}), actual=data.get("actual", {}),
            runtime=data.get("runtime", {}), warnings=data.get("warnings", []),
            recipe=data.get("recipe", {}), latency=data.get("latency", {}),
        )


def latency_of(runs: list[AgentRun]) -> dict[str, Any]:
    """How soon the final answer came, from the agents' runs.

    - ``answer_first_text_s``: the final answer's first text, from the run's start (the
      aggregator's; without one, a vote's: when the last layer ended);
    - ``aggregator_first_text_after_references_s``: the aggregator's first text after
      the last of its references ended (the wait a user sees once every proposer is done);
    - ``references_prefilled_early_tokens``: reference tokens the aggregator evaluated
      before that end (0 when references are given whole, after the layer);
    - ``reference_order``: the agents whose answers the aggregator read, in the order it
      read them (streamed: the order they ended in);
    - ``references_streamed``: whether they streamed in (reference streaming).
    """
    aggregator = next((r for r in runs if r.is_aggregator), None)
    if aggregator is None:  # a vote or the consensus short-cut: the answer exists when
        last = max((r.layer for r in runs), default=0)  # its layer has ended
        ended = [r.end_s for r in runs if r.layer == last]
        return {"answer_first_text_s": max(ended) if ended else None,
                "aggregator_first_text_after_references_s": None,
                "references_prefilled_early_tokens": 0, "reference_order": [],
                "references_streamed": False}
    # the last layer that ran before it (after an early exit, not the one just below)
    read = max((r.layer for r in runs if r.layer < aggregator.layer), default=0)
    references = [r for r in runs if r.layer == read and r.ok]
    after = None
    if references and aggregator.first_text_s is not None:
        after = round(aggregator.first_text_s - max(r.end_s for r in references), 4)
    order = aggregator.reference_order
    return {"answer_first_text_s": aggregator.first_text_s,
            "aggregator_first_text_after_references_s": after,
            "references_prefilled_early_tokens": aggregator.early_prompt_tokens,
            "reference_order": [r.agent for r in references] if order is None else order,
            "references_streamed": order is not None}
