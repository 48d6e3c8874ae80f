"""The sandbox's child side: the bootstrap that runs one program (sandbox.py starts it).

It is not imported by the child: sandbox.py passes this file's text to ``python -I -B
-c``, with the arguments PROGRAM_FILE WORKDIR VERDICT_FD LIMITS_JSON. Before the
program runs it sets the resource limits (no core dumps, address space, CPU seconds,
file size, no new processes) and installs an audit hook that refuses, and records, any
socket to a network, any name lookup, any write, removal or rename outside WORKDIR and
any new process. After it, it writes ``{"status", "detail", "result"}`` as JSON to
VERDICT_FD and exits with the status's code (EXIT_CODES). A recorded refusal wins over
the program's own outcome: code that catches the PermissionError still fails.

Standard library only: the child runs in isolated mode (``-I``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import sys
from typing import Any

#: The child's exit code per status; anything else (a signal, os._exit) is read from
#: the exit status by the parent.
EXIT_CODES = {"passed": 80, "failed": 81, "error": 82, "memory": 83, "network": 84,
              "denied": 85}
#: Audit events of the network: refused outright (socket.__new__ only for IP families).
NETWORK_EVENTS = frozenset({
    "socket.__new__", "socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg",
    "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyname_ex",
    "socket.gethostbyaddr", "socket.getnameinfo", "urllib.Request"})
#: Audit events that start a process.
PROCESS_EVENTS = frozenset({
    "subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
    "os.forkpty", "pty.spawn", "os.kill", "os.killpg"})
#: Audit events that change the file system: every path argument must be in WORKDIR.
PATH_EVENTS = frozenset({
    "os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.link",
    "os.symlink", "os.truncate", "os.utime", "shutil.rmtree", "shutil.move",
    "shutil.copyfile", "shutil.copytree", "os.mkfifo", "os.mknod"})
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
MAX_DETAIL_CHARS = 2000
MAX_RESULT_CHARS = 32_000

_refused: list[tuple[str, str]] = []  # (status, what), the first one decides
_busy = [False]
_result: list[Any] = []


def set_limits(limits: dict[str, int]) -> None:
    """The resource limits, soft and hard alike (the program cannot raise them)."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    for name, key in (("RLIMIT_AS", "memory_bytes"), ("RLIMIT_CPU", "cpu_s"),
                      ("RLIMIT_FSIZE", "file_bytes"), ("RLIMIT_NPROC", "processes")):
        value = limits.get(key)
        if value is None or not hasattr(resource, name):
            continue
        # a limit the machine will not lower is left as it is
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(getattr(resource, name), (value, value))


_MS = {"RDONLY": 1, "NOSUID": 2, "NODEV": 4, "NOEXEC": 8, "REMOUNT": 32, "NOATIME": 1024,
       "NODIRATIME": 2048, "BIND": 4096, "REC": 16384, "PRIVATE": 1 << 18,
       "RELATIME": 1 << 21}
#: statvfs flags a remount must keep (a mount from outside the namespace is locked).
_KEEP = {"ST_NOSUID": "NOSUID", "ST_NODEV": "NODEV", "ST_NOEXEC": "NOEXEC",
         "ST_NOATIME": "NOATIME", "ST_NODIRATIME": "NODIRATIME", "ST_RELATIME": "RELATIME"}


def _mount_points() -> list[str]:
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        fields = [line.split()[4] for line in handle if len(line.split()) > 4]
    # mountinfo writes a space as \040 (octal escapes)
    return [_unescape(f) for f in fields]


def _unescape(text: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


def read_only_view(root: str) -> bool:
    """In a new mount namespace (``unshare -m``): every mount read-only but ROOT, bound
    onto itself first so it stays writable. Best effort: a mount that refuses stays as
    it is. True when / is read-only after it."""
    import ctypes
    import ctypes.util

    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    mount = libc.mount
    mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                      ctypes.c_void_p]
    mount(None, b"/", None, _MS["REC"] | _MS["PRIVATE"], None)  # nothing leaks out
    if mount(root.encode(), root.encode(), None, _MS["BIND"] | _MS["REC"], None) != 0:
        return False
    for point in _mount_points():
        if point == root or point.startswith(root + os.sep):
            continue
        try:
            have = os.statvfs(point).f_flag
        except OSError:
            continue
        keep = sum(_MS[ms] for st, ms in _KEEP.items() if have & getattr(os, st, 0))
        mount(None, point.encode(), None,
              _MS["REMOUNT"] | _MS["BIND"] | _MS["RDONLY"] | keep, None)
    return bool(os.statvfs("/").f_flag & os.ST_RDONLY)


def _inside(path: Any, root: str) -> bool:
    if isinstance(path, int):
        return True  # an open file descriptor: its file was checked when it opened
    try:
        text = os.fsdecode(os.fspath(path))
    except TypeError:
        return True
    full = os.path.realpath(text)
    return full == os.devnull or full == root or full.startswith(root + os.sep)


def _is_write(args: tuple[Any, ...]) -> bool:
    mode, flags = (args[1], args[2]) if len(args) >= 3 else (None, 0)
    if isinstance(mode, str) and any(c in mode for c in "wax+"):
        return True
    return isinstance(flags, int) and bool(flags & _WRITE_FLAGS)


def _verdict_of(event: str, args: tuple[Any, ...], root: str) -> tuple[str, str] | None:
    if event in NETWORK_EVENTS:
        if event == "socket.__new__" and len(args) > 1:
            import socket
            if args[1] not in (socket.AF_INET, socket.AF_INET6):
                return None  # a Unix socket or a socket pair stays on this machine
        return "network", f"{event} refused: no network in the sandbox"
    if event in PROCESS_EVENTS:
        return "denied", f"{event} refused: no new processes in the sandbox"
    if event == "open" and args and _is_write(args) and not _inside(args[0], root):
        return "denied", f"writing {args[0]!r} refused: outside the sandbox's directory"
    if (event == "sqlite3.connect" and args and args[0] not in (":memory:", "", b"")
            and not _inside(args[0], root)):  # sqlite writes from C: no open event
        return "denied", f"sqlite3 on {args[0]!r} refused: outside the sandbox's directory"
    if event in PATH_EVENTS:
        for arg in args:
            if isinstance(arg, (str, bytes, os.PathLike)) and not _inside(arg, root):
                return "denied", f"{event} on {arg!r} refused: outside the sandbox's directory"
    return None


def make_hook(root: str) -> Any:
    """The audit hook: it records the first refusal and raises PermissionError."""

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if _busy[0]:
            return
        _busy[0] = True
        try:
            found = _verdict_of(event, args, root)
        finally:
            _busy[0] = False
        if found is not None:
            _refused.append(found)
            raise PermissionError(found[1])

    return hook


def _describe(exc: BaseException) -> str:
    import traceback

    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == "<program>"]
    where = f" (line {frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}{where}: {exc}"[:MAX_DETAIL_CHARS]


def run(source: str) -> tuple[str, str]:
    """Run the program's source, not as __main__ (a demo under ``if __name__ ==
    "__main__":`` that reads input does not run, as in HumanEval's own harness): its
    status and a line on what happened."""
    scope: dict[str, Any] = {"__name__": "__sandbox__", "__sandbox_result__": _result.append}
    try:
        return _run_in(source, scope)
    finally:
        scope.clear()  # what the program held (a list that filled the memory) goes now


def _run_in(source: str, scope: dict[str, Any]) -> tuple[str, str]:
    try:
        exec(compile(source, "<program>", "exec"), scope)  # noqa: S102 - the point of it
    except AssertionError as exc:
        return "failed", _describe(exc)
    except MemoryError:
        return "memory", "MemoryError: the program ran out of its memory limit"
    except SystemExit as exc:
        return "error", f"the program exited (code {exc.code!r}) before its tests finished"
    except BaseException as exc:  # noqa: BLE001 - every failure of the program is reported
        return "error", _describe(exc)
    return "passed", ""


def main() -> None:
    program, root, verdict_fd, limits = (sys.argv[1], os.path.realpath(sys.argv[2]),
                                         int(sys.argv[3]), json.loads(sys.argv[4]))
    with open(program, encoding="utf-8") as handle:
        source = handle.read()
    sys.dont_write_bytecode = True
    if limits.get("read_only"):
        read_only_view(root)
    set_limits(limits)
    os.chdir(root)  # after the bind mount: the folder as the program sees it
    sys.addaudithook(make_hook(root))
    status, detail = run(source)
    if _refused:
        status, detail = _refused[0]
    result = json.dumps(_result[-1] if _result else None, default=repr)
    verdict = json.dumps({"status": status, "detail": detail[:MAX_DETAIL_CHARS],
                          "result": result if len(result) <= MAX_RESULT_CHARS else None})
    os.write(verdict_fd, verdict.encode("utf-8"))
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            if stream is not None:
                stream.flush()
        except Exception:  # noqa: BLE001 - a stream the program closed or replaced
            pass
    os._exit(EXIT_CODES[status])


if __name__ == "__main__":
    main()
