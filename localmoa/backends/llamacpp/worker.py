"""Model workers, localmoa's side: each loaded llama.cpp model in a process of its own.

A native fault (a SIGSEGV in a fast path, an abort in ggml, the OOM killer)
then costs the agents of that model, not the run: the worker's socket reads end
of file, its exit status says what killed it, and every call waiting on it
fails with one line ("model X crashed: signal 11 (SIGSEGV) during decode").
Unloading a model means its worker exits, so its memory (GPU memory too) goes
back to the system, which llama-cpp-python cannot promise in-process.

Workers are started with fork+exec (``subprocess``), never a bare fork: llama.cpp
and OpenMP are not fork-safe once used. A worker imports llama.cpp before its
first request (~0.25 s); ``prestart`` starts the next loads' workers early, so
a load costs only the model's own load time. The other side of the wire is
backends/llamacpp/worker_main.py, which lists the messages; a batch's side of it, and the
one restart of a batch's worker that died on its own, are in backends/llamacpp/worker_batch.py.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import itertools
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from ... import constants, signals
from ...errors import GenerationError, ModelLoadError
from ..base import ChatStream, GenerateOptions, LoadedModel, Message
from ..batch import Batch
from .model import LoadParams

#: A worker that does not answer a cancel within this time is killed.
CANCEL_GRACE_S = 5.0
#: A worker asked to exit that is still there after this time is killed.
EXIT_GRACE_S = 2.0

_PACKAGE_ROOT = str(Path(__file__).resolve().parents[3])
_lock = threading.Lock()
_live: set[WorkerProcess] = set()
_spares: list[WorkerProcess] = []


class WorkerProcess:
    """One worker process and the socket to it. A reader thread routes each reply to
    the queue of its request; when the worker dies, every waiting request gets
    ("dead", rid, why)."""

    def __init__(self) -> None:
        parent_end, child_end = socket.socketpair()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
        self.started_at = time.perf_counter()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "localmoa.backends.llamacpp.worker_main",
                 str(child_end.fileno())],
                pass_fds=(child_end.fileno(),), stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        except OSError as exc:
            parent_end.close()
            raise ModelLoadError(f"could not start a model worker process ({exc})") from None
        finally:
            child_end.close()
        self.pid = self.proc.pid
        self.conn = Connection(parent_end.detach())
        self.label = "a model"  # the model's name once it loads one
        #: start-up, load, prefill, decode, embedding or idle: for a crash report
        self.phase = "start-up"
        self.ready = threading.Event()
        self.ready_at: float | None = None
        self.dead = threading.Event()
        self.death: str | None = None
        self.restarted = False  # it took over from a worker that died mid-batch
        self._kill_reason: str | None = None
        self._stopping = False
        self._queues: dict[int, queue.SimpleQueue[tuple[Any, ...]]] = {}
        self._rids = itertools.count(1)
        self._send_lock = threading.Lock()
        self._stderr: collections.deque[str] = collections.deque(maxlen=20)
        with _lock:
            _live.add(self)
        self._stderr_thread = threading.Thread(
            target=self._drain_stderr, name=f"localmoa-worker-{self.pid}-stderr", daemon=True)
        self._stderr_thread.start()
        threading.Thread(target=self._read, name=f"localmoa-worker-{self.pid}-reader",
                         daemon=True).start()

    @property
    def ready_s(self) -> float | None:
        """Start to ready: the interpreter up and llama.cpp imported."""
        return None if self.ready_at is None else self.ready_at - self.started_at

    @property
    def alive(self) -> bool:
        """Whether the process still runs (``death`` says why once it is gone).

        Asked of the kernel without reaping the process: ``Popen.poll()`` answers "still
        running" whenever the reader thread is inside ``Popen.wait()`` (it holds the
        lock that guards waitpid), which is exactly when a dead worker is being seen to."""
        if self.dead.is_set() or self.proc.returncode is not None:
            return False
        if not hasattr(os, "waitid"):  # pragma: no cover - macOS
            return self.proc.poll() is None
        try:
            exited = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:  # reaped already, by the reader's wait
            return False
        return exited is None

    @property
    def ended_by_localmoa(self) -> bool:
        """Whether localmoa stopped or killed it (an unload, a cancel it ignored, an
        abandoned agent), rather than it dying on its own."""
        return self._stopping or self._kill_reason is not None

    # --- requests -----------------------------------------------------------------------
    def request(self, kind: str, *args: Any) -> tuple[int, queue.SimpleQueue[tuple[Any, ...]]]:
        """Send a request; its replies arrive on the returned queue."""
        rid = next(self._rids)
        replies: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._queues[rid] = replies
        if self.dead.is_set():
            replies.put(("dead", rid, self.death))
        else:
            self.send((kind, rid, *args))
        return rid, replies

    def call(self, kind: str, *args: Any) -> Any:
        """A request with one answer (the tokenizer's)."""
        rid, replies = self.request(kind, *args)
        try:
            reply = replies.get()
        finally:
            self.forget(rid)
        if reply[0] == "value":
            return reply[2]
        raise GenerationError(str(reply[2]))

    def send(self, message: tuple[Any, ...]) -> None:
        with self._send_lock, contextlib.suppress(OSError):  # dead: the reader reports it
            self.conn.send(message)

    def forget(self, rid: int) -> None:
        self._queues.pop(rid, None)

    # --- its end ------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask it to exit; kill it if it has not after EXIT_GRACE_S. Returns once it is
        gone, so its memory is back when the next model loads."""
        self._stopping = True
        self.send(("exit",))
        try:
            self.proc.wait(EXIT_GRACE_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.dead.wait(EXIT_GRACE_S)

    def kill(self, reason: str) -> None:
        """SIGKILL it now (it did not answer in time); its calls fail with ``reason``."""
        if self._kill_reason is None:
            self._kill_reason = reason
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()

    def _read(self) -> None:
        while True:
            try:
                message = self.conn.recv()
            except (EOFError, OSError):
                break
            except Exception as exc:  # noqa: BLE001 - a reply that does not unpickle
                self._kill_reason = (self._kill_reason
                                     or f"it sent a reply that could not be read ({exc})")
                break
            if message[0] == "ready":
                self.ready_at = time.perf_counter()
                self.ready.set()
                continue
            replies = self._queues.get(message[1])
            if replies is not None:
                replies.put(message)
        try:
            code = self.proc.wait(EXIT_GRACE_S)
        except subprocess.TimeoutExpired:  # it closed the socket but lives on: end it
            self._kill_reason = self._kill_reason or "it closed its socket but did not exit"
            self.proc.kill()
            code = self.proc.wait()
        self._stderr_thread.join(1.0)  # the last line a dying worker wrote (an abort's)
        self.death = self._describe(code)
        self.dead.set()
        with contextlib.suppress(Exception):
            self.conn.close()
        with _lock:
            _live.discard(self)
        for rid, replies in list(self._queues.items()):
            replies.put(("dead", rid, self.death))

    def _describe(self, code: int) -> str:
        """One line on why the worker is gone, for every agent that was waiting on it."""
        if self._kill_reason is not None:
            return f"model {self.label}'s worker was killed: {self._kill_reason}"
        if self._stopping:
            return f"model {self.label} was unloaded"
        if code < 0 and -code in (signal.SIGINT, signal.SIGTERM) and signals.requested():
            # the same Ctrl-C or SIGTERM reached it (sent to the whole process group) while
            # it started, before it could ignore it: localmoa is being interrupted too
            return f"interrupted (model {self.label}'s worker got {signals.name_of(-code)})"
        if code < 0:
            name = signals.name_of(-code)
            again = " again" if self.restarted else ""
            text = f"model {self.label} crashed{again}: signal {-code} ({name}) {self._when()}"
            if -code == signal.SIGKILL:
                text += " (killed by the system, often for lack of memory, or by a user)"
        else:
            text = f"model {self.label}'s worker exited with code {code} {self._when()}"
        last = next((line for line in reversed(self._stderr) if line.strip()), "")
        return f"{text}: {last.strip()[:200]}" if last else text

    def _when(self) -> str:
        return "while idle" if self.phase == "idle" else f"during {self.phase}"

    def _drain_stderr(self) -> None:
        """Keep the last lines the worker wrote (an abort's message); echo them under
        LOCALMOA_DEBUG=1. Draining also keeps a chatty worker from blocking on a full pipe."""
        stream = self.proc.stderr
        if stream is None:
            return
        echo = constants.debug()
        for raw in stream:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self._stderr.append(line)
            if echo:
                sys.stderr.write(f"[worker {self.pid} {self.label}] {line}\n")


class WorkerModel(LoadedModel):
    """A llama.cpp model in a worker process, as the engine sees a loaded model: chat,
    batch, tokenizer, unload; and ``kill`` for an agent that must be cut off."""

    def __init__(self, params: LoadParams, process: WorkerProcess, load_s: float,
                 facts: dict[str, Any], prestarted: bool) -> None:
        self.name = params.name
        self.params = params  # what a fresh worker loads if this one dies mid-batch
        self.process = process
        self.load_s = load_s
        self.runtime_facts: dict[str, Any] = {
            **facts, "worker_pid": process.pid, "worker_prestarted": prestarted,
            "worker_start_s": round(process.ready_s or 0.0, 4)}  # worker_wait_s: in facts
        self._busy = threading.Lock()  # one generation (or batch) at a time
        self._state = threading.Lock()  # orders unload() against the end of a generation
        self._unload_pending = False
        self._unloaded = False

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def alive(self) -> bool:
        """False once its worker died (a later wave loads a fresh one)."""
        return self.process.alive

    @property
    def death(self) -> str | None:
        """Why its worker is gone, one line (None while it runs)."""
        if not self.process.alive:
            self.process.dead.wait(EXIT_GRACE_S)  # its reader is writing why
        return self.process.death

    def chat(self, messages: Sequence[Message], options: GenerateOptions) -> ChatStream:
        return ChatStream(lambda stream: self._generate(stream, messages, options))

    def _generate(self, stream: ChatStream, messages: Sequence[Message],
                  options: GenerateOptions) -> Iterator[str]:
        with self._claim():
            process = self.process
            rid, replies = process.request("chat", [dict(m) for m in messages], options)
            process.phase = "prefill"
            ended = False
            try:
                while True:
                    reply = replies.get()
                    if reply[0] == "text":
                        process.phase = "decode"
                        yield reply[2]
                        continue
                    ended = True
                    if reply[0] == "end":
                        stream.stats = reply[2]
                        return
                    raise GenerationError(str(reply[2]))
            finally:
                if not ended:  # its reader stopped early: the worker stops too
                    self.stop_request(rid, replies, "end")
                process.forget(rid)
                process.phase = "idle"

    def run_batch(self, batch: Batch, n_threads: int) -> None:
        """Decode the chats of ``batch`` together in the worker (the driver thread's
        call): each sequence's text and exact stats come back to its agent's stream. A
        worker that dies on its own meanwhile is restarted once and the sequences resume
        (backends/llamacpp/worker_batch.py)."""
        from .worker_batch import relay_batch

        seqs = batch.sequences()  # every member joined or withdrew (they may tokenize)
        if seqs:
            with self._claim():
                relay_batch(self, batch, seqs, n_threads)

    def may_restart(self) -> bool:
        """Whether its worker died on its own (a native crash, the OOM killer, a kill from
        outside), so a fresh one may take over: not ended by localmoa, nor while localmoa
        is being interrupted."""
        return (not self._unloaded and not self.process.ended_by_localmoa
                and not signals.requested())

    def adopt(self, process: WorkerProcess) -> bool:
        """Go on in ``process``, a fresh worker replacing the dead one; False when this
        model was killed or unloaded meanwhile."""
        with self._state:
            if self._unloaded:
                return False
            self.process = process
        return True

    def stop_request(self, rid: int, replies: queue.SimpleQueue[tuple[Any, ...]],
                last: str) -> None:
        """Ask the worker to stop request ``rid`` and wait for its ``last`` reply; kill it
        when it does not come within CANCEL_GRACE_S (stuck in native code)."""
        self.process.send(("cancel", rid, None))
        deadline = time.monotonic() + CANCEL_GRACE_S
        while (left := deadline - time.monotonic()) > 0:
            try:
                reply = replies.get(timeout=left)
            except queue.Empty:
                break
            if reply[0] in (last, "error", "dead"):
                return
        self.process.kill(f"it did not stop within {CANCEL_GRACE_S:g} s of a cancel")

    @contextlib.contextmanager
    def _claim(self) -> Iterator[None]:
        if not self._busy.acquire(blocking=False):
            raise GenerationError(f"model instance {self.name!r} is already generating; "
                                  "a llama.cpp context serves one request (or batch) at a time")
        try:
            if self._unloaded:
                raise GenerationError(f"model instance {self.name!r} was unloaded")
            yield
        finally:
            with self._state:
                pending, self._unload_pending = self._unload_pending, False
                self._busy.release()
            if pending:
                self.unload()

    def embed(self, texts: Sequence[str]) -> list[list[float]] | None:
        """One mean-pooled, L2-normalised vector per text, computed by the worker between
        chats (backends/llamacpp/embed.py); None for a model that gives none."""
        with self._claim():
            process = self.process
            process.phase = "embedding"
            try:
                vectors = process.call("embed", list(texts))
            finally:
                process.phase = "idle"
        return None if vectors is None else [list(v) for v in vectors]

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` in this model's vocabulary (counted by the worker)."""
        return int(self.process.call("count", text))

    def cut_tokens(self, text: str, n: int) -> str:
        """The first ``n`` tokens of ``text``, as text."""
        return str(self.process.call("cut", text, n))

    def unload(self) -> None:
        """The worker exits and its memory returns to the system. During a generation
        (or one paused in a stream nobody closed) that happens when it ends: unload
        never waits on a generation."""
        with self._state:
            if not self._busy.acquire(blocking=False):
                self._unload_pending = True
                return
        try:
            if not self._unloaded:
                self._unloaded = True
                self.process.stop()
        finally:
            self._busy.release()

    def kill(self, reason: str) -> None:
        """Cut it off now: SIGKILL its worker. Calls on it fail with ``reason``."""
        with self._state:  # a worker taking over a dead one is killed too
            self._unloaded = True
            process = self.process
        process.kill(reason)


def load_in_worker(params: LoadParams) -> WorkerModel:
    """Load ``params`` in a worker: a prestarted one if there is one, else a new one."""
    process, prestarted = _take()
    process.label = params.name
    process.phase = "load"
    asked = time.perf_counter()
    try:
        rid, replies = process.request("load", params)
        while True:  # a Ctrl-C must not wait for the load to end
            with contextlib.suppress(queue.Empty):
                reply = replies.get(timeout=0.25)
                break
        process.forget(rid)
    except BaseException:
        process.kill("interrupted during its load")
        raise
    if reply[0] == "loaded":
        process.phase = "idle"
        waited = max(0.0, (process.ready_at or asked) - asked)  # for its start-up
        try:
            return WorkerModel(params, process, reply[2], {**reply[3], "worker_wait_s":
                                                            round(waited, 4)}, prestarted)
        except BaseException:  # a Ctrl-C right now: nobody would ever unload it
            process.kill("interrupted during its load")
            raise
    process.stop()
    raise ModelLoadError(str(reply[2]))


def prestart(count: int) -> None:
    """Have ``count`` spare workers started (they import llama.cpp meanwhile)."""
    with _lock:
        _spares[:] = [w for w in _spares if w.alive]
        missing = count - len(_spares)
    for _ in range(max(0, missing)):
        process = WorkerProcess()
        with _lock:
            _spares.append(process)


def _take() -> tuple[WorkerProcess, bool]:
    with _lock:
        while _spares:
            process = _spares.pop(0)
            if process.alive:
                return process, True
    return WorkerProcess(), False


def discard_spares() -> None:
    """Stop the spare workers nobody took."""
    with _lock:
        spares = list(_spares)
        _spares.clear()
    for process in spares:
        process.stop()


def live_workers() -> list[WorkerProcess]:
    """Every worker process of this process that is still running (spares included)."""
    with _lock:
        return [w for w in _live if w.alive]


@atexit.register
def _kill_all() -> None:
    """No worker outlives localmoa (they would also see their socket close)."""
    for process in live_workers():
        with contextlib.suppress(Exception):
            process.proc.kill()
