"""The runtime: the one way to run a graph.

As Ollama's Scheduler (server/sched.go), llama.cpp server's main loop and vLLM's
EngineCore each own a run, one ``Runtime`` owns a run here from request to report:

- the model host (``ModelHost``: the loaded instances, loads and unloads);
- one machine probe, taken once, before anything loads;
- the preflight of each graph it meets (cached) and the warm plans made from them:
  planned from what is loaded now, beside other graphs' models when they fit, else
  after unloading those (the memory other graphs' models hold is counted here);
- routing: a routing profile's router runs first, on the same host, then the MoA over
  the specialists it chose;
- executing one request, or several merged into one run (the engine), each with its
  own conversation, events, Cancel and report; and which models were used when
  (serve's keep-alive).

The front ends (run, chat, serve, eval, bench) build a ``Request`` and call ``run`` (or
``prepare`` then ``run``, to show the graph before it runs; or ``run_jobs`` for several
requests); ``localmoa plan`` calls ``preflight`` alone::

    Request ─► prepare: route, build (merge) the graph, preflight (refuses before any
               load), plan ─► execute: the engine runs the plan ─► RunReport per request
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from . import preflight as preflights
from . import routing
from .backends import get_backend
from .backends.base import Message
from .cancel import Cancel
from .config import Config
from .engine import RunEvents, execute_jobs
from .errors import InsufficientMemoryError, LocalMoaError
from .host import ModelHost
from .memory import planner
from .memory.estimate import Footprint
from .memory.overlap import streamed_plan
from .memory.probe import Resources, probe
from .metrics import AgentRun, RunReport
from .preflight import Preflight
from .prompts import latest_query
from .recipe import Agent, MoaGraph, Overrides, build_graph, merge_graphs
from .routing import Decision

#: One request's outcome: its report, or the error it ended with (carrying its report).
Outcome = RunReport | LocalMoaError


@dataclass
class Request:
    """One run a front end asks for: a graph (or a routing profile and how to build the
    graph of the specialists its router chooses), a conversation, events, a Cancel."""

    conversation: Sequence[Message]
    graph: MoaGraph | None = None
    #: A routing profile's name: its router runs first, then ``build(chosen)``.
    route: str | None = None
    #: The graph of the chosen specialists (None: all of them).
    build: Callable[[list[str] | None], MoaGraph] | None = None
    events: RunEvents | None = None
    #: Set from any thread (a client gone, the drain) to stop this request's agents.
    cancel: Cancel = field(default_factory=Cancel)

    @classmethod
    def for_profile(cls, config: Config, profile: str | None, overrides: Overrides | None,
                    conversation: Sequence[Message],
                    events: RunEvents | None = None) -> Request:
        """A profile's run: routed when the profile has a router (unless ``--self``
        replaced its agents), else its graph built now (errors before anything runs)."""
        overrides = overrides or Overrides()
        if overrides.self_moa is None and routing.routes(config, profile):
            def build(chosen: list[str] | None) -> MoaGraph:
                return build_graph(config, profile, overrides, chosen=chosen)

            return cls(conversation, route=config.profile(profile)[0], build=build,
                       events=events)
        return cls(conversation, build_graph(config, profile, overrides), events=events)

    def graph_for(self, decision: Decision | None) -> MoaGraph:
        """The graph to run, once the router (if any) has decided."""
        if self.graph is not None:
            return self.graph
        assert self.build is not None, "a Request needs a graph or a build"
        return self.build(decision.chosen if decision is not None else None)


@dataclass
class PreparedRun:
    """Requests ready to execute: their graph (routed, merged), its preflight and plan,
    and what the router decided."""

    requests: list[Request]
    graph: MoaGraph
    preflight: Preflight
    plan: planner.Plan
    decision: Decision | None = None


@dataclass
class Hooks:
    """How a runtime shows what it does besides running agents (the CLI's spinners and
    notices); each optional."""

    #: A one-line notice (e.g. repacking turned off), once per runtime.
    notice: Callable[[str], None] | None = None
    #: Around something slow done once: the machine check (what is being done).
    status: Callable[[str], AbstractContextManager[Any]] | None = None
    #: Around a routing profile's router (the profile's name), and what it decided.
    routing: Callable[[str], AbstractContextManager[Any]] | None = None
    routed: Callable[[Decision], None] | None = None


class Runtime:
    """Runs graphs on one model host. ``keep_loaded``: models stay loaded between runs
    (chat, serve, eval; so does a ``host`` given by the caller, who closes it); else
    each run frees them at its end (run, bench). ``widest``: each model's widest batch
    over every graph it may run, times ``merged_requests`` (serve): an instance one run
    leaves loaded may serve another, so every preflight knows footprints that wide.
    ``check_machine``: run the backends' one-time machine checks (the repack canary)
    before a preflight needs them. ``start_early``: start a graph's first worker before
    its preflight (a one-shot command: Python and llama.cpp start while headers are read).
    """

    def __init__(self, config: Config, memory_budget: str | None = None, *,
                 host: ModelHost | None = None, keep_loaded: bool = False,
                 widest: Mapping[str, int] | None = None, merged_requests: int = 1,
                 hooks: Hooks | None = None, check_machine: bool = False,
                 start_early: bool = False) -> None:
        self.config = config
        self.memory_budget = memory_budget
        self.keep_loaded = keep_loaded or host is not None
        self.widest = dict(widest or {})
        self.merged_requests = merged_requests
        self.hooks = hooks or Hooks()
        self.check_machine = check_machine
        self.start_early = start_early
        self._host = host
        self._own_host = host is None
        self._resources: Resources | None = None
        self.preflights: dict[tuple[Any, ...], Preflight] = {}
        #: model -> when a run last used it (monotonic): serve's keep-alive.
        self.last_used: dict[str, float] = {}
        self._checked: set[str] = set()
        self._noticed: set[str] = set()

    @property
    def host(self) -> ModelHost:
        """The model host (made on first use)."""
        if self._host is None:
            self._host = ModelHost(self.config)
        return self._host

    @property
    def resources(self) -> Resources:
        """The machine, probed once, before anything loads: what models hold later is
        counted by the plans (resident, held, other graphs'), never twice."""
        if self._resources is None:
            self._resources = probe(self.memory_budget)
        return self._resources

    # --- before anything loads -------------------------------------------------------

    def preflight(self, graph: MoaGraph) -> Preflight:
        """``graph``'s footprints, budgets and plan on this machine; refuses (raises)
        before anything loads if it cannot fit. Cached per graph shape."""
        room = self._room(graph)
        key = (graph.profile, tuple((a.id, a.model) for a in graph.all_agents()),
               graph.aggregate, graph.early_exit, tuple(sorted(room.items())))
        if key not in self.preflights:
            self._check_machine(graph.models)
            pre = preflights.preflight(self.config, graph, self.memory_budget,
                                       resources=self.resources, batch_up_to=room)
            self.preflights[key] = pre
            for notice in pre.notices:
                if notice not in self._noticed and self.hooks.notice is not None:
                    self._noticed.add(notice)
                    self.hooks.notice(notice)
        return dataclasses.replace(self.preflights[key], graph=graph)

    def _room(self, graph: MoaGraph) -> dict[str, int]:
        """The batches of each of ``graph``'s models its footprints must know beyond its
        own: the widest of any graph (times the requests merged), and the room of the
        instances loaded now."""
        resident = self.host.resident_seqs() if self._host is not None else {}
        own = graph.batch_room()
        room = {m: max(self.widest.get(m, 1) * self.merged_requests, resident.get(m, 1))
                for m in graph.models}
        return {m: n for m, n in room.items() if n > own.get(m, 1)}

    def _check_machine(self, models: list[str]) -> None:
        """The backends' one-time machine checks for ``models`` (see preflight.py)."""
        fresh = [m for m in models if m not in self._checked]
        if self.check_machine and fresh:
            preflights.check_machine(self.config, fresh, self.hooks.status)
            self._checked.update(fresh)

    # --- planning --------------------------------------------------------------------

    def plan(self, pre: Preflight, graph: MoaGraph | None = None,
             warm: bool | None = None) -> planner.Plan:
        """The plan a run of ``graph`` follows now. Warm (a runtime that keeps models, or
        one with models loaded: a router that ran): from what is loaded, keeping its
        models at the end, within the budget less what abandoned agents and other
        graphs' models hold; when it does not fit beside them, they are unloaded first.
        Else the preflight's own plan, which frees everything at its end."""
        graph = graph or pre.graph
        host = self.host
        if warm is None:
            warm = self.keep_loaded or bool(host.loaded) or bool(host.held)
        if not warm:
            return pre.plan
        try:
            return self._warm_plan(graph, pre, self._others_bytes(pre.footprints))
        except InsufficientMemoryError:
            self.make_room(pre.footprints)
            return self._warm_plan(graph, pre, {})

    def _warm_plan(self, graph: MoaGraph, pre: Preflight,
                   taken: Mapping[str, int]) -> planner.Plan:
        """The plan of ``graph`` starting from what the host holds (a chat's previous turn,
        a server's previous request), keeping its models loaded at the end. Held instances
        (an agent that never returned) and ``taken`` (bytes per pool others hold) are not
        this plan's to use."""
        host = self.host
        host.compact()
        resident = {m: n for m, n in host.resident().items() if m in pre.footprints}
        held = host.held_bytes()
        budgets = {pool: budget - held.get(pool, 0) - taken.get(pool, 0)
                   for pool, budget in pre.budgets.items()}
        seqs = {m: n for m, n in host.resident_seqs().items() if m in resident}
        return streamed_plan(graph, pre.footprints, budgets, pre.resources.usable_cores,
                            resident=resident, resident_seqs=seqs, keep=True)

    def _others_bytes(self, used: Mapping[str, Footprint]) -> dict[str, int]:
        """Bytes per pool that loaded models not in ``used`` hold (other graphs' models,
        whose footprints an earlier preflight has): not a plan of ``used`` to spend."""
        out: dict[str, int] = {}
        known = [pre.footprints for pre in self.preflights.values()]
        seqs = self.host.resident_seqs()
        for model, count in self.host.resident().items():
            found = [fps[model] for fps in known if model in fps]
            if model in used or not found:
                continue
            n = seqs.get(model, 1)
            fp = next((f for f in found if n in f.batched_pools), found[0])
            for pool, amount in fp.cost(count, n if n in fp.batched_pools else 1).items():
                out[pool] = out.get(pool, 0) + amount
        return out

    def make_room(self, keep: Iterable[str]) -> None:
        """Unload every instance of a model not in ``keep``."""
        kept = set(keep)
        for inst in [i for i in self.host.loaded if i.model not in kept]:
            self.host.unload(inst)

    # --- running ---------------------------------------------------------------------

    def route(self, profile: str | None, conversation: Sequence[Message],
              cancel: Cancel | None = None) -> Decision:
        """Run ``profile``'s router on the conversation's latest user message, on this
        host (its model stays loaded: the MoA after it reuses it, or plans beside it);
        ``cancel`` stops a choosing router (RunInterrupted)."""
        prof, graph = routing.router_graph(self.config, profile)
        assert prof.router is not None
        query = latest_query(conversation)
        pre = self.preflight(graph)  # its machine check shows its own spinner, first
        self.last_used[prof.router.model] = time.monotonic()
        with self._hook(self.hooks.routing, self.config.profile(profile)[0]):
            the_plan = self.plan(pre, warm=True)
            if prof.router.kind == "embed":
                self.host.paths.update(pre.paths)
                decision = routing.embedded(prof, query, self.host, the_plan)
            else:
                [outcome] = execute_jobs(
                    self.config, graph, [[Message(role="user", content=query)]], the_plan,
                    pre.paths, host=self.host, runtime=pre.runtime, cancels=[cancel])
                if isinstance(outcome, LocalMoaError):
                    raise outcome
                decision = routing.chosen(prof, outcome)
        decision.footprint = pre.footprints[prof.router.model]
        if self.hooks.routed is not None:
            self.hooks.routed(decision)
        return decision

    def prepare(self, *requests: Request) -> PreparedRun:
        """Everything before the engine: route (a lone request of a routing profile),
        build and merge the graphs, preflight (refuses before anything loads) and plan."""
        decision = None
        first = requests[0]
        if len(requests) == 1 and first.route is not None:
            decision = self.route(first.route, first.conversation, first.cancel)
        graphs = [r.graph_for(decision) for r in requests]
        graph = graphs[0] if len(graphs) == 1 else merge_graphs(graphs)
        if self.start_early and decision is None and graph.layers:
            first_model = self.config.models[graph.layers[0][0].model]
            get_backend(first_model.backend).prestart([first_model])
        pre = self.preflight(graph)
        self._used(graph.models)
        return PreparedRun(list(requests), graph, pre, self.plan(pre, graph), decision)

    def execute(self, prepared: PreparedRun,
                events: RunEvents | None = None) -> list[Outcome]:
        """Run a prepared run (the engine) and return each request's outcome; the router's
        decision goes into each report's ``recipe.routing``."""
        requests = prepared.requests
        if events is None:
            events = requests[0].events if len(requests) == 1 else _dispatch(requests)
        try:
            outcomes = execute_jobs(self.config, prepared.graph,
                                    [r.conversation for r in requests], prepared.plan,
                                    prepared.preflight.paths, events=events, host=self.host,
                                    runtime=prepared.preflight.runtime,
                                    cancels=[r.cancel for r in requests])
        finally:
            if not self.keep_loaded:  # a one-shot run frees its models at its end
                self.free()
        self._used(prepared.graph.models)
        if prepared.decision is not None:
            for outcome in outcomes:
                report = outcome if isinstance(outcome, RunReport) else getattr(
                    outcome, "report", None)
                if isinstance(report, RunReport):
                    report.recipe["routing"] = prepared.decision.to_dict()
        return outcomes

    def run(self, what: Request | PreparedRun, events: RunEvents | None = None) -> RunReport:
        """Run one request (or a prepared one) and return its report; raises its error
        (LayerFailedError, RunInterrupted ... carrying the partial report)."""
        prepared = what if isinstance(what, PreparedRun) else self.prepare(what)
        [outcome] = self.execute(prepared, events)
        if isinstance(outcome, LocalMoaError):
            raise outcome
        return outcome

    def run_jobs(self, requests: Sequence[Request]) -> list[Outcome]:
        """Run several requests merged into one run (agents of one model decode as one
        batch; each request keeps its own references, events, Cancel and report); when
        merged they do not fit in memory, one after another. Errors are outcomes."""
        try:
            return self.execute(self.prepare(*requests))
        except InsufficientMemoryError as exc:
            if len(requests) == 1:
                return [exc]
            return [outcome for r in requests for outcome in self.run_jobs([r])]
        except LocalMoaError as exc:
            return [exc] * len(requests)

    # --- between runs ----------------------------------------------------------------

    def _used(self, models: Iterable[str]) -> None:
        now = time.monotonic()
        for model in models:
            self.last_used[model] = now

    def expire(self, keep_alive_s: float) -> None:
        """Unload the models no run used for ``keep_alive_s`` (Ollama's keep_alive)."""
        now = time.monotonic()
        for inst in list(self.host.loaded):
            if now - self.last_used.get(inst.model, 0.0) >= keep_alive_s:
                self.host.unload(inst)

    def loaded(self, keep_alive_s: float) -> list[dict[str, Any]]:
        """The models loaded now, with when they expire (``/api/ps``)."""
        now = time.monotonic()
        out = []
        for inst in sorted(self.host.loaded):
            used = self.last_used.get(inst.model, now)
            out.append({"model": inst.model, "instance": str(inst),
                        "expires_in_s": max(0.0, keep_alive_s - (now - used))})
        return out

    def free(self) -> None:
        """Free every model (held ones when their agents return); the runtime stays
        usable. A one-shot runtime's next run starts on a fresh host."""
        if self._host is None:
            return
        self._host.close()
        if self._own_host and not self.keep_loaded:
            self._host = None

    def close(self) -> None:
        """Free every model, unless the host is the caller's."""
        if self._own_host:
            self.free()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _hook(hook: Callable[[str], AbstractContextManager[Any]] | None,
              what: str) -> AbstractContextManager[Any]:
        return hook(what) if hook is not None else contextlib.nullcontext()


def _dispatch(requests: Sequence[Request]) -> RunEvents:
    """Events of a merged run, each to its own request's events, with the agents and
    runs as that request's own graph names them (``L1.1``, not ``2/L1.1``)."""
    def own(agent: Agent) -> Agent:
        return dataclasses.replace(agent, id=agent.local_id, job=0)

    def forward(name: str, agent: Agent, *rest: Any) -> None:
        events = requests[agent.job].events
        callback = getattr(events, name) if events is not None else None
        if callback is not None:
            args = [dataclasses.replace(r, agent=agent.local_id)
                    if isinstance(r, AgentRun) else r for r in rest]
            callback(own(agent), *args)

    def layer_done(number: int, runs: list[AgentRun]) -> None:
        job = int(runs[0].agent.partition("/")[0]) if "/" in runs[0].agent else 0
        events = requests[job].events
        if events is not None and events.on_layer_done is not None:
            events.on_layer_done(number, [dataclasses.replace(r, agent=r.agent.rpartition(
                "/")[2]) for r in runs])

    return RunEvents(
        on_agent_loading=lambda a: forward("on_agent_loading", a),
        on_agent_start=lambda a: forward("on_agent_start", a),
        on_text=lambda a, piece: forward("on_text", a, piece),
        on_agent_done=lambda a, run: forward("on_agent_done", a, run),
        on_layer_done=layer_done)


# --- one run, on a runtime of its own (the library's entry points) -----------------


def run_moa(config: Config, graph: MoaGraph, conversation: Sequence[Message], *,
            memory_budget: str | None = None, events: RunEvents | None = None) -> RunReport:
    """Plan ``graph`` for this machine and run it; every model is freed at the end."""
    with Runtime(config, memory_budget) as runtime:
        return runtime.run(Request(conversation, graph, events=events))


def run_routed(config: Config, profile: str | None, conversation: Sequence[Message], *,
               overrides: Overrides | None = None, memory_budget: str | None = None,
               events: RunEvents | None = None, host: ModelHost | None = None) -> RunReport:
    """Route, then run the MoA over the chosen specialists (on ``host`` when given: its
    models stay loaded); the report's ``recipe.routing`` says what was chosen, why, and
    what it cost."""
    with Runtime(config, memory_budget, host=host) as runtime:
        return runtime.run(Request.for_profile(config, profile, overrides, conversation,
                                               events))


def route(config: Config, profile: str | None, conversation: Sequence[Message],
          host: ModelHost, *, memory_budget: str | None = None,
          cancel: Cancel | None = None) -> Decision:
    """Run ``profile``'s router once on ``host`` (see ``Runtime.route``)."""
    return Runtime(config, memory_budget, host=host).route(profile, conversation, cancel)
