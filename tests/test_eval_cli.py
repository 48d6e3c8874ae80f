"""`localmoa eval` through the real CLI: bad input is one line and exit 2; one real run on
the tiny profile writes every answer (raw, extracted, verdict) and the plot."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import jsonschema
import pytest

from localmoa.eval.checks import score
from localmoa.eval.taskfile import read_task_file

from .conftest import cli

TASKS = (
    '{"id": "sum", "prompt": "What is 2 + 2? Reply with the number only.", "answer": 4}\n'
    '{"id": "sky", "prompt": "What colour is a clear daytime sky?", '
    '"choices": ["green", "blue", "red"], "answer": "B"}\n'
    '{"id": "one", "prompt": "Say hello in one word.", "check": {"words": 1}}\n'
)


@pytest.mark.parametrize(("args", "files", "fragment"), [
    (["--tasks", "{tmp}/missing.jsonl"], {}, "no task set of that name and no such file"),
    (["--tasks", "{tmp}/bad.jsonl"], {"bad.jsonl": '{"prompt": "a", "answer": 1}\n{oops\n'},
     "bad.jsonl:2: not valid JSON"),
    (["--tasks", "{tmp}/nokind.jsonl"], {"nokind.jsonl": '\n{"prompt": "hi"}\n'},
     'nokind.jsonl:2: needs "answer" (a number)'),
    (["--tasks", "{tmp}/rule.jsonl"],
     {"rule.jsonl": '{"prompt": "hi", "check": {"sentences": 2}}\n'},
     'rule.jsonl:1: unknown rule "sentences" in "check"; rules: words, max_words'),
    (["--tasks", "{tmp}/empty.jsonl"], {"empty.jsonl": "\n"}, "no tasks in the file"),
    (["--limit", "0"], {}, "--limit 0: give at least 1 task"),
    (["--repeat", "0"], {}, "--repeat 0: give at least 1"),
    (["--samples", "1"], {}, "--samples 1: give 2 to 64 samples"),
    (["--contenders", "best"], {}, "--contenders best: no kind 'best'"),
    (["--profile", "nope"], {}, "no profile named 'nope'"),
    (["--max-tokens", "0"], {}, "--max-tokens 0: give 1 to 131072 tokens"),
    (["--limit", "many"], {}, "Invalid value for '--limit'"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str],
                                          files: dict[str, str], fragment: str) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    proc = cli("eval", *[a.format(tmp=tmp_path) for a in args], "--out", str(tmp_path / "o"))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("localmoa: error: "), proc.stderr
    assert fragment in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert not (tmp_path / "o").exists()  # refused before anything ran


def test_an_out_folder_that_cannot_be_made_is_refused_before_running(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("", encoding="utf-8")
    proc = cli("eval", "--limit", "1", "--out", str(tmp_path / "afile" / "o"))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"localmoa: error: --out {tmp_path / 'afile' / 'o'}: cannot create the folder "
        "(Not a directory)"]


def test_help_teaches_with_examples() -> None:
    proc = cli("eval", "--help")
    assert proc.returncode == 0
    for needed in ("localmoa eval --limit 20", "--tasks", '"check"', "self-consistency",
                   "docs/eval.md"):
        assert needed in proc.stdout, needed


@pytest.mark.slow
def test_eval_on_tiny_writes_every_answer_and_the_plot(tmp_path: Path) -> None:
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(TASKS, encoding="utf-8")
    out = tmp_path / "out"
    proc = cli("eval", "--tasks", str(tasks), "--samples", "2", "--max-tokens", "12",
               "--contenders", "single,vote,self-consistency,self-moa,moa",
               "--out", str(out), "--json", timeout=600)
    assert proc.returncode == 0, proc.stderr
    printed = json.loads(proc.stdout)
    names = ["single:smollm2-135m", "vote:tiny", "self-consistency:smollm2-135m:2",
             "self-moa:smollm2-135m:2", "moa:tiny"]
    assert printed["out"] == str(out) and list(printed["summaries"]) == names

    doc = json.loads((out / "results.json").read_text(encoding="utf-8"))
    jsonschema.validate(doc, json.loads((resources.files("localmoa") / "schemas"
                                         / "eval-results.schema.json").read_text()))
    assert doc["settings"]["task_count"] == 3 and doc["machine"]["logical_cores"] >= 1
    assert [t["id"] for t in doc["tasks"]] == ["sum", "sky", "one"]
    answers = doc["answers"]
    assert [(a["contender"], a["task"]) for a in answers] == [
        (n, t) for n in names for t in ("sum", "sky", "one")]
    by_id = {t.id: t for t in read_task_file(tasks)}
    for a in answers:
        assert {"raw", "extracted", "correct", "why", "tokens", "seconds"} <= set(a)
        assert a["error"] is None and a["raw"].strip(), a
        assert a["seconds"] > 0 and 0 < a["tokens"] <= 12 * 4
        # the verdict is the checker's on the raw reply, kept beside what was extracted
        verdict = score(by_id[a["task"]], a["raw"])
        assert (verdict.extracted, verdict.correct) == (a["extracted"], a["correct"])
        if a["contender"].startswith(("vote:", "self-consistency:")):
            assert a["raw"] in [s["raw"] for s in a["samples"]]
            assert len(a["samples"]) == (3 if a["contender"] == "vote:tiny" else 2)
    # three graphs over three tasks, taking turns (reversed every other task); the model
    # loads for the first run and stays loaded for the eight others
    assert [(r["task"], r["run"]) for r in doc["runs"]] == [
        ("sum", "tiny"), ("sum", "self:smollm2-135m"), ("sum", "single:smollm2-135m"),
        ("sky", "single:smollm2-135m"), ("sky", "self:smollm2-135m"), ("sky", "tiny"),
        ("one", "tiny"), ("one", "self:smollm2-135m"), ("one", "single:smollm2-135m")]
    assert doc["runs"][0]["report"]["actual"]["loads"] >= 1
    assert all(r["report"]["actual"]["loads"] == 0 for r in doc["runs"][1:])
    for name, s in printed["summaries"].items():
        assert s["answers"] == 3 and 0 <= s["accuracy"] <= 1, name
        assert s["ci95"][0] <= s["accuracy"] <= s["ci95"][1]
        assert s["tok_per_s"] > 0 and s["wall_s"] > 0
    # the vote answers when its layer ends; the MoA then still aggregates
    assert printed["summaries"]["vote:tiny"]["wall_s"] < printed["summaries"]["moa:tiny"][
        "wall_s"]

    png = out / "accuracy_vs_time.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = (out / "accuracy_vs_time.svg").read_text(encoding="utf-8")
    assert svg.lstrip().startswith("<?xml") and all(n in svg for n in names)
