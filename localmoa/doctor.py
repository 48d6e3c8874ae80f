"""`localmoa doctor`: what a bug report needs, gathered without loading a model.

Every section is collected on its own: one that fails says why in its ``error``
and the others are still reported. Nothing here contacts a host that is not
this machine, except a host the config allows (``allow_remote``). Each backend adds
its own section (Ollama: its daemons) and marks its models present or not.
"""

from __future__ import annotations

import platform
import sys
from pathlib import Path
from typing import Any

from . import __version__, constants
from .config import Config, load_config
from .errors import LocalMoaError


def collect(config_path: Path | None = None, recheck: bool = False) -> dict[str, Any]:
    """The whole report as plain values (the --json document)."""
    config: Config | None = None
    report: dict[str, Any] = {"localmoa": _localmoa()}
    try:
        config = load_config(config_path)
        report["localmoa"]["config_files"] = config.files
        _, profile = config.profile(None)
        report["default_profile"] = config.default_profile
        report["default_profile_models"] = sorted(
            {a.model for layer in profile.layers for a in layer} | {profile.aggregator.model})
    except LocalMoaError as exc:
        report["localmoa"]["config_error"] = str(exc)
    report["cpu"] = _section(_cpu)
    report["memory"] = _section(_memory)
    report["gpus"] = _section(_gpus)
    report["llama_cpp"] = _section(lambda: _llama_cpp(config, recheck))
    report["backends"] = _backends()
    sections = _backend_sections(config)
    for name, section in sections.items():  # a plugin's name never hides a core section
        report[name if name not in report else f"{name}_backend"] = section
    report["huggingface"] = _section(_huggingface)
    report["models"] = _models(config) if config is not None else []
    found = _backend_problems(sections, report["models"])
    report["problems"] = problems(report, found)
    return report


def _backends() -> list[dict[str, Any]]:
    """Every backend models.yaml may name here: its package and capabilities, or why it
    cannot be imported."""
    from .backends import backend_class, known_backends

    rows = []
    for name in known_backends():
        try:
            cls = backend_class(name)
            rows.append({"name": name, "package": cls.package,
                         "capabilities": cls.capabilities.to_dict()})
        except LocalMoaError as exc:
            rows.append({"name": name, "error": str(exc)})
    return rows


def _backend_sections(config: Config | None) -> dict[str, Any]:
    """Each backend's own doctor section (e.g. "ollama": its daemons), by backend name."""
    from .backends import get_backend, known_backends

    sections = {}
    for name in known_backends():
        section = _section(lambda name=name: get_backend(name).doctor(config))
        if section is not None:
            sections[name] = section
    return sections


def _backend_problems(sections: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    """What each backend finds in its section, its models' rows marked on the way."""
    from .backends import get_backend

    found = []
    for name, section in sections.items():
        mine = [r for r in rows if r["backend"] == name]
        try:
            found += get_backend(name).doctor_problems(section, mine)
        except Exception as exc:  # noqa: BLE001 - a report must come out whatever fails
            found.append(f"backend {name}: {type(exc).__name__}: {exc}")
    return found


def _section(gather: Any) -> Any:
    try:
        return gather()
    except Exception as exc:  # noqa: BLE001 - a report must come out whatever fails
        return {"error": f"{type(exc).__name__}: {exc}"}


def _localmoa() -> dict[str, Any]:
    return {"version": __version__, "python": sys.version.split()[0],
            "executable": sys.executable, "platform": platform.platform(),
            "home": str(constants.localmoa_home()),
            "debug": constants.debug()}


def _cpu() -> dict[str, Any]:
    import psutil

    from .backends.llamacpp import repack
    from .memory.probe import cpu_cores

    flags = repack.cpu_flags()
    return {"model": repack.cpu_model(), "arch": platform.machine(),
            "flags": repack.key_cpu_flags(),
            "avx2": "avx2" in flags, "avx512": "avx512f" in flags,
            "amx": bool({"amx_tile", "amx_int8"} & flags),
            "physical_cores": psutil.cpu_count(logical=False),
            "logical_cores": psutil.cpu_count(logical=True), "usable_cores": cpu_cores(),
            "cores_override": constants.cores()}


def _memory() -> dict[str, Any]:
    from .memory.probe import probe

    r = probe()
    return {"ram_total_bytes": r.ram_total_bytes, "ram_available_bytes": r.ram_available_bytes,
            "cgroup_limit_bytes": r.cgroup_limit_bytes, "budget_bytes": r.pools.get("ram"),
            "budget_source": r.budget_source, "unified_memory": r.unified_memory}


def _gpus() -> list[dict[str, Any]]:
    from .memory.probe import nvidia_gpus

    return [{"index": g.index, "name": g.name, "total_bytes": g.total_bytes,
             "free_bytes": g.free_bytes} for g in nvidia_gpus()]


def _llama_cpp(config: Config | None, recheck: bool) -> dict[str, Any]:
    import importlib.metadata

    from .backends.llamacpp import repack

    out: dict[str, Any] = {"installed": False}
    try:
        out["llama_cpp_python"] = importlib.metadata.version("llama_cpp_python")
    except importlib.metadata.PackageNotFoundError:
        out["error"] = "llama-cpp-python is not installed (pip install llama-cpp-python)"
        return out
    import llama_cpp

    out.update(installed=True, library_dir=str(repack.library_dir()),
               system_info=repack.system_info(),
               gpu_offload=bool(llama_cpp.llama_supports_gpu_offload()),
               build_key=repack.build_key())
    verdict = repack.verdict(recheck=True) if recheck else repack.verdict()
    configured = config.cpu_repack if config is not None else None
    choice = repack.choose(configured)
    out["repack"] = {**choice.to_dict(), "verdict": verdict.to_dict(),
                     "repacked_types": sorted(repack.private_types(choice))}
    return out


def _huggingface() -> dict[str, Any]:
    cache = constants.hf_hub_cache()
    return {"cache": str(cache), "exists": cache.is_dir(),
            "offline": constants.hf_hub_offline()}


def _models(config: Config) -> list[dict[str, Any]]:
    from .backends import get_backend

    rows = []
    for name in sorted(config.models):
        spec = config.models[name]
        row: dict[str, Any] = {"name": name, "backend": spec.backend, "source": spec.where(),
                               "present": None, "path": None, "problem": None}
        try:
            row.update(get_backend(spec.backend).locate(config, name))
        except LocalMoaError as exc:
            row.update(present=False, problem=str(exc))
        rows.append(row)
    return rows


def problems(report: dict[str, Any], found: list[str]) -> list[str]:
    """The findings a user should act on, one line each."""
    out = []
    if report["localmoa"].get("config_error"):
        out.append(report["localmoa"]["config_error"])
    llama = report.get("llama_cpp") or {}
    if llama.get("error"):
        out.append(f"llama.cpp: {llama['error']}")
    repack_state = llama.get("repack") or {}
    if repack_state and not repack_state.get("enabled") and repack_state.get("mode") == "auto":
        out.append(f"llama.cpp weight repacking is off on this CPU: {repack_state['reason']}")
    out += found
    needed = set(report.get("default_profile_models") or [])
    missing = [r["name"] for r in report.get("models", [])
               if r["present"] is False and r["name"] in needed]
    if missing:
        out.append(f"the default profile needs models that are not on this machine: "
                   f"{', '.join(missing)} (`localmoa models pull NAME` fetches one)")
    return out
