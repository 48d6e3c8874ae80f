"""The backend registry: backends by the name models.yaml gives them.

The built-in ones (llamacpp, ollama, openai) are listed here; any installed package
adds more through the ``localmoa.backends`` entry point group, e.g. in its
pyproject.toml::

    [project.entry-points."localmoa.backends"]
    mlx = "localmoa_mlx:MlxBackend"

The entry point names a Backend class (``localmoa.plugin``: subclass BackendBase);
it is imported only when a model entry names it. A name no installed package
provides is a one-line error saying which package to install.

This module sits at the bottom, below config: it names backend classes only as
"module:Class" strings, imported on first use, so config may ask it for a backend's
schema without importing any backend. ``localmoa.backends`` re-exports it, typed
against the Backend protocol.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib import metadata
from typing import Any

from .errors import ConfigError

#: The entry point group third-party backends register in.
ENTRY_POINT_GROUP = "localmoa.backends"
#: localmoa's own backends: name -> "module:class", imported on first use.
BUILTIN = {"llamacpp": "localmoa.backends.llamacpp.backend:LlamaCppBackend",
           "ollama": "localmoa.backends.ollama.backend:OllamaBackend",
           "openai": "localmoa.backends.openai.backend:OpenAIBackend"}

# A backend is typed Any here (the Backend protocol is above config, in backends/base.py);
# localmoa.backends gives these functions their Backend types.
_FACTORIES: dict[str, Callable[[], Any]] = {}
_INSTANCES: dict[str, Any] = {}


def register(name: str, factory: Callable[[], Any]) -> None:
    """Make ``backend: NAME`` in models.yaml use ``factory()`` (tests, embedding code)."""
    _FACTORIES[name] = factory
    _INSTANCES.pop(name, None)


def _plugins() -> dict[str, metadata.EntryPoint]:
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def known_backends() -> list[str]:
    """Every backend name models.yaml may use here: built in, registered or installed."""
    return sorted({*BUILTIN, *_FACTORIES, *_plugins()})


def _import(target: str) -> Any:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def _factory(name: str) -> Callable[[], Any]:
    if name in _FACTORIES:
        return _FACTORIES[name]
    if name in BUILTIN:
        factory: Callable[[], Any] = _import(BUILTIN[name])
        _FACTORIES[name] = factory
        return factory
    plugin = _plugins().get(name)
    if plugin is None:
        raise ConfigError(
            f"backend {name!r} is not installed: no installed package provides it "
            f"(installed: {', '.join(known_backends())}); install its plugin, by convention "
            f"`pip install localmoa-{name}`, or fix the name")
    package = plugin.dist.name if plugin.dist is not None else f"localmoa-{name}"
    try:
        factory = plugin.load()
    except Exception as exc:  # noqa: BLE001 - a broken plugin, one line
        raise ConfigError(
            f"backend {name!r} (package {package}) cannot be imported: "
            f"{type(exc).__name__}: {exc}; reinstall it: pip install --force-reinstall "
            f"{package}") from None
    from .spec_types import ModelSpec  # pydantic: not imported by a worker's start-up

    for attr in ("spec_class", "capabilities", "load", "estimate"):
        if not hasattr(factory, attr):
            raise ConfigError(f"backend {name!r} (package {package}) is not a localmoa "
                              f"backend: it has no {attr} (see localmoa.backends.base)")
    spec = getattr(factory, "spec_class", None)
    if not (isinstance(spec, type) and issubclass(spec, ModelSpec)):
        raise ConfigError(f"backend {name!r} (package {package}) is not a localmoa backend: "
                          "its spec_class is not a localmoa.config.ModelSpec")
    _FACTORIES[name] = factory
    return factory


def backend_class(name: str) -> Any:
    """The backend called ``name`` (its class, or what register() gave): its spec_class
    and capabilities are read without creating it."""
    factory = _factory(name)
    return factory if hasattr(factory, "spec_class") else get_backend(name)


def get_backend(name: str) -> Any:
    """The backend called ``name``, created on first use (imports stay lazy)."""
    if name not in _INSTANCES:
        _INSTANCES[name] = _factory(name)()
    return _INSTANCES[name]


def created_backends() -> list[Any]:
    """The backends created so far (the ones something has used)."""
    return list(_INSTANCES.values())
