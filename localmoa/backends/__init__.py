"""Backends by the name models.yaml gives them. A new backend is one module plus one line here."""

from __future__ import annotations

from collections.abc import Callable

from ..errors import ConfigError
from .base import Backend

_FACTORIES: dict[str, Callable[[], Backend]] = {}
_INSTANCES: dict[str, Backend] = {}


def register(name: str, factory: Callable[[], Backend]) -> None:
    """Make ``backend: NAME`` in models.yaml use ``factory()``."""
    _FACTORIES[name] = factory
    _INSTANCES.pop(name, None)


def get_backend(name: str) -> Backend:
    """The backend called ``name``, created on first use (imports stay lazy)."""
    if name not in _INSTANCES:
        if name not in _FACTORIES:
            raise ConfigError(f"unknown backend {name!r}; known: {', '.join(sorted(_FACTORIES))}")
        _INSTANCES[name] = _FACTORIES[name]()
    return _INSTANCES[name]


def created_backends() -> list[Backend]:
    """The backends created so far (the ones something has used)."""
    return list(_INSTANCES.values())


def _llamacpp() -> Backend:
    from .llamacpp import LlamaCppBackend

    return LlamaCppBackend()


def _ollama() -> Backend:
    from .ollama import OllamaBackend

    return OllamaBackend()


register("llamacpp", _llamacpp)
register("ollama", _ollama)
