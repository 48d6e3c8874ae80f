"""What this machine offers. The only module that asks the machine."""

from __future__ import annotations

import dataclasses
import os
import platform
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from ..errors import UsageError

#: Without --memory-budget, keep this share of available RAM for everything else.
RAM_HEADROOM = 0.10

_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
          "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str, what: str = "--memory-budget") -> int:
    """``1.5GiB`` -> bytes. Accepts B, KB, MB, GB, TB (powers of 10) and KiB, MiB, GiB, TiB."""
    match = _SIZE.match(text or "")
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _UNITS and unit != "":
        raise UsageError(f"{what} {text!r}: write a size such as 1.5GiB, 800MiB or 2GB "
                         "(units: B, KB, MB, GB, KiB, MiB, GiB)")
    value = float(match.group(1)) * _UNITS.get(unit or "b", 1)
    if value < 1:
        raise UsageError(f"{what} {text!r}: the budget must be more than 0 bytes")
    return int(value)


def format_bytes(n: float) -> str:
    """Bytes in binary units, 3 significant figures: 1.46 GiB, 812 MiB."""
    sign = "-" if n < 0 else ""
    n = abs(n)
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            value = n / size
            return f"{sign}{value:.3g} {unit}" if value < 100 else f"{sign}{value:.0f} {unit}"
    return f"{sign}{int(n)} B"


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    total_bytes: int
    free_bytes: int


@dataclass(frozen=True)
class Resources:
    """A snapshot of what runs can use. ``pools``: budget in bytes per memory pool."""

    pools: dict[str, int]
    ram_available_bytes: int
    ram_total_bytes: int
    cgroup_limit_bytes: int | None
    physical_cores: int
    logical_cores: int
    usable_cores: int
    gpus: tuple[Gpu, ...] = ()
    unified_memory: bool = False
    budget_source: str = "available"  # "available" | "--memory-budget" | LOCALMOA_MEMORY_BUDGET

    @property
    def gpu_pool(self) -> str | None:
        """The pool offloaded layers go to: the first GPU, or RAM on unified memory."""
        if self.unified_memory:
            return "ram"
        return "gpu0" if self.gpus else None


def cpu_cores() -> int:
    """Physical cores this process may use.

    llama.cpp runs best with one thread per physical core; hyper-threads add
    little. Inside a container or under taskset, the affinity mask is smaller.
    LOCALMOA_CORES replaces what is found (e.g. to plan for another machine).
    """
    from .. import constants

    override = constants.cores()
    if override is not None:
        if not override.strip().isdigit() or not 1 <= int(override) <= 1024:
            raise UsageError(f"LOCALMOA_CORES={override!r}: give a whole number of cores "
                             "from 1 to 1024")
        return int(override)
    physical = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    try:
        allowed = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        allowed = physical
    return max(1, min(physical, allowed))


def cgroup_memory_left() -> int | None:
    """cgroup v2 ``memory.max - memory.current`` of this process's cgroup, if limited."""
    try:
        line = Path("/proc/self/cgroup").read_text().strip().splitlines()
    except OSError:
        return None
    for entry in line:
        if entry.startswith("0::"):
            base = Path("/sys/fs/cgroup") / entry[3:].lstrip("/")
            try:
                limit = (base / "memory.max").read_text().strip()
                current = int((base / "memory.current").read_text().strip())
            except (OSError, ValueError):
                return None
            if limit == "max":
                return None
            return max(0, int(limit) - current)
    return None


def nvidia_gpus() -> tuple[Gpu, ...]:
    """NVIDIA GPUs through nvidia-ml-py, when it is installed and a driver answers."""
    try:
        import pynvml
    except ImportError:
        return ()
    try:
        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - no driver, no GPU: not an error
        return ()
    gpus = []
    try:
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
            name = pynvml.nvmlDeviceGetName(handle)
            gpus.append(Gpu(i, name.decode() if isinstance(name, bytes) else str(name),
                            int(mem.total), int(mem.free)))
    finally:
        pynvml.nvmlShutdown()
    return tuple(gpus)


def probe(memory_budget: str | None = None) -> Resources:
    """The machine now. ``memory_budget`` (or LOCALMOA_MEMORY_BUDGET) replaces the RAM pool."""
    from .. import constants

    vm = psutil.virtual_memory()
    available = int(vm.available)
    cgroup = cgroup_memory_left()
    if cgroup is not None:
        available = min(available, cgroup)
    unified = platform.system() == "Darwin" and platform.machine() == "arm64"
    gpus = () if unified else nvidia_gpus()
    source = "available"
    budget_text = memory_budget
    if budget_text is None and constants.memory_budget() is not None:
        budget_text, source = constants.memory_budget(), "LOCALMOA_MEMORY_BUDGET"
    elif budget_text is not None:
        source = "--memory-budget"
    if budget_text is not None:
        ram_budget = parse_size(budget_text, "--memory-budget" if source[0] == "-"
                                else "LOCALMOA_MEMORY_BUDGET")
    else:
        ram_budget = int(available * (1 - RAM_HEADROOM))
    pools = {"ram": ram_budget}
    for gpu in gpus:
        pools[f"gpu{gpu.index}"] = int(gpu.free_bytes * (1 - RAM_HEADROOM))
    return Resources(
        pools=pools, ram_available_bytes=available, ram_total_bytes=int(vm.total),
        cgroup_limit_bytes=cgroup, physical_cores=psutil.cpu_count(logical=False) or 1,
        logical_cores=psutil.cpu_count(logical=True) or 1, usable_cores=cpu_cores(),
        gpus=gpus, unified_memory=unified, budget_source=source)


def process_memory(pid: int | None = None) -> tuple[int, int]:
    """(RSS, PSS) in bytes of this process, or of process ``pid`` ((0, 0) once it is
    gone). PSS counts pages shared by two mappings of one GGUF once (two processes
    mapping it too); RSS counts them twice. Without smaps_rollup, PSS = RSS."""
    try:
        text = Path(f"/proc/{pid or 'self'}/smaps_rollup").read_text()
    except OSError:
        try:
            rss = int(psutil.Process(pid).memory_info().rss)
        except psutil.Error:
            return 0, 0
        return rss, rss
    values = {}
    for line in text.splitlines()[1:]:
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            values[key] = int(parts[0]) * 1024
    rss = values.get("Rss", 0)
    return rss, values.get("Pss", rss)


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_bytes(pid: int | None = None) -> int:
    """RSS of this process (or of ``pid``; 0 once it is gone) from /proc/PID/statm: a
    counter the kernel keeps, read in microseconds, where PSS walks the page tables."""
    try:
        return int(Path(f"/proc/{pid or 'self'}/statm").read_text().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return process_memory(pid)[0]


def peak_rss(pid: int) -> int:
    """The most RSS process ``pid`` has had (the kernel's VmHWM; 0 when unknown)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


@dataclass
class WorkerMemory:
    """The peaks of one model worker process seen by a MemorySampler."""

    instance: str
    pid: int
    peak_rss_bytes: int = 0
    peak_pss_bytes: int = 0


class MemorySampler:
    """Peak RSS and PSS growth over the start (``peak_*``) of this process and its
    model workers together, and each worker's own peaks (``workers``).

    ``worker_pids`` says which worker processes exist now (pid -> instance); one
    that ran before the start counts in the base. The caller calls ``sample()`` at
    the moments that matter: the engine samples after each wave's loads and after
    its agents, when memory peaks (contexts stay filled until unloaded). Reading
    PSS makes the kernel walk the page tables (6 ms for one SmolLM2 process;
    sampling in a thread every 50 ms cost 7% of a run on 2 busy cores), so a
    sample reads the RSS counters first and walks the tables only when the RSS
    grew by more than ``PSS_STEP`` since the last walk (PSS never grows more than
    RSS does). A worker's peak RSS is the kernel's high-water mark, exact; its peak
    PSS is the largest sampled.
    """

    PSS_STEP = 2 * 1024 * 1024

    def __init__(self, worker_pids: Callable[[], dict[int, str]] | None = None) -> None:
        self._pids = worker_pids or dict
        self.workers: dict[int, WorkerMemory] = {}
        self.base_rss, self.base_pss = self._total(self._pids(), record=False)
        self.peak_rss = self.peak_pss = 0
        self._walked_at = self.base_rss  # the RSS of the last page-table walk

    def __enter__(self) -> MemorySampler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sample()

    def _total(self, pids: dict[int, str], record: bool = True) -> tuple[int, int]:
        rss, pss = process_memory()
        for pid, instance in pids.items():
            w_rss, w_pss = process_memory(pid)
            rss, pss = rss + w_rss, pss + w_pss
            if record and w_rss:
                seen = self.workers.setdefault(pid, WorkerMemory(instance, pid))
                seen.peak_rss_bytes = max(seen.peak_rss_bytes, peak_rss(pid), w_rss)
                seen.peak_pss_bytes = max(seen.peak_pss_bytes, w_pss)
        return rss, pss

    def sample(self) -> None:
        pids = self._pids()
        rss = resident_bytes() + sum(resident_bytes(pid) for pid in pids)
        self.peak_rss = max(self.peak_rss, rss - self.base_rss)
        if rss <= self._walked_at + self.PSS_STEP and set(pids) <= set(self.workers):
            return  # no new process, and not enough growth to raise a PSS peak
        self._walked_at = rss
        rss, pss = self._total(pids)
        self.peak_rss = max(self.peak_rss, rss - self.base_rss)
        self.peak_pss = max(self.peak_pss, pss - self.base_pss)

    def worker_peaks(self) -> list[dict[str, Any]]:
        """Each worker's peaks, in the order they were first seen."""
        return [dataclasses.asdict(w) for w in self.workers.values()]
