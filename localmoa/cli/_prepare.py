"""The runtime as the commands run it: the one-time machine check under a spinner,
notices printed once, routing shown."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.markup import escape

from ..config import Config, load_config
from ..preflight import check_machine
from ..routing import Decision
from ..runtime import Hooks, Runtime
from ._output import Output


def load_command_config(path: Path | None, no_batch: bool = False) -> Config:
    """The config a command runs with: ``--no-batch`` applied right after loading."""
    config = load_config(path)
    return config.without_batching() if no_batch else config


def check_cpu_once(out: Output, config: Config, models: list[str]) -> None:
    """Run each backend's one-time machine check now, with a spinner, where its models
    need one (llama.cpp: the repack canary, about a second, once per CPU and build)."""
    check_machine(config, models, out.status)


def command_runtime(out: Output, config: Config, memory_budget: str | None,
                    **options: Any) -> Runtime:
    """A runtime whose machine checks show a spinner, whose notices are printed once,
    and whose router says what it chose (``options``: Runtime's)."""
    def routed(decision: Decision) -> None:
        out.note(f"[bold]router[/] {escape(decision.router)} chose "
                 f"{escape(', '.join(decision.chosen))} ({escape(decision.reason)})")

    hooks = Hooks(notice=out.notice, status=out.status,
                  routing=lambda name: out.status(f"[bold]{name}[/]: routing"), routed=routed)
    return Runtime(config, memory_budget, hooks=hooks, check_machine=True, **options)
