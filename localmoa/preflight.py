"""Everything decided before a run loads a byte of weights.

Resolve each model (a GGUF file, or a model pulled into an Ollama daemon), read
its header (or ask the daemon), estimate its Footprint, probe the machine, and
plan. `localmoa plan` stops here; `localmoa run` goes on to the engine.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import constants, netguard
from .backends import get_backend
from .config import Config, ModelSpec, is_loopback
from .memory.estimate import (
    Footprint,
    LoadSettings,
    ModelFacts,
    batched_pools,
    facts_from_model_info,
    footprint,
    model_facts,
)
from .memory.gguf_header import read_model_header
from .memory.planner import Plan, plan
from .memory.probe import Resources, parse_size, probe
from .recipe import MoaGraph
from .sources import resolve_model_path

#: The budget of a remote Ollama daemon nobody gave one for: Ollama manages it.
UNLIMITED = 1 << 62


@dataclass(frozen=True)
class Preflight:
    graph: MoaGraph
    paths: dict[str, Path]
    facts: dict[str, ModelFacts]
    footprints: dict[str, Footprint]
    resources: Resources
    plan: Plan
    budgets: dict[str, int]
    #: How the backends will run here (e.g. cpu_repack), for the run report.
    runtime: dict[str, Any] = field(default_factory=dict)
    #: One-line notices the user should see once (e.g. repacking turned off).
    notices: list[str] = field(default_factory=list)


#: Most agents of one model decoded as one batch (sequences of one context).
MAX_BATCH = 64


def load_settings(spec: ModelSpec, resources: Resources) -> LoadSettings:
    """How the backend will load ``spec`` on this machine (may run the repack canary)."""
    from .backends import repack
    from .backends.llamacpp import uses_workers

    return LoadSettings(n_ctx=spec.n_ctx, kv_type=spec.kv_type, n_gpu_layers=spec.n_gpu_layers,
                        n_batch=spec.n_batch, use_mmap=spec.use_mmap,
                        gpu_pool=resources.gpu_pool, flash_attn=spec.flash_attn != "off",
                        repacked_types=repack.private_types(repack.choose(spec.cpu_repack)),
                        worker_process=uses_workers(spec))



def runtime_facts(config: Config, models: list[str]) -> tuple[dict[str, Any], list[str]]:
    """The cpu_repack choice of the llama.cpp models, and the notice it calls for."""
    from .backends import repack

    choices = {m: repack.choose(config.models[m].cpu_repack) for m in models
               if config.models[m].backend == "llamacpp"}
    if not choices:
        return {}, []
    first = next(iter(choices.values()))
    summary = first.to_dict()
    summary["models"] = {m: c.enabled for m, c in choices.items()}
    return {"cpu_repack": summary}, repack.take_notices(list(choices.values()))


def ollama_pool(spec: ModelSpec) -> str:
    """A daemon on this machine uses this machine's RAM; another one is its own pool."""
    from .backends.ollama import host_of

    host = host_of(spec)
    return "ram" if is_loopback(host) else f"ollama@{host}"


def estimate_model(config: Config, name: str, resources: Resources,
                   batch_up_to: int = 1) -> tuple[Path | None, ModelFacts, Footprint]:
    """Path (llama.cpp), facts and Footprint of one model; no weights are loaded.
    With batching on, the footprint knows batches of 2 to ``batch_up_to`` sequences."""
    spec = config.models[name]
    if spec.backend == "ollama":
        from .backends.ollama import OllamaBackend, host_of

        backend = get_backend("ollama")
        assert isinstance(backend, OllamaBackend)
        if spec.allow_remote:  # the user allowed this model's host (host: or OLLAMA_HOST)
            netguard.allow_host(host_of(spec))
        info = backend.describe(name, spec)
        facts = facts_from_model_info(info.model_info, info.size_bytes, info.quant)
        parallel = spec.parallel or 1  # the daemon keeps n_ctx x OLLAMA_NUM_PARALLEL cells
        fp = footprint(name, facts, LoadSettings(n_ctx=spec.n_ctx, kv_type=spec.kv_type,
                                                 parallel=parallel))
        # The daemon holds one copy, whatever number of agents use it at once.
        fp = dataclasses.replace(fp, pools={ollama_pool(spec): fp.total_bytes},
                                 shared_weights_bytes=fp.total_bytes, local=False,
                                 parallel_limit=parallel)
        return None, facts, fp
    path = resolve_model_path(config, name)
    facts = model_facts(read_model_header(path, model=name))
    settings = load_settings(spec, resources)
    fp = footprint(name, facts, settings)
    if spec.batch != "off" and batch_up_to > 1:
        sizes = range(2, min(batch_up_to, MAX_BATCH) + 1)
        fp = dataclasses.replace(fp, batched_pools=batched_pools(name, facts, settings, sizes))
    return path, facts, fp


def pool_budgets(config: Config, resources: Resources,
                 footprints: dict[str, Footprint]) -> dict[str, int]:
    """The machine's pools, plus one per remote Ollama daemon the models use."""
    budgets = dict(resources.pools)
    # keys as written (gpu-box, http://gpu-box:11434/) name the host the pools are named by
    hosts = {constants.ollama_host(url): spec for url, spec in config.ollama_hosts.items()}
    for fp in footprints.values():
        for pool in fp.pools:
            if pool.startswith("ollama@") and pool not in budgets:
                host = hosts.get(pool.removeprefix("ollama@"))
                budgets[pool] = (parse_size(host.memory_budget, "ollama_hosts memory_budget")
                                 if host and host.memory_budget else UNLIMITED)
    return budgets


def preflight(config: Config, graph: MoaGraph, memory_budget: str | None = None,
              resources: Resources | None = None) -> Preflight:
    """Plan ``graph`` on this machine; raises before loading anything if it cannot fit."""
    resources = resources or probe(memory_budget)
    paths: dict[str, Path] = {}
    facts: dict[str, ModelFacts] = {}
    footprints: dict[str, Footprint] = {}
    widest = graph.widest()
    for name in graph.models:
        path, facts[name], footprints[name] = estimate_model(config, name, resources,
                                                             widest[name])
        if path is not None:
            paths[name] = path
    budgets = pool_budgets(config, resources, footprints)
    the_plan = plan(graph, footprints, budgets, resources.usable_cores)
    runtime, notices = runtime_facts(config, graph.models)
    return Preflight(graph=graph, paths=paths, facts=facts, footprints=footprints,
                     resources=resources, plan=the_plan, budgets=budgets, runtime=runtime,
                     notices=notices)
