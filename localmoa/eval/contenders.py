"""Contenders: the ways of answering that an eval compares, each at a stated budget.

A contender is a graph to run and a way to read its runs: "final" takes the graph's
answer; "vote" takes the majority of the first layer's extracted answers (consensus.majority); on
code tasks the answers agree when their code behaves alike (coderun/examples.py). Two
contenders on one graph share its runs: the profile's run gives both `moa:P` and
`vote:P`; one Self-MoA run gives both `self-moa:M:N` and `self-consistency:M:N`.

Kinds (``KINDS``; ``--contenders`` picks among them):

- single: each distinct model of the profile alone (the aggregator's settings where it
  is the aggregator's model, else its first proposer's)
- vote: majority vote over the profile's first-layer proposers
- self-consistency: majority vote over N samples of the aggregator's model
- self-moa: the same N samples, aggregated by that model (Self-MoA)
- moa: the profile itself
- consensus: the profile with ``aggregate: auto``: its aggregator is skipped when the
  proposers agree (localmoa/consensus.py), their answer returned
- select:confidence, select:verify: one of the profile's last-layer answers, chosen as
  ``aggregate: select`` would (selection/), read from the profile's own run (so from
  the same samples as its vote and its MoA); ties go to the first listed model (no
  stored eval record is read: it may come from these very tasks); verify runs each
  answer on the prompt's examples (never the task's hidden tests) and needs --execute
- select:judge: the profile with ``aggregate: select`` by judge: its own run, the
  aggregator's model naming the best answer
- staircase: the profile with ``aggregate: staircase``: its own run, the aggregator
  writing in rounds while the proposers write (engine/streaming.py)

A new kind is a function from (config, profile, overrides, samples) to contenders
and one line in KINDS.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from ..bench import single_model_graph
from ..config import Config
from ..consensus import majority
from ..errors import UsageError
from ..metrics import AgentRun, RunReport
from ..profile_spec import SelectSpec
from ..recipe import MoaGraph, Overrides, build_graph
from ..selection import Candidate, Selection
from ..selection.choose import choose
from .checks import Verdict, score, vote_key
from .tasks import Task

if TYPE_CHECKING:
    from .codecheck import CodeJudge


@dataclass(frozen=True)
class Contender:
    """One way of answering. ``graph`` is what runs; contenders whose graphs have the
    same name (``graph.profile``) read the same runs. ``reads``: "final" or "vote"."""

    name: str
    kind: str
    graph: MoaGraph
    reads: str = "final"

    @property
    def run(self) -> str:
        return self.graph.profile

    def agents(self) -> list[Any]:
        """The agents whose calls this contender pays for."""
        if self.reads == "vote":
            return list(self.graph.layers[0])
        if self.reads.startswith("select:"):
            return [a for layer in self.graph.layers for a in layer]
        return self.graph.all_agents()

    def budget(self) -> dict[str, int]:
        """The stated budget: model calls per answer and the most tokens they may write."""
        agents = self.agents()
        return {"calls": len(agents), "max_tokens": sum(a.max_tokens for a in agents)}

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "run": self.run, "reads": self.reads,
                "models": sorted({a.model for a in self.agents()}), **self.budget()}

    def read(self, task: Task, report: RunReport,
             judge: CodeJudge | None = None) -> dict[str, Any]:
        """This contender's answer to ``task`` from one run's ``report``: the raw reply,
        what was extracted, the verdict, tokens and seconds (model loading excluded).
        ``judge`` runs code tasks' tests (``--execute``)."""
        if self.reads == "vote":
            return read_vote(task, report, judge)
        if self.reads.startswith("select:"):
            return read_select(task, report, self.reads.partition(":")[2], judge)
        raw = report.answer if report.ok else ""
        verdict = score(task, raw, judge) if report.ok else Verdict(
            None, False, f"run failed: {report.error}")
        loading = loading_s(report.agents, report.totals.wall_s)
        return {"raw": raw, "extracted": verdict.extracted, "correct": verdict.correct,
                "why": verdict.why, "tokens": report.totals.completion_tokens,
                "seconds": round(max(0.0, report.totals.wall_s - loading), 4),
                "load_s": round(loading, 4), "error": report.error, **_status(task, verdict)}


def _status(task: Task, verdict: Verdict | None) -> dict[str, Any]:
    """A code task's sandbox status ("not run" when its code never ran)."""
    if task.kind != "code":
        return {}
    return {"status": verdict.status if verdict and verdict.status else "not run"}


def _vote_keys(task: Task, layer: list[AgentRun], verdicts: list[Verdict | None],
               judge: CodeJudge | None) -> list[str | None]:
    """What each sample votes with: its extracted answer, or for code its behaviour."""
    if task.kind == "code":
        return [judge.behaviour_key(task, r.answer) if judge and v is not None else None
                for r, v in zip(layer, verdicts, strict=True)]
    return [vote_key(v) if v is not None else None for v in verdicts]


def read_vote(task: Task, report: RunReport, judge: CodeJudge | None = None) -> dict[str, Any]:
    """The majority of the first layer. Its time is when that layer ended (the latest
    end of its agents), less model loading until then."""
    layer = [r for r in report.agents if r.layer == 1 and r.role == "proposer"]
    verdicts = [score(task, r.answer, judge) if r.ok else None for r in layer]
    keys = _vote_keys(task, layer, verdicts, judge)
    found = majority(keys)
    winner = found[0] if found is not None else None
    if winner is None:  # nothing extracted: the earliest sample that answered stands
        winner = next((i for i, v in enumerate(verdicts) if v is not None), None)
    end = max((r.end_s for r in layer), default=0.0)
    loading = loading_s(report.agents, end)
    chosen = verdicts[winner] if winner is not None else None
    samples = [{"agent": r.agent, "ok": r.ok, "raw": r.answer, "error": r.error,
                "extracted": v.extracted if v else None, "correct": bool(v and v.correct)}
               for r, v in zip(layer, verdicts, strict=True)]
    return {"raw": layer[winner].answer if winner is not None else "",
            "extracted": chosen.extracted if chosen else None,
            "correct": bool(chosen and chosen.correct),
            "why": chosen.why if chosen else "every sample failed",
            "tokens": sum(r.completion_tokens for r in layer),
            "seconds": round(max(0.0, end - loading), 4), "load_s": round(loading, 4),
            "error": None if chosen else "every sample failed",
            "votes": sum(k is not None and k == keys[winner] for k in keys)
            if winner is not None else 0,
            "samples": samples, **_status(task, chosen)}


def _selection(by: str, task: Task, candidates: list[Candidate],
               judge: CodeJudge | None) -> Selection:
    """What ``aggregate: select`` by ``by`` chooses in a run (selection/choose.py: the
    same keys, code compared by behaviour when it may run), ties to the first listed
    model; verify without leave to run code falls back to confidence."""
    execute = judge is not None
    spec = SelectSpec(by="verify" if by == "verify" and execute else "confidence",
                      execute=execute,
                      check_timeout_s=judge.limits.timeout_s if judge else 10.0)
    chosen = choose(spec, task.prompt, candidates, stored={})
    if by == "verify" and not execute:
        chosen.selector = "verify"
        chosen.fallback = "code may not run (no --execute): chosen by confidence"
    return chosen


def read_select(task: Task, report: RunReport, by: str,
                judge: CodeJudge | None = None) -> dict[str, Any]:
    """One of the last proposer layer's answers, chosen by ``by`` (confidence, verify).
    Its time is when that layer ended (its every agent, as the run waits for all), less
    model loading, plus what selecting took; its tokens the proposers'."""
    last = max((r.layer for r in report.agents if r.role == "proposer"), default=1)
    layer = [r for r in report.agents if r.layer == last and r.role == "proposer"]
    end = max((r.end_s for r in layer), default=0.0)
    loading = loading_s(report.agents, end)
    tokens = sum(r.completion_tokens for r in report.agents if r.role == "proposer")
    ok = [r for r in layer if r.ok]
    timing = {"tokens": tokens, "load_s": round(loading, 4)}
    if not ok:
        return {"raw": "", "extracted": None, "correct": False, "why": "every sample failed",
                "seconds": round(max(0.0, end - loading), 4), "error": "every sample failed",
                **timing, **_status(task, None)}
    candidates = [Candidate(r.agent, r.model, r.answer) for r in ok]
    chosen = _selection(by, task, candidates, judge)
    verdict = score(task, candidates[chosen.index].answer, judge)
    return {"raw": candidates[chosen.index].answer, "extracted": verdict.extracted,
            "correct": verdict.correct, "why": verdict.why,
            "seconds": round(max(0.0, end - loading) + chosen.seconds, 4), "error": None,
            "selection": chosen.to_dict(candidates), **timing, **_status(task, verdict)}


def loading_s(runs: list[AgentRun], until_s: float) -> float:
    """Seconds of ``[0, until_s]`` spent loading models: the union of the runs' load
    spans (loads that overlap count once)."""
    spans = sorted((r.load_start_s, r.load_start_s + r.load_s) for r in runs
                   if r.load_start_s is not None and r.load_s > 0)
    total, reached = 0.0, 0.0
    for start, end in spans:
        start, end = max(start, reached, 0.0), min(end, until_s)
        if end > start:
            total += end - start
            reached = end
    return total


def single_graph(graph: MoaGraph, model: str) -> MoaGraph:
    """``model`` answering alone, with the settings of the profile's aggregator when it
    is that model, else of the first proposer on it."""
    agents = [graph.aggregator, *(a for layer in graph.layers for a in layer)]
    agent = next(a for a in agents if a.model == model)
    agent = replace(agent, id="AGG", layer=1, index=1)
    alone = single_model_graph(replace(graph, aggregator=agent))
    return replace(alone, profile=f"single:{model}")


def singles(config: Config, profile: str, base: Overrides, samples: int) -> list[Contender]:
    graph = build_graph(config, profile, base)
    return [Contender(f"single:{m}", "single", single_graph(graph, m)) for m in graph.models]


def vote(config: Config, profile: str, base: Overrides, samples: int) -> list[Contender]:
    graph = build_graph(config, profile, base)
    if len(graph.layers[0]) < 2:
        return []  # one proposer: nothing to vote on
    return [Contender(f"vote:{graph.profile}", "vote", graph, "vote")]


def _self_moa_graph(config: Config, profile: str, base: Overrides, samples: int) -> MoaGraph:
    model = build_graph(config, profile, base).aggregator.model
    return build_graph(config, None, replace(base, self_moa=(model, samples)))


def self_consistency(config: Config, profile: str, base: Overrides,
                     samples: int) -> list[Contender]:
    graph = _self_moa_graph(config, profile, base, samples)
    model = graph.aggregator.model
    return [Contender(f"self-consistency:{model}:{samples}", "self-consistency", graph,
                      "vote")]


def self_moa(config: Config, profile: str, base: Overrides, samples: int) -> list[Contender]:
    graph = _self_moa_graph(config, profile, base, samples)
    return [Contender(f"self-moa:{graph.aggregator.model}:{samples}", "self-moa", graph)]


def moa(config: Config, profile: str, base: Overrides, samples: int) -> list[Contender]:
    graph = build_graph(config, profile, base)
    return [Contender(f"moa:{graph.profile}", "moa", graph)]


def selects(by: str) -> Callable[[Config, str, Overrides, int], list[Contender]]:
    """The ``select:BY`` kind: a reader of the profile's run (confidence, verify), or
    the profile's graph with ``aggregate: select`` by judge."""

    def make(config: Config, profile: str, base: Overrides, samples: int) -> list[Contender]:
        graph = build_graph(config, profile, base)
        if by != "judge":
            return [
                Contender(f"select:{by}:{graph.profile}", f"select:{by}", graph, f"select:{by}")
            ]
        judged = build_graph(config, profile, replace(base, select="judge"))
        name = f"select:judge:{graph.profile}"
        return [Contender(name, "select:judge", replace(judged, profile=name))]

    return make


def consensus(config: Config, profile: str, base: Overrides, samples: int) -> list[Contender]:
    graph = build_graph(config, profile, replace(base, aggregate="auto"))
    return [Contender(f"consensus:{graph.profile}", "consensus",
                      replace(graph, profile=f"consensus:{graph.profile}"))]


def staircase(config: Config, profile: str, base: Overrides, samples: int) -> list[Contender]:
    graph = build_graph(config, profile, replace(base, aggregate="staircase"))
    return [Contender(f"staircase:{graph.profile}", "staircase",
                      replace(graph, profile=f"staircase:{graph.profile}"))]


@dataclass(frozen=True)
class Kind:
    name: str
    help: str
    make: Callable[[Config, str, Overrides, int], list[Contender]]


KINDS: tuple[Kind, ...] = (
    Kind("single", "each model of the profile alone", singles),
    Kind("vote", "majority vote over the profile's first-layer proposers", vote),
    Kind("self-consistency", "majority vote over N samples of the aggregator's model",
         self_consistency),
    Kind("self-moa", "N samples of the aggregator's model, aggregated by it", self_moa),
    Kind("moa", "the profile itself", moa),
    Kind("consensus", "the profile, its aggregator skipped when the proposers agree", consensus),
    Kind("staircase", "the profile, its aggregator writing while the proposers write",
         staircase),
    Kind(
        "select:confidence",
        "the answer of the profile's most self-consistent model (read from the profile's run)",
        selects("confidence"),
    ),
    Kind(
        "select:judge", "the profile's aggregator names the best proposer answer", selects("judge")
    ),
    Kind(
        "select:verify",
        "the answer that passes the prompt's examples (code, "
        "--execute; read from the profile's run)",
        selects("verify"),
    ),
)


def parse_kinds(value: str | None) -> tuple[str, ...]:
    """``--contenders single,moa`` -> the kinds, in KINDS order; all when None."""
    known = [k.name for k in KINDS]
    if value is None:
        return tuple(known)
    asked = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [v for v in asked if v not in known]
    if unknown or not asked:
        raise UsageError(f"--contenders {value}: "
                         + (f"no kind {unknown[0]!r}; " if unknown else "name at least one; ")
                         + f"give a comma-separated list of {', '.join(known)}")
    return tuple(k for k in known if k in asked)


def build_contenders(config: Config, profiles: list[str], kinds: tuple[str, ...],
                     samples: int, base: Overrides) -> list[Contender]:
    """Every contender of every profile, in KINDS order per profile; one of each name (a
    model's single comes from the first profile that has it). UsageError when none
    applies."""
    out: dict[str, Contender] = {}
    for profile in profiles:
        for kind in KINDS:
            if kind.name in kinds:
                for contender in kind.make(config, profile, base, samples):
                    out.setdefault(contender.name, contender)
    if not out:
        raise UsageError(f"--contenders {','.join(kinds)}: none applies to "
                         f"{', '.join(profiles)} (vote needs two proposers or more)")
    return list(out.values())
