"""Running model-written Python code, contained: one separate process per program.

What contains a program (``run_program``):

- a wall-clock timeout (``Limits.timeout_s``): the whole process group is killed;
- resource limits set in the child before the program runs: address space
  (``memory_bytes``), CPU seconds (the timeout plus one), file size (``file_bytes``),
  no new processes (RLIMIT_NPROC 0, not enforced for a real root) and no core dumps;
- an empty temporary directory as its working directory and HOME, deleted after;
- a clean environment (PATH and LANG only), ``python -I -B`` (no user site, no
  PYTHON* variables, no bytecode written), stdin from /dev/null, stdout and stderr to
  files (capped by the file-size limit, read back up to ``output_bytes``);
- no network: a new, empty network namespace (``unshare -rn``) where this machine
  allows one (probed once), and in every case an audit hook in the child that refuses
  sockets to a network and name lookups;
- the same audit hook refuses writes, removals and renames outside the directory, and
  new processes (sandbox_child.py).

A refused action makes the outcome "network" or "denied" even when the program caught
the error. Statuses: passed, failed (an assertion), error, timeout, memory, network,
denied. This is containment for honest mistakes of a model (a loop that never ends, a
list that grows without bound, a stray file write, a demo that reads input), not a
security boundary against code written to escape it: native code (ctypes) is not
covered by the audit hook, code that digs into the bootstrap's objects can switch the
hook off, root in the namespace can remount the read-only view, and a program that
writes to the verdict descriptor can forge its result.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .sandbox_child import EXIT_CODES

#: Where the unshare program is looked for (the user's PATH is not consulted).
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"
#: The child's whole environment besides HOME and TMPDIR.
CHILD_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
STATUSES = ("passed", "failed", "error", "timeout", "memory", "network", "denied")
_CODE_STATUS = {code: status for status, code in EXIT_CODES.items()}
_BOOTSTRAP = Path(__file__).with_name("sandbox_child.py")


@dataclass(frozen=True)
class Limits:
    """What one program may use. ``timeout_s``: wall-clock seconds; ``memory_bytes``:
    address space; ``file_bytes``: the largest file it may write (its output too);
    ``output_bytes``: how much of stdout and of stderr is kept."""

    timeout_s: float = 10.0
    memory_bytes: int = 1 << 30
    file_bytes: int = 16 << 20
    output_bytes: int = 64 << 10

    def child_limits(self) -> dict[str, int]:
        return {"memory_bytes": self.memory_bytes, "cpu_s": int(self.timeout_s) + 1,
                "file_bytes": self.file_bytes, "processes": 0}


@dataclass(frozen=True)
class Outcome:
    """How one program ended: its status (STATUSES), a line on why, its output (capped),
    what it passed to ``__sandbox_result__`` (JSON text, or None) and its seconds."""

    status: str
    detail: str
    stdout: str
    stderr: str
    seconds: float
    result: str | None = None

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@dataclass(frozen=True)
class Containment:
    """What this machine allows besides the limits and the audit hook: ``unshare`` is
    the program that makes a new user and network namespace (None when the machine
    allows none); ``read_only``: a new mount namespace too, where every mount but the
    program's folder is read-only."""

    unshare: str | None
    read_only: bool = False

    @property
    def network_namespace(self) -> bool:
        return self.unshare is not None

    def prefix(self) -> list[str]:
        if self.unshare is None:
            return []
        return [self.unshare, "-rnm" if self.read_only else "-rn", "--"]

    def describe(self) -> str:
        network = ("a new network namespace without network (unshare) and a socket guard"
                   if self.unshare else
                   "a socket guard only (this machine allows no new network namespace: "
                   "unshare -rn failed)")
        files = ("a read-only view of the file system but that directory"
                 if self.read_only else "writes outside that directory refused")
        return ("model-written code runs in a separate process: a timeout, memory, CPU and "
                "file-size limits, an empty temporary directory, a clean environment, "
                f"{files} (and a guard on writes); no network: {network}")


#: Run under a probed containment: reports whether / is read-only and the network absent.
_PROBE = ("import os, socket\n"
          "__sandbox_result__([bool(os.statvfs('/').f_flag & os.ST_RDONLY), "
          "[i for _, i in socket.if_nameindex()]])\n")


@functools.cache
def containment() -> Containment:
    """Probed once per process: ``unshare -rnm`` with a read-only view, else
    ``unshare -rn``, else neither (the socket guard alone)."""
    unshare = shutil.which("unshare", path=SYSTEM_PATH)
    if unshare is None:
        return Containment(None)
    for candidate in (Containment(unshare, True), Containment(unshare, False)):
        try:
            outcome = run_program(_PROBE, Limits(timeout_s=30), candidate)
        except OSError:
            continue
        found = json.loads(outcome.result or "null") if outcome.passed else None
        if isinstance(found, list) and (found[0] or not candidate.read_only):
            return candidate
    return Containment(None)


def run_program(source: str, limits: Limits | None = None,
                contained: Containment | None = None) -> Outcome:
    """Run ``source`` as a Python program in a fresh contained process (see the module)."""
    limits = limits or Limits()
    contained = contained or containment()
    with tempfile.TemporaryDirectory(prefix="localmoa-sandbox-") as top:
        control, work = Path(top), Path(top) / "work"
        work.mkdir()
        program = control / "program.py"
        program.write_text(source, encoding="utf-8")
        read_end, write_end = os.pipe()
        try:
            return _run(contained, limits, control, work, (read_end, write_end))
        finally:
            os.close(read_end)  # the write end is _run's: closed once the child has it
            _make_removable(work)


def _run(contained: Containment, limits: Limits, control: Path, work: Path,
         pipe: tuple[int, int]) -> Outcome:
    command = [*contained.prefix(), sys.executable, "-I", "-B", "-c",
               _BOOTSTRAP.read_text(encoding="utf-8"), str(control / "program.py"),
               str(work), str(pipe[1]),
               json.dumps({**limits.child_limits(), "read_only": contained.read_only})]
    env = {**CHILD_ENV, "HOME": str(work), "TMPDIR": str(work)}
    start = time.monotonic()
    try:
        with open(control / "stdout", "wb") as out, open(control / "stderr", "wb") as err:
            proc = subprocess.Popen(command, cwd=work, env=env, stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=err, pass_fds=(pipe[1],),
                                    start_new_session=True)
    finally:
        os.close(pipe[1])  # once: the number may be another thread's right after
    timed_out = False
    try:
        proc.wait(timeout=limits.timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        kill_group(proc)
    seconds = time.monotonic() - start
    stdout = _head(control / "stdout", limits.output_bytes)
    stderr = _head(control / "stderr", limits.output_bytes)
    if timed_out:
        return Outcome("timeout", f"no end within {limits.timeout_s:g} s; killed", stdout,
                       stderr, seconds)
    verdict = _read_verdict(pipe[0])
    status, detail = _status(proc.returncode, verdict, stderr)
    return Outcome(status, detail, stdout, stderr, seconds,
                   verdict.get("result") if verdict else None)


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill the program's whole process group (what it started too), then reap it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def _read_verdict(fd: int) -> dict[str, str] | None:
    os.set_blocking(fd, False)
    data = b""
    with contextlib.suppress(BlockingIOError, OSError):
        while chunk := os.read(fd, 65536):
            data += chunk
    try:
        found = json.loads(data.decode("utf-8")) if data else None
    except (UnicodeDecodeError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def _status(code: int, verdict: dict[str, str] | None, stderr: str) -> tuple[str, str]:
    """The status from the child's verdict and exit code; a child killed or gone early
    is read from its signal or its last words."""
    if verdict is not None and _CODE_STATUS.get(code) == verdict.get("status"):
        return str(verdict["status"]), str(verdict.get("detail", ""))
    if code in (-signal.SIGXCPU, -signal.SIGKILL):
        return "timeout", "its CPU time limit ran out; killed"
    if "MemoryError" in stderr or code == -signal.SIGSEGV:
        return "memory", "it ran out of its memory limit"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:  # a real-time signal has no name
            name = str(-code)
        return "error", f"killed by signal {name}"
    last = stderr.strip().splitlines()[-1:] or ["no output"]
    return "error", f"exited with code {code} before its tests finished: {last[0][:200]}"


def _head(path: Path, limit: int) -> str:
    with open(path, "rb") as handle:
        data = handle.read(limit + 1)
    text = data[:limit].decode("utf-8", "replace")
    return text + ("\n[output cut]" if len(data) > limit else "")


def _make_removable(work: Path) -> None:
    """Give back write permission on every folder the program made read-only, so the
    temporary directory can be deleted."""
    for folder, _dirs, _files in os.walk(work):
        with contextlib.suppress(OSError):
            os.chmod(folder, 0o700)
