"""The offline promise, enforced: a socket guard for run, chat, plan and bench.

An audit hook sees every ``socket.connect`` and ``socket.getaddrinfo`` of the
process before it happens and refuses any destination that is not this machine
(loopback, Unix sockets) or a host the user configured explicitly
(``allow_remote: true``). Set LOCALMOA_NETWORK_LOG=FILE to record every attempt.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
import threading
from typing import Any

from .errors import LocalMoaError

_allowed_hosts: set[str] = set()
_allowed_ips: set[str] = set()
_installed = False
_lock = threading.Lock()


class NetworkRefused(LocalMoaError):
    """Something tried to reach a host that is neither this machine nor configured."""


def _is_local(host: str) -> bool:
    if host in ("localhost", "") or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def allow_host(url_or_host: str) -> None:
    """Allow a host the user configured (an Ollama daemon with allow_remote: true)."""
    from urllib.parse import urlsplit

    host = urlsplit(url_or_host if "://" in url_or_host else f"//{url_or_host}").hostname
    if not host or _is_local(host):
        return
    with _lock:
        _allowed_hosts.add(host)
        try:  # its addresses, resolved now: the user asked for this host
            for info in socket.getaddrinfo(host, None):
                _allowed_ips.add(str(info[4][0]))
        except OSError:
            pass  # unresolvable: the connection attempt will report it


def _log(verdict: str, what: str) -> None:
    path = os.environ.get("LOCALMOA_NETWORK_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(f"{verdict} {what}\n")


def _check(host: str, what: str) -> None:
    if _is_local(host) or host in _allowed_hosts or host in _allowed_ips:
        _log("allow", what)
        return
    _log("refuse", what)
    raise NetworkRefused(
        f"refused to contact {host}: localmoa runs offline and only talks to this machine "
        "and hosts you configured (an Ollama host with allow_remote: true); "
        "`localmoa models pull` is the command that downloads")


def _hook(event: str, args: tuple[Any, ...]) -> None:
    if event == "socket.connect":
        sock, address = args[0], args[1]
        if getattr(sock, "family", None) == socket.AF_UNIX or not isinstance(address, tuple):
            return
        _check(str(address[0]), f"connect {address[0]}:{address[1]}")
    elif event == "socket.getaddrinfo":
        host = args[0]
        if isinstance(host, bytes):
            host = host.decode("ascii", "replace")
        if host is None:
            return
        _check(str(host), f"resolve {host}")


def install() -> None:
    """Guard this process from now on (audit hooks cannot be removed: CLI use only)."""
    global _installed
    with _lock:
        if _installed:
            return
        _installed = True
    sys.addaudithook(_hook)
