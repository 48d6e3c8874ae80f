"""The offline promise, enforced: a socket guard for run, chat, plan and bench.

What it covers, exactly: the Python-level socket calls of the localmoa process
itself. An audit hook sees every ``connect`` (and ``connect_ex``), ``sendto``,
``sendmsg``, name lookup (``getaddrinfo``, ``gethostbyname``,
``gethostbyname_ex``) and address lookup (``gethostbyaddr``, ``getnameinfo``)
before it happens, and refuses any destination that is not this machine
(loopback, ``localhost``, 0.0.0.0, Unix sockets) or a host the user configured
explicitly (``allow_remote: true``). A host name written straight into a
connect/sendto/sendmsg address is checked before Python resolves it (CPython
resolves it before the audit event). What it cannot see: subprocesses, and
native code (llama.cpp, any C library) that calls the OS directly.
Set LOCALMOA_NETWORK_LOG=FILE to record every attempt, allowed or refused.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
import sys
import threading
from collections.abc import Callable
from typing import Any

from . import constants
from .errors import LocalMoaError

_allowed_hosts: set[str] = set()
_allowed_ips: set[str] = set()
_installed = False
_lock = threading.Lock()

_IP_FAMILIES = frozenset({socket.AF_INET, socket.AF_INET6})
#: Families whose peer is always this machine: Unix sockets, and the kernel itself (netlink).
_LOCAL_FAMILIES = frozenset(getattr(socket, name) for name in ("AF_UNIX", "AF_NETLINK")
                            if hasattr(socket, name))


class NetworkRefused(LocalMoaError):
    """Something tried to reach a host that is neither this machine nor configured."""


def is_this_machine(host: str) -> bool:
    """Whether a host name or address is this machine: localhost, 127/8, ::1, 0.0.0.0, ::.

    The unspecified addresses count: a connection to 0.0.0.0 reaches this
    machine, and OLLAMA_HOST=0.0.0.0 (set for the daemon) is common.
    """
    host = host.lower()
    if host in ("localhost", "") or host.endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1
    return ip.is_loopback or ip.is_unspecified


def allow_host(url_or_host: str) -> None:
    """Allow a host the user configured (an Ollama daemon with allow_remote: true)."""
    from urllib.parse import urlsplit

    host = urlsplit(url_or_host if "://" in url_or_host else f"//{url_or_host}").hostname
    if not host or is_this_machine(host):
        return
    with _lock:
        _allowed_hosts.add(host)
        try:  # its addresses, resolved now: the user asked for this host
            for info in socket.getaddrinfo(host, None):
                _allowed_ips.add(str(info[4][0]))
        except OSError:
            pass  # unresolvable: the connection attempt will report it


def _log(verdict: str, what: str) -> None:
    path = constants.network_log()
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(f"{verdict} {what}\n")


def _check(host: str, what: str) -> None:
    if is_this_machine(host) or host.lower() in _allowed_hosts or host in _allowed_ips:
        _log("allow", what)
        return
    _log("refuse", what)
    raise NetworkRefused(
        f"refused to contact {host}: localmoa runs offline and only talks to this machine "
        "and hosts you configured (a model's Ollama host or OpenAI-compatible base_url with "
        "allow_remote: true); "
        "`localmoa models pull` is the command that downloads")


def _text(host: object) -> str:
    """A host as the socket module takes it (str, bytes or bytearray) as text."""
    if isinstance(host, bytes | bytearray):
        return bytes(host).decode("ascii", "replace")
    return str(host)


def _host_port(host: str, port: object) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _check_peer(verb: str, sock: object, address: object) -> None:
    """connect, sendto, sendmsg: the peer must be this machine or an allowed host."""
    family = getattr(sock, "family", None)
    if address is None or family in _LOCAL_FAMILIES:
        return  # sendmsg on a connected socket (checked at connect); Unix sockets; the kernel
    if family in _IP_FAMILIES and isinstance(address, tuple) and len(address) >= 2:
        host = _text(address[0])  # (host, port) or IPv6's (host, port, flowinfo, scope_id)
        _check(host, f"{verb} {_host_port(host, address[1])}")
    else:  # raw packets, Bluetooth, CAN, vsock...: they leave the machine, localmoa needs none
        _check(repr(address), f"{verb} {address!r}")


def _hook(event: str, args: tuple[Any, ...]) -> None:
    # Shapes from CPython's audit events table, the same in 3.10 to 3.13.
    if not event.startswith("socket."):
        return  # every audit event of the process comes here: let the others pass quickly
    if event in ("socket.connect", "socket.sendto", "socket.sendmsg"):  # (socket, address)
        _check_peer(event.removeprefix("socket."), args[0], args[1] if len(args) > 1 else None)
    elif event in ("socket.getaddrinfo", "socket.gethostbyname"):  # (host, ...); also _ex
        if args[0] is not None:  # getaddrinfo(None, port): the passive / loopback address
            host = _text(args[0])
            _check(host, f"resolve {host}")
    elif event == "socket.gethostbyaddr":  # (ip_address,): a name is resolved first
        host = _text(args[0])
        _check(host, f"reverse-resolve {host}")
    elif event == "socket.getnameinfo":  # (sockaddr,)
        sockaddr = args[0]
        host = _text(sockaddr[0] if isinstance(sockaddr, tuple) and sockaddr else sockaddr)
        _check(host, f"reverse-resolve {host}")


def _needs_lookup(host: str) -> bool:
    """Whether CPython resolves this address host through the resolver (DNS, /etc/hosts)."""
    if host in ("", "<broadcast>"):
        return False
    try:
        ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return True
    return False


def _check_name_first(method: str, address_at: Callable[[tuple[Any, ...]], object]) -> None:
    """Check a host name in ``method``'s address before CPython resolves it.

    CPython turns ``("example.com", 80)`` into an address, asking the resolver,
    before it raises the audit event: that lookup could leave the machine.
    """
    original = getattr(socket.socket, method)

    @functools.wraps(original)
    def guarded(self: socket.socket, *args: Any, **kwargs: Any) -> Any:
        if self.family in _IP_FAMILIES:
            address = address_at(args)
            if isinstance(address, tuple) and address:
                host = _text(address[0])
                if _needs_lookup(host):
                    _check(host, f"resolve {host}")
        return original(self, *args, **kwargs)

    setattr(socket.socket, method, guarded)


def install() -> None:
    """Guard this process from now on (audit hooks cannot be removed: CLI use only)."""
    global _installed
    with _lock:
        if _installed:
            return
        _installed = True
        for method, address_at in (  # where each method takes its address (positional only)
                ("connect", lambda a: a[0] if a else None),
                ("connect_ex", lambda a: a[0] if a else None),
                ("sendto", lambda a: a[-1] if len(a) >= 2 else None),  # (data[, flags], addr)
                ("sendmsg", lambda a: a[3] if len(a) >= 4 else None)):  # (bufs, anc, flags, addr)
            _check_name_first(method, address_at)
    sys.addaudithook(_hook)
