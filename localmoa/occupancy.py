"""Whether one model instance is in use: the one place its busy/idle state is kept.

Two holders read and write it, each for its own step:
- the model host *claims* an instance for one agent's call (``claim``/``release``),
  with that agent's Cancel: a claimed instance is not given to another agent, the host
  does not unload it, and when the model dies under the agent (``fail``: a worker
  killed by the OOM killer, a native crash) the agent's Cancel is set with why;
- the model itself marks each *generation* (``generating``): one at a time, whether an
  agent's chat or a batch; a second is refused at once, never waited on.

An unload that comes while a generation runs is done when the generation ends
(``after_generation``): never under it, and never by waiting for it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Protocol

from .errors import GenerationError


class Settable(Protocol):
    """What stops the holder of a claim (its ``cancel.Cancel``)."""

    def set(self, reason: str = ...) -> None: ...


class Occupancy:
    """The busy/idle state of one model instance (thread-safe)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._claimed = False
        self._generating = False
        self._after: Callable[[], None] | None = None
        self._holder: Settable | None = None

    @property
    def claimed(self) -> bool:
        """An agent holds the instance (the host gave it out and has not had it back)."""
        return self._claimed

    @property
    def generating(self) -> bool:
        """A generation (or a batch) runs on the instance now."""
        return self._generating

    @property
    def busy(self) -> bool:
        return self._claimed or self._generating

    def claim(self, holder: Settable | None = None) -> bool:
        """Give the instance to one agent (``holder``: its Cancel); False when another
        agent holds it."""
        with self._lock:
            if self._claimed:
                return False
            self._claimed, self._holder = True, holder
            return True

    def release(self) -> None:
        """The agent's call returned."""
        with self._lock:
            self._claimed, self._holder = False, None

    def fail(self, reason: str) -> None:
        """The model is gone under its holder (one line, why): the holder's Cancel is set
        with it, so the agent stops as it does on a Ctrl-C or a timeout, with this
        reason. Nothing happens when nobody holds it."""
        with self._lock:
            holder = self._holder
        if holder is not None:
            holder.set(reason)

    @contextlib.contextmanager
    def generation(self) -> Iterator[None]:
        """One generation on the instance; a second at the same time is refused."""
        with self._lock:
            if self._generating:
                raise GenerationError(
                    f"model instance {self.name!r} is already generating; a llama.cpp "
                    "context serves one request (or batch) at a time")
            self._generating = True
        try:
            yield
        finally:
            self._end()

    def _end(self) -> None:
        """A generation (or an action) ended: run what waited for it, still marked
        generating so that none starts under it, until nothing waits."""
        while True:
            with self._lock:
                after, self._after = self._after, None
                if after is None:
                    self._generating = False
                    return
            try:
                after()
            except BaseException:
                self._end()  # what waits behind it still runs, and the mark comes off
                raise

    def after_generation(self, action: Callable[[], None]) -> None:
        """Run ``action`` now when no generation runs, else when the running one (or
        action) ends (an unload: the last one asked for wins). A generation cannot start
        meanwhile."""
        with self._lock:
            if self._generating:
                self._after = action
                return
            self._generating = True  # no generation starts under the action
        try:
            action()
        finally:
            self._end()
