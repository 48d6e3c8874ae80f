"""What a request to `localmoa serve` is, without HTTP: a ``Job`` (its model, messages,
sampling, events, cancellation, outcome), the options and limits of the service, its
counters, and the refusals it answers with."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..backends.base import Message
from ..cancel import Cancel
from ..engine import RunEvents
from ..errors import LocalMoaError, UsageError
from ..metrics import RunReport

#: How a profile is offered as a model: ``moa:tiny``.
PROFILE_PREFIX = "moa:"


class QueueFull(LocalMoaError):
    """More requests are waiting than the queue holds: try again later."""


class UnknownModel(LocalMoaError):
    """A request named a model that is neither ``moa:PROFILE`` nor a configured model."""


class ShuttingDown(UsageError):
    """The server is draining (SIGTERM): it takes no new request, and a request still
    running when the drain ends is stopped with this error."""


class TooLarge(UsageError):
    """A request with more messages or characters than the server takes (refused before
    it is queued)."""


#: The most messages one request may carry (ServeOptions.max_messages).
MAX_MESSAGES = 1024
#: The most characters of message content one request may carry (512 Ki: more than any
#: served model's context holds; ServeOptions.max_chars).
MAX_CHARS = 512 * 1024


@dataclass(frozen=True)
class ServeOptions:
    """How the service runs: queue length, keep-alive, caps."""

    default_profile: str | None = None
    keep_alive_s: float = 300.0
    queue_size: int = 8
    #: Waiting requests for one model id run merged, as one batch, up to this many.
    batch_requests: int = 4
    max_tokens_cap: int = 4096
    memory_budget: str | None = None
    #: Per-request limits, checked before a request is queued (TooLarge).
    max_messages: int = MAX_MESSAGES
    max_chars: int = MAX_CHARS


@dataclass(frozen=True)
class Sampling:
    """A request's sampling: temperature and seed go to every agent, max_tokens and stop
    to the one whose answer the client reads (the aggregator)."""

    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass
class Job:
    """One request's run: what to run, whom to tell, how to stop it."""

    model: str
    messages: list[Message]
    sampling: Sampling = field(default_factory=Sampling)
    events: RunEvents = field(default_factory=RunEvents)
    #: The request's one cancellation (cancel.py): its client gone, or the drain over.
    cancel: Cancel = field(default_factory=Cancel)
    done: threading.Event = field(default_factory=threading.Event)
    report: RunReport | None = None
    error: LocalMoaError | None = None
    queued_at: float = field(default_factory=time.perf_counter)
    #: Called on the worker thread when the job ends (report or error set).
    on_done: Callable[[Job], None] | None = None


@dataclass
class Counters:
    """What /metrics reports."""

    requests: int = 0
    failed: int = 0
    rejected: int = 0
    cancelled: int = 0
    completion_tokens: int = 0
    prompt_tokens: int = 0
    #: Requests that ran merged with others (in batches of two or more).
    batched: int = 0
    #: The last run's aggregate tok/s per layer (layer number -> tok/s).
    layer_tok_per_s: dict[int, float] = field(default_factory=dict)
    peak_pss_bytes: int = 0
