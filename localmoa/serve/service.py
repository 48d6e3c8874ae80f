"""What `localmoa serve` serves, without HTTP: the models it offers, one run at a time on
one model host (models stay loaded between requests, Ollama-style keep-alive), a
bounded queue, cancellation, and the counters /metrics reports.

Runs execute on one worker thread, in order: the engine runs one plan at a time on a
host. A request is a ``Job``; its agent events arrive through ``Job.events`` (called
from the worker thread). A full queue refuses at once (``QueueFull``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..agents import internal_error
from ..backends.base import Message
from ..config import Config
from ..engine import RunEvents, execute_plan
from ..errors import InsufficientMemoryError, LocalMoaError, UsageError
from ..host import ModelHost
from ..memory.probe import probe
from ..metrics import RunReport
from ..preflight import Preflight, preflight
from ..recipe import Agent, MoaGraph, Overrides, build_graph

#: How a profile is offered as a model: ``moa:tiny``.
PROFILE_PREFIX = "moa:"


class QueueFull(LocalMoaError):
    """More requests are waiting than the queue holds: try again later."""


class UnknownModel(LocalMoaError):
    """A request named a model that is neither ``moa:PROFILE`` nor a configured model."""


@dataclass(frozen=True)
class ServeOptions:
    """How the service runs: queue length, keep-alive, caps."""

    default_profile: str | None = None
    keep_alive_s: float = 300.0
    queue_size: int = 8
    max_tokens_cap: int = 4096
    memory_budget: str | None = None


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
    cancel: threading.Event = field(default_factory=threading.Event)
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
    #: The last run's aggregate tok/s per layer (layer number -> tok/s).
    layer_tok_per_s: dict[int, float] = field(default_factory=dict)
    peak_pss_bytes: int = 0


class MoaService:
    """The profiles and models of a config, served one run at a time."""

    def __init__(self, config: Config, options: ServeOptions | None = None) -> None:
        self.config = config
        self.options = options or ServeOptions()
        self.host = ModelHost(config)
        # the machine as it is before anything loads: what models hold later is counted
        # by the plans (resident, other runs' models), never twice
        self.resources = probe(self.options.memory_budget)
        self.counters = Counters()
        self.lock = threading.Lock()
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=self.options.queue_size)
        self._prepared: dict[str, Preflight] = {}
        #: Each model's widest batch over every profile: an instance one run leaves
        #: loaded may serve another, so every plan knows footprints that wide.
        self._widest: dict[str, int] = {}
        for name in config.profiles:
            try:
                for model, n in build_graph(config, name, Overrides()).widest().items():
                    self._widest[model] = max(self._widest.get(model, 1), n)
            except LocalMoaError:
                continue
        self._last_used: dict[str, float] = {}  # model -> when a run last used it
        self._running: Job | None = None
        self._closing = False
        self._thread = threading.Thread(target=self._work, name="localmoa-serve", daemon=True)
        self._thread.start()

    # --- what is offered ---------------------------------------------------------------

    def model_ids(self) -> list[str]:
        """Every profile as ``moa:NAME`` (the default one first: clients pick the first),
        then every configured model by itself."""
        first = self.options.default_profile or self.config.default_profile
        profiles = sorted(self.config.profiles, key=lambda p: (p != first, p))
        return [f"{PROFILE_PREFIX}{p}" for p in profiles] + sorted(self.config.models)

    def graph_for(self, model: str, sampling: Sampling) -> MoaGraph:
        """The graph a model id names: a profile's MoA, or one model answering alone."""
        if model.startswith(PROFILE_PREFIX):
            name = model.removeprefix(PROFILE_PREFIX)
            if name not in self.config.profiles:
                raise UnknownModel(f"model {model!r} not found; GET /v1/models lists them")
            graph = build_graph(self.config, name, Overrides(temperature=sampling.temperature,
                                                             seed=sampling.seed))
        elif model in self.config.models:
            alone = Agent("AGG", 1, 1, model, None, 0.7, 0.95, 512, sampling.seed)
            graph = MoaGraph(profile=model, layers=[], aggregator=alone, models=[model])
        else:
            raise UnknownModel(f"model {model!r} not found; GET /v1/models lists them")
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
            raise UnknownModel(f"model {model!r} not found; GET /v1/models lists them")

    # --- running -----------------------------------------------------------------------

    def submit(self, job: Job) -> Job:
        """Queue ``job``; QueueFull at once when the queue is full, UsageError when the
        service is draining."""
        if self._closing:
            raise UsageError("the server is shutting down; try another instance")
        self.graph_for(job.model, job.sampling)  # an unknown model fails now, not queued
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            with self.lock:
                self.counters.rejected += 1
            raise QueueFull(f"{self._queue.qsize()} requests are waiting (the queue holds "
                            f"{self.options.queue_size}); try again shortly") from None
        with self.lock:
            self.counters.requests += 1
        return job

    @property
    def closing(self) -> bool:
        return self._closing

    def queue_depth(self) -> int:
        return self._queue.qsize() + (1 if self._running is not None else 0)

    def _work(self) -> None:
        while True:
            try:
                job = self._queue.get(timeout=1.0)
            except queue.Empty:
                self._expire()
                continue
            if job is None:
                return
            self._running = job
            try:
                self._run(job)
            finally:
                self._running = None
                job.done.set()
                _tell(job)
            self._expire()

    def _run(self, job: Job) -> None:
        if job.cancel.is_set():
            job.error = UsageError("cancelled before it ran")
            with self.lock:
                self.counters.cancelled += 1
            return
        try:
            graph = self.graph_for(job.model, job.sampling)
            for model in graph.models:
                self._last_used[model] = time.monotonic()
            pre = self._preflight(graph)
            try:  # other runs' models stay loaded when the plan allows
                run_plan = self.host.warm_plan(graph, pre, self._others_bytes(pre))
            except InsufficientMemoryError:
                for inst in [i for i in self.host.loaded if i.model not in pre.footprints]:
                    self.host.unload(inst)
                run_plan = self.host.warm_plan(graph, pre)
            job.report = execute_plan(self.config, graph, job.messages, run_plan, pre.paths,
                                      events=job.events, host=self.host, runtime=pre.runtime,
                                      cancel=job.cancel)
        except LocalMoaError as exc:
            job.error = exc
            job.report = getattr(exc, "report", None)
        except Exception as exc:  # noqa: BLE001 - a bug must not stop the service
            job.error = LocalMoaError(internal_error(exc, f"serving {job.model}"))
        now = time.monotonic()
        for model in (job.report.models if job.report else {}):
            self._last_used[model] = now
        with self.lock:
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

    def _preflight(self, graph: MoaGraph) -> Preflight:
        key = f"{graph.profile}|{','.join(graph.models)}"
        if key not in self._prepared:
            self._prepared[key] = preflight(self.config, graph, self.options.memory_budget,
                                            resources=self.resources,
                                            batch_up_to=self._widest)
        return dataclasses.replace(self._prepared[key], graph=graph)

    def _others_bytes(self, pre: Preflight) -> dict[str, int]:
        """What models this run does not use, kept loaded, hold: not this run's to plan."""
        out: dict[str, int] = {}
        for model, count in self.host.resident().items():
            if model in pre.footprints:
                continue
            for known in self._prepared.values():
                if model in known.footprints:
                    seqs = self.host.resident_seqs().get(model, 1)
                    for pool, amount in known.footprints[model].cost(count, seqs).items():
                        out[pool] = out.get(pool, 0) + amount
                    break
        return out

    def _expire(self) -> None:
        """Unload the models no run used for ``keep_alive_s`` (Ollama's keep_alive)."""
        now = time.monotonic()
        for inst in list(self.host.loaded):
            used = self._last_used.get(inst.model, 0.0)
            if now - used >= self.options.keep_alive_s:
                self.host.unload(inst)

    def loaded(self) -> list[dict[str, Any]]:
        """The models loaded now, with when they expire (``/api/ps``)."""
        now = time.monotonic()
        out = []
        for inst in sorted(self.host.loaded):
            used = self._last_used.get(inst.model, now)
            out.append({"model": inst.model, "instance": str(inst),
                        "expires_in_s": max(0.0, self.options.keep_alive_s - (now - used))})
        return out

    def close(self, timeout_s: float = 30.0) -> None:
        """Take no more requests, let the running one finish (up to ``timeout_s``, then
        it is cancelled), and free every model."""
        self._closing = True
        running = self._running
        while True:
            try:
                waiting = self._queue.get_nowait()
            except queue.Empty:
                break
            if waiting is not None:
                waiting.cancel.set()
                waiting.error = UsageError("the server is shutting down")
                waiting.done.set()
                _tell(waiting)
        if running is not None and not running.done.wait(timeout_s):
            running.cancel.set()
            running.done.wait(timeout_s)
        self._queue.put(None)
        self._thread.join(timeout_s)
        self.host.close()


def _tell(job: Job) -> None:
    """The job's end, to whoever waits for it; their failure is not the service's."""
    if job.on_done is not None:
        with contextlib.suppress(Exception):  # e.g. its event loop closed
            job.on_done(job)


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value
