"""The Ollama section of `localmoa doctor`: each daemon the config names, whether it
answers and what it has pulled. Only hosts that are this machine or allowed
(``allow_remote``) are contacted."""

from __future__ import annotations

from typing import Any

from ... import constants
from ...config import Config
from ...errors import LocalMoaError
from .spec import OllamaSpec, is_loopback

#: How long doctor waits for an Ollama daemon to answer.
OLLAMA_TIMEOUT_S = 3.0


def _hosts(config: Config | None) -> list[tuple[str, bool]]:
    """(host, allowed to contact) for the default daemon and every configured one."""
    hosts: dict[str, bool] = {constants.ollama_host(): False}
    for spec in (config.models.values() if config is not None else []):
        if isinstance(spec, OllamaSpec):
            host = constants.ollama_host(spec.host)
            hosts[host] = hosts.get(host, False) or spec.allow_remote
    return [(host, allowed or is_loopback(host)) for host, allowed in hosts.items()]


def daemons(config: Config | None) -> list[dict[str, Any]]:
    """One entry per daemon: reachable, version, the models it has pulled, or an error."""
    try:
        return _daemons(config)
    except Exception as exc:  # noqa: BLE001 - the section failed as a whole
        return [{"error": f"{type(exc).__name__}: {exc}",
                 "host": constants.ollama_host_raw(), "reachable": False}]


def _daemons(config: Config | None) -> list[dict[str, Any]]:
    import httpx

    from ... import netguard

    found = []
    try:
        hosts = _hosts(config)
    except LocalMoaError as exc:  # OLLAMA_HOST that no client could use
        return [{"host": constants.ollama_host_raw(), "reachable": False,
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
            entry["summary"] = (f"Ollama {entry['version']}, {len(entry['models'])} models "
                                "pulled")
        except Exception as exc:  # noqa: BLE001 - any answer but Ollama's: not reachable
            entry["error"] = (f"no Ollama daemon answers at {host} ({type(exc).__name__}); "
                              "start it with `ollama serve` if you use Ollama models")
        found.append(entry)
    return found


def problems(section: list[dict[str, Any]], models: list[dict[str, Any]]) -> list[str]:
    """Marks each Ollama model row (``models``) present or not by its daemon's tags
    (unknown: None), and returns the daemons that models need and that do not answer."""
    by_host = {d["host"]: d for d in section or [] if isinstance(d, dict)}
    for row in models:
        daemon = by_host.get(row.get("host", ""))
        if not daemon or not daemon.get("reachable"):
            continue
        tag = row["source"].removeprefix("ollama:")
        pulled = set(daemon.get("models") or [])
        row["present"] = tag in pulled or f"{tag}:latest" in pulled
        if not row["present"]:
            row["problem"] = (f"{tag} is not pulled in Ollama at {daemon['host']}; run "
                              f"`localmoa models pull {row['name']}` or `ollama pull {tag}`")
    out = []
    for daemon in section or []:
        used = [r["name"] for r in models if r.get("host") == daemon["host"]]
        if "is not an Ollama host" in str(daemon.get("error")):
            out.append(str(daemon["error"]))
        elif used and not daemon.get("reachable"):
            out.append(f"Ollama at {daemon['host']} (for {', '.join(used)}): "
                       f"{daemon.get('error')}")
    return out
