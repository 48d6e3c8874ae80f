"""Where loaded models live between waves (and, in a chat or a server, between runs),
and the threads agents run on. The host keeps instances and executes loads and unloads;
what to load when is the planner's, and the runtime's (runtime.py) for warm plans.

``ModelHost`` owns every instance: usable ones in ``loaded`` (by the plan's
Instance key), and ``held`` ones, whose agent timed out and did not stop: they
are no longer the plan's, nobody is handed them again, and they are freed the
moment their agent's call returns.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .agents import internal_error
from .backends import created_backends, get_backend
from .backends.base import LoadedModel
from .config import Config, ModelSpec
from .errors import LocalMoaError
from .memory.planner import Instance
from .occupancy import Settable


@dataclass(eq=False)
class Loaded:
    """One model instance in memory, and who is using it."""

    inst: Instance
    model: LoadedModel
    started_at: float = 0.0  # perf_counter when its load began
    charged: bool = False  # its load time already reported on an agent
    #: Bytes per pool it keeps while held (the planner's cost of one instance).
    held_bytes: dict[str, int] = field(default_factory=dict)

    @property
    def busy(self) -> bool:
        """An agent holds it (its model's occupancy, the one busy/idle state)."""
        return self.model.occupancy.claimed


class _Thread(threading.Thread):
    """A long-lived thread that runs one job at a time. A job that raises never kills
    it: the error is reported and the thread takes the next job."""

    def __init__(self, index: int) -> None:
        super().__init__(name=f"localmoa-agent-{index}", daemon=True)
        self.jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self.idle = threading.Event()
        self.idle.set()
        self.start()

    def run(self) -> None:
        while (job := self.jobs.get()) is not None:
            try:
                job()
            except BaseException as exc:  # noqa: BLE001 - the thread must survive its jobs
                internal_error(exc, self.name)
            finally:
                self.idle.set()

    def submit(self, job: Callable[[], None]) -> None:
        self.idle.clear()
        self.jobs.put(job)


class AgentThreads:
    """The threads agents run on, reused from wave to wave and turn to turn.

    llama.cpp built with OpenMP keeps a team of threads per calling thread, and
    the team spins for a while after each computation to stay fast. Calling it
    from a new thread for every agent leaves spinning teams behind that compete
    for the cores (1.5x slower on the overhead benchmark); reusing the same few
    threads keeps one warm team each, as a plain loop on one thread does.
    """

    def __init__(self) -> None:
        self._threads: list[_Thread] = []

    def get(self, index: int) -> _Thread:
        """An idle, living thread for the ``index``-th agent of a wave."""
        while len(self._threads) <= index:
            self._threads.append(_Thread(len(self._threads)))
        thread = self._threads[index]
        if not thread.is_alive() or not thread.idle.is_set():
            thread.jobs.put(None)  # still busy with an abandoned agent: it ends after that
            thread = self._threads[index] = _Thread(index)
        return thread

    def stop(self) -> None:
        """Every thread ends after its current job."""
        for thread in self._threads:
            thread.jobs.put(None)
        self._threads = []


@dataclass
class ModelHost:
    """The model instances loaded in this process. A run frees them at its end; a
    chat keeps one host across turns, so models stay loaded between turns."""

    config: Config
    paths: dict[str, Path] = field(default_factory=dict)
    loaded: dict[Instance, Loaded] = field(default_factory=dict)
    #: Instances an abandoned agent still runs on; each is freed when its agent returns.
    held: list[Loaded] = field(default_factory=list)
    load_errors: dict[Instance, str] = field(default_factory=dict)
    runtime: dict[str, dict[str, Any]] = field(default_factory=dict)  # e.g. Ollama's /api/ps
    threads: AgentThreads = field(default_factory=AgentThreads)
    loads: int = 0
    unloads: int = 0
    load_s: float = 0.0
    #: Set whenever a held instance is freed.
    released: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def resident(self) -> dict[str, int]:
        """Usable instances per model loaded now (a warm plan's start)."""
        counts: dict[str, int] = {}
        for inst in self.loaded:
            counts[inst.model] = counts.get(inst.model, 0) + 1
        return counts

    def resident_seqs(self) -> dict[str, int]:
        """Sequences the first instance of each loaded model has room for (its batch)."""
        return {inst.model: entry.inst.seqs for inst, entry in self.loaded.items()
                if inst.slot == 0}

    def held_bytes(self) -> dict[str, int]:
        """Bytes per pool kept by instances abandoned agents still run on."""
        total: dict[str, int] = {}
        with self.lock:
            for entry in self.held:
                for pool, amount in entry.held_bytes.items():
                    total[pool] = total.get(pool, 0) + amount
        return total

    def compact(self) -> None:
        """Number each model's usable instances 0..n-1 again (a held one left a gap), so
        a warm plan's start (n instances = slots 0..n-1) matches the host."""
        by_model: dict[str, list[Loaded]] = {}
        for inst in sorted(self.loaded):
            by_model.setdefault(inst.model, []).append(self.loaded[inst])
        self.loaded = {}
        for model, entries in by_model.items():
            for slot, entry in enumerate(entries):
                entry.inst = Instance(model, slot, entry.inst.seqs)
                self.loaded[entry.inst] = entry

    def reap_dead(self) -> list[tuple[Instance, str]]:
        """Drop the loaded instances whose worker process died (crashed, or was killed)
        and nobody is using: each with why, one line. Their memory went with them."""
        gone = [(entry.inst, entry.model.death or f"{entry.inst} died")
                for entry in self.loaded.values() if not entry.model.alive and not entry.busy]
        for inst, _ in gone:  # after reading why: unloading is not the cause
            self.unload(inst)
        return gone

    def load(self, inst: Instance, n_threads: int) -> bool:
        """Load ``inst`` unless it is loaded (with room for ``inst.seqs`` sequences);
        False (and ``load_errors``) on failure."""
        if inst in self.loaded:
            return True
        spec = self.config.models[inst.model]
        self.load_errors.pop(inst, None)
        started = time.perf_counter()
        backend = get_backend(spec.backend)
        try:
            model = backend.load(inst.model, spec, self.paths.get(inst.model), n_threads,
                                 n_seq=inst.seqs)
        except LocalMoaError as exc:
            self.load_errors[inst] = str(exc)
            return False
        except Exception as exc:  # noqa: BLE001 - a backend's bug (a plugin's) costs its agents
            self.load_errors[inst] = (f"model {inst.model!r}: backend {spec.backend} (package "
                                      f"{backend.package}) failed to load it: "
                                      + internal_error(exc, f"loading {inst.model}"))
            return False
        self.loaded[inst] = Loaded(inst, model, started_at=started)
        facts = model.runtime_facts
        if facts:
            self.runtime[inst.model] = dict(facts)
        with self.lock:
            self.loads += 1
            self.load_s += model.load_s
        return True

    def acquire(self, inst: Instance, holder: Settable | None = None) -> Loaded | None:
        """The instance for one agent's call (``holder``: the agent's Cancel, set when
        the model dies under it), marked busy; None when it is not loaded or busy."""
        with self.lock:
            entry = self.loaded.get(inst)
            if entry is None or not entry.model.occupancy.claim(holder):
                return None
            return entry

    def release(self, entry: Loaded) -> bool:
        """The agent's call on ``entry`` returned. A held instance is freed now; True then."""
        with self.lock:
            entry.model.occupancy.release()
            if entry not in self.held:  # its agent was not abandoned
                return False
            self.held.remove(entry)
        self._free(entry)
        self.released.set()
        return True

    def abandon(self, inst: Instance, held_bytes: dict[str, int]) -> None:
        """An agent on ``inst`` timed out and did not stop: the instance leaves the plan's
        keys (a later wave may load a fresh one) and is freed when the agent returns."""
        with self.lock:
            entry = self.loaded.get(inst)
            if entry is None or not entry.busy:
                return
            del self.loaded[inst]
            entry.held_bytes = dict(held_bytes)
            self.held.append(entry)
        # a model worker is cut off now, and its call returns at once
        entry.model.kill("its agent did not stop in time")

    def unload(self, inst: Instance) -> None:
        with self.lock:
            entry = self.loaded.get(inst)
            if entry is None or entry.busy:
                return  # never free a model a thread is using
            del self.loaded[inst]
        self._free(entry)

    def _free(self, entry: Loaded) -> None:
        entry.model.unload()
        with self.lock:
            self.unloads += 1

    def prestart(self, loads: list[Instance]) -> None:
        """Start the worker processes ``loads`` will need, ahead of their loads."""
        specs: dict[str, list[ModelSpec]] = {}
        for inst in loads:
            spec = self.config.models[inst.model]
            specs.setdefault(spec.backend, []).append(spec)
        for name, group in specs.items():
            get_backend(name).prestart(group)

    def worker_pids(self) -> dict[int, str]:
        """The worker process of each loaded (or held) instance: pid -> instance."""
        with self.lock:
            entries = [*self.loaded.values(), *self.held]
        return {pid: str(entry.inst) for entry in entries
                if (pid := entry.model.pid) is not None}

    def close(self) -> None:
        """Free every model (the end of a run, or of a chat); held ones go when their
        agents return. Spare worker processes stop."""
        for inst in list(self.loaded):
            self.unload(inst)
        self.threads.stop()
        for backend in created_backends():
            backend.close()
