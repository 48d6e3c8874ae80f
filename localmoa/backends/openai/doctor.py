"""The OpenAI-compatible servers' section of `localmoa doctor`: each server the config
names, whether it answers and the models it lists. Only this machine, or a server a
model allows (allow_remote), is contacted."""

from __future__ import annotations

from typing import Any

from ... import constants
from .http import served_models, server_message
from .spec import OpenAISpec

#: How long `localmoa doctor` waits for a server to list its models.
DOCTOR_TIMEOUT_S = 3.0


def check_server(url: str, specs: list[OpenAISpec]) -> dict[str, Any]:
    """One server's doctor entry; the key of any of its models is sent if exported. (A
    remote server is configured only with allow_remote: the schema refuses it otherwise.)"""
    import httpx

    from ... import netguard

    entry: dict[str, Any] = {"host": url, "reachable": False, "error": None, "models": [],
                             "summary": ""}
    if specs[0].is_remote:
        netguard.allow_host(url)
    key = next((constants.secret(s.api_key_env) for s in specs
                if s.api_key_env and constants.secret(s.api_key_env)), None)
    try:
        response = httpx.get(f"{url}/models", timeout=DOCTOR_TIMEOUT_S, trust_env=False,
                             headers={"Authorization": f"Bearer {key}"} if key else {})
    except httpx.HTTPError as exc:
        entry["error"] = (f"no server answers at {url} ({type(exc).__name__}); start it or "
                          "fix base_url")
        return entry
    served = served_models(response) if response.status_code < 400 else None
    if served is None:
        entry["error"] = (f"the server at {url} answered /models with HTTP "
                          f"{response.status_code}: {server_message(response.content, key)}")
        return entry
    entry.update(reachable=True, models=sorted(served),
                 summary=f"{len(served)} models: {', '.join(sorted(served))}")
    return entry


def server_problems(section: Any, models: list[dict[str, Any]]) -> list[str]:
    """Marks each openai model row present or not by its server's list (unknown: left
    None), and returns one line per server that models use and that did not answer."""
    if not isinstance(section, list):
        return []
    by_host = {s["host"]: s for s in section if isinstance(s, dict)}
    for row in models:
        server = by_host.get(row.get("host", ""))
        if not server or not server.get("reachable"):
            continue
        served = str(row.get("served_model"))
        row["present"] = served in server["models"]
        if not row["present"]:
            row["problem"] = (f"the server at {server['host']} does not serve {served!r}; it "
                              f"serves: {', '.join(server['models']) or 'none'}")
    out = []
    for server in by_host.values():
        used = [r["name"] for r in models if r.get("host") == server["host"]]
        if used and not server.get("reachable"):
            out.append(f"OpenAI-compatible server at {server['host']} (for {', '.join(used)}): "
                       f"{server.get('error')}")
    return out
