"""Special and oversized files through the real CLI: a FIFO, /dev/zero, /dev/full, a
directory, a file over its cap. Each is refused at once with one line naming what the
file is, exit 2: no hang (a FIFO without a writer), no unbounded read (/dev/zero).

The subprocess timeout is a safety net only: every command here returns in seconds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from localmoa.fileio import CONFIG_MAX_BYTES, DEFAULT_PROMPT_MAX_BYTES

from .conftest import cli
from .test_bad_input import assert_one_line, config_with_path

NET = 120  # seconds: a hang fails the test instead of the suite


@pytest.fixture(autouse=True)
def default_prompt_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOCALMOA_MAX_PROMPT_BYTES", raising=False)


def special(kind: str, tmp_path: Path) -> tuple[Path, str]:
    """A special file of ``kind`` and what the message calls it."""
    if kind == "fifo":
        path = tmp_path / "pipe"
        os.mkfifo(path)  # nobody ever writes to it: opening it to read would block
        return path, "(it is a FIFO)"
    if kind == "dir":
        path = tmp_path / "folder"
        path.mkdir()
        return path, "(it is a directory)"
    return Path(f"/dev/{kind}"), "(it is a character device)"


KINDS = ["fifo", "zero", "full", "dir"]


# config files: --config, LOCALMOA_CONFIG, models add --config
@pytest.mark.parametrize("kind", KINDS)
def test_config_that_is_not_a_regular_file(kind: str, tmp_path: Path) -> None:
    path, what = special(kind, tmp_path)
    # LOCALMOA_CONFIG: typer's own check of --config (dir_okay=False) does not see it
    proc = cli("plan", env={"LOCALMOA_CONFIG": str(path)}, timeout=NET)
    assert_one_line(proc, 2, f"{path}: config file is not a regular file {what}")
    if kind != "dir":  # --config DIR: typer says "is a directory" (tested in its own test)
        proc = cli("plan", "--config", str(path), timeout=NET)
        assert_one_line(proc, 2, f"{path}: config file is not a regular file {what}")


def test_config_directory_on_the_command_line(tmp_path: Path) -> None:
    proc = cli("plan", "--config", str(tmp_path), timeout=NET)
    assert_one_line(proc, 2, "is a directory")


@pytest.mark.parametrize("kind", KINDS[:3])
def test_models_add_into_a_special_config(kind: str, tmp_path: Path) -> None:
    path, what = special(kind, tmp_path)
    proc = cli("models", "add", "ollama:qwen2.5:7b", "--name", "q", "--config", str(path),
               timeout=NET)
    assert_one_line(proc, 2, f"{path}: config file is not a regular file {what}")


def test_config_over_its_cap(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_bytes(b"# padding\n" * (CONFIG_MAX_BYTES // 8))  # 5 MiB
    proc = cli("plan", "--config", str(big), timeout=NET)
    assert_one_line(proc, 2, f"{big}: config file is 5 MiB, more than the 4 MiB limit "
                    "for config files")


# prompt files and standard input: `run -f FILE`, `run -`
@pytest.mark.parametrize("kind", ["fifo", "zero", "full"])
def test_prompt_file_that_is_not_a_regular_file(kind: str, tmp_path: Path) -> None:
    path, what = special(kind, tmp_path)
    proc = cli("run", "--file", str(path), timeout=NET)
    assert_one_line(proc, 2, f"--file {path}: is not a regular file {what}")


def test_prompt_file_over_the_cap_and_raising_it(tmp_path: Path) -> None:
    prompt = tmp_path / "big.txt"
    prompt.write_bytes(b"why? " * 300)  # 1,500 bytes
    proc = cli("run", "--file", str(prompt), env={"LOCALMOA_MAX_PROMPT_BYTES": "1KiB"},
               timeout=NET)
    assert_one_line(proc, 2, f"--file {prompt}: is 1.46 KiB, more than the 1 KiB limit",
                    "LOCALMOA_MAX_PROMPT_BYTES")
    # raised: the file is read (and the run goes on to the next check: an unknown profile)
    proc = cli("run", "--file", str(prompt), "--profile", "nope",
               env={"LOCALMOA_MAX_PROMPT_BYTES": "2KiB"}, timeout=NET)
    assert_one_line(proc, 2, "no profile named 'nope'")


def test_bad_prompt_cap_value() -> None:
    proc = cli("run", "-", stdin=b"hi", env={"LOCALMOA_MAX_PROMPT_BYTES": "lots"},
               timeout=NET)
    assert_one_line(proc, 2, "LOCALMOA_MAX_PROMPT_BYTES 'lots': write a size")


def test_stdin_over_the_cap_reads_no_more_than_the_cap() -> None:
    # 9 MiB through a pipe: refused after the cap (8 MiB) and one byte, in one line
    proc = cli("run", "-", stdin=b"a" * (DEFAULT_PROMPT_MAX_BYTES + (1 << 20)), timeout=NET)
    assert_one_line(proc, 2, "standard input holds more than the 8 MiB limit for prompts",
                    "LOCALMOA_MAX_PROMPT_BYTES")


def test_stdin_from_dev_zero_fails_fast() -> None:
    import subprocess
    import sys

    with open("/dev/zero", "rb") as zero:
        proc = subprocess.run([sys.executable, "-m", "localmoa", "run", "-"], stdin=zero,
                              capture_output=True, text=True, timeout=NET)
    assert_one_line(proc, 2, "standard input holds more than the 8 MiB limit")


# eval task files and bench prompt files
@pytest.mark.parametrize("kind", ["fifo", "zero", "dir"])
def test_eval_task_file_that_is_not_a_regular_file(kind: str, tmp_path: Path) -> None:
    path, what = special(kind, tmp_path)
    proc = cli("eval", "--tasks", str(path), timeout=NET)
    assert_one_line(proc, 2, f"--tasks {path}: is not a regular file {what}")


def test_eval_task_file_over_the_cap(tmp_path: Path) -> None:
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text('{"prompt": "What is 6 x 7?", "answer": 42}\n' * 100, encoding="utf-8")
    proc = cli("eval", "--tasks", str(tasks), env={"LOCALMOA_MAX_PROMPT_BYTES": "1KiB"},
               timeout=NET)
    assert_one_line(proc, 2, f"--tasks {tasks}: is 4.2 KiB, more than the 1 KiB limit "
                    "for prompt and task files", "LOCALMOA_MAX_PROMPT_BYTES")


def test_eval_task_nested_too_deeply(tmp_path: Path) -> None:
    tasks = tmp_path / "tasks.jsonl"
    deep = "[" * 100_000 + "]" * 100_000  # past the JSON decoder's own recursion bound
    tasks.write_text('{"prompt": "p", "check": {"words": 3}, "id": "a"}\n'
                     f'{{"prompt": "p", "answer": {deep}}}\n'
                     '{"prompt": "p", "answer": ' + "[" * 40 + "]" * 40 + "}\n",
                     encoding="utf-8")
    proc = cli("eval", "--tasks", str(tasks), timeout=NET)
    assert_one_line(proc, 2, f"{tasks}:2: JSON nested more than 16 levels deep")
    lines = tasks.read_text(encoding="utf-8").splitlines()
    tasks.write_text(lines[0] + "\n" + lines[2] + "\n", encoding="utf-8")
    proc = cli("eval", "--tasks", str(tasks), timeout=NET)
    assert_one_line(proc, 2, f"{tasks}:2: JSON nested more than 16 levels deep")


@pytest.mark.parametrize("kind", ["fifo", "zero"])
def test_bench_prompt_file_that_is_not_a_regular_file(kind: str, tmp_path: Path) -> None:
    path, what = special(kind, tmp_path)
    proc = cli("bench", "--prompts", str(path), "--out", str(tmp_path / "out"), timeout=NET)
    assert_one_line(proc, 2, f"--prompts {path}: is not a regular file {what}")


def test_bench_prompt_file_nested_too_deeply(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("[" * 100_000 + "\n", encoding="utf-8")
    proc = cli("bench", "--prompts", str(prompts), "--out", str(tmp_path / "out"), timeout=NET)
    assert_one_line(proc, 2, f"{prompts}:1: JSON nested too deeply")


# GGUF paths: a model's source.path that is there but is not a model file
@pytest.mark.parametrize("kind", KINDS)
def test_gguf_path_that_is_not_a_regular_file(kind: str, tmp_path: Path) -> None:
    path, what = special(kind, tmp_path)
    cfg = config_with_path(tmp_path, path)
    proc = cli("plan", "--config", str(cfg), "--profile", "p", timeout=NET)
    assert_one_line(proc, 2, f"GGUF file {path} is not a regular file {what}",
                    f"source.path at {cfg}:4")


@pytest.mark.parametrize("kind", KINDS)
def test_models_add_of_a_special_file(kind: str, tmp_path: Path) -> None:
    path, what = special(kind, tmp_path)
    proc = cli("models", "add", str(path), "--name", "x", timeout=NET)
    assert_one_line(proc, 2, f"{path} is not a regular file {what}; give a GGUF file")
