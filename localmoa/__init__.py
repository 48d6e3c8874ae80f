"""localmoa: a local-first, on-device Mixture-of-Agents runtime.

    from localmoa import load_config, build_graph, run_moa
    config = load_config()
    graph = build_graph(config, "tiny")
    report = run_moa(config, graph, [{"role": "user", "content": "Hi"}])
    print(report.answer)
"""

from __future__ import annotations

__version__ = "0.1.0"

from .config import Config, load_config
from .engine import RunEvents, run_moa
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
    "RunEvents",
    "RunReport",
    "UsageError",
    "__version__",
    "build_graph",
    "load_config",
    "run_moa",
]
