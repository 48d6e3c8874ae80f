"""Routing: a router picks a profile's specialists and only those run. Config errors,
the graph of the chosen specialists, the choosing router (its output constrained by a
JSON schema) and the embedding router with the scripted backend, and the shipped
tiny-router profile with the real SmolLM2 model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from localmoa.config import load_config
from localmoa.errors import ConfigError, UsageError
from localmoa.host import ModelHost
from localmoa.profile_spec import AgentSpec, Profile, RouterSpec, Specialist
from localmoa.recipe import build_graph
from localmoa.routing import choice_schema, router_system
from localmoa.runtime import route, run_routed

from .conftest import cli
from .scripted import Script, ScriptedBackend, config

QUESTION = [{"role": "user", "content": "What is 17 + 25?"}]


def routed_config(kind: str = "choose", pick: int = 1, path: Path | None = None):
    """Scripted models; ``path`` a real GGUF a preflight reads for their footprints."""
    cfg = config({"m": {}, "router": {}, "writer": {}}, [[{"model": "m"}]], {"model": "m"},
                 path)
    cfg.profiles["r"] = Profile(
        router=RouterSpec(model="router", kind=kind, pick=pick),
        specialists={
            "math": Specialist(description="arithmetic and numbers",
                               agents=[AgentSpec(model="m"), AgentSpec(model="m")]),
            "writing": Specialist(description="poems and stories",
                                  agents=[AgentSpec(model="writer")]),
            "general": Specialist(description="everything else", profile="p")},
        aggregator=AgentSpec(model="m"))
    return cfg


def test_the_graph_holds_only_the_chosen_specialists() -> None:
    cfg = routed_config()
    graph = build_graph(cfg, "r", chosen=["writing", "general"])
    assert [a.model for a in graph.layers[0]] == ["writer", "m"]
    assert [a.id for a in graph.layers[0]] == ["L1.1", "L1.2"]
    with pytest.raises(UsageError, match="routes each query"):
        build_graph(cfg, "r")
    with pytest.raises(UsageError, match="no specialist named poetry"):
        build_graph(cfg, "r", chosen=["poetry"])


def test_the_router_prompt_and_schema() -> None:
    cfg = routed_config(pick=2)
    text = router_system(cfg.profiles["r"])
    assert "- math: arithmetic and numbers" in text and "- general: everything else" in text
    assert '1 to 2 of them' in text
    schema = choice_schema(["math", "writing"], 1)
    assert schema["properties"]["specialist"]["enum"] == ["math", "writing"]


def test_the_choosing_router_runs_only_its_choice(scripted: ScriptedBackend,
                                                   smollm2_path: Path) -> None:
    scripted.scripts["router"] = Script(pieces=('{"specialist": ', '"math"}'))
    cfg = routed_config(path=smollm2_path)
    report = run_routed(cfg, "r", QUESTION)
    routing = report.recipe["routing"]
    assert routing["chosen"] == ["math"] and routing["kind"] == "choose"
    assert routing["completion_tokens"] > 0 and routing["wall_s"] > 0
    assert [a.model for a in report.agents] == ["m", "m", "m"]  # math's two, then AGG
    assert "writer" not in scripted.loads
    # the router's call carried the schema; its system prompt listed the specialists
    name, options = scripted.options[0]
    assert name == "router" and options.json_schema == choice_schema(
        ["math", "writing", "general"], 1)
    assert options.temperature == 0.0
    assert "- writing: poems and stories" in scripted.calls[0][1][0]["content"]
    assert scripted.calls[0][1][-1]["content"] == "What is 17 + 25?"


def test_a_host_reused_across_routed_runs(scripted: ScriptedBackend,
                                          smollm2_path: Path) -> None:
    """The router's model is also a specialist's: the second query's router is planned
    beside the instance the first query's batch left loaded (room for 2 sequences)."""
    scripted.scripts["m"] = Script(pieces=('{"specialist": ', '"math"}'))
    cfg = routed_config(path=smollm2_path)
    cfg.profiles["r"] = cfg.profiles["r"].model_copy(update={
        "router": RouterSpec(model="m")})
    host = ModelHost(cfg)
    try:
        loads = []
        for _ in range(2):
            report = run_routed(cfg, "r", QUESTION, host=host)
            assert report.recipe["routing"]["chosen"] == ["math"]
            loads.append(scripted.loads.count("m"))
        # the first query loads it for the router, then with room for math's batch of 2
        # and the aggregator reading along; the second query's router and MoA both use it
        assert loads == [2, 2] and scripted.seqs[-1] == ("m", 3)
    finally:
        host.close()


def test_the_embedding_router_scores_the_descriptions(scripted: ScriptedBackend,
                                                       smollm2_path: Path) -> None:
    scripted.scripts["router"] = Script(embeds=True)
    cfg = routed_config(kind="embed", path=smollm2_path)
    decision = route(cfg, "r", [{"role": "user", "content": "write poems and stories"}],
                     ModelHost(cfg))
    assert decision.chosen == ["writing"]
    assert decision.scores["writing"] > decision.scores["math"]
    assert decision.reason.startswith("cosine similarity to the query: writing")
    assert not [name for name, _ in scripted.options]  # no generation at all


def test_a_router_that_cannot_embed_is_one_clear_error(scripted: ScriptedBackend,
                                                       smollm2_path: Path) -> None:
    cfg = routed_config(kind="embed", path=smollm2_path)
    with pytest.raises(Exception, match="cannot embed text"):
        route(cfg, "r", QUESTION, ModelHost(cfg))


@pytest.mark.parametrize(("profile", "message"), [
    ("router: {model: smollm2-135m}\n    specialists:\n      a: {description: x, agents: "
     "[{model: smollm2-135m}]}", "a router needs at least two specialists"),
    ("router: {model: nope}\n    specialists:\n      a: {description: x, agents: "
     "[{model: smollm2-135m}]}\n      b: {description: y, profile: tiny}",
     "no model named 'nope'"),
    ("router: {model: smollm2-135m}\n    specialists:\n      a: {description: x}\n"
     "      b: {description: y, profile: tiny}", "give either agents:"),
    ("router: {model: smollm2-135m}\n    specialists:\n      a: {description: x, agents: "
     "[{model: smollm2-135m}]}\n      b: {description: y, profile: nope}",
     "no profile named 'nope'"),
    ("router: {model: smollm2-135m, kind: guess}\n    specialists: {}", "kind"),
])
def test_bad_routing_profiles_are_one_line_with_file_and_line(tmp_path: Path, profile: str,
                                                              message: str) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(f"profiles:\n  r:\n    {profile}\n    aggregator: {{model: smollm2-135m}}\n")
    with pytest.raises(ConfigError, match=message) as caught:
        load_config(path)
    assert f"{path}:" in str(caught.value) or caught.value.file == str(path)
    proc = cli("--help")  # the CLI itself is fine; the run with it fails in one line
    assert proc.returncode == 0
    bad = cli("run", "--config", str(path), "-p", "r", "hi")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and message in bad.stderr


@pytest.mark.slow
def test_tiny_router_with_the_real_model() -> None:
    proc = cli("run", "--profile", "tiny-router", "--json", "--max-tokens", "16",
               "What is 17 + 25?")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    routing = report["recipe"]["routing"]
    assert routing["kind"] == "choose" and len(routing["chosen"]) == 1
    assert routing["chosen"][0] in ("math", "writing", "general")
    assert routing["ttft_s"] > 0 and routing["completion_tokens"] > 0
    expected = {"math": 2, "writing": 2, "general": 3}[routing["chosen"][0]]
    assert sum(a["role"] == "proposer" for a in report["agents"]) == expected
    assert report["answer"]


@pytest.mark.slow
def test_tiny_router_embed_with_the_real_model() -> None:
    proc = cli("run", "--profile", "tiny-router-embed", "--json", "--max-tokens", "8",
               "Write a short poem about the sea.")
    assert proc.returncode == 0, proc.stderr
    routing = json.loads(proc.stdout)["recipe"]["routing"]
    assert routing["kind"] == "embed" and set(routing["scores"]) == {"math", "writing",
                                                                     "general"}
    best = max(routing["scores"], key=routing["scores"].get)
    assert routing["chosen"] == [best] and routing["completion_tokens"] == 0
    assert routing["prompt_tokens"] > 0
