"""Which names and addresses are this machine's loopback, for `localmoa serve`: the
``Host`` check against DNS rebinding, the ``Origin`` check against cross-site requests,
and which ``--host`` binds need a key. Pure and free of FastAPI: the command asks
before it imports the server.

Loopback, for a ``Host`` header or an origin: ``localhost`` and every ``*.localhost``
name (RFC 6761 reserves them for loopback, and browsers never resolve them elsewhere,
so a rebinding page cannot own one), 127.0.0.0/8, ``::1`` and ``::ffff:127.x.y.z``.
Addresses are parsed with ``ipaddress``, never compared as strings; ``0.0.0.0`` and
``::`` are not loopback (a page can reach this machine through them).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Collection
from urllib.parse import urlsplit

#: Ports an origin or a Host header means when it names none.
DEFAULT_PORTS = {"http": 80, "https": 443}


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address ``host`` writes (an IPv4-mapped IPv6 address as its IPv4 one)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def normal_host(host: str) -> str:
    """A host name or address as compared: lower case, no brackets or final dot, an
    address in its canonical form (``[::FFFF:7f00:1]`` is ``127.0.0.1``)."""
    host = host.strip().lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    host = host.rstrip(".")
    ip = _ip(host)
    return str(ip) if ip is not None else host


def is_loopback_host(host: str) -> bool:
    """Whether a host name or address (no port) is loopback (see the module's note)."""
    host = normal_host(host)
    if host == "localhost" or host.endswith(".localhost"):
        return True
    ip = _ip(host)
    return ip is not None and ip.is_loopback


def split_host_header(value: str) -> tuple[str, int | None] | None:
    """``[::1]:8080`` -> ``("::1", 8080)``, ``localhost`` -> ``("localhost", None)``;
    None for a value no client writes (a bare IPv6 address, a bad port)."""
    value = value.strip()
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        host, rest = value[1:end], value[end + 1:]
        if rest and not rest.startswith(":"):
            return None
        port = rest[1:] if rest else None
    elif value.count(":") > 1:
        return None
    else:
        host, colon, port_text = value.partition(":")
        port = port_text if colon else None
    if port is not None and not (port.isdigit() and len(port) <= 5 and int(port) <= 65535):
        return None
    if not host:
        return None
    return normal_host(host), int(port) if port is not None else None


def host_allowed(header: str | None, allowed: Collection[str]) -> bool:
    """Whether a request's ``Host`` header names this machine's loopback or a host the
    user allowed (``allowed``: names or addresses, ``*`` for any). A request with no
    Host passes: browsers always send one, and rebinding needs a browser."""
    if not header:
        return True
    parsed = split_host_header(header)
    if parsed is None:
        return False
    host = parsed[0]
    return is_loopback_host(host) or "*" in allowed or host in {normal_host(a) for a in allowed}


def normal_origin(origin: str) -> str:
    """An origin as compared: ``HTTP://LocalHost:80/`` is ``http://localhost``."""
    parts = urlsplit(origin.strip())
    if not parts.scheme or not parts.hostname:
        return origin.strip().lower().rstrip("/")
    try:
        port = parts.port
    except ValueError:
        return origin.strip().lower()
    host = normal_host(parts.hostname)
    host = f"[{host}]" if ":" in host else host
    shown = "" if port is None or port == DEFAULT_PORTS.get(parts.scheme) else f":{port}"
    return f"{parts.scheme.lower()}://{host}{shown}"


def origin_allowed(origin: str, host_header: str | None, server_port: int | None,
                   allowed: Collection[str]) -> bool:
    """Whether a browser's ``Origin`` may call: the server's own (the same host and port
    as the request's ``Host``, or a loopback name or address on the server's port), or
    one the user allowed (``allowed``: origins, ``*`` for any). ``null`` (a file, a
    sandboxed frame) only when allowed by name."""
    if "*" in allowed or normal_origin(origin) in {normal_origin(a) for a in allowed}:
        return True
    parts = urlsplit(origin.strip())
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        return False
    try:
        port = parts.port or DEFAULT_PORTS[parts.scheme]
    except ValueError:
        return False
    host = normal_host(parts.hostname)
    if is_loopback_host(host) and port == server_port:
        return True
    target = split_host_header(host_header) if host_header else None
    if target is None:
        return False
    target_host, target_port = target  # same origin: the page came from where it calls
    return target_host == host and (target_port or DEFAULT_PORTS[parts.scheme]) == port


def bind_address(host: str) -> str | None:
    """The address a socket listening on ``host`` (what ``--host`` says) binds, read
    without any lookup (the offline guard sees none; no DNS query leaves): an IPv4
    address in any form the C library takes (``127.1``, ``0x7f.1``, ``0177.0.0.1``,
    ``2130706433``, ``0``) written out, an IPv6 address (brackets off) in its canonical
    form, ``localhost`` for ``localhost`` and ``localhost.``, ``""`` (every interface)
    for the empty host. None for any other name: the socket would ask the resolver."""
    name = host.strip()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    if not name:
        return ""
    if name.lower() in ("localhost", "localhost."):
        return "localhost"
    if ":" in name:
        try:
            return str(ipaddress.IPv6Address(name))
        except ValueError:
            return None
    if _IPV4_FORM.fullmatch(name):
        try:  # inet_aton: the legacy forms too, as getaddrinfo and bind read them
            return socket.inet_ntoa(socket.inet_aton(name))
        except OSError:
            return None
    return None


#: What inet_aton may read: digits, hex digits and dots (it stops at a space; we do not).
_IPV4_FORM = re.compile(r"[0-9A-Fa-fXx.]+")


def bind_is_loopback(host: str) -> bool:
    """Whether listening on ``host`` (what ``--host`` says) accepts loopback only.

    The address is read as the socket will read it (``bind_address``, no lookup), then
    checked with ``ipaddress`` (IPv4-mapped ones as their IPv4 address); unspecified
    addresses are every interface. The only name taken is ``localhost`` (and
    ``localhost.``), and only when each of its addresses is loopback; any other name
    needs a key (no DNS query is made)."""
    address = bind_address(host)
    if not address:
        return False  # a name, or the empty host (every interface)
    if address == "localhost":
        try:
            infos = socket.getaddrinfo("localhost", None, type=socket.SOCK_STREAM)
        except socket.gaierror:
            return False
        addresses = [_ip(str(info[4][0]).split("%")[0]) for info in infos]
    else:
        addresses = [_ip(address.split("%")[0])]
    return bool(addresses) and all(ip is not None and ip.is_loopback for ip in addresses)
