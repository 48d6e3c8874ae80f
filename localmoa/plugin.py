"""Everything a backend plugin needs, from one module.

A third-party backend is a package with one entry point in the ``localmoa.backends``
group (``ENTRY_POINT_GROUP``) naming a subclass of ``BackendBase``::

    [project.entry-points."localmoa.backends"]
    mlx = "localmoa_mlx:MlxBackend"

It sets ``name``, ``package``, ``spec_class`` (a ``ModelSpec`` subclass: its entries'
keys) and ``capabilities``, and writes ``estimate`` (an ``Estimate`` whose
``Footprint`` says the bytes per pool: ``Footprint.of_pools``) and ``load`` (a
``LoadedModel`` whose ``chat`` returns a ``ChatStream``). The other members have
defaults (see ``Backend``). A pool the machine does not have is budgeted by the
backend's ``pool_budget``: ``UNLIMITED`` when the server manages itself.
"""

from __future__ import annotations

from .backends.base import (
    UNLIMITED,
    Backend,
    BackendBase,
    BatchedModel,
    Capabilities,
    Estimate,
    LoadedModel,
)
from .config import Config
from .constants import debug, localmoa_home, secret
from .errors import (
    ConfigError,
    GenerationError,
    LocalMoaError,
    ModelLoadError,
    ModelNotFoundError,
    PullError,
    UsageError,
)
from .memory.estimate import Footprint, Hint, MiB, ModelFacts
from .memory.probe import Resources
from .registry import ENTRY_POINT_GROUP
from .spec_types import ModelSpec, StrictModel
from .types import ChatStream, GenerateOptions, GenerationStats, Message, Progress

__all__ = [
    "ENTRY_POINT_GROUP",
    "UNLIMITED",
    "Backend",
    "BackendBase",
    "BatchedModel",
    "Capabilities",
    "ChatStream",
    "Config",
    "ConfigError",
    "Estimate",
    "Footprint",
    "GenerateOptions",
    "GenerationError",
    "GenerationStats",
    "Hint",
    "LoadedModel",
    "LocalMoaError",
    "Message",
    "MiB",
    "ModelFacts",
    "ModelLoadError",
    "ModelNotFoundError",
    "ModelSpec",
    "Progress",
    "PullError",
    "Resources",
    "StrictModel",
    "UsageError",
    "debug",
    "localmoa_home",
    "secret",
]
