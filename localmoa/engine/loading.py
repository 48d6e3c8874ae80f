"""Loading a wave's instances: the plan's loads, fresh ones for instances an abandoned
agent holds or whose worker died (within the budget), and the next wave's worker
processes started early."""

from __future__ import annotations

import time
from collections.abc import Callable

from ..backends import get_backend
from ..memory.planner import Instance, Wave
from ..memory.probe import format_bytes
from ..recipe import Agent
from . import state
from .state import Execution


def load_wave(ex: Execution, wave: Wave, agents: dict[str, Agent],
              loaded: Callable[[Instance], None] = lambda inst: None) -> None:
    """Load what the wave needs: the plan's loads, and a fresh instance for each one an
    abandoned agent still holds or whose worker died, if the budget allows it (else
    its agents fail), or that a skipped wave was to load (early exit, a request of a
    merged run that ended: their waves' unloads ran, their loads did not). ``loaded``
    hears of each of the wave's instances once it is ready (or failed): first those
    already loaded, then each as its load ends."""
    host = ex.host
    tasks = {Instance(t.model, t.slot): t for t in wave.tasks}
    clear_dead(ex)  # a worker that died: its memory went with it
    # the keys as they were loaded (or as the plan has them resident): a batch's instance
    # comes back with room for its batch
    gone = {**{inst: inst for inst in wave.resident}, **ex.crashed,
            **{entry.inst: entry.inst for entry in host.held}}
    fresh = [gone[inst] for inst in tasks if inst not in host.loaded
             and inst not in wave.loads and inst in gone]
    loads = [inst for inst in [*wave.loads, *fresh] if inst not in host.loaded]
    over = over_budget(ex, wave, loads) if loads else ""
    if over:
        with host.lock:
            host.released.clear()
        deadline = time.monotonic() + state.GRACE_S  # an abandoned agent may be about to return
        while over and time.monotonic() < deadline and host.held:
            host.released.wait(0.1)
            ex.check()
            over = over_budget(ex, wave, loads)
    if over:
        if fresh and not over_budget(ex, wave, list(wave.loads)):
            skipped, loads = fresh, [i for i in wave.loads if i not in host.loaded]
        else:
            skipped, loads = loads, []
        holders = ", ".join(sorted({str(e.inst) for e in host.held}))
        for inst in skipped:
            host.load_errors[inst] = (
                f"not loaded: agents that timed out still hold {holders}, and loading "
                f"{inst} as well would exceed the memory budget ({over}); it is freed "
                "when they return")
    if len(loads) > 1:
        host.prestart(loads)  # their worker processes start side by side
    for inst in tasks:
        if inst not in loads:
            loaded(inst)  # resident, or not to be loaded: its agents see which
    for inst in loads:
        task = tasks.get(inst)
        if task and inst not in host.loaded:
            ex.emit("on_agent_loading", agents[task.agent])
        ex.log("loading", model=inst.model, instance=str(inst))
        if host.load(inst, task.threads if task else ex.plan.cores):
            model = host.loaded[inst].model
            facts = model.runtime_facts
            ex.log("loaded", model=inst.model, instance=str(inst), load_s=round(model.load_s, 4),
                   pid=model.pid, prestarted=facts.get("worker_prestarted"),
                   worker_wait_s=facts.get("worker_wait_s"))
        else:
            ex.log("load_failed", model=inst.model, instance=str(inst),
                   error=host.load_errors.get(inst))
        loaded(inst)
        ex.check()  # a Ctrl-C during a load may have been swallowed


def clear_dead(ex: Execution) -> None:
    """Drop the instances whose worker died (the report says why); a later wave that
    needs one loads it afresh."""
    for inst, why in ex.host.reap_dead():
        ex.crashed[inst] = inst
        ex.crashes.append(why)
        ex.log("worker_died", instance=str(inst), reason=why)


def prestart_next(ex: Execution, wave: Wave) -> None:
    """Start the next wave's worker processes while this wave runs, where the budget
    has room for them beside this wave (each costs its backend's ``startup_bytes``
    before its load)."""
    waves = ex.plan.waves
    position = waves.index(wave)
    if position + 1 >= len(waves):
        return
    loads = waves[position + 1].loads
    budget = ex.plan.budgets.get("ram")
    if budget is not None:
        room = budget - wave.resident_bytes.get("ram", 0)
        loads = loads[:_startable(ex, loads, room)]
    if loads:
        ex.log("prestart", instances=[str(inst) for inst in loads])
        ex.host.prestart(loads)


def _startable(ex: Execution, loads: list[Instance], room: int) -> int:
    """How many of ``loads``, in order, can start before their loads within ``room``
    bytes, each costing its backend's start-up (a llama.cpp worker process)."""
    spent = 0
    for count, inst in enumerate(loads):
        spent += get_backend(ex.host.config.models[inst.model].backend).startup_bytes
        if spent > room:
            return count
    return len(loads)


def over_budget(ex: Execution, wave: Wave, loading: list[Instance]) -> str:
    """How the wave would exceed a pool's budget, loading ``loading``, with what
    abandoned agents hold beyond the plan ("" when it fits). A held instance counts
    unless the plan still counts its key now and no other copy takes that key."""
    host, plan = ex.host, ex.plan
    extra: dict[str, int] = {}
    with host.lock:
        held = [e for e in host.held if e not in ex.held_before]
    for entry in held:
        if (entry.inst in wave.resident and entry.inst not in loading
                and entry.inst not in host.loaded):
            continue  # the plan's own count for that key is this memory
        amounts = dict(entry.held_bytes)  # what it cost when abandoned (its batch too)
        cost = plan.costs.get(entry.inst.model)
        if cost is not None and any(i.model == entry.inst.model for i in wave.resident):
            for pool, first in cost.first.items():  # weights shared with the resident copy
                amounts[pool] = amounts.get(pool, 0) - (first - cost.extra.get(pool, 0))
        for pool, amount in amounts.items():
            extra[pool] = extra.get(pool, 0) + amount
    over = []
    for pool, amount in extra.items():
        total = wave.resident_bytes.get(pool, 0) + amount
        if total > plan.budgets.get(pool, 0):
            over.append(f"{pool}: {format_bytes(total)} of {format_bytes(plan.budgets[pool])}"
                        if pool in plan.budgets else f"{pool}: no budget")
    return "; ".join(over)
