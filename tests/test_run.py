"""`localmoa run` end to end on the real SmolLM2-135M GGUF (the `tiny` profile)."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import jsonschema
import pytest

from localmoa import backends
from localmoa.backends.llamacpp.backend import LlamaCppBackend
from localmoa.config import load_config
from localmoa.memory.planner import split_threads
from localmoa.memory.probe import cpu_cores
from localmoa.prompts import AGGREGATE_PROMPT
from localmoa.recipe import Overrides, build_graph
from localmoa.runtime import run_moa

from .conftest import EventStream, cli, run_json, start_cli

SCHEMA = json.loads(
    (resources.files("localmoa") / "schemas" / "run-report.schema.json").read_text())
QUESTION = "Which is larger, 9.11 or 9.9?"


def check_report(doc: dict, layers: int) -> None:
    jsonschema.validate(doc, SCHEMA)
    assert doc["ok"] and doc["answer"].strip()
    assert len(doc["layers"]) == layers + 1  # proposer layers + the aggregator
    assert len(doc["agents"]) == 3 * layers + 1
    for agent in doc["agents"]:
        assert agent["ok"], agent
        assert agent["completion_tokens"] > 0, agent
        assert agent["prompt_tokens"] > 0
        assert agent["decode_tok_per_s"] > 0 and agent["prompt_tok_per_s"] > 0
        assert agent["end_s"] >= agent["start_s"] + agent["ttft_s"] * 0.99
    for stats in doc["layers"]:
        members = [a for a in doc["agents"] if a["layer"] == stats["layer"]]
        assert stats["completion_tokens"] == sum(a["completion_tokens"] for a in members)
        assert stats["agents"] == len(members)
        assert stats["wall_s"] > 0
        assert stats["agg_tok_per_s"] == pytest.approx(
            stats["completion_tokens"] / stats["wall_s"], rel=0.01)
    assert doc["answer"] == doc["agents"][-1]["answer"]
    totals = doc["totals"]
    assert totals["completion_tokens"] == sum(a["completion_tokens"] for a in doc["agents"])
    assert totals["load_s"] > 0  # at least one model instance was loaded


def test_run_tiny_streams_an_answer_and_the_tables() -> None:
    proc = cli("run", QUESTION, "--max-tokens", "48")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip(), "the final answer goes to stdout"
    assert "agents" in proc.stderr and "layers" in proc.stderr
    assert "out tok/s" in proc.stderr and "agg tok/s" in proc.stderr
    assert "batch" in proc.stderr  # the layers table says how agents were batched
    assert "L1.3" in proc.stderr and "AGG" in proc.stderr


@pytest.mark.parametrize("layers", [1, 3])
def test_run_json_validates_and_adds_up(layers: int) -> None:
    doc = run_json(QUESTION, "--layers", str(layers), "--max-tokens", "32")
    check_report(doc, layers)


def test_proposers_of_a_layer_run_concurrently() -> None:
    doc = run_json(QUESTION, "--max-tokens", "48", "--temperature", "0", "--seed", "1",
                   "--no-batch")
    layer1 = [a for a in doc["agents"] if a["layer"] == 1]
    # one wave: each starts as soon as its own instance is loaded, the others' loads go on
    assert {a["wave"] for a in layer1} == {1} and doc["plan"]["waves"] == 2
    assert doc["cores"] == cpu_cores()  # this machine's, or LOCALMOA_CORES
    # the cores are split among the three instances (each gets one at least) ...
    assert [a["threads"] for a in layer1] == split_threads(doc["cores"], 3)
    assert sum(a["threads"] for a in layer1) == max(3, doc["cores"])
    assert [a["batch"] for a in layer1] == [1, 1, 1] and doc["plan"]["batches"] == []
    assert doc["agents"][-1]["threads"] == doc["cores"]  # ... the aggregator gets every core


def test_proposers_on_one_model_decode_as_one_batch() -> None:
    # the aggregator reading along (reference streaming) is tests/test_streaming.py's
    doc = run_json(QUESTION, "--max-tokens", "48", "--temperature", "0", "--seed", "1",
                   "--no-stream-references")
    layer1 = [a for a in doc["agents"] if a["layer"] == 1]
    assert max(a["start_s"] for a in layer1) < min(a["end_s"] for a in layer1)
    # one instance, one batch of three, which gets every core
    assert [(a["batch"], a["threads"]) for a in layer1] == [(3, doc["cores"])] * 3
    assert doc["plan"]["batches"] == [{"wave": 1, "layer": 1, "model": "smollm2-135m",
                                       "size": 3}]
    assert doc["plan"]["loads"] == doc["actual"]["loads"] == 1
    layer = doc["layers"][0]
    assert layer["batch"] == 3
    shared = {a["shared_prompt_tokens"] for a in layer1}
    assert len(shared) == 1 and 0 < shared.pop() < min(a["prompt_tokens"] for a in layer1)
    assert layer["prompt_tokens_evaluated"] < layer["prompt_tokens"]


def test_temperature_zero_batched_answers_are_reproducible() -> None:
    # (reference streaming puts the aggregator's reading into the proposers' steps at times
    # that depend on threads: a greedy answer may then part at a near tie, README.md)
    args = (QUESTION, "--max-tokens", "48", "--temperature", "0", "--seed", "1",
            "--no-stream-references")
    first, second = run_json(*args), run_json(*args)
    # llama.cpp's N-row kernels do not sum as the 1-row ones do, so a greedy answer may
    # part from the unbatched one at a near tie (benchmarks/README.md measures how often);
    # a batch itself is deterministic
    assert [a["answer"] for a in first["agents"]] == [a["answer"] for a in second["agents"]]
    assert all(a["ok"] and a["batch"] == 3 for a in first["agents"][:3])


def test_temperature_zero_and_seed_reproduce_the_run() -> None:
    """Exactly, with the aggregator after the layer; streamed, its prompt is the same
    tokens (its reading's steps, and so the sums at a near tie, depend on threads)."""
    args = (QUESTION, "--temperature", "0", "--seed", "11", "--max-tokens", "32")
    a, b = (run_json(*args, "--no-stream-references") for _ in range(2))
    assert a["answer"] == b["answer"]
    assert [x["answer"] for x in a["agents"]] == [x["answer"] for x in b["agents"]]
    c, d = run_json(*args), run_json(*args)
    assert c["latency"]["references_streamed"]
    assert c["agents"][-1]["prompt_tokens"] == d["agents"][-1]["prompt_tokens"]


def test_prompt_from_stdin() -> None:
    proc = cli("run", "-", "--max-tokens", "16", "--json",
               stdin=b"What is 2 + 2?")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["prompt"] == "What is 2 + 2?"


def test_show_layers_prints_intermediate_answers_to_stderr() -> None:
    proc = cli("run", QUESTION, "--max-tokens", "16", "--show-layers", "--no-stats")
    assert proc.returncode == 0, proc.stderr
    assert "layer 1" in proc.stderr
    assert proc.stderr.count("smollm2-135m") >= 4
    assert "answer (smollm2-135m)" in proc.stderr  # the final answer is set apart
    assert "agents" not in proc.stderr  # --no-stats


class Recorder(LlamaCppBackend):
    """The real llama.cpp backend, recording every message list it is asked."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[dict]]] = []

    def load(self, name, spec, path, n_threads, **kw):
        model = super().load(name, spec, path, n_threads, **kw)
        recorder = self
        original_chat = model.chat

        def chat(messages, options):
            recorder.calls.append((name, [dict(m) for m in messages]))
            return original_chat(messages, options)

        model.chat = chat  # type: ignore[method-assign]
        return model


def test_layer_two_sees_whole_numbered_answers_of_layer_one() -> None:
    recorder = Recorder()
    backends.register("llamacpp", lambda: recorder)
    try:
        config = load_config().without_batching()  # every agent's own chat call is recorded
        graph = build_graph(config, "tiny", Overrides(layers=2, max_tokens=24, temperature=0.0,
                                                      seed=5))
        report = run_moa(config, graph, [{"role": "user", "content": QUESTION}])
    finally:
        backends.register("llamacpp", LlamaCppBackend)
    layer1 = [r.answer for r in report.agents if r.layer == 1]
    layer2 = [r.answer for r in report.agents if r.layer == 2]
    assert len(recorder.calls) == 7
    later = recorder.calls[3:]  # three layer-2 proposers, then the aggregator
    for i, (_, messages) in enumerate(later):
        system = messages[0]
        assert system["role"] == "system"
        refs = layer1 if i < 3 else layer2
        expected = AGGREGATE_PROMPT + "".join(f"\n{n}. {r}" for n, r in enumerate(refs, 1))
        assert system["content"].startswith(expected)  # shared first, the persona last
        assert all(len(r) > 1 for r in refs)  # whole answers, not characters
    for _, messages in recorder.calls[:3]:
        assert AGGREGATE_PROMPT not in messages[0]["content"]


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "user.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def unknown_arch_gguf(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real GGUF whose architecture llama.cpp does not know: the header reads fine,
    the load fails (as with a model made for a newer llama.cpp)."""
    data = bytearray(smollm2_path.read_bytes())
    key = b"general.architecture"
    at = data.index(key) + len(key) + 4 + 8  # value type (u32) + string length (u64)
    assert data[at:at + 5] == b"llama"
    data[at:at + 5] = b"llamx"
    path = tmp_path_factory.mktemp("models") / "unknown-arch.gguf"
    path.write_bytes(bytes(data))
    return path


def test_a_failing_proposer_is_dropped_and_reported(tmp_path: Path,
                                                    unknown_arch_gguf: Path) -> None:
    cfg = write_config(tmp_path, f"""\
models:
  broken:
    backend: llamacpp
    source: {{path: {unknown_arch_gguf}}}
profiles:
  mixed:
    layers: [[{{model: smollm2-135m}}, {{model: broken}}, {{model: smollm2-135m}}]]
    aggregator: {{model: smollm2-135m}}
""")
    proc = cli("run", QUESTION, "--config", str(cfg), "--profile", "mixed",
               "--max-tokens", "16", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    jsonschema.validate(doc, SCHEMA)
    bad = [a for a in doc["agents"] if a["model"] == "broken"]
    assert len(bad) == 1 and not bad[0]["ok"] and "could not load" in bad[0]["error"]
    assert doc["layers"][0]["failed"] == 1
    assert doc["answer"].strip()


def test_a_layer_with_no_answer_fails_but_keeps_the_report(tmp_path: Path,
                                                          unknown_arch_gguf: Path) -> None:
    cfg = write_config(tmp_path, f"""\
models:
  broken:
    backend: llamacpp
    source: {{path: {unknown_arch_gguf}}}
profiles:
  doomed:
    layers: [[{{model: broken}}, {{model: broken}}]]
    aggregator: {{model: smollm2-135m}}
""")
    proc = cli("run", QUESTION, "--config", str(cfg), "--profile", "doomed", "--json")
    assert proc.returncode == 1
    doc = json.loads(proc.stdout)
    assert doc["ok"] is False and "every agent of layer 1 failed" in doc["error"]
    assert len(doc["agents"]) == 2
    err_lines = proc.stderr.strip().splitlines()
    assert len(err_lines) == 1 and err_lines[0].startswith("localmoa: error:")


@pytest.mark.parametrize(("args", "stdin", "fragment"), [
    (["run", ""], None, "the prompt is empty"),
    (["run", "-"], b"   \n", "the prompt is empty"),
    (["run", "-"], b"caf\xe9", "not UTF-8"),
    (["run", "hi", "--layers", "0"], None, "--layers 0"),
    (["run", "hi", "--temperature", "-1"], None, "--temperature -1"),
    (["run", "hi", "--max-tokens", "1000000000"], None, "--max-tokens 1000000000"),
    (["run", "hi", "--proposer", "ghost"], None, "no model named 'ghost'"),
    (["run", "hi", "--layers", "two"], None, "Invalid value for '--layers'"),
    (["run"], None, "no prompt: give it as an argument"),
    (["run", "hi", "--bogus"], None, "No such option: --bogus"),
    (["run", "hi", "--profile", "laptop"], None, "not in the local Hugging Face cache"),
])
def test_bad_input_is_one_line_exit_2(args: list[str], stdin: bytes | None,
                                      fragment: str) -> None:
    proc = cli(*args, stdin=stdin)
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("localmoa: error:") and fragment in lines[0], lines[0]
    assert proc.stdout == ""


def test_help_teaches() -> None:
    root = cli("--help")
    assert root.returncode == 0
    assert "Mixture-of-Agents" in root.stdout and "run" in root.stdout
    sub = cli("run", "--help")
    assert sub.returncode == 0
    for option in ("--profile", "--layers", "--proposer", "--aggregator", "--temperature",
                   "--max-tokens", "--seed", "--show-layers", "--json", "Examples"):
        assert option in sub.stdout, option


@pytest.mark.parametrize("command", ["run", "bench", "eval", "plan", "doctor", "serve"])
def test_help_examples_keep_their_lines(command: str) -> None:
    """Each example in an epilog prints on one line, as written: click rewraps a
    paragraph to 80 columns unless it opens with \\b, which once glued two examples."""
    import importlib

    from typer.testing import CliRunner

    from localmoa.cli import app

    module = importlib.import_module(f"localmoa.cli.{command}")
    examples = [line.strip() for line in module.EPILOG.splitlines()
                if line.lstrip().startswith(("localmoa ", "curl "))]
    assert examples, command
    shown = CliRunner().invoke(app, [command, "--help"], terminal_width=80)
    assert shown.exit_code == 0, shown.output
    lines = {line.strip() for line in shown.output.splitlines()}
    for example in examples:
        assert example in lines, example


def test_profiles_lists_the_shipped_profiles() -> None:
    proc = cli("profiles", "--json")
    assert proc.returncode == 0
    names = {p["name"] for p in json.loads(proc.stdout)["profiles"]}
    assert {"tiny", "laptop", "workstation"} <= names


def test_ctrl_c_during_proposers_exits_130_promptly() -> None:
    import signal
    import time

    events = EventStream()
    proc = start_cli("run", "Write a very long story about a dragon.", "--max-tokens", "2000",
                     "--layers", "3", events=events)
    events.wait_for("first_text", agent="L1.1")  # layer 1 is generating
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert time.monotonic() - sent < 15, "agents stop at their next token"
    assert err.decode().strip().splitlines()[-1] == "localmoa: error: interrupted"
    logged = [e["event"] for e in events.all()]
    assert "interrupted" in logged and "layer_done" not in logged  # stopped inside layer 1
