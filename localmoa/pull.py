"""`localmoa models pull`: each backend fetches its own models (Backend.pull); llama.cpp's
GGUF downloads are in backends/llamacpp/pull.py, Ollama's daemon pulls its tags."""

from __future__ import annotations

from collections.abc import Callable

from .config import Config
from .errors import PullError, UsageError
from .types import Progress

__all__ = ["Progress", "PullError", "pull"]


def pull(config: Config, name: str, report: Callable[[Progress], None]) -> str:
    """Fetch model ``name``; returns a one-line description of the result."""
    if name not in config.models:
        known = ", ".join(sorted(config.models))
        raise UsageError(f"no model named {name!r} in the config; known models: {known}")
    from .backends import get_backend

    return get_backend(config.models[name].backend).pull(config, name, report)
