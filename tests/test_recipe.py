"""Profile + overrides -> MoA graph (pure)."""

from __future__ import annotations

import pytest

from localmoa.config import load_config
from localmoa.errors import UsageError
from localmoa.recipe import Overrides, build_graph


@pytest.fixture(scope="module")
def config():
    return load_config()


def test_tiny_graph(config) -> None:
    g = build_graph(config, None)
    assert g.profile == "tiny"
    assert [a.id for a in g.layers[0]] == ["L1.1", "L1.2", "L1.3"]
    assert g.aggregator.id == "AGG" and g.aggregator.layer == 2
    assert g.models == ["smollm2-135m"]


@pytest.mark.parametrize(("layers", "expected"), [(1, 1), (3, 3)])
def test_layers_repeat_the_last_layer(config, layers: int, expected: int) -> None:
    g = build_graph(config, "tiny", Overrides(layers=layers))
    assert len(g.layers) == expected
    assert g.aggregator.layer == expected + 1
    assert [a.system for a in g.layers[-1]] == [a.system for a in g.layers[0]]
    assert g.layers[-1][0].id == f"L{expected}.1"


def test_workstation_truncated_to_one_layer(config) -> None:
    assert len(build_graph(config, "workstation", Overrides(layers=1)).layers) == 1


def test_proposers_override_keeps_prompts_by_position(config) -> None:
    g = build_graph(config, "tiny", Overrides(proposers=("qwen2.5-3b", "gemma2-2b")))
    assert [a.model for a in g.layers[0]] == ["qwen2.5-3b", "gemma2-2b"]
    base = build_graph(config, "tiny")
    assert g.layers[0][1].system == base.layers[0][1].system


def test_aggregator_and_sampling_overrides(config) -> None:
    g = build_graph(config, "tiny", Overrides(aggregator="qwen2.5-7b", temperature=0.0,
                                              max_tokens=7, seed=100))
    assert g.aggregator.model == "qwen2.5-7b"
    agents = g.all_agents()
    assert {a.temperature for a in agents} == {0.0}
    assert {a.max_tokens for a in agents} == {7}
    # distinct, reproducible seeds so agents sharing a model differ
    assert [a.seed for a in agents] == [100, 101, 102, 103]


@pytest.mark.parametrize(("overrides", "fragment"), [
    (Overrides(layers=0), "--layers 0"),
    (Overrides(layers=1000), "--layers 1000"),
    (Overrides(temperature=-1), "--temperature -1"),
    (Overrides(max_tokens=10**9), "--max-tokens 1000000000"),
    (Overrides(max_tokens=0), "--max-tokens 0"),
    (Overrides(seed=-5), "--seed -5"),
    (Overrides(proposers=("ghost",)), "no model named 'ghost'"),
    (Overrides(aggregator="ghost"), "no model named 'ghost'"),
])
def test_bad_overrides(config, overrides: Overrides, fragment: str) -> None:
    with pytest.raises(UsageError) as exc:
        build_graph(config, "tiny", overrides)
    assert fragment in str(exc.value)
