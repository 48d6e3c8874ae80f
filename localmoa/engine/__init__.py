"""Executes a Plan: for each wave, load, run its agents at once, unload.

The engine decides nothing about memory or order: the Plan says which instance
of which model serves each agent, with how many threads, and when instances are
loaded and freed. Between layers it passes the references on; the aggregator's
text is streamed through the events. The one departure it handles is an agent
that timed out and did not stop: its instance is held (freed when the agent
returns), a later wave gets a fresh one when the budget allows, and the report
says so.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..backends.base import Message
from ..config import Config
from ..errors import AggregatorFailedError, LayerFailedError, RunInterrupted, Terminated
from ..host import ModelHost
from ..memory.planner import Plan
from ..memory.probe import MemorySampler
from ..metrics import AgentRun, RunReport
from ..preflight import Preflight, preflight
from ..recipe import MoaGraph
from .loading import clear_dead, load_wave, prestart_next
from .state import Execution, RunEvents
from .waves import run_wave

__all__ = ["ModelHost", "RunEvents", "execute_plan", "run_moa"]


def run_moa(config: Config, graph: MoaGraph, conversation: Sequence[Message], *,
            memory_budget: str | None = None, prepared: Preflight | None = None,
            events: RunEvents | None = None) -> RunReport:
    """Plan ``graph`` for this machine (unless ``prepared`` is given) and run it."""
    prepared = prepared or preflight(config, graph, memory_budget)
    return execute_plan(config, graph, conversation, prepared.plan, prepared.paths,
                        events=events, runtime=prepared.runtime)


def execute_plan(config: Config, graph: MoaGraph, conversation: Sequence[Message], plan: Plan,
                 paths: dict[str, Path], *, events: RunEvents | None = None,
                 host: ModelHost | None = None,
                 runtime: dict[str, Any] | None = None,
                 cancel: threading.Event | None = None) -> RunReport:
    """Run ``graph`` on ``conversation`` exactly as ``plan`` says and return the report.

    With a ``host`` (a chat), models already loaded are used and whatever the
    plan keeps stays loaded; without one, every model is freed at the end.
    ``runtime`` (e.g. the cpu_repack choice) goes into the report as it is. ``cancel``,
    set from another thread, stops the run as Ctrl-C does (RunInterrupted).
    Raises LayerFailedError when a whole layer produced nothing and
    AggregatorFailedError when the aggregator failed; both carry ``report``
    with everything produced so far.
    """
    own_host = host is None
    host = host or ModelHost(config)
    host.paths.update(paths)
    ex = Execution(host=host, plan=plan, conversation=conversation,
                    events=events or RunEvents(), held_before=list(host.held), cancel=cancel)
    host.load_errors.clear()  # a chat's earlier turns' failures are not this run's
    start_loads, start_unloads, start_load_s = host.loads, host.unloads, host.load_s
    agents = {a.id: a for a in graph.all_agents()}
    runs: dict[str, AgentRun] = {}
    prompt = conversation[-1]["content"] if conversation else ""
    layers = [*graph.layers, [graph.aggregator]]
    ex.log("run_start", profile=graph.profile, waves=len(plan.waves))

    with MemorySampler(host.worker_pids) as memory:

        def report(answer: str = "", error: str | None = None) -> RunReport:
            memory.sample()
            ordered = [runs[a.id] for layer in layers for a in layer if a.id in runs]
            ex.log("run_end", ok=error is None, error=error)
            return RunReport.build(
                profile=graph.profile, prompt=prompt, answer=answer, runs=ordered,
                wall_s=ex.now(), cores=plan.cores,
                models=_model_facts(config, graph, host.runtime),
                error=error, plan=_plan_summary(plan),
                actual={"loads": host.loads - start_loads,
                        "unloads": host.unloads - start_unloads,
                        "load_s": round(host.load_s - start_load_s, 4),
                        "peak_rss_growth_bytes": memory.peak_rss,
                        "peak_pss_growth_bytes": memory.peak_pss,
                        "abandoned_agents": len(ex.abandoned_ids),
                        "held_bytes": host.held_bytes(),
                        "workers": memory.worker_peaks(),
                        "crashed_workers": list(ex.crashes)},
                runtime=dict(runtime or {}), warnings=list(ex.warnings))

        try:
            for inst in plan.unloads_first:
                host.unload(inst)
            references: list[str] | None = None
            for number, layer in enumerate(layers, start=1):
                for wave in plan.waves_of_layer(number):
                    load_wave(ex, wave, agents)
                    prestart_next(ex, wave)
                    memory.sample()
                    run_wave(ex, wave, agents, references, runs)
                    memory.sample()  # the wave's peak: its contexts are filled now
                    clear_dead(ex)
                    for inst in wave.unloads:
                        host.unload(inst)
                layer_runs = [runs[a.id] for a in layer]
                if number == len(layers):
                    final = layer_runs[0]
                    if not final.ok:
                        message = f"the aggregator ({final.model}) failed: {final.error}"
                        raise AggregatorFailedError(message, report(error=message))
                    return report(answer=final.answer)
                ex.log("layer_done", layer=number)
                ex.emit("on_layer_done", number, layer_runs)
                answers = [r.answer for r in layer_runs if r.ok]
                if not answers:
                    reasons = "; ".join(f"{r.agent}: {r.error}" for r in layer_runs)
                    message = f"every agent of layer {number} failed ({reasons})"
                    raise LayerFailedError(message, report(error=message))
                references = answers
            raise AssertionError("unreachable: the plan has no aggregator layer")
        except KeyboardInterrupt as exc:
            ex.control.stop.set()
            code = 143 if isinstance(exc, Terminated) else 130
            what = "terminated (SIGTERM)" if code == 143 else "interrupted"
            ex.log("interrupted", signal="SIGTERM" if code == 143 else "SIGINT")
            raise RunInterrupted(what, report(error=what), exit_code=code) from None
        finally:
            ex.log.close()
            if own_host:
                host.close()


def _plan_summary(plan: Plan) -> dict[str, Any]:
    return {"waves": len(plan.waves), "loads": plan.loads, "unloads": plan.unloads,
            "predicted_peak_bytes": plan.peak_bytes, "budget_bytes": plan.budgets,
            "batches": [{"wave": w.index, "layer": w.layer, "model": m, "size": n}
                        for w in plan.waves for m, n in w.batches.items()]}


def _model_facts(config: Config, graph: MoaGraph,
                 runtime: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    facts: dict[str, dict[str, Any]] = {}
    for name in graph.models:
        spec = config.models[name]
        facts[name] = {"backend": spec.backend, "source": spec.where(), "n_ctx": spec.n_ctx,
                       **spec.report_facts(), **runtime.get(name, {})}
    return facts
