"""The sandbox (localmoa/coderun/sandbox.py): model-written code that passes, fails, opens a
socket, writes outside its folder, allocates without bound or loops forever is contained
and reported. No test depends on the machine's speed: the generous limits are safety
nets, and the loop's short timeout is only asserted to end in "timeout"."""

from __future__ import annotations

from pathlib import Path

import pytest

from localmoa.coderun import sandbox
from localmoa.coderun.sandbox import Limits, run_program

#: A safety net, far above what any of these programs needs.
GENEROUS = Limits(timeout_s=120)


def test_a_passing_program_passes() -> None:
    outcome = run_program("def add(a, b):\n    return a + b\n\nassert add(2, 3) == 5\n"
                          "print('ok')\n", GENEROUS)
    assert (outcome.status, outcome.detail, outcome.stdout) == ("passed", "", "ok\n")
    assert outcome.passed


def test_a_failing_assertion_is_failed_with_its_line() -> None:
    outcome = run_program("def add(a, b):\n    return a - b\n\nassert add(2, 3) == 5\n",
                          GENEROUS)
    assert outcome.status == "failed" and not outcome.passed
    assert outcome.detail.startswith("AssertionError (line 4)")


@pytest.mark.parametrize(("source", "detail"), [
    ("def f(:\n", "SyntaxError"),
    ("raise ValueError('nope')\n", "ValueError (line 1): nope"),
    ("import sys\nsys.exit(0)\n", "the program exited (code 0)"),
    ("import os\nos._exit(0)\n", "exited with code 0"),  # passing needs the bootstrap's word
])
def test_errors_are_errors(source: str, detail: str) -> None:
    outcome = run_program(source, GENEROUS)
    assert outcome.status == "error" and detail in outcome.detail


@pytest.mark.parametrize("source", [
    "import socket\nsocket.create_connection(('example.com', 80), timeout=5)\n",
    "import socket\nsocket.socket().connect(('192.0.2.1', 80))\n",
    "import urllib.request\nurllib.request.urlopen('http://192.0.2.1/', timeout=5)\n",
    # caught by the program: still reported
    "import socket\ntry:\n    socket.socket().connect(('192.0.2.1', 80))\n"
    "except OSError:\n    pass\n",
])
def test_a_socket_to_the_network_is_network(source: str) -> None:
    outcome = run_program(source, GENEROUS)
    assert outcome.status == "network", outcome
    assert "no network in the sandbox" in outcome.detail


def test_a_unix_socket_pair_stays_allowed() -> None:
    outcome = run_program("import socket\na, b = socket.socketpair()\na.send(b'x')\n"
                          "assert b.recv(1) == b'x'\n", GENEROUS)
    assert outcome.status == "passed", outcome


def test_writing_outside_its_folder_is_denied_and_nothing_is_written(
        isolated_home: Path) -> None:
    target = isolated_home / "escaped.txt"  # the user's own folder
    for source in (f"open({str(target)!r}, 'w').write('x')\n",
                   f"import pathlib\npathlib.Path({str(target)!r}).write_text('x')\n",
                   f"import os\nos.open({str(target)!r}, os.O_CREAT | os.O_WRONLY)\n",
                   "import os\ntry:\n    open('/tmp/../' + os.path.basename(os.getcwd()) + "
                   f"'x', 'a')\nexcept OSError:\n    pass\nopen({str(target)!r}, 'a')\n"):
        outcome = run_program(source, GENEROUS)
        assert outcome.status == "denied", (source, outcome)
        assert "outside the sandbox's directory" in outcome.detail
    assert not target.exists()


def test_sqlite_outside_its_folder_is_denied_even_without_a_read_only_view(
        isolated_home: Path) -> None:
    target = isolated_home / "escaped.db"
    source = f"import sqlite3\nsqlite3.connect({str(target)!r}).execute('create table t(x)')\n"
    plain = sandbox.Containment(sandbox.containment().unshare, read_only=False)
    outcome = run_program(source, GENEROUS, plain)
    assert outcome.status == "denied", outcome
    assert not target.exists()
    inside = run_program("import sqlite3\nsqlite3.connect('mine.db').execute('create table "
                         "t(x)')\nsqlite3.connect(':memory:')\n", GENEROUS, plain)
    assert inside.passed, inside


def test_a_demo_under_main_does_not_run() -> None:
    """As in HumanEval's harness: a reply's own demo that reads input is not run."""
    outcome = run_program("def f(x):\n    return x + 1\n\nif __name__ == '__main__':\n"
                          "    print(f(int(input())))\n\nassert f(1) == 2\n", GENEROUS)
    assert outcome.passed, outcome


def test_native_writes_meet_a_read_only_file_system_where_the_machine_allows(
        tmp_path: Path) -> None:
    if not sandbox.containment().read_only:
        pytest.skip("this machine allows no mount namespace: the audit hook guards alone")
    target = tmp_path / "native.txt"
    # libc's creat() is not seen by the audit hook: the read-only mount stops it
    outcome = run_program(
        "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        f"fd = libc.creat({str(target).encode()!r}, 0o644)\n"
        "assert fd == -1 and ctypes.get_errno() == 30, (fd, ctypes.get_errno())  # EROFS\n"
        "assert libc.creat(b'mine.txt', 0o644) >= 0  # its own folder stays writable\n",
        GENEROUS)
    assert outcome.status == "passed", outcome
    assert not target.exists()


def test_removing_files_outside_its_folder_is_denied(tmp_path: Path) -> None:
    keep = tmp_path / "keep.txt"
    keep.write_text("precious", encoding="utf-8")
    outcome = run_program(f"import os\nos.remove({str(keep)!r})\n", GENEROUS)
    assert outcome.status == "denied"
    assert keep.read_text(encoding="utf-8") == "precious"


def test_its_own_folder_is_writable_empty_home_and_clean_environment() -> None:
    outcome = run_program(
        "import os, json\nassert os.listdir('.') == []\n"
        "open(os.path.expanduser('~/notes.txt'), 'w').write('x')\n"
        "print(json.dumps({'cwd': os.getcwd(), 'env': dict(os.environ), "
        "'files': os.listdir('.')}))\n", GENEROUS)
    assert outcome.status == "passed", outcome
    import json

    seen = json.loads(outcome.stdout)
    assert seen["files"] == ["notes.txt"]
    assert set(seen["env"]) == {"PATH", "LANG", "HOME", "TMPDIR"}
    assert seen["env"]["HOME"] == seen["cwd"]
    assert not Path(seen["cwd"]).exists()  # deleted after the run


def test_starting_a_process_is_denied() -> None:
    outcome = run_program("import subprocess\nsubprocess.run(['true'])\n", GENEROUS)
    assert outcome.status == "denied" and "no new processes" in outcome.detail


def test_allocating_without_bound_is_memory() -> None:
    outcome = run_program("hoard = []\nwhile True:\n    hoard.append(bytearray(1 << 24))\n",
                          Limits(timeout_s=120, memory_bytes=512 << 20))
    assert outcome.status == "memory", outcome


def test_an_endless_loop_is_timeout() -> None:
    outcome = run_program("while True:\n    pass\n", Limits(timeout_s=1))
    assert outcome.status == "timeout" and "killed" in outcome.detail


def test_a_program_that_waits_past_its_timeout_is_killed() -> None:
    # wall-clock, not CPU time: a program blocked on a wait that never ends uses none of
    # its CPU limit
    outcome = run_program("import threading\nthreading.Event().wait()\n", Limits(timeout_s=1))
    assert outcome.status == "timeout"


def test_a_file_past_the_size_limit_is_an_error() -> None:
    outcome = run_program("open('big.bin', 'wb').write(bytes(2 << 20))\n",
                          Limits(timeout_s=120, file_bytes=1 << 20))
    assert outcome.status == "error" and "File too large" in outcome.detail, outcome


def test_output_is_capped() -> None:
    outcome = run_program("print('x' * 100_000)\n", Limits(timeout_s=120, output_bytes=1000))
    assert outcome.status == "passed"
    assert outcome.stdout.startswith("x" * 1000) and outcome.stdout.endswith("[output cut]")


def test_a_reported_result_comes_back_as_json() -> None:
    outcome = run_program("__sandbox_result__([repr(1), repr('a')])\n", GENEROUS)
    assert outcome.result == '["1", "\'a\'"]'


def test_the_containment_is_probed_and_described() -> None:
    found = sandbox.containment()
    text = found.describe()
    assert "separate process" in text and "no network" in text
    if found.network_namespace:
        assert "network namespace" in text
    if found.read_only:
        assert "read-only view" in text
    fallback = sandbox.Containment(None).describe()
    assert "socket guard only" in fallback
    # the socket guard alone still refuses the network
    outcome = run_program("import socket\nsocket.getaddrinfo('example.com', 80)\n", GENEROUS,
                          sandbox.Containment(None))
    assert outcome.status == "network"
