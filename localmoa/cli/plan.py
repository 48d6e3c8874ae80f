"""`localmoa plan`: the memory plan of a profile, without loading any weights."""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.table import Table

from ..memory.planner import Plan, Wave
from ..memory.probe import Resources, format_bytes
from ..preflight import Preflight
from ..recipe import Overrides, build_graph, parse_self
from ._options import (
    AggregatorOpt,
    ConfigOpt,
    JsonOpt,
    LayersOpt,
    MemoryBudgetOpt,
    NoBatchOpt,
    ProfileOpt,
    ProposerOpt,
    SelfOpt,
    StaircaseChunkOpt,
    StaircaseOpt,
    StreamRefsOpt,
)
from ._output import Output
from ._prepare import command_runtime, load_command_config

EPILOG = """\
Examples:

\b
  localmoa plan                               # the tiny profile on this machine

\b
  localmoa plan --memory-budget 300MiB        # what happens when only one model fits

\b
  localmoa plan --profile workstation --json  # needs the profile's GGUFs on disk

\b
  localmoa plan --self smollm2-135m:6         # Self-MoA: 6 samples of one model
"""


def plan(
    profile: ProfileOpt = None,
    config: ConfigOpt = None,
    memory_budget: MemoryBudgetOpt = None,
    layers: LayersOpt = None,
    proposer: ProposerOpt = None,
    aggregator: AggregatorOpt = None,
    self_moa: SelfOpt = None,
    no_batch: NoBatchOpt = False,
    stream_references: StreamRefsOpt = None,
    staircase: StaircaseOpt = False,
    staircase_chunk: StaircaseChunkOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Show how a profile would run here: model footprints and the wave plan.

    Reads only the GGUF headers (no weights are loaded). Each model's footprint
    is its weights, KV cache at its n_ctx, compute scratch and overhead; a second
    instance of a model shares the mapped weights. The plan runs a layer's agents
    together when their models fit in the budget, else one after another with
    models swapped (the one needed farthest in the future is evicted first).
    """
    cfg = load_command_config(config, no_batch)
    overrides = Overrides(layers=layers, proposers=tuple(proposer or ()),
                          aggregator=aggregator, self_moa=parse_self(self_moa, cfg),
                          stream_references=stream_references,
                          aggregate="staircase" if staircase or staircase_chunk else None,
                          staircase_chunk=staircase_chunk)
    router = cfg.profile(profile)[1].router if overrides.self_moa is None else None
    out = Output(json_mode=json_out)
    chosen = None
    if router is not None:  # the router runs first; then its choice: shown, all of them
        chosen = list(cfg.profile(profile)[1].specialists)
        out.note(f"routing profile: the router ({router.model}, kind {router.kind}) runs "
                 f"first, planned alone and kept loaded when it fits; below, the plan with "
                 f"every specialist chosen ({', '.join(chosen)})")
    graph = build_graph(cfg, profile, overrides, chosen)
    if graph.select is not None:
        out.note(f"aggregate: select by {graph.select.by}: "
                 + ("the aggregator's model only names the best answer (a few tokens)"
                    if graph.select.by == "judge" else "the aggregator's wave below does "
                    "not run; the answer is chosen when the proposers end"))
    pre = command_runtime(out, cfg, memory_budget).preflight(graph)  # nothing loads
    if json_out:
        out.document(plan_document(pre))
        return
    out.show(resources_line(pre.resources))
    out.show(footprint_table(pre))
    out.show(wave_table(pre.plan))
    out.show(summary_line(pre.plan))
    streaming = streaming_line(pre.plan)
    if streaming:
        out.show(streaming)


def streaming_line(plan: Plan) -> str:
    """Whether the aggregator reads each reference as its proposer ends, and if not why."""
    streaming = plan.streaming
    if not streaming:
        return ""
    state = "on" if streaming.get("on") else "off"
    return f"[bold]reference streaming[/] {state}: {escape(streaming.get('why', ''))}"


def plan_document(pre: Preflight) -> dict[str, Any]:
    r = pre.resources
    return {
        "profile": pre.graph.profile,
        "resources": {"pools_bytes": r.pools, "ram_available_bytes": r.ram_available_bytes,
                      "ram_total_bytes": r.ram_total_bytes,
                      "cgroup_limit_bytes": r.cgroup_limit_bytes,
                      "budget_source": r.budget_source, "physical_cores": r.physical_cores,
                      "logical_cores": r.logical_cores, "usable_cores": r.usable_cores,
                      "gpus": [g.__dict__ for g in r.gpus], "unified_memory": r.unified_memory},
        "footprints": {name: {"weights_bytes": fp.weights_bytes, "kv_bytes": fp.kv_bytes,
                              "compute_bytes": fp.compute_bytes,
                              "overhead_bytes": fp.overhead_bytes,
                              "total_bytes": fp.total_bytes,
                              "extra_instance_bytes": fp.extra_instance_bytes,
                              "pools_bytes": fp.pools, "n_ctx": fp.n_ctx,
                              "kv_type": fp.kv_type,
                              "quant": pre.facts[name].quant if name in pre.facts else None,
                              "parameters": pre.facts[name].parameters
                              if name in pre.facts else None,
                              "path": str(pre.paths[name]) if name in pre.paths else None,
                              "backend": pre.backends.get(name), "external": fp.external,
                              "parallel_limit": fp.parallel_limit or None}
                       for name, fp in pre.footprints.items()},
        "plan": pre.plan.to_dict(),
    }


def resources_line(r: Resources) -> str:
    budget = r.pools.get("ram", 0)
    source = {"available": "90% of available RAM"}.get(r.budget_source, r.budget_source)
    gpus = ", ".join(f"GPU{g.index} {escape(g.name)} {format_bytes(g.free_bytes)} free"
                     for g in r.gpus) or ("unified memory" if r.unified_memory else "no GPU")
    return (f"[bold]machine[/] RAM budget {format_bytes(budget)} ({source}; "
            f"{format_bytes(r.ram_available_bytes)} available of "
            f"{format_bytes(r.ram_total_bytes)}), {r.usable_cores} cores, {gpus}")


def footprint_table(pre: Preflight) -> Table:
    table = Table(title="footprints (one instance)", title_justify="left", header_style="bold")
    for col in ("model", "quant", "params", "n_ctx", "kv", "weights", "KV cache", "compute",
                "overhead", "total", "+instance"):
        table.add_column(col, justify="left" if col in ("model", "quant", "kv") else "right")
    for name, fp in pre.footprints.items():
        facts = pre.facts.get(name)
        if fp.external:
            pools = ", ".join(fp.pools)
            limit = f", {fp.parallel_limit} at once" if fp.parallel_limit else ""
            table.add_row(escape(name), "-", "-", str(fp.n_ctx), "-",
                          escape(f"external ({pools}{limit}): not budgeted here"),
                          *[""] * 5)
            continue
        table.add_row(escape(name), facts.quant if facts else "-",
                      f"{facts.parameters / 1e6:.0f}M" if facts else "-",
                      str(fp.n_ctx), fp.kv_type, format_bytes(fp.weights_bytes),
                      format_bytes(fp.kv_bytes), format_bytes(fp.compute_bytes),
                      format_bytes(fp.overhead_bytes), format_bytes(fp.total_bytes),
                      format_bytes(fp.extra_instance_bytes))
    table.caption = "+instance: what one more concurrent instance adds (mapped weights shared)"
    table.caption_justify = "left"
    return table


def wave_table(the_plan: Plan) -> Table:
    table = Table(title="plan", title_justify="left", header_style="bold")
    for col in ("wave", "layer", "agents (instance, threads)", "load before", "unload after",
                "resident"):
        table.add_column(col, justify="right" if col in ("wave", "layer", "resident")
                         else "left")
    budget = the_plan.budgets.get("ram", 0)
    for w in the_plan.waves:
        resident = format_bytes(w.resident_bytes.get("ram", 0))
        if budget:
            resident += f" ({100 * w.resident_bytes.get('ram', 0) / budget:.0f}%)"
        table.add_row(str(w.index), str(w.layer), escape(wave_agents(w)),
                      escape(", ".join(map(str, w.loads)) or "-"),
                      escape(", ".join(map(str, w.unloads)) or "-"), resident)
    table.caption = ("batched: agents decoded as sequences of one context (shared prompt "
                     "prefix, one decode step for all); #N x T: instance N, T threads")
    table.caption_justify = "left"
    return table


def wave_agents(wave: Wave) -> str:
    """Who runs in a wave: each batch on one line with the planner's reason, then the
    agents on instances of their own."""
    parts = []
    batched: dict[tuple[str, int, int], list[str]] = {}
    for t in wave.tasks:
        name = f"{t.agent} (reads as they end)" if t.follows else t.agent
        if t.batch > 1:
            batched.setdefault((t.model, t.slot, t.threads), []).append(name)
        elif t.warm:
            parts.append(f"{t.agent} {t.model}#{t.slot} (its prompt's head now, the "
                         "references once they end)")
        elif t.follows:
            parts.append(f"{name} {t.model}#{t.slot} x{t.threads} (every core once they end)")
        else:
            cores = f"x{t.threads}" if t.threads else "(its own cores)"
            parts.append(f"{t.agent} {t.model}#{t.slot} {cores}")
    for (model, slot, threads), ids in batched.items():
        why = wave.choices.get(model, "")
        parts.insert(0, f"{', '.join(ids)} batched on {model}#{slot} x{threads}"
                     + (f" ({why})" if why else ""))
    for model, why in wave.choices.items():
        if model not in wave.batches:
            parts.append(f"[{model}: {why}]")
    return "\n".join(parts)


def summary_line(the_plan: Plan) -> str:
    widest = max(len(w.tasks) for w in the_plan.waves)
    peak = the_plan.peak_bytes.get("ram", 0)
    mode = "concurrent" if widest > 1 else "sequential"
    agents = "agent" if widest == 1 else "agents"
    batches = [n for w in the_plan.waves for n in w.batches.values()]
    if batches:
        mode += f", {len(batches)} batch{'es' if len(batches) > 1 else ''} of up to " \
                f"{max(batches)}"
    return (f"[bold]{len(the_plan.waves)} waves[/] ({mode}, up to {widest} {agents} at once), "
            f"{the_plan.loads} loads, {the_plan.unloads} unloads, predicted peak "
            f"{format_bytes(peak)} of {format_bytes(the_plan.budgets.get('ram', 0))} RAM budget")
