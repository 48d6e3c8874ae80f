"""One model worker process, localmoa's side of its socket, and the spare workers
started ahead of their loads (``prestart``).

Workers are started with fork+exec (``subprocess``), never a bare fork: llama.cpp
and OpenMP are not fork-safe once used. A worker imports llama.cpp before its
first request (~0.25 s); ``prestart`` starts the next loads' workers early, so
a load costs only the model's own load time. The other side of the wire is
backends/llamacpp/worker_main.py, which lists the messages. The model a worker holds,
as the engine sees it, is worker.py's WorkerModel.
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
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import psutil

from ... import constants, signals
from ...errors import GenerationError, ModelLoadError

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
        env = constants.child_environment()
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
        #: Told why, once, when the process is gone (its model's occupancy then stops
        #: the agent that holds it through that agent's Cancel).
        self.on_death: Callable[[str], None] | None = None
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

    def cpu_s(self) -> float:
        """CPU seconds the worker has used so far (-1 once it is gone)."""
        try:
            times = psutil.Process(self.pid).cpu_times()
        except psutil.Error:
            return -1.0
        return float(times.user + times.system)

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
        if self.on_death is not None:
            with contextlib.suppress(Exception):  # the reader must reach its replies
                self.on_death(self.death)
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


class DeafWatch:
    """Whether a worker asked to let something go (a cancel) is deaf: a whole grace
    period in which it used no CPU time, because it is stopped (SIGSTOP) or blocked,
    confirmed by a short second look (after a Ctrl-Z and ``fg`` the worker resumes with
    localmoa, its clock did not run). A worker that is only slow, on a busy machine or
    in a long prefill step, keeps using CPU and is waited for, up to ``CEILING_S`` (or
    twelve graces) after the ask: then it is deaf whatever it does."""

    CONFIRM_S = 1.0
    CEILING_S = 120.0

    def __init__(self, process: WorkerProcess, grace_s: float) -> None:
        self.process = process
        self.grace_s = grace_s
        self._asked = self._since = time.monotonic()
        self._cpu_s = process.cpu_s()
        self._doubt = False  # one look found no CPU used: the next decides

    def left_s(self) -> float:
        """Seconds until the next look (0: look now)."""
        wait = self.CONFIRM_S if self._doubt else self.grace_s
        return max(0.0, self._since + wait - time.monotonic())

    def deaf(self) -> bool:
        """True once a grace period, then a confirming look, passed with no CPU used, or
        once the ceiling passed; a look that finds CPU used starts another period."""
        now = time.monotonic()
        if now - self._asked >= max(self.CEILING_S, 12 * self.grace_s):
            return True
        if self.left_s() > 0:
            return False
        cpu_s = self.process.cpu_s()
        if cpu_s > self._cpu_s:
            self._since, self._cpu_s, self._doubt = now, cpu_s, False
            return False
        if not self._doubt:
            self._since, self._doubt = now, True
            return False
        return True


def prestart(count: int) -> None:
    """Have ``count`` spare workers started (they import llama.cpp meanwhile)."""
    with _lock:
        _spares[:] = [w for w in _spares if w.alive]
        missing = count - len(_spares)
    for _ in range(max(0, missing)):
        process = WorkerProcess()
        with _lock:
            _spares.append(process)


def take_worker() -> tuple[WorkerProcess, bool]:
    """A prestarted worker if one is alive (True), else a new one (False)."""
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
