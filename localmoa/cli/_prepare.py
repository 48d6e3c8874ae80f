"""Preflight as the commands run it: the one-time CPU check shown, notices printed."""

from __future__ import annotations

from pathlib import Path

from ..backends import get_backend
from ..config import Config, load_config
from ..memory.probe import Resources
from ..preflight import Preflight, by_backend, preflight
from ..recipe import MoaGraph
from ._output import Output


def load_command_config(path: Path | None, no_batch: bool = False) -> Config:
    """The config a command runs with: ``--no-batch`` applied right after loading."""
    config = load_config(path)
    return config.without_batching() if no_batch else config


def check_cpu_once(out: Output, config: Config, models: list[str]) -> None:
    """Run each backend's one-time machine check now, with a spinner, where its models
    need one (llama.cpp: the repack canary, about a second, once per CPU and build)."""
    for name, group in by_backend(config, models).items():
        backend = get_backend(name)
        doing = backend.check_machine(config, group)
        if doing:
            with out.status(doing):
                backend.run_machine_check()


def start_worker_early(config: Config, graph: MoaGraph) -> None:
    """Start the first model's worker process now, so that Python and llama.cpp start up
    while the preflight reads headers and plans (``run``; never ``plan``)."""
    first = config.models[graph.layers[0][0].model] if graph.layers else None
    if first is not None:
        get_backend(first.backend).prestart([first])


def prepare(out: Output, config: Config, graph: MoaGraph, memory_budget: str | None,
            resources: Resources | None = None) -> Preflight:
    """``preflight`` for a command: refuses before loading anything; notices shown once.
    ``resources``: the machine as probed before anything loaded (a router already did)."""
    check_cpu_once(out, config, graph.models)
    prepared = preflight(config, graph, memory_budget, resources=resources)
    for notice in prepared.notices:
        out.notice(notice)
    return prepared
