"""localmoa: a local-first, on-device Mixture-of-Agents runtime.

    from localmoa import load_config, build_graph, run_moa
    config = load_config()
    graph = build_graph(config, "tiny")
    report = run_moa(config, graph, [{"role": "user", "content": "Hi"}])
    print(report.answer)
"""

from __future__ import annotations

__version__ = "0.1.0"

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import Config, load_config
    from .engine import RunEvents
    from .errors import (
        AggregatorFailedError,
        ConfigError,
        LayerFailedError,
        LocalMoaError,
        ModelLoadError,
        ModelNotFoundError,
        UsageError,
    )
    from .metrics import AgentRun, LayerStats, RunReport
    from .recipe import MoaGraph, Overrides, build_graph
    from .runtime import Request, Runtime, run_moa

#: Where each public name lives. Imported on first use: a model worker process
#: (backends/llamacpp/worker_main.py) imports this package and must start fast.
_HOMES = {
    "Config": "config", "load_config": "config", "RunEvents": "engine", "run_moa": "runtime",
    "AggregatorFailedError": "errors", "ConfigError": "errors", "LayerFailedError": "errors",
    "LocalMoaError": "errors", "ModelLoadError": "errors", "ModelNotFoundError": "errors",
    "UsageError": "errors", "AgentRun": "metrics", "LayerStats": "metrics",
    "RunReport": "metrics", "MoaGraph": "recipe", "Overrides": "recipe",
    "build_graph": "recipe", "Request": "runtime", "Runtime": "runtime",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'localmoa' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{home}", __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "AgentRun",
    "AggregatorFailedError",
    "Config",
    "ConfigError",
    "LayerFailedError",
    "LayerStats",
    "LocalMoaError",
    "MoaGraph",
    "ModelLoadError",
    "ModelNotFoundError",
    "Overrides",
    "Request",
    "RunEvents",
    "RunReport",
    "Runtime",
    "UsageError",
    "__version__",
    "build_graph",
    "load_config",
    "run_moa",
]
