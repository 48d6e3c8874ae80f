"""Whether llama.cpp may repack weights on this CPU: ``cpu_repack: auto | on | off``.

Repacking (llama.cpp's "extra buffer types": AMX on Intel Sapphire Rapids and
later, AVX2/AVX-512 and ARM repacked matmuls) speeds prompt processing up, but
on some CPU and compiler pairs its kernels crash the process (llama.cpp issue
#20824). With ``auto`` (the default), the first llama.cpp load with a given
llama.cpp build on a given CPU runs the canary (``canary.py``) in a child
process; its verdict is cached under LOCALMOA_HOME, keyed by the build and the
CPU, and a crashed canary turns repacking off for every model.

``LOCALMOA_CPU_REPACK`` (env) wins over ``cpu_repack:`` in models.yaml (top
level or per model), which wins over ``auto``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from ... import constants, signals
from ...errors import UsageError

RepackMode = Literal["auto", "on", "off"]
MODES = ("auto", "on", "off")
CACHE_FILE = "cpu-repack.json"
#: A canary that has not finished by then (it takes about a second) is taken as hung:
#: repacking off, cached like a crash (`localmoa doctor --recheck` asks again).
CANARY_TIMEOUT_S = 60.0
#: How a broken fast path kills a process; other signals (SIGKILL from the OOM killer,
#: SIGTERM) come from outside and say nothing about the CPU.
CRASH_SIGNALS = frozenset({signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGABRT,
                           signal.SIGFPE, signal.SIGSYS})
#: How the canary is started; a test may point it at a program that crashes.
CANARY_COMMAND = [sys.executable, "-m", "localmoa.backends.llamacpp.canary"]
#: CPU flags that decide which llama.cpp kernels run (shown by `localmoa doctor`).
KEY_CPU_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl",
                 "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16",
                 "neon", "asimd", "asimddp", "i8mm", "sve")


@dataclass(frozen=True)
class Verdict:
    """What the canary found on this build and CPU."""

    works: bool | None  # None: the canary could not tell (it failed for another reason)
    detail: str  # one line: what happened
    key: str
    checked_at: str
    system_info: str = ""
    buffers: tuple[str, ...] = ()  # llama.cpp's model buffers, e.g. CPU_REPACK, AMX

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "buffers": list(self.buffers)}


@dataclass(frozen=True)
class RepackChoice:
    """Whether models load with repacking, and why."""

    enabled: bool
    mode: RepackMode
    source: str  # "LOCALMOA_CPU_REPACK", "models.yaml" or "default"
    verdict: Verdict | None = None
    fresh: bool = False  # the canary ran in this process (the first run on this machine)

    @property
    def reason(self) -> str:
        if self.mode != "auto":
            return f"cpu_repack: {self.mode} ({self.source})"
        assert self.verdict is not None
        return f"auto: {self.verdict.detail}"

    @property
    def notice(self) -> str | None:
        """The line a user sees once, when the canary has just turned repacking off."""
        if self.mode != "auto" or self.enabled or self.verdict is None or not self.fresh:
            return None
        what = ("crashed on this CPU" if self.verdict.works is False
                else "could not be checked on this CPU")
        return (f"llama.cpp's weight repacking {what} ({self.verdict.detail}); models load "
                "without it, which is safe but slower at prompt processing. Set cpu_repack: "
                "on or off in models.yaml (or LOCALMOA_CPU_REPACK) to choose; `localmoa doctor "
                "--recheck` checks again")

    def to_dict(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "mode": self.mode, "source": self.source,
                "reason": self.reason,
                "verdict": self.verdict.to_dict() if self.verdict else None}


def env_mode() -> RepackMode | None:
    """LOCALMOA_CPU_REPACK, validated."""
    value = constants.cpu_repack()
    if value is None:
        return None
    value = value.strip().lower()
    if value not in MODES:
        raise UsageError(f"LOCALMOA_CPU_REPACK={value!r}: give auto, on or off")
    return value  # type: ignore[return-value]


def choose(configured: RepackMode | None) -> RepackChoice:
    """The choice for a model whose models.yaml entry says ``configured`` (None: unset).

    May run the canary (once per build and CPU, then cached)."""
    mode, source = env_mode(), "LOCALMOA_CPU_REPACK"
    if mode is None:
        mode, source = (configured, "models.yaml") if configured else ("auto", "default")
    if mode != "auto":
        return RepackChoice(enabled=mode == "on", mode=mode, source=source)
    found = verdict()
    return RepackChoice(enabled=found.works is True, mode="auto", source=source, verdict=found,
                        fresh=found.key in _fresh)


def take_notices(choices: list[RepackChoice]) -> list[str]:
    """The notices of ``choices`` not shown yet by this process."""
    out = []
    for choice in choices:
        notice = choice.notice
        if notice and notice not in _announced:
            _announced.add(notice)
            out.append(notice)
    return out


# --- the verdict: cached per build and CPU ---------------------------------------------

_memo: dict[str, Verdict] = {}
_fresh: set[str] = set()  # keys whose canary ran in this process
_announced: set[str] = set()
_lock = threading.Lock()


def verdict(recheck: bool = False) -> Verdict:
    """The canary's verdict for this llama.cpp build on this CPU: from this process's
    memory, else the cache file, else a fresh canary run (which is then cached)."""
    key = build_key()
    with _lock:
        if not recheck:
            if key in _memo:
                return _memo[key]
            cached = _read_cache().get(key)
            if cached is not None:
                _memo[key] = cached
                return cached
        found = run_canary(key)
        _memo[key] = found
        _fresh.add(key)
        if found.works is not None:  # a verdict; "could not tell" is asked again next time
            _write_cache(found)
        return found


def cached_verdict() -> Verdict | None:
    """The verdict already known for this build and CPU, without running anything."""
    key = build_key()
    if key not in _memo and (found := _read_cache().get(key)) is not None:
        _memo[key] = found  # read the cache file once per process
    return _memo.get(key)


def needs_canary(modes: list[RepackMode | None]) -> bool:
    """Whether choosing for models configured with ``modes`` would run the canary now."""
    if env_mode() not in (None, "auto"):
        return False
    return any(m in (None, "auto") for m in modes) and cached_verdict() is None


def run_canary(key: str) -> Verdict:
    """Run the canary child and interpret how it ended."""
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    from ...memory.probe import cpu_cores

    command = [*CANARY_COMMAND, str(cpu_cores())]
    env = constants.child_environment(without=("LOCALMOA_CPU_REPACK",))
    try:
        proc = subprocess.run(command, capture_output=True, timeout=CANARY_TIMEOUT_S, env=env,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return Verdict(works=False, detail=f"the canary timed out after {CANARY_TIMEOUT_S:g} s",
                       key=key, checked_at=now)
    except OSError as exc:
        return Verdict(works=None, detail=f"the canary could not start: {exc}", key=key,
                       checked_at=now)
    if -proc.returncode in CRASH_SIGNALS:
        return Verdict(works=False, detail=f"the canary died with {_signal_name(-proc.returncode)}"
                       " in llama.cpp", key=key, checked_at=now)
    if proc.returncode < 0:  # killed from outside (OOM killer, SIGTERM): it tells nothing
        return Verdict(works=None, detail=f"the canary was killed by "
                       f"{_signal_name(-proc.returncode)}", key=key, checked_at=now)
    result: dict[str, Any] = {}
    for line in proc.stdout.decode("utf-8", "replace").splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                result = json.loads(line)
    if proc.returncode == 0 and result.get("ok"):
        buffers = tuple(b for b in result.get("buffers", []) if b not in ("CPU", "CPU_Mapped"))
        models = " and ".join(result.get("models") or ["the canary model"])
        detail = (f"repacked weights decoded fine ({', '.join(buffers)}) in {models}" if buffers
                  else f"this CPU repacks no weight type; {models} decoded fine")
        return Verdict(works=True, detail=detail, key=key, checked_at=now,
                       system_info=str(result.get("system_info", "")), buffers=buffers)
    last = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
    return Verdict(works=None, detail=f"the canary failed (exit {proc.returncode}: "
                   f"{last[0][:200]})", key=key, checked_at=now)


def _signal_name(number: int) -> str:
    return f"{signals.name_of(number)} (signal {number})"


@functools.cache
def build_key() -> str:
    """A short hash of the llama.cpp build (version, shared libraries) and the CPU; neither
    changes while a process runs, so it is computed once."""
    parts = [f"llama-cpp-python {llama_cpp_version()}", *_library_stamps(),
             platform.machine(), cpu_model(), " ".join(sorted(cpu_flags()))]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20]


def llama_cpp_version() -> str:
    """llama-cpp-python's version, read without importing it."""
    try:
        return importlib.metadata.version("llama_cpp_python")
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def library_dir() -> Path | None:
    """Where llama-cpp-python keeps libllama and libggml (found without importing it)."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "lib"


def _library_stamps() -> list[str]:
    lib = library_dir()
    if lib is None or not lib.is_dir():
        return []
    stamps = []
    for path in sorted(lib.iterdir()):
        if path.suffix in (".so", ".dylib", ".dll") or ".so." in path.name:
            stat = path.stat()
            stamps.append(f"{path.name} {stat.st_size} {stat.st_mtime_ns}")
    return stamps


@functools.cache
def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (Linux); empty elsewhere. Read once."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        name, _, value = line.partition(":")
        fields.setdefault(name.strip(), value.strip())
    return fields


def cpu_model() -> str:
    info = _cpuinfo()
    return (info.get("model name") or info.get("Model") or info.get("CPU part")
            or platform.processor() or platform.machine())


def cpu_flags() -> set[str]:
    info = _cpuinfo()
    return set((info.get("flags") or info.get("Features") or "").split())


def key_cpu_flags() -> list[str]:
    """The flags that decide which llama.cpp kernels run, of those this CPU has."""
    flags = cpu_flags()
    return [f for f in KEY_CPU_FLAGS if f in flags]


def _cache_path() -> Path:
    return constants.localmoa_home() / CACHE_FILE


def _read_cache() -> dict[str, Verdict]:
    try:
        data = json.loads(_cache_path().read_text(encoding="utf-8"))
        return {key: Verdict(**{**v, "buffers": tuple(v.get("buffers", ()))})
                for key, v in data.get("verdicts", {}).items()}
    except (OSError, ValueError, TypeError, AttributeError):
        return {}  # absent or damaged: the canary runs again


def _write_cache(found: Verdict) -> None:
    path = _cache_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data.get("verdicts"), dict):
            raise ValueError
    except (OSError, ValueError, AttributeError):
        data = {"verdicts": {}}
    data["verdicts"][found.key] = found.to_dict()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        tmp.replace(path)
    except OSError:
        pass  # a read-only home: the canary simply runs again next time


# --- what repacking costs in memory ----------------------------------------------------

#: Types llama.cpp 0.3.x repacks into a private buffer, by the kernels its system info
#: line reports (ggml-cpu repack.cpp and amx/common.h).
_X86_REPACK = frozenset({"Q4_0", "Q4_K", "IQ4_NL", "MXFP4"})
_AVX512_REPACK = frozenset({"Q2_K"})
_ARM_REPACK = frozenset({"Q4_0", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "MXFP4", "Q8_0"})
_AMX = frozenset({"Q4_0", "Q4_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K", "IQ4_XS", "F16"})


def repacked_types(system_info: str) -> frozenset[str]:
    """Weight types this llama.cpp build copies into private buffers on this CPU: a type
    name for the CPU repack kernels, ``amx:TYPE`` for AMX buffers (estimate.py)."""
    features = {part.split("=")[0].strip() for part in system_info.replace("|", "\n").split("\n")
                if part.strip().endswith("= 1")}
    features = {f.split(":")[-1].strip() for f in features}
    types: set[str] = set()
    if "REPACK" in features:
        if "AVX2" in features:
            types |= _X86_REPACK
        if "AVX512" in features:
            types |= _AVX512_REPACK
        if "NEON" in features and ("DOTPROD" in features or "MATMUL_INT8" in features):
            types |= _ARM_REPACK
    if "AMX_INT8" in features:  # AMX buffers take these where the rows are whole tiles
        types |= {f"amx:{t}" for t in _AMX}
    return frozenset(types)


def system_info() -> str:
    """llama.cpp's system info line (imports llama_cpp)."""
    import llama_cpp

    return str(llama_cpp.llama_print_system_info().decode("utf-8", "replace")).strip()


def private_types(choice: RepackChoice) -> frozenset[str]:
    """What the estimator counts as private per instance under ``choice``."""
    if not choice.enabled:
        return frozenset()
    info = choice.verdict.system_info if choice.verdict and choice.verdict.system_info else ""
    if not info:
        try:
            info = system_info()
        except ImportError:
            return _X86_REPACK
    return repacked_types(info)
