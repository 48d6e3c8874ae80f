"""Writes that fail part-way leave the user's old file whole: chat's /save, eval's
results.json, `models add`. The failure is real where it can be: the child process runs
under a file size limit (RLIMIT_FSIZE; Python ignores SIGXFSZ, so a write past it fails
with EFBIG after writing what fitted, as a full disk fails with ENOSPC). fileio's
atomic_write is also tested with the failure injected at each step."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import resource
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from localmoa.errors import LocalMoaError
from localmoa.fileio import FileRefused, atomic_write

from .conftest import REPO

NET = 120


def limited(limit_bytes: int) -> object:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))
    return apply


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# chat /save
def chat(*lines: str, limit_bytes: int | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "localmoa", "chat"], input="\n".join(lines) + "\n",
        capture_output=True, text=True, cwd=REPO, timeout=NET,
        preexec_fn=limited(limit_bytes) if limit_bytes else None)


def test_chat_save_that_fails_keeps_the_previous_save(tmp_path: Path) -> None:
    saved = tmp_path / "chat.json"
    proc = chat(f"/save {saved}", "/exit")
    assert proc.returncode == 0 and "saved 0 turns" in proc.stderr, proc.stderr
    previous = json.dumps({"turns": ["an earlier conversation"] * 200})  # ~6 KB
    saved.write_text(previous, encoding="utf-8")
    # the new save (~60 bytes) is over the limit: the write fails after 40 bytes
    proc = chat(f"/save {saved}", "/exit", limit_bytes=40)
    assert proc.returncode == 0, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert errors == [f"error: cannot write {saved}: File too large (nothing saved; a file "
                      "already there is unchanged)"]
    assert saved.read_text(encoding="utf-8") == previous
    assert leftovers(tmp_path) == []


def test_chat_save_to_a_device_is_refused() -> None:
    proc = chat("/save /dev/full", "/exit")
    assert proc.returncode == 0
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert errors == ["error: /dev/full is not a regular file (it is a character device); "
                      "give the path of a regular file to write"]
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)


# eval's results.json
def test_eval_results_that_fail_keep_the_old_file(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    results.write_text('{"old": true}\n', encoding="utf-8")
    code = ("import sys; from pathlib import Path; from localmoa.cli.eval import write_results;"
            "write_results(Path(sys.argv[1]), {'answers': ['x' * 100] * 100})")
    proc = subprocess.run([sys.executable, "-c", code, str(results)], capture_output=True,
                          text=True, cwd=REPO, timeout=NET, preexec_fn=limited(4096))
    assert proc.returncode == 1 and "LocalMoaError: cannot write" in proc.stderr
    assert "File too large" in proc.stderr
    assert results.read_text(encoding="utf-8") == '{"old": true}\n'
    assert leftovers(tmp_path) == []


def test_eval_results_error_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                        ) -> None:
    from localmoa.cli.eval import write_results

    results = tmp_path / "results.json"
    results.write_text("old\n")
    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(LocalMoaError, match=f"^cannot write {results}: No space left on device$"):
        write_results(results, {"a": 1})
    assert results.read_text() == "old\n" and leftovers(tmp_path) == []


# models add
def test_models_add_that_fails_leaves_the_file_unchanged(tmp_path: Path) -> None:
    cfg = tmp_path / "models.yaml"
    before = "# mine\nmodels:\n  a:\n    backend: ollama\n    source: {ollama: x}\n"
    cfg.write_text(before, encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "localmoa", "models", "add", "ollama:qwen2.5:7b", "--name", "q",
         "--config", str(cfg)], capture_output=True, text=True, cwd=REPO, timeout=NET,
        preexec_fn=limited(len(before) + 20))  # the backup fits, the new file does not
    assert proc.returncode == 1
    assert proc.stderr == (f"localmoa: error: cannot write {cfg}: File too large (the file is "
                           "unchanged)\n")
    assert cfg.read_text(encoding="utf-8") == before and leftovers(tmp_path) == []


# models add, several at once: each reads the file under the lock, so none is lost
ADD_AFTER_A_BARRIER = """
import sys
from localmoa.cli import main  # everything imported before the barrier
print("ready", flush=True)
sys.stdin.readline()
main(sys.argv[1:])
"""


def test_parallel_models_add_keeps_every_entry(tmp_path: Path) -> None:
    cfg = tmp_path / "models.yaml"
    cfg.write_text("# mine\nmodels:\n  a:\n    backend: ollama\n    source: {ollama: x}\n",
                   encoding="utf-8")
    names = [f"s{i}" for i in range(5)]
    children = [subprocess.Popen(
        [sys.executable, "-c", ADD_AFTER_A_BARRIER, "models", "add", "ollama:qwen2.5:7b",
         "--name", name, "--config", str(cfg)], cwd=REPO, stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for name in names]
    try:
        for child in children:  # all have started and imported: let them go at once
            assert child.stdout is not None and child.stdout.readline() == "ready\n"
        for child in children:
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.close()
        results = [(child.wait(timeout=NET), child.stderr.read() if child.stderr else "")
                   for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    assert all(code == 0 and "added model" in err for code, err in results), results
    text = cfg.read_text(encoding="utf-8")
    assert text.startswith("# mine\n")
    assert sorted(yaml.safe_load(text)["models"]) == ["a", *names]
    assert len(list(tmp_path.glob("models.yaml.bak-*"))) == len(names)
    assert (tmp_path / ".models.yaml.lock").exists() and leftovers(tmp_path) == []


def test_models_add_rereads_the_file_after_the_lock_holder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the interleaving made exact: while A is between its read and its write, B adds; B
    # must wait for A's lock (then read A's entry), never write in between
    from localmoa.cli import models as models_cli

    cfg = tmp_path / "models.yaml"
    cfg.write_text("models:\n  old:\n    backend: ollama\n    source: {ollama: x}\n",
                   encoding="utf-8")
    b_went_ahead = threading.Event()  # B waits at the lock, or (no lock) B is done
    errors: list[BaseException] = []

    def add(name: str) -> None:
        try:
            models_cli.add("ollama:qwen2.5:7b", name=name, n_ctx=4096, force=False,
                           config=cfg)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)
        finally:
            if name == "b":
                b_went_ahead.set()

    b = threading.Thread(target=add, args=("b",))
    real_text, real_flock = models_cli.add_model_text, fcntl.flock

    def a_lets_b_run(text: str, file: str, name: str, entry: dict) -> str:
        if name == "a":
            b.start()
            assert b_went_ahead.wait(NET)
        return real_text(text, file, name, entry)

    def flock(fd: int, op: int) -> None:
        if threading.current_thread() is b:
            b_went_ahead.set()
        real_flock(fd, op)

    monkeypatch.setattr(models_cli, "add_model_text", a_lets_b_run)
    monkeypatch.setattr(fcntl, "flock", flock)
    add("a")
    b.join(NET)
    assert not b.is_alive() and errors == []
    assert sorted(yaml.safe_load(cfg.read_text(encoding="utf-8"))["models"]) == ["a", "b", "old"]


# atomic_write itself
def disk_full(*_: object) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_atomic_write_replaces_and_keeps_the_mode(tmp_path: Path) -> None:
    target = tmp_path / "f.json"
    target.write_text("old")
    target.chmod(0o640)
    atomic_write(target, "new ✓")
    assert target.read_text(encoding="utf-8") == "new ✓"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640 and leftovers(tmp_path) == []


def test_atomic_write_new_file_follows_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        atomic_write(tmp_path / "new.json", b"{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "new.json").stat().st_mode) == 0o640


def test_atomic_write_through_a_link_replaces_its_target(tmp_path: Path) -> None:
    real = tmp_path / "real.yaml"
    real.write_text("old")
    link = tmp_path / "link.yaml"
    link.symlink_to(real)
    atomic_write(link, "new")
    assert link.is_symlink() and real.read_text() == "new"


@pytest.mark.parametrize("step", ["write", "fsync", "replace"])
def test_atomic_write_failing_at_any_step_keeps_the_old_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str) -> None:
    target = tmp_path / "save.json"
    target.write_text("the old save\n")
    if step == "write":  # a full disk: half the data written, then ENOSPC
        real_write = os.write
        calls = []

        def half_then_full(fd: int, data: bytes) -> int:
            calls.append(fd)
            if len(calls) > 1:
                disk_full()
            return real_write(fd, bytes(data[:len(data) // 2]))
        monkeypatch.setattr(os, "write", half_then_full)
    else:
        monkeypatch.setattr(os, step, disk_full)
    with pytest.raises(OSError, match="No space left on device"):
        atomic_write(target, "x" * 10_000)
    assert target.read_text() == "the old save\n" and leftovers(tmp_path) == []


@pytest.mark.parametrize("path", ["/dev/full", "/dev/null"])
def test_atomic_write_refuses_a_device(path: str) -> None:
    with pytest.raises(FileRefused, match="is not a regular file \\(it is a character device"):
        atomic_write(Path(path), "x")
    assert stat.S_ISCHR(os.stat(path).st_mode)


def test_atomic_write_refuses_a_directory_or_fifo(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    for path, kind in ((tmp_path, "a directory"), (tmp_path / "pipe", "a FIFO")):
        with pytest.raises(FileRefused, match=f"\\(it is {kind}\\)"):
            atomic_write(path, "x")
    assert stat.S_ISFIFO(os.stat(tmp_path / "pipe").st_mode)
