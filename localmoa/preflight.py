"""Everything decided before a run loads a byte of weights.

Resolve each model's file, read its GGUF header, estimate its Footprint, probe
the machine, and plan. `localmoa plan` stops here; `localmoa run` goes on to
the engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .config import Config, ModelSpec
from .memory.estimate import Footprint, LoadSettings, ModelFacts, footprint, model_facts
from .memory.gguf_header import read_header
from .memory.planner import Plan, plan
from .memory.probe import Resources, probe
from .recipe import MoaGraph
from .sources import resolve_model_path


@dataclass(frozen=True)
class Preflight:
    graph: MoaGraph
    paths: dict[str, Path]
    facts: dict[str, ModelFacts]
    footprints: dict[str, Footprint]
    resources: Resources
    plan: Plan


def load_settings(spec: ModelSpec, resources: Resources) -> LoadSettings:
    """How the llama.cpp backend will load ``spec`` on this machine."""
    return LoadSettings(n_ctx=spec.n_ctx, kv_type=spec.kv_type, n_gpu_layers=spec.n_gpu_layers,
                        n_batch=spec.n_batch, use_mmap=spec.use_mmap,
                        gpu_pool=resources.gpu_pool)


def estimate_models(config: Config, names: list[str],
                    resources: Resources) -> tuple[dict[str, Path], dict[str, ModelFacts],
                                                   dict[str, Footprint]]:
    """Path, header facts and Footprint of each model (headers only, no weights)."""
    paths = {name: resolve_model_path(config, name) for name in names}
    facts = {name: model_facts(read_header(paths[name])) for name in names}
    footprints = {name: footprint(name, facts[name], load_settings(config.models[name], resources))
                  for name in names}
    return paths, facts, footprints


def preflight(config: Config, graph: MoaGraph, memory_budget: str | None = None,
              resources: Resources | None = None) -> Preflight:
    """Plan ``graph`` on this machine; raises before loading anything if it cannot fit."""
    resources = resources or probe(memory_budget)
    paths, facts, footprints = estimate_models(config, graph.models, resources)
    the_plan = plan(graph, footprints, resources.pools, resources.usable_cores)
    return Preflight(graph=graph, paths=paths, facts=facts, footprints=footprints,
                     resources=resources, plan=the_plan)
