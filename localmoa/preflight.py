"""Everything decided before a run loads a byte of weights.

Each model's backend estimates it (a GGUF header read, a daemon asked, a server
taken as external), the machine is probed, and the planner plans. Only the backend
protocol is used here. `localmoa plan` stops here; `localmoa run` goes on to the engine.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import netguard
from .backends import get_backend
from .backends.base import Estimate
from .config import Config
from .memory.estimate import Footprint, ModelFacts
from .memory.overlap import streamed_plan
from .memory.planner import Plan
from .memory.probe import Resources, probe
from .recipe import MoaGraph


@dataclass(frozen=True)
class Preflight:
    graph: MoaGraph
    paths: dict[str, Path]
    #: The facts of each model whose backend can know them (a GGUF header, a daemon).
    facts: dict[str, ModelFacts]
    footprints: dict[str, Footprint]
    resources: Resources
    plan: Plan
    budgets: dict[str, int]
    #: How the backends will run here (e.g. cpu_repack), for the run report.
    runtime: dict[str, Any] = field(default_factory=dict)
    #: One-line notices the user should see once (e.g. repacking turned off).
    notices: list[str] = field(default_factory=list)
    #: The backend of each model.
    backends: dict[str, str] = field(default_factory=dict)


def runtime_facts(config: Config, models: list[str]) -> tuple[dict[str, Any], list[str]]:
    """How each backend will run its models here (e.g. llama.cpp's cpu_repack), and the
    notices that calls for."""
    facts: dict[str, Any] = {}
    notices: list[str] = []
    for backend, names in by_backend(config, models).items():
        more, said = get_backend(backend).runtime(config, names)
        facts.update(more)
        notices += said
    return facts, notices


def by_backend(config: Config, models: list[str]) -> dict[str, list[str]]:
    """``models`` grouped by the backend that serves them, in order."""
    groups: dict[str, list[str]] = {}
    for name in models:
        groups.setdefault(config.models[name].backend, []).append(name)
    return groups


def check_machine(config: Config, models: list[str],
                  status: Callable[[str], AbstractContextManager[Any]] | None = None) -> None:
    """Run each backend's one-time machine check where ``models`` need one (llama.cpp: the
    repack canary, about a second, once per CPU and build), inside ``status(what)`` (a
    spinner) when given."""
    for name, group in by_backend(config, models).items():
        backend = get_backend(name)
        doing = backend.check_machine(config, group)
        if doing:
            with status(doing) if status is not None else contextlib.nullcontext():
                backend.run_machine_check()


def estimate_model(config: Config, name: str, resources: Resources,
                   batch_up_to: int = 1) -> Estimate:
    """Path (a local GGUF), facts and Footprint of one model, from its backend; no weights
    are loaded. The hosts the user allowed it to reach are let through the socket guard.
    With batching on, the footprint knows batches of 2 to ``batch_up_to`` sequences."""
    spec = config.models[name]
    backend = get_backend(spec.backend)
    for host in backend.remote_hosts(spec):
        netguard.allow_host(host)
    if not backend.capabilities.batched_sequences:
        batch_up_to = 1
    return backend.estimate(name, spec, config, resources, batch_up_to)


def pool_budgets(config: Config, resources: Resources,
                 footprints: dict[str, Footprint]) -> dict[str, int]:
    """The machine's pools, plus each pool of a daemon or server the models use, with the
    budget its backend gives it."""
    budgets = dict(resources.pools)
    for fp in footprints.values():
        for pool in fp.pools:
            if pool in budgets:
                continue
            budget = get_backend(config.models[fp.model].backend).pool_budget(pool, config)
            if budget is not None:
                budgets[pool] = budget
    return budgets


def preflight(config: Config, graph: MoaGraph, memory_budget: str | None = None,
              resources: Resources | None = None,
              batch_up_to: dict[str, int] | None = None) -> Preflight:
    """Plan ``graph`` on this machine; raises before loading anything if it cannot fit.
    ``batch_up_to``: batches of a model to know footprints for beyond this graph's own
    (a server keeps an instance another profile loaded with room for its batch)."""
    resources = resources or probe(memory_budget)
    paths: dict[str, Path] = {}
    facts: dict[str, ModelFacts] = {}
    footprints: dict[str, Footprint] = {}
    widest = {m: max(n, (batch_up_to or {}).get(m, 1)) for m, n in graph.batch_room().items()}
    for name in graph.models:
        found = estimate_model(config, name, resources, widest[name])
        footprints[name] = found.footprint
        if found.facts is not None:
            facts[name] = found.facts
        if found.path is not None:
            paths[name] = found.path
    budgets = pool_budgets(config, resources, footprints)
    the_plan = streamed_plan(graph, footprints, budgets, resources.usable_cores)
    runtime, notices = runtime_facts(config, graph.models)
    return Preflight(graph=graph, paths=paths, facts=facts, footprints=footprints,
                     resources=resources, plan=the_plan, budgets=budgets, runtime=runtime,
                     notices=notices,
                     backends={m: config.models[m].backend for m in graph.models})
