"""`localmoa doctor`: what a bug report needs, gathered without loading a model.

Every section is collected on its own: one that fails says why in its ``error``
and the others are still reported. Nothing here contacts a host that is not
this machine, except an Ollama host the config allows (``allow_remote``).
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Any

from . import __version__, constants
from .config import Config, is_loopback, load_config
from .errors import LocalMoaError

#: How long doctor waits for an Ollama daemon to answer.
OLLAMA_TIMEOUT_S = 3.0


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
    report["ollama"] = _section(lambda: _ollama(config))
    if isinstance(report["ollama"], dict):  # the section failed as a whole
        report["ollama"] = [report["ollama"] | {"host": os.environ.get("OLLAMA_HOST", ""),
                                                "reachable": False}]
    report["huggingface"] = _section(_huggingface)
    report["models"] = _models(config) if config is not None else []
    _ollama_presence(report)
    report["problems"] = problems(report)
    return report


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

    from .backends import repack
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

    from .backends import repack

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


def _ollama_hosts(config: Config | None) -> list[tuple[str, bool]]:
    """(host, allowed to contact) for the default daemon and every configured one."""
    hosts: dict[str, bool] = {constants.ollama_host(): False}
    for spec in (config.models.values() if config is not None else []):
        if spec.backend == "ollama":
            host = constants.ollama_host(spec.host)
            hosts[host] = hosts.get(host, False) or spec.allow_remote
    return [(host, allowed or is_loopback(host)) for host, allowed in hosts.items()]


def _ollama(config: Config | None) -> list[dict[str, Any]]:
    import httpx

    from . import netguard

    found = []
    try:
        hosts = _ollama_hosts(config)
    except LocalMoaError as exc:  # OLLAMA_HOST that no client could use
        return [{"host": os.environ.get("OLLAMA_HOST", ""), "reachable": False,
                 "version": None, "error": str(exc)}]
    for host, allowed in hosts:
        entry: dict[str, Any] = {"host": host, "reachable": False, "version": None}
        if not allowed:
            entry["error"] = ("not contacted: not this machine (a model needs allow_remote: "
                              "true for localmoa to use it)")
            found.append(entry)
            continue
        if not is_loopback(host):
            netguard.allow_host(host)
        try:
            response = httpx.get(f"{host}/api/version", timeout=OLLAMA_TIMEOUT_S)
            response.raise_for_status()
            entry.update(reachable=True, version=response.json().get("version"))
            tags = httpx.get(f"{host}/api/tags", timeout=OLLAMA_TIMEOUT_S).json()
            entry["models"] = sorted(m.get("model") or m.get("name", "")
                                     for m in tags.get("models") or [])
        except Exception as exc:  # noqa: BLE001 - any answer but Ollama's: not reachable
            entry["error"] = (f"no Ollama daemon answers at {host} ({type(exc).__name__}); "
                              "start it with `ollama serve` if you use Ollama models")
        found.append(entry)
    return found


def _huggingface() -> dict[str, Any]:
    cache = constants.hf_hub_cache()
    return {"cache": str(cache), "exists": cache.is_dir(),
            "offline": os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")}


def _models(config: Config) -> list[dict[str, Any]]:
    from .sources import resolve_model_path

    rows = []
    for name in sorted(config.models):
        spec = config.models[name]
        row: dict[str, Any] = {"name": name, "backend": spec.backend,
                               "source": spec.source.describe(), "present": None,
                               "path": None, "problem": None}
        if spec.backend == "ollama":
            row["host"] = constants.ollama_host(spec.host)
        else:
            try:
                row["path"] = str(resolve_model_path(config, name))
                row["present"] = True
            except LocalMoaError as exc:
                row.update(present=False, problem=str(exc))
        rows.append(row)
    return rows


def _ollama_presence(report: dict[str, Any]) -> None:
    """Mark each Ollama model present or not by its daemon's tags (unknown: None)."""
    daemons = {d["host"]: d for d in report.get("ollama") or [] if isinstance(d, dict)}
    for row in report.get("models", []):
        daemon = daemons.get(row.get("host", ""))
        if row["backend"] != "ollama" or not daemon or not daemon.get("reachable"):
            continue
        tag = row["source"].removeprefix("ollama:")
        pulled = set(daemon.get("models") or [])
        row["present"] = tag in pulled or f"{tag}:latest" in pulled
        if not row["present"]:
            row["problem"] = (f"{tag} is not pulled in Ollama at {daemon['host']}; run "
                              f"`localmoa models pull {row['name']}` or `ollama pull {tag}`")


def problems(report: dict[str, Any]) -> list[str]:
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
    daemons = report.get("ollama")
    for daemon in daemons if isinstance(daemons, list) else []:
        used = [r["name"] for r in report.get("models", []) if r.get("host") == daemon["host"]]
        if "is not an Ollama host" in str(daemon.get("error")):
            out.append(str(daemon["error"]))
        elif used and not daemon.get("reachable"):
            out.append(f"Ollama at {daemon['host']} (for {', '.join(used)}): "
                       f"{daemon.get('error')}")
    needed = set(report.get("default_profile_models") or [])
    missing = [r["name"] for r in report.get("models", [])
               if r["present"] is False and r["name"] in needed]
    if missing:
        out.append(f"the default profile needs models that are not on this machine: "
                   f"{', '.join(missing)} (`localmoa models pull NAME` fetches one)")
    return out
