"""The one place that reads a user's file and overwrites one.

Reading: only a regular file (a FIFO, a device such as /dev/zero, a directory or a
socket is refused without blocking: the file is opened with O_NONBLOCK and checked
with fstat), and at most a cap of bytes (one more is read to tell "over the cap").
Writing: atomically (a temporary file in the same folder, flushed and fsynced, then
renamed over the old one), so a failed write leaves the old file whole. A
read-modify-write holds ``locked`` (an exclusive flock on a lock file beside the file),
so two writers at once do not lose each other's change.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from . import constants
from .errors import LocalMoaError

MiB = 1 << 20
#: The largest models.yaml read (the shipped one is ~10 KiB).
CONFIG_MAX_BYTES = 4 * MiB
#: The largest prompt, prompt file or task file read, unless LOCALMOA_MAX_PROMPT_BYTES says.
DEFAULT_PROMPT_MAX_BYTES = 8 * MiB
PROMPT_CAP_HINT = "raise the limit with LOCALMOA_MAX_PROMPT_BYTES (e.g. 32MiB)"
_CHUNK_BYTES = 1 * MiB

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"))


class FileRefused(LocalMoaError):
    """A file localmoa will not read or write: not a regular file, or over its size cap.

    ``reason`` is the message without the path (``is not a regular file (it is a FIFO)``),
    for callers that name the file their own way."""

    exit_code = 2

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"{path} {reason}")
        self.path = str(path)
        self.reason = reason


def kind_of(mode: int) -> str | None:
    """What a file of this ``st_mode`` is when it is not a regular file, else None."""
    if stat.S_ISREG(mode):
        return None
    return next((name for test, name in _KINDS if test(mode)), "not a file")


def not_regular_reason(kind: str) -> str:
    """``is not a regular file (it is a FIFO)``."""
    return f"is not a regular file (it is {kind})"


def regular_file_problem(path: Path) -> str | None:
    """Why ``path`` is not a regular file (following links), or None when it is one or
    does not exist. stat() never blocks, even on a FIFO."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    kind = kind_of(mode)
    return not_regular_reason(kind) if kind else None


def open_regular(path: Path) -> int:
    """A read-only descriptor of ``path``, which must be a regular file. Opened with
    O_NONBLOCK, so a FIFO without a writer is refused at once instead of waiting.
    Raises FileRefused, or OSError (missing, no permission)."""
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        kind = kind_of(os.fstat(fd).st_mode)
        if kind:
            raise FileRefused(path, not_regular_reason(kind))
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def size_text(n_bytes: int) -> str:
    """Bytes for a message: ``8 MiB``, ``12.5 MiB``, ``900 KiB``, ``17 bytes``."""
    for unit, size in (("GiB", 1 << 30), ("MiB", MiB), ("KiB", 1 << 10)):
        if n_bytes >= size:
            return f"{n_bytes / size:.3g} {unit}"
    return f"{n_bytes} bytes"


def over_cap_reason(size_bytes: int | None, cap_bytes: int, what: str, hint: str) -> str:
    """``is 12.5 MiB, more than the 8 MiB limit for WHAT; HINT`` (size None: unknown)."""
    size = (f"is {size_text(size_bytes)}, more than" if size_bytes is not None
            else "holds more than")
    return f"{size} the {size_text(cap_bytes)} limit for {what}; {hint}"


def read_capped(path: Path, cap_bytes: int, what: str, hint: str) -> bytes:
    """The bytes of the regular file ``path``, at most ``cap_bytes`` of them.

    ``what`` names the kind of file in the message (``config files``), ``hint`` says how
    to raise the cap or shrink the file. Raises FileRefused, or OSError (missing ...)."""
    fd = open_regular(path)
    with os.fdopen(fd, "rb") as fh:
        size = os.fstat(fd).st_size
        if size > cap_bytes:
            raise FileRefused(path, over_cap_reason(size, cap_bytes, what, hint))
        data = _read_at_most(fh, cap_bytes + 1)  # the file may have grown since fstat
    if len(data) > cap_bytes:
        raise FileRefused(path, over_cap_reason(None, cap_bytes, what, hint))
    return data


def read_stream_capped(stream: BinaryIO, cap_bytes: int, name: str, what: str,
                       hint: str) -> bytes:
    """At most ``cap_bytes`` from a stream (standard input: a pipe, a file, a device)."""
    data = _read_at_most(stream, cap_bytes + 1)
    if len(data) > cap_bytes:
        raise FileRefused(name, over_cap_reason(None, cap_bytes, what, hint))
    return data


def _read_at_most(stream: BinaryIO, n_bytes: int) -> bytes:
    parts: list[bytes] = []
    left = n_bytes
    while left > 0:
        chunk = stream.read(min(left, _CHUNK_BYTES))
        if not chunk:
            break
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def prompt_cap_bytes() -> int:
    """The largest prompt read: LOCALMOA_MAX_PROMPT_BYTES (``16MiB``, ``20000000``), else
    8 MiB. A bad value is a one-line error naming the variable."""
    raw = constants.max_prompt_bytes()
    if raw is None:
        return DEFAULT_PROMPT_MAX_BYTES
    from .memory.probe import parse_size

    return parse_size(raw, "LOCALMOA_MAX_PROMPT_BYTES")


def read_prompt_bytes(path: Path) -> bytes:
    """A prompt file, task file or prompts file: regular, at most ``prompt_cap_bytes()``."""
    return read_capped(path, prompt_cap_bytes(), "prompt and task files", PROMPT_CAP_HINT)


def atomic_write(path: Path, data: bytes | str) -> None:
    """Replace ``path`` with ``data`` (str: UTF-8) so that it is either the old file or
    the new one, never a mix: a temporary file in the same folder, written, fsynced and
    renamed over it; the folder fsynced too. The old file's permissions are kept. On any
    failure the temporary file is removed and the old file is untouched.

    A path that exists and is not a regular file (/dev/full, a FIFO) is refused: it
    would be replaced by a regular file. A symbolic link is followed: its target is
    replaced, the link stays."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    target = Path(os.path.realpath(path))
    try:
        old_mode: int | None = os.stat(target).st_mode
    except FileNotFoundError:
        old_mode = None
    if old_mode is not None and kind_of(old_mode):
        raise FileRefused(path, not_regular_reason(kind_of(old_mode) or "")
                          + "; give the path of a regular file to write")
    with atomic_replace(target) as fd:
        if old_mode is not None:
            os.fchmod(fd, stat.S_IMODE(old_mode))
        _write_all(fd, payload)


@contextlib.contextmanager
def atomic_replace(target: Path) -> Iterator[int]:
    """Write ``target`` anew through the descriptor this yields: a temporary file beside
    it (``.NAME.XXXXXXXX.tmp``), fsynced and renamed over it when the block ends, the
    folder fsynced; removed, and ``target`` untouched, when the block raises."""
    fd, tmp = _create_temp(target)
    try:
        yield fd
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, target)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(target.parent)


def _create_temp(target: Path) -> tuple[int, Path]:
    """A new file next to ``target``, created with the umask's permissions (as a plain
    open would), never an existing file."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    while True:
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue


def _write_all(fd: int, payload: bytes) -> None:
    view = memoryview(payload)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (some file systems cannot fsync a folder)."""
    try:
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock for a read-modify-write of ``path`` (read it again inside):
    flock on ``.NAME.lock`` beside the file the path resolves to, waiting for whoever
    holds it. The lock file stays (removing it would let two writers lock two files);
    the lock ends with the process, even a killed one. Raises OSError (no folder, a
    read-only one)."""
    target = Path(os.path.realpath(path))
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(target.with_name(f".{target.name}.lock"), flags, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # and the lock with it


def dated_backup(path: Path, data: bytes, now: float | None = None) -> Path:
    """Keep ``data`` (a file's old content) as ``NAME.bak-YYYYmmddTHHMMSS`` beside ``path``
    (``-2``, ``-3`` ... when that name is taken), never overwriting an earlier backup.
    Written atomically and with the original's permissions."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.localtime(now))
    base = path.with_name(f"{path.name}.bak-{stamp}")
    candidate, n = base, 1
    while True:
        try:
            fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            n += 1
            candidate = base.with_name(f"{base.name}-{n}")
            continue
        os.close(fd)  # the name is reserved; its content is written atomically
        break
    try:
        with contextlib.suppress(OSError):
            os.chmod(candidate, stat.S_IMODE(os.stat(path).st_mode))
        atomic_write(candidate, data)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(candidate)
        raise
    return candidate
