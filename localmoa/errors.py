"""Every failure a user can cause or meet is a LocalMoaError.

The CLI turns each one into a single line on stderr and an exit code: 2 for
usage and configuration errors (fix the input and run again), 1 for runtime
failures (something went wrong while running).
"""

from __future__ import annotations

from typing import Any

#: Longest piece of user input an error message repeats (see ``clip``).
CLIP_CHARS = 100


def clip(text: str, n: int = CLIP_CHARS) -> str:
    """``text`` cut to ``n`` characters with an ellipsis: an error message that quotes a
    value the user (or a file, or a client) wrote stays one short line."""
    return text if len(text) <= n else text[:n] + "…"


class LocalMoaError(Exception):
    """Base class. ``str(err)`` is the one-line message shown to the user."""

    exit_code = 1


class UsageError(LocalMoaError):
    """A command-line argument or its combination is wrong."""

    exit_code = 2


class ConfigError(LocalMoaError):
    """models.yaml (shipped or user) is malformed or inconsistent.

    The message names the file, the line and the field.
    """

    exit_code = 2

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 field: str | None = None) -> None:
        where = ""
        if file:
            where = f"{file}:{line}: " if line else f"{file}: "
        if field:
            where += f"{field}: "
        super().__init__(where + message)
        self.message = message
        self.file = file
        self.line = line
        self.field = field


class ModelNotFoundError(LocalMoaError):
    """A model's weights are not on this machine (nothing is downloaded at run time)."""

    exit_code = 2


class InvalidModelFileError(LocalMoaError):
    """A model file exists but is not a usable GGUF."""

    exit_code = 2


class InsufficientMemoryError(LocalMoaError):
    """A model cannot fit in the memory budget; said before anything is loaded."""

    exit_code = 2


class PullError(LocalMoaError):
    """A download failed (network, hub, daemon)."""


class ModelLoadError(LocalMoaError):
    """A backend could not load a model (bad file, out of memory ...)."""


class GenerationError(LocalMoaError):
    """A backend failed while generating."""


class RunFailedError(LocalMoaError):
    """A run stopped part-way. ``report`` (a RunReport) holds everything produced."""

    def __init__(self, message: str, report: Any = None) -> None:
        super().__init__(message)
        self.report = report


class RunInterrupted(RunFailedError):
    """Ctrl-C (exit 130) or SIGTERM (exit 143) during a run; ``report`` has what was made."""

    def __init__(self, message: str, report: Any = None, exit_code: int = 130) -> None:
        super().__init__(message, report)
        self.exit_code = exit_code


class Terminated(KeyboardInterrupt):
    """Raised in the main thread by the SIGTERM handler the CLI installs."""


class LayerFailedError(RunFailedError):
    """Every agent of a layer failed: there is nothing to pass on."""


class AggregatorFailedError(RunFailedError):
    """The final aggregator failed; the proposers' answers are still reported."""
