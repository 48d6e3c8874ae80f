"""The backends: the shared protocol (base.py, batch.py, structured.py) and one folder per
built-in backend (llamacpp/, ollama/, openai/).

The registry lives in localmoa/registry.py, below config; its functions are re-exported
here typed against the Backend protocol. Nothing here imports a backend: each is
imported by the registry when a model entry first names it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import registry as _registry
from ..registry import BUILTIN, ENTRY_POINT_GROUP, known_backends, register

if TYPE_CHECKING:
    from .base import Backend

__all__ = ["BUILTIN", "ENTRY_POINT_GROUP", "backend_class", "created_backends", "get_backend",
           "known_backends", "register"]

#: The backend called ``name``, created on first use (imports stay lazy).
get_backend: Callable[[str], Backend] = _registry.get_backend
#: The backends created so far (the ones something has used).
created_backends: Callable[[], list[Backend]] = _registry.created_backends
#: The backend called ``name`` (its class, or what register() gave): its spec_class and
#: capabilities are read without creating it.
backend_class: Callable[[str], Any] = _registry.backend_class
