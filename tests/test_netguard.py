"""The socket guard: every Python-level way out of the process, refused before it happens.

An audit hook cannot be removed, so each guarded test runs in its own Python
process: it installs the guard, makes its attempts and prints one line per
attempt, ``LABEL refused MESSAGE`` or ``LABEL allowed [ERROR]`` (allowed, then
failed on its own, e.g. a name that does not exist). Remote addresses are
RFC 5737 / 3849 documentation addresses: were the guard to let one through,
nothing would answer.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from localmoa.netguard import is_this_machine

PRELUDE = """\
import socket
from localmoa import netguard
netguard.install()

def attempt(label, call):
    try:
        call()
    except netguard.NetworkRefused as exc:
        print(label, "refused", exc)
    except OSError as exc:
        print(label, "allowed", type(exc).__name__)
    else:
        print(label, "allowed")
"""

REMOTE_V4 = "192.0.2.10"
REMOTE_V6 = "2001:db8::10"
REFUSED = "refused refused to contact {host}: localmoa runs offline and only talks to this machine"


def guarded(body: str, **env: str) -> dict[str, str]:
    """Run ``body`` after the guard is installed; each printed attempt, by label."""
    proc = subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(body)],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, **env})
    assert proc.returncode == 0, proc.stderr
    outcomes = {}
    for line in proc.stdout.splitlines():
        label, _, outcome = line.partition(" ")
        outcomes[label] = outcome
    return outcomes


def assert_refused(outcome: str, host: str) -> None:
    assert outcome.startswith(REFUSED.format(host=host)), outcome
    assert "\n" not in outcome


@pytest.mark.parametrize(("host", "local"), [
    ("localhost", True), ("LOCALHOST", True), ("ollama.localhost", True), ("", True),
    ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True),
    ("0.0.0.0", True), ("::", True),  # a connection to the unspecified address stays here
    ("::ffff:127.0.0.1", True), ("fe80::1%eth0", False),
    ("10.0.0.1", False), (REMOTE_V4, False), (REMOTE_V6, False), ("::ffff:10.0.0.1", False),
    ("example.com", False), ("localhost.example.com", False),
])
def test_what_counts_as_this_machine(host: str, local: bool) -> None:
    assert is_this_machine(host) is local


def test_udp_to_another_host_is_refused() -> None:
    out = guarded(f"""
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        attempt("sendto", lambda: udp.sendto(b"x", ("{REMOTE_V4}", 9)))
        attempt("sendto-flags", lambda: udp.sendto(b"x", 0, ("{REMOTE_V4}", 9)))
        attempt("sendto-bytes", lambda: udp.sendto(b"x", (b"{REMOTE_V4}", 9)))
        attempt("sendmsg", lambda: udp.sendmsg([b"x"], [], 0, ("{REMOTE_V4}", 9)))
        attempt("broadcast", lambda: udp.sendto(b"x", ("<broadcast>", 9)))
        attempt("connect_ex", lambda: udp.connect_ex(("{REMOTE_V4}", 9)))
        udp6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        attempt("sendto-v6", lambda: udp6.sendto(b"x", ("{REMOTE_V6}", 9, 0, 0)))
        attempt("sendmsg-v6", lambda: udp6.sendmsg([b"x"], [], 0, ("{REMOTE_V6}", 9, 0, 0)))
        attempt("mapped-v4", lambda: udp6.sendto(b"x", ("::ffff:{REMOTE_V4}", 9, 0, 0)))
    """)
    for label in ("sendto", "sendto-flags", "sendto-bytes", "sendmsg", "connect_ex"):
        assert_refused(out[label], REMOTE_V4)
    assert_refused(out["broadcast"], "<broadcast>")
    assert_refused(out["sendto-v6"], REMOTE_V6)
    assert_refused(out["sendmsg-v6"], REMOTE_V6)
    assert_refused(out["mapped-v4"], f"::ffff:{REMOTE_V4}")


def test_udp_to_this_machine_is_allowed_and_arrives(tmp_path: Path) -> None:
    out = guarded(f"""
        inbox = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        inbox.bind(("127.0.0.1", 0))
        inbox.settimeout(5)
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        attempt("sendto", lambda: udp.sendto(b"one", inbox.getsockname()))
        attempt("sendmsg", lambda: udp.sendmsg([b"two"], [], 0, inbox.getsockname()))
        attempt("by-name", lambda: udp.sendto(b"three", ("localhost", inbox.getsockname()[1])))
        attempt("connect", lambda: udp.connect(inbox.getsockname()))
        attempt("sendmsg-connected", lambda: udp.sendmsg([b"four"]))
        print("received", b",".join(inbox.recv(16) for _ in range(4)).decode())
        path = {str(tmp_path / "unix.sock")!r}
        unix_inbox = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        unix_inbox.bind(path)
        unix = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        attempt("unix", lambda: unix.sendto(b"five", path))
        print("unix-received", unix_inbox.recv(16).decode())
    """)
    for label in ("sendto", "sendmsg", "by-name", "connect", "sendmsg-connected", "unix"):
        assert out[label] == "allowed", (label, out[label])
    assert out["received"] == "one,two,three,four"
    assert out["unix-received"] == "five"


@pytest.mark.parametrize("call", [
    'socket.gethostbyname("example.com")',
    'socket.gethostbyname_ex("example.com")',
    'socket.gethostbyname(b"example.com")',
    'socket.gethostbyaddr("example.com")',
    'socket.getaddrinfo("example.com", 443)',
    f'socket.getaddrinfo("{REMOTE_V4}", 443)',
    f'socket.gethostbyaddr("{REMOTE_V4}")',
    f'socket.gethostbyaddr("{REMOTE_V6}")',
    f'socket.getnameinfo(("{REMOTE_V4}", 80), 0)',
    f'socket.getnameinfo(("{REMOTE_V6}", 80, 0, 0), 0)',
])
def test_lookups_of_other_hosts_are_refused(call: str) -> None:
    out = guarded(f'attempt("lookup", lambda: {call})')
    host = "example.com" if "example.com" in call else REMOTE_V6 if "::" in call else REMOTE_V4
    assert_refused(out["lookup"], host)


def test_lookups_of_this_machine_are_allowed() -> None:
    out = guarded("""
        attempt("gethostbyname", lambda: socket.gethostbyname("localhost"))
        attempt("gethostbyname_ex", lambda: socket.gethostbyname_ex("localhost"))
        attempt("gethostbyaddr", lambda: socket.gethostbyaddr("127.0.0.1"))
        attempt("getnameinfo", lambda: socket.getnameinfo(("127.0.0.1", 80),
                                                          socket.NI_NUMERICHOST))
        attempt("getaddrinfo", lambda: socket.getaddrinfo("localhost", 80))
        attempt("passive", lambda: socket.getaddrinfo(None, 80))
        print("address", socket.gethostbyname("localhost"))
    """)
    for label in ("gethostbyname", "gethostbyname_ex", "gethostbyaddr", "getnameinfo",
                  "getaddrinfo", "passive"):
        assert out[label].startswith("allowed"), (label, out[label])
    assert out["address"] == "127.0.0.1"


def test_a_name_in_an_address_is_checked_before_python_resolves_it() -> None:
    # CPython resolves ("name", port) before the audit event; unguarded, these raise gaierror
    out = guarded("""
        tcp = socket.socket()
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        attempt("connect", lambda: tcp.connect(("no-such-host.invalid", 80)))
        attempt("connect_ex", lambda: tcp.connect_ex(("no-such-host.invalid", 80)))
        attempt("sendto", lambda: udp.sendto(b"x", ("no-such-host.invalid", 9)))
        attempt("sendmsg", lambda: udp.sendmsg([b"x"], [], 0, ("no-such-host.invalid", 9)))
    """)
    for label in ("connect", "connect_ex", "sendto", "sendmsg"):
        assert_refused(out[label], "no-such-host.invalid")


def test_a_configured_host_passes_and_no_other() -> None:
    # A UDP connect sends nothing: it only proves the guard let the call through.
    out = guarded(f"""
        netguard.allow_host("http://{REMOTE_V4}:11434")
        attempt("allowed", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                .connect(("{REMOTE_V4}", 11434)))
        attempt("lookup", lambda: socket.getaddrinfo("{REMOTE_V4}", 11434))
        attempt("other", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                .connect(("192.0.2.11", 11434)))
    """)
    assert out["allowed"].startswith("allowed") and out["lookup"].startswith("allowed")
    assert_refused(out["other"], "192.0.2.11")


def test_the_network_log_records_every_attempt(tmp_path: Path) -> None:
    log = tmp_path / "network.log"
    out = guarded(f"""
        inbox = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        inbox.bind(("127.0.0.1", 0))
        print("port", inbox.getsockname()[1])
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        attempt("local", lambda: udp.sendto(b"x", inbox.getsockname()))
        attempt("remote", lambda: udp.sendto(b"x", ("{REMOTE_V4}", 9)))
        attempt("remote-v6", lambda: socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
                .sendmsg([b"x"], [], 0, ("{REMOTE_V6}", 9, 0, 0)))
        attempt("name", lambda: socket.gethostbyname("example.com"))
        attempt("reverse", lambda: socket.gethostbyaddr("{REMOTE_V4}"))
        attempt("reverse-local", lambda: socket.getnameinfo(("127.0.0.1", 80),
                                                            socket.NI_NUMERICHOST))
    """, LOCALMOA_NETWORK_LOG=str(log))
    assert log.read_text(encoding="utf-8").splitlines() == [
        f"allow sendto 127.0.0.1:{out['port']}",
        f"refuse sendto {REMOTE_V4}:9",
        f"refuse sendmsg [{REMOTE_V6}]:9",
        "refuse resolve example.com",
        f"refuse reverse-resolve {REMOTE_V4}",
        "allow reverse-resolve 127.0.0.1",
    ]
