"""Self-MoA (--self MODEL[:N]) and --no-batch through the real CLI, then the pure parts."""

from __future__ import annotations

import json

import pytest

from localmoa.config import load_config
from localmoa.recipe import Overrides, build_graph, self_moa_profile

from .conftest import cli, run_json

COMMANDS = ["run", "chat", "plan", "bench"]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_lists_self_and_no_batch(command: str) -> None:
    proc = cli(command, "--help", env={"COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    assert "--self" in proc.stdout and "MODEL[:N]" in proc.stdout
    assert "--no-batch" in proc.stdout


def test_run_epilog_shows_self_moa() -> None:
    proc = cli("run", "--help", env={"COLUMNS": "200"})
    assert 'localmoa run --self smollm2-135m:6 "Which is larger, 9.11 or 9.9?"' in proc.stdout


def test_plan_self_moa() -> None:
    proc = cli("plan", "--self", "smollm2-135m:3", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["profile"] == "self:smollm2-135m"
    assert list(doc["footprints"]) == ["smollm2-135m"]
    agents = [t["agent"] for w in doc["plan"]["waves"] for t in w["tasks"]]
    assert agents == ["L1.1", "L1.2", "L1.3", "AGG"]


@pytest.mark.parametrize("args", [["--no-batch"], ["--no-batch", "--profile", "tiny-self"]])
def test_plan_no_batch(args: list[str]) -> None:
    proc = cli("plan", *args, "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["plan"]["waves"]


def test_run_self_moa_on_the_tiny_model() -> None:
    doc = run_json("Which is larger, 9.11 or 9.9?", "--self", "smollm2-135m:2",
                   "--max-tokens", "8", "--no-batch")
    assert doc["profile"] == "self:smollm2-135m"
    assert doc["answer"]


def test_bench_self_moa_is_one_more_profile() -> None:
    from localmoa.cli.bench import with_self_moa

    config = load_config()
    extended, name = with_self_moa(config, "smollm2-135m:5")
    assert name == "self:smollm2-135m"
    assert extended.profiles[name] == self_moa_profile("smollm2-135m", 5)
    assert name not in config.profiles  # a copy; the loaded config is untouched
    graph = build_graph(extended, name, Overrides(seed=42))  # as run_bench builds it
    assert len(graph.layers[0]) == 5
    assert len({a.seed for a in graph.all_agents()}) == 6


def test_self_moa_profile_matches_the_graph() -> None:
    """One layer of --self is exactly its profile: same temperatures, seeds, tokens."""
    config = load_config()
    prof = self_moa_profile("smollm2-135m", 4)
    graph = build_graph(config, None, Overrides(self_moa=("smollm2-135m", 4)))
    specs = [*prof.layers[0], prof.aggregator]
    assert [(a.temperature, a.seed, a.max_tokens) for a in graph.all_agents()] == \
        [(s.temperature, s.seed, s.max_tokens) for s in specs]


def test_chat_profile_command_leaves_self_moa() -> None:
    from localmoa.chat import ChatSession
    from localmoa.cli._output import Output
    from localmoa.cli.chat import _command

    session = ChatSession(load_config(), Overrides(self_moa=("smollm2-135m", 3)))
    try:
        assert session.graph.profile == "self:smollm2-135m"
        _command(Output(), session, "/profile", "ghost", False, None)  # refused: unchanged
        assert session.overrides.self_moa == ("smollm2-135m", 3)
        _command(Output(), session, "/profile", "tiny", False, None)
        assert session.graph.profile == "tiny" and session.overrides.self_moa is None
    finally:
        session.close()
