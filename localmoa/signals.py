"""Ctrl-C and SIGTERM, so that they are never lost.

The handlers raise in the main thread as usual (KeyboardInterrupt, or
Terminated for SIGTERM) and also set a flag: an exception raised while
llama.cpp is inside a ctypes callback (its log callback, during a load) is
swallowed by ctypes, so the engine also checks the flag between steps.
"""

from __future__ import annotations

import signal
import threading

from .errors import Terminated

_requested = threading.Event()
_terminated = threading.Event()


def _handler(signum: int, frame: object) -> None:
    _requested.set()
    if signum == signal.SIGTERM:
        _terminated.set()
        raise Terminated()
    raise KeyboardInterrupt()


def install() -> None:
    """Handle SIGINT and SIGTERM in this (main) thread."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _handler)
        signal.signal(signal.SIGTERM, _handler)


def check() -> None:
    """Raise now if a signal arrived whose exception was swallowed on the way."""
    if _requested.is_set():
        raise Terminated() if _terminated.is_set() else KeyboardInterrupt()


def requested() -> bool:
    """Whether localmoa is being interrupted (Ctrl-C or SIGTERM received, not yet cleared):
    a model worker that dies of the same signal meanwhile was not a crash."""
    return _requested.is_set()


def terminated() -> bool:
    """Whether SIGTERM (not Ctrl-C) was received."""
    return _terminated.is_set()


def clear() -> None:
    """Forget a handled Ctrl-C (a chat goes back to its prompt and continues)."""
    _requested.clear()
    _terminated.clear()


def name_of(number: int) -> str:
    """SIGSEGV for 11: a signal's name, for the line that reports a child's death."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return "unknown signal"
