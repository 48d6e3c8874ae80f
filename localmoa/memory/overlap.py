"""Reference streaming in the plan (pure): the aggregator starts with the last proposer
wave and reads each proposer's answer as that proposer ends. ``streamed_plan`` is what
a run plans with: the planner's plan, then ``follow``.

``follow(plan, graph, footprints, budgets)`` moves the aggregator's wave into the last
proposer wave when it can, as a task that ``follows`` it:

- its model decodes that wave's proposers as a batch: the aggregator is one more
  sequence of it (the instance gets room for one more, loaded with it);
- its model serves one proposer alone: that proposer and the aggregator become a
  batch of two;
- another model: an instance of it is loaded beside the wave (the aggregator's own
  batch of one, with the threads its own wave had: it is idle until text comes);
- a model on a server that takes only whole prompts but keeps a prompt cache
  (``Footprint.prompt_cache``: llama-server, Ollama): a ``warm`` task, when the server
  has a request free beside the wave's: it sends its prompt's head at once (a prefix
  warm-up: one request of one token) and its whole prompt once the layer ends; a
  staircase sends its grown prompt every round (engine/warmed.py).

Every change is checked against the budgets: the plan never goes past one. When the
aggregator cannot follow (it does not fit beside the proposers, a recipe decides after
the whole layer whether it runs, its backend takes whole prompts ...), the plan is
unchanged and ``plan.streaming`` says why; ``localmoa plan`` prints it.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Mapping
from typing import Any

from ..recipe import Agent, MoaGraph
from .estimate import Footprint
from .planner import Instance, Plan, Task, Wave, cost, fits, plan
from .probe import format_bytes

#: Tokens kept for the aggregate prompt, the question and the chat template when a
#: streamed aggregator's context must hold every proposer's whole answer.
PROMPT_ROOM_TOKENS = 512


def streamed_plan(graph: MoaGraph, footprints: Mapping[str, Footprint],
                  budgets: Mapping[str, int], cores: int, **options: Any) -> Plan:
    """``planner.plan`` (``options``: its keywords), then ``follow``: the plan a run uses."""
    return follow(plan(graph, footprints, budgets, cores, **options), graph, footprints,
                  budgets)


def follow(plan: Plan, graph: MoaGraph, footprints: Mapping[str, Footprint],
           budgets: Mapping[str, int]) -> Plan:
    """``plan`` with the aggregator following the last proposer wave, or unchanged with
    ``streaming`` saying why not."""
    why = _refusal(plan, graph, footprints)
    if why:
        return dataclasses.replace(plan, streaming={"on": False, "why": why})
    layer = len(graph.layers)
    first = plan.waves.index(plan.waves_of_layer(layer)[-1])
    wave, after = plan.waves[first], plan.waves[first + 1]
    placed = _place(wave, after, graph.aggregator, footprints, plan.cores)
    if isinstance(placed, str):
        return dataclasses.replace(plan, streaming={"on": False, "why": placed})
    merged = placed
    usage = _usage(merged.resident, footprints)
    if not fits(usage, budgets):
        over = ", ".join(f"{pool} {format_bytes(n)} of {format_bytes(budgets.get(pool, 0))}"
                         for pool, n in usage.items() if n > budgets.get(pool, 0))
        return dataclasses.replace(plan, streaming={
            "on": False, "why": f"the aggregator's {graph.aggregator.model} does not fit "
            f"beside the proposers' models ({over}): it waits for the whole layer"})
    merged.resident_bytes = usage
    waves = [*plan.waves[:first], merged, *plan.waves[first + 2:]]
    resized = {i for i in merged.resident if i.seqs > 1}
    waves = [w if k <= first else _resized(w, resized) for k, w in enumerate(waves)]
    waves = [dataclasses.replace(w, index=k) for k, w in enumerate(waves, start=1)]
    peak: dict[str, int] = {}
    for w in waves:
        for pool, amount in w.resident_bytes.items():
            peak[pool] = max(peak.get(pool, 0), amount)
    what = (f"writes its answer in rounds while they write (staircase, first chunk "
            f"{graph.staircase_chunk} tokens)" if graph.aggregate == "staircase"
            else "reads each proposer's answer as it ends")
    if any(t.warm for t in merged.tasks):
        what = ("warms its server's prompt cache with its prompt's head, then "
                + ("writes its answer in rounds while they write, each round sending "
                   "the grown prompt again (staircase, first chunk "
                   f"{graph.staircase_chunk} tokens)" if graph.aggregate == "staircase"
                   else "sends the references in finishing order once the layer ends"))
    return dataclasses.replace(plan, waves=waves, peak_bytes=peak, streaming={
        "on": True, "wave": first + 1,
        "why": f"the aggregator starts with wave {first + 1} and {what}"})


def _refusal(plan: Plan, graph: MoaGraph, footprints: Mapping[str, Footprint]) -> str:
    """Why the aggregator cannot follow the proposers ("" when it may)."""
    agg = graph.aggregator
    if not graph.stream_references:
        return "stream_references is off: the aggregator reads the whole layer"
    if graph.jobs > 1:
        return "requests run merged: each aggregator reads its whole layer"
    if graph.aggregate not in ("always", "staircase"):
        return (f"aggregate: {graph.aggregate} decides after the whole layer whether the "
                "aggregator runs")
    if graph.early_exit:
        return "layers_up_to decides after each layer whether another one runs"
    if agg.prompt_template is not None:
        return "its prompt template places the references: they go in whole"
    fp = footprints[agg.model]
    if not fp.streams and not fp.prompt_cache:
        return (f"{agg.model}'s backend reads a prompt only whole and keeps no prompt "
                "cache to warm")
    need = sum(a.max_tokens for a in graph.layers[-1]) + agg.max_tokens + PROMPT_ROOM_TOKENS
    if need > fp.n_ctx:
        return (f"the proposers' answers may not fit {agg.model}'s n_ctx {fp.n_ctx} whole "
                f"({need} tokens): they are fitted after the layer")
    last = plan.waves_of_layer(len(graph.layers))
    aggs = plan.waves_of_layer(len(graph.layers) + 1)
    if not last or len(aggs) != 1 or len(aggs[0].tasks) != 1:
        return "the plan has no single aggregator wave to move"
    if plan.waves.index(aggs[0]) != plan.waves.index(last[-1]) + 1:
        return "the aggregator's wave does not follow the last proposer wave"
    return ""


def _place(wave: Wave, after: Wave, agg: Agent, footprints: Mapping[str, Footprint],
           cores: int) -> Wave | str:
    """``wave`` with the aggregator's task added (its instance resized or loaded), or
    why it cannot be. Its own instance gets the cores the wave leaves free (it reads
    while they write; every core once they are done), and none free is a refusal:
    two models' threads on the same cores slow both far more than the overlap saves."""
    model, fp = agg.model, footprints[agg.model]
    if not fp.streams:
        return _place_warm(wave, after, agg, footprints, cores)
    own = after.tasks[0]
    users = [t for t in wave.tasks if t.model == model]
    resident = {i: i for i in wave.resident}
    loads = list(wave.loads)
    if users:
        size = max(t.batch for t in users) + 1
        slot = users[0].slot if size > 2 else 0
        if size not in fp.batched_pools:
            return (f"{model} cannot take one more sequence (batching is off or "
                    "not known for that size): the aggregator waits for the whole layer")
        inst = resident.get(Instance(model, slot))
        if inst is None:
            return "the proposers' instance is not in the plan's wave"
        if inst.seqs < size:
            if inst not in loads:
                return (f"{inst} was loaded before this wave with room for {inst.seqs} "
                        "sequences: the aggregator waits for the whole layer")
            bigger = Instance(model, slot, size)
            loads = [bigger if i == inst else i for i in loads]
            resident[inst] = bigger
        threads = next(t.threads for t in users if t.slot == slot)
        tasks = [dataclasses.replace(t, batch=size) if t.model == model and t.slot == slot
                 else t for t in wave.tasks]
        tasks.append(Task(agg.id, model, slot, threads, batch=size, follows=True))
    else:
        busy = sum({(t.model, t.slot): t.threads for t in wave.tasks
                    if footprints[t.model].local}.values())
        spare = cores - busy if fp.local else own.threads
        if spare < 1:
            return (f"no core is free beside the proposers' {busy} threads for "
                    f"{model}: the aggregator waits for the whole layer")
        inst = Instance(model, 0)
        if inst not in resident:
            loads.append(inst)
            resident[inst] = inst
        tasks = [*wave.tasks, Task(agg.id, model, 0, spare, follows=True)]
    unloads = [i for i in wave.unloads if i.model != model] + list(after.unloads)
    batches = dict(wave.batches)
    if users:
        batches[model] = max(t.batch for t in tasks if t.model == model)
    return dataclasses.replace(wave, tasks=tasks, loads=loads, unloads=unloads,
                               resident=sorted(resident.values()), batches=batches)


def _place_warm(wave: Wave, after: Wave, agg: Agent, footprints: Mapping[str, Footprint],
                cores: int) -> Wave | str:
    """``wave`` with the aggregator as a ``warm`` task on its server (the next slot of
    its model), or why not: the warm-up is cheap only while the server has a request
    free beside the wave's (its concurrency, an Ollama daemon's parallel), and its
    threads do not land on the cores the wave's own models use (a server on this
    machine beside local proposers: the threads of both on the same cores slowed the
    proposers' first token 4x, measured in benchmarks/README.md)."""
    model, fp = agg.model, footprints[agg.model]
    local = sum({(t.model, t.slot): t.threads for t in wave.tasks
                 if footprints[t.model].local}.values())
    if fp.shares_cores and local >= cores:
        return (f"{model}'s server runs on this machine, whose {cores} cores the "
                "proposers use: a warm-up would slow them more than it saves; the "
                "aggregator waits for the whole layer")
    group = fp.parallel_group or model
    busy = sum(1 for t in wave.tasks if (footprints[t.model].parallel_group or t.model)
               == group)
    if fp.parallel_limit and busy + 1 > fp.parallel_limit:
        return (f"{model}'s server takes {fp.parallel_limit} request(s) at once and the "
                "proposers use them: the aggregator waits for the whole layer")
    slot = sum(1 for t in wave.tasks if t.model == model)
    inst = Instance(model, slot)
    loads, resident = list(wave.loads), list(wave.resident)
    if inst not in resident:
        loads.append(inst)
        resident.append(inst)
    unloads = [i for i in wave.unloads if i.model != model] + list(after.unloads)
    tasks = [*wave.tasks, Task(agg.id, model, slot, 0, follows=True, warm=True)]
    return dataclasses.replace(wave, tasks=tasks, loads=loads, unloads=unloads,
                               resident=sorted(resident))


def _usage(resident: list[Instance], footprints: Mapping[str, Footprint]) -> dict[str, int]:
    counts = Counter(i.model for i in resident)
    seqs = {i.model: i.seqs for i in resident if i.slot == 0}
    return cost(footprints, counts, seqs)


def _resized(wave: Wave, resized: set[Instance]) -> Wave:
    """A later wave's instances with the room the merged wave gave them."""
    def fix(items: list[Instance]) -> list[Instance]:
        return [next((r for r in resized if r == i), i) for i in items]

    return dataclasses.replace(wave, resident=fix(wave.resident), unloads=fix(wave.unloads),
                               loads=fix(wave.loads))
