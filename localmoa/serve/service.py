"""What `localmoa serve` serves, without HTTP: the models it offers, one run at a time on
one runtime (models stay loaded between requests, Ollama-style keep-alive), a bounded
queue, cancellation, and the counters /metrics reports.

Runs execute on one worker thread, in order: the engine runs one plan at a time on a
host. A request is a ``Job``; its agent events arrive through ``Job.events`` (called
from the worker thread). A full queue refuses at once (``QueueFull``).

Requests for the same model id that wait together run together: the worker takes the
first waiting request and, up to ``batch_requests``, the later ones for the same model,
and runs their graphs merged (``merge_graphs``): every layer's agents of all of them in
one wave, so agents on one llama.cpp model decode as sequences of one batch. Each
request keeps its own conversation, sampling, stream, cancellation and report. When
the merged run does not fit in memory, they run one after another.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import threading
from pathlib import Path
from typing import Any

from ..agents import internal_error
from ..backends import get_backend
from ..backends.base import Message
from ..config import Config
from ..errors import LocalMoaError, UsageError, clip
from ..host import ModelHost
from ..prompt_fit import PromptTooLongError, check_fits, longest_token_bytes
from ..recipe import Agent, MoaGraph, Overrides, build_graph
from ..routing import routes
from ..runtime import Outcome, Request, Runtime
from .jobs import (
    MAX_CHARS,
    MAX_MESSAGES,
    PROFILE_PREFIX,
    Counters,
    Job,
    QueueFull,
    Sampling,
    ServeOptions,
    ShuttingDown,
    TooLarge,
    UnknownModel,
)

__all__ = ["MAX_CHARS", "MAX_MESSAGES", "PROFILE_PREFIX", "Counters", "Job", "MoaService",
           "QueueFull", "Sampling", "ServeOptions", "ShuttingDown", "TooLarge",
           "UnknownModel"]

#: Seconds stopped requests get to end (their agents stop at their next piece of text; a
#: model worker deaf to that is killed within the engine's grace period).
STOP_S = 30.0


class MoaService:
    """The profiles and models of a config, served one run at a time."""

    def __init__(self, config: Config, options: ServeOptions | None = None, *,
                 start: bool = True) -> None:
        self.config = config
        self.options = options or ServeOptions()
        # each model's widest batch over every profile, times the requests merged: an
        # instance one run leaves loaded may serve another, so every plan knows it
        self.runtime = Runtime(config, self.options.memory_budget, keep_loaded=True,
                               widest=self._widest(),
                               merged_requests=self.options.batch_requests)
        # the machine as it is before anything loads: what models hold later is counted
        # by the plans (resident, other runs' models), never twice
        self.resources = self.runtime.resources
        self.counters = Counters()
        self.lock = threading.Lock()
        self._waiting: collections.deque[Job] = collections.deque()
        self._wake = threading.Condition(self.lock)
        self._longest: dict[str, int] = {}  # model -> bytes of its longest token
        self._running: list[Job] = []
        self._closing = False
        self._stopped = False
        #: Why the jobs still running were stopped (the drain ran out), if they were.
        self._shutdown_reason: str | None = None
        self._idle = threading.Condition(self.lock)  # notified when no job is left
        self._thread = threading.Thread(target=self._work, name="localmoa-serve", daemon=True)
        if start:
            self.start()

    @property
    def host(self) -> ModelHost:
        """Where the served models are loaded."""
        return self.runtime.host

    def _widest(self) -> dict[str, int]:
        """Each model's widest batch over every profile (a routing profile: all its
        specialists)."""
        widest: dict[str, int] = {}
        for name in self.config.profiles:
            try:
                graph = self.graph_for(f"{PROFILE_PREFIX}{name}", Sampling())
            except LocalMoaError:
                continue
            for model, n in graph.batch_room().items():
                widest[model] = max(widest.get(model, 1), n)
        return widest

    def start(self) -> None:
        """Start running requests (``start=False`` queues them until then: a test can
        queue several that must run merged)."""
        if not self._thread.is_alive():
            self._thread.start()

    # --- what is offered ---------------------------------------------------------------

    def model_ids(self) -> list[str]:
        """Every profile as ``moa:NAME`` (the default one first: clients pick the first),
        then every configured model by itself."""
        first = self.options.default_profile or self.config.default_profile
        profiles = sorted(self.config.profiles, key=lambda p: (p != first, p))
        return [f"{PROFILE_PREFIX}{p}" for p in profiles] + sorted(self.config.models)

    def graph_for(self, model: str, sampling: Sampling,
                  chosen: list[str] | None = None) -> MoaGraph:
        """The graph a model id names: a profile's MoA, or one model answering alone. A
        routing profile's is that of the ``chosen`` specialists (None: all of them)."""
        if model.startswith(PROFILE_PREFIX):
            name = model.removeprefix(PROFILE_PREFIX)
            if name not in self.config.profiles:
                raise UnknownModel(f"model {clip(model)!r} not found; GET /v1/models lists them")
            prof = self.config.profiles[name]
            if prof.router is not None and chosen is None:
                chosen = list(prof.specialists)
            graph = build_graph(self.config, name, Overrides(temperature=sampling.temperature,
                                                             seed=sampling.seed), chosen)
        elif model in self.config.models:
            alone = Agent("AGG", 1, 1, model, None, 0.7, 0.95, 512, sampling.seed)
            graph = MoaGraph(profile=model, layers=[], aggregator=alone, models=[model])
        else:
            raise UnknownModel(f"model {clip(model)!r} not found; GET /v1/models lists them")
        agg = graph.aggregator
        return dataclasses.replace(graph, aggregator=dataclasses.replace(
            agg, temperature=_or(sampling.temperature, agg.temperature),
            top_p=_or(sampling.top_p, agg.top_p),
            max_tokens=min(_or(sampling.max_tokens, agg.max_tokens),
                           self.options.max_tokens_cap),
            stop=sampling.stop or agg.stop))

    def check(self, model: str) -> None:
        """UnknownModel unless ``model`` is served."""
        if model not in self.model_ids():
            raise UnknownModel(f"model {clip(model)!r} not found; GET /v1/models lists them")

    # --- running -----------------------------------------------------------------------

    def submit(self, job: Job) -> Job:
        """Queue ``job``; TooLarge when it carries more than a request may, QueueFull at
        once when the queue is full, ShuttingDown when the service is draining."""
        self._check_size(job.messages)
        graph = self.graph_for(job.model, job.sampling)  # an unknown model fails now
        self._check_fits(graph, job.messages)
        with self.lock:  # stop_jobs() empties the queue under it: nothing queued after that
            if self._closing:
                raise ShuttingDown("the server is shutting down; try again shortly, or "
                                   "another instance")
            if len(self._waiting) >= self.options.queue_size:
                self.counters.rejected += 1
                raise QueueFull(f"{len(self._waiting)} requests are waiting (the queue "
                                f"holds {self.options.queue_size}); try again shortly")
            self._waiting.append(job)
            self.counters.requests += 1
            self._wake.notify()
        return job

    def _check_size(self, messages: list[Message]) -> None:
        limit = self.options.max_messages
        if len(messages) > limit:
            raise TooLarge(f"{len(messages)} messages: this server takes at most {limit} "
                           "per request")
        chars = sum(len(str(m.get("content") or "")) for m in messages)
        if chars > self.options.max_chars:
            raise TooLarge(f"the messages hold {chars} characters: this server takes at "
                           f"most {self.options.max_chars} per request")

    def _check_fits(self, graph: MoaGraph, messages: list[Message]) -> None:
        """TooLarge (400, before queueing) when the conversation cannot fit the agents'
        contexts: prompt_fit's lower bound, the vocabulary read once per model."""
        def longest(model: str) -> int:
            if model not in self._longest:
                spec = self.config.models[model]
                where = get_backend(spec.backend).locate(self.config, model).get("path")
                self._longest[model] = longest_token_bytes(Path(where)) if where else 0
            return self._longest[model]

        try:
            check_fits(graph, messages, lambda m: self.config.models[m].n_ctx, longest)
        except PromptTooLongError as exc:
            raise TooLarge(str(exc)) from None

    @property
    def closing(self) -> bool:
        return self._closing

    def queue_depth(self) -> int:
        with self.lock:
            return len(self._waiting) + len(self._running)

    def _routes(self, model: str) -> bool:
        """Whether ``model`` names a routing profile (its requests never run merged: each
        one's router may choose other specialists)."""
        return model.startswith(PROFILE_PREFIX) and routes(
            self.config, model.removeprefix(PROFILE_PREFIX))

    def _take(self) -> list[Job] | None:
        """The next run's requests: the first waiting, and the later ones for the same
        model (up to ``batch_requests``); [] after a second with none; None to stop."""
        with self.lock:
            if not self._waiting and not self._stopped:
                self._wake.wait(1.0)
            if self._stopped:
                return None
            if not self._waiting:
                return []
            first = self._waiting.popleft()
            taken = [first]
            for job in list(self._waiting):
                if len(taken) >= self.options.batch_requests:
                    break
                if job.model == first.model and not self._routes(job.model):
                    self._waiting.remove(job)
                    taken.append(job)
            self._running = taken
            return taken

    def _work(self) -> None:
        while True:
            jobs = self._take()
            if jobs is None:
                return
            try:
                if jobs:
                    self._run(jobs)
            except Exception as exc:  # noqa: BLE001 - a bug must not stop the service
                error = LocalMoaError(internal_error(exc, f"serving {jobs[0].model}"))
                for job in jobs:
                    if job.error is None and job.report is None:
                        job.error = error
            finally:
                with self.lock:
                    self._running = []
                for job in jobs:
                    job.done.set()
                    _tell(job)
                with self.lock:
                    self._idle.notify_all()
            self._expire()

    def _run(self, jobs: list[Job]) -> None:
        live = []
        for job in jobs:
            if job.cancel.is_set():  # counted as cancelled and failed, as in a run
                job.error = self._ended_by(UsageError("cancelled before it ran"), job)
                self._account(job, merged=False)
            else:
                live.append(job)
        if live:
            self._execute(live)
        for job in live:
            self._account(job, merged=len(live) > 1 and job.report is not None
                          and "requests_batched" in job.report.actual)

    def _execute(self, jobs: list[Job]) -> None:
        """Run ``jobs`` (one, or several merged: one after another when merged they do
        not fit) and set each one's report or error."""
        requests = [Request(job.messages, route=self._routing(job.model),
                            build=functools.partial(self.graph_for, job.model, job.sampling),
                            events=job.events, cancel=job.cancel) for job in jobs]
        try:
            outcomes: list[Outcome] = self.runtime.run_jobs(requests)
        except Exception as exc:  # noqa: BLE001 - a bug must not stop the service
            error = LocalMoaError(internal_error(exc, f"serving {jobs[0].model}"))
            outcomes = [error] * len(jobs)
        for job, outcome in zip(jobs, outcomes, strict=True):
            if isinstance(outcome, LocalMoaError):
                job.error = self._ended_by(outcome, job)
                job.report = getattr(outcome, "report", None)
            else:
                job.report = outcome

    def _routing(self, model: str) -> str | None:
        """The routing profile ``model`` names, if it does (its router runs first)."""
        return model.removeprefix(PROFILE_PREFIX) if self._routes(model) else None

    def _account(self, job: Job, merged: bool) -> None:
        with self.lock:
            if merged:
                self.counters.batched += 1
            if job.error is not None:
                self.counters.failed += 1
                if job.cancel.is_set():
                    self.counters.cancelled += 1
            if job.report is not None:
                totals = job.report.totals
                self.counters.completion_tokens += totals.completion_tokens
                self.counters.prompt_tokens += sum(a.prompt_tokens for a in job.report.agents)
                self.counters.layer_tok_per_s = {s.layer: s.agg_tok_per_s
                                                 for s in job.report.layers}
                peak = int(job.report.actual.get("peak_pss_growth_bytes") or 0)
                self.counters.peak_pss_bytes = max(self.counters.peak_pss_bytes, peak)

    def _expire(self) -> None:
        """Unload the models no run used for ``keep_alive_s`` (Ollama's keep_alive)."""
        self.runtime.expire(self.options.keep_alive_s)

    def loaded(self) -> list[dict[str, Any]]:
        """The models loaded now, with when they expire (``/api/ps``)."""
        return self.runtime.loaded(self.options.keep_alive_s)

    def _ended_by(self, error: LocalMoaError, job: Job) -> LocalMoaError:
        """The error a job ends with: ShuttingDown when the drain stopped it."""
        if job.cancel.is_set() and self._shutdown_reason is not None:
            return ShuttingDown(self._shutdown_reason)
        return error

    def begin_close(self) -> None:
        """Take no new request (ShuttingDown); the accepted ones go on. Takes no lock: a
        signal handler calls it (a request queued meanwhile is accepted, and drained)."""
        self._closing = True

    def idle(self) -> bool:
        """Whether no accepted request is waiting or running."""
        with self.lock:
            return not self._waiting and not self._running

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no accepted request is left (True), at most ``timeout_s`` (False)."""
        with self.lock:
            return self._idle.wait_for(lambda: not self._waiting and not self._running,
                                       timeout=max(0.0, timeout_s))

    def stop_jobs(self, reason: str) -> None:
        """Stop every accepted request, each ending with ShuttingDown(``reason``): the
        waiting ones now, the running ones at their agents' next piece of text."""
        with self.lock:
            self._closing = True
            self._shutdown_reason = reason
            running, waiting = list(self._running), list(self._waiting)
            self._waiting.clear()
            self._idle.notify_all()
        for job in waiting:
            job.cancel.set()
            job.error = ShuttingDown(reason)
            job.done.set()
            _tell(job)
        for job in running:
            job.cancel.set()

    def close(self, timeout_s: float = 30.0) -> None:
        """Take no more requests, let the accepted ones finish (up to ``timeout_s``, then
        they are stopped: ``STOP_S`` more for that), and free every model."""
        self.begin_close()
        if not self.wait_idle(timeout_s):
            self.stop_jobs(f"the server is shutting down: requests in flight had "
                           f"{timeout_s:g} s to finish")
            self.wait_idle(STOP_S)
        with self.lock:
            self._stopped = True
            self._wake.notify_all()
        if self._thread.is_alive():
            self._thread.join(STOP_S)
        self.runtime.close()


def _tell(job: Job) -> None:
    """The job's end, to whoever waits for it; their failure is not the service's."""
    if job.on_done is not None:
        with contextlib.suppress(Exception):  # e.g. its event loop closed
            job.on_done(job)


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value
