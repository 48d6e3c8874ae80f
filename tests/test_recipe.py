"""Profile + overrides -> MoA graph (pure)."""

from __future__ import annotations

import pytest

from localmoa.config import load_config
from localmoa.errors import UsageError
from localmoa.recipe import Overrides, build_graph, parse_self


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


@pytest.fixture
def ollama_config(config):
    """The shipped config plus an Ollama-style model whose name holds ':'."""
    from dataclasses import replace

    from localmoa.config import model_spec

    spec = model_spec({"backend": "ollama", "source": {"ollama": "qwen2.5:7b"}})
    extra = {"qwen2.5:7b": spec, "llama3:8": spec}
    return replace(config, models={**config.models, **extra})


@pytest.mark.parametrize(("value", "expected"), [
    ("smollm2-135m", ("smollm2-135m", 4)),
    ("smollm2-135m:6", ("smollm2-135m", 6)),
    ("  smollm2-135m:2 ", ("smollm2-135m", 2)),
    ("smollm2-135m:64", ("smollm2-135m", 64)),
    ("qwen2.5:7b", ("qwen2.5:7b", 4)),  # the colon is the model's own
    ("qwen2.5:7b:3", ("qwen2.5:7b", 3)),
    ("llama3:8", ("llama3:8", 4)),  # a whole model name wins over a number
    ("llama3:8:5", ("llama3:8", 5)),
])
def test_parse_self(ollama_config, value: str, expected: tuple[str, int]) -> None:
    assert parse_self(value, ollama_config) == expected


@pytest.mark.parametrize(("value", "fragments"), [
    ("", ["--self needs a model", "MODEL:N"]),
    ("   ", ["--self needs a model"]),
    ("ghost", ["no model named 'ghost'", "known models:", "smollm2-135m"]),
    ("ghost:3", ["no model named 'ghost'"]),
    ("smollm2-135m:1", ["--self smollm2-135m:1", "give 2 to 64 samples"]),
    ("smollm2-135m:0", ["give 2 to 64 samples"]),
    ("smollm2-135m:65", ["give 2 to 64 samples"]),
    ("smollm2-135m:-3", ["give 2 to 64 samples"]),
    ("smollm2-135m:x", ["no model named 'smollm2-135m:x'"]),
])
def test_parse_self_errors(config, value: str, fragments: list[str]) -> None:
    with pytest.raises(UsageError) as exc:
        parse_self(value, config)
    message = str(exc.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_self_moa_graph(config) -> None:
    g = build_graph(config, "laptop", Overrides(self_moa=("smollm2-135m", 4)))
    assert g.profile == "self:smollm2-135m"  # the profile is ignored
    assert len(g.layers) == 1
    proposers = g.layers[0]
    assert [a.id for a in proposers] == ["L1.1", "L1.2", "L1.3", "L1.4"]
    assert {a.model for a in g.all_agents()} == {"smollm2-135m"}
    assert g.models == ["smollm2-135m"]
    assert [a.temperature for a in proposers] == [0.5, 0.67, 0.83, 1.0]
    assert [a.seed for a in proposers] == [1000, 1001, 1002, 1003]
    assert {a.max_tokens for a in proposers} == {256}
    assert {a.system for a in proposers} == {None}  # samples of one prompt
    agg = g.aggregator
    assert (agg.model, agg.temperature, agg.max_tokens, agg.layer) == \
        ("smollm2-135m", 0.3, 384, 2)
    assert agg.seed not in {a.seed for a in proposers}


@pytest.mark.parametrize("samples", [2, 3, 6, 64])
def test_self_moa_temperatures_span_half_to_one(config, samples: int) -> None:
    g = build_graph(config, None, Overrides(self_moa=("smollm2-135m", samples)))
    temps = [a.temperature for a in g.layers[0]]
    assert len(temps) == samples
    assert temps == [round(0.5 + 0.5 * k / (samples - 1), 2) for k in range(samples)]
    assert temps[0] == 0.5 and temps[-1] == 1.0 and temps == sorted(temps)
    assert len({a.seed for a in g.all_agents()}) == samples + 1


def test_self_moa_with_overrides(config) -> None:
    g = build_graph(config, None, Overrides(self_moa=("smollm2-135m", 3), layers=2,
                                            temperature=0.0, max_tokens=9, seed=7,
                                            timeout_s=30.0))
    assert [len(layer) for layer in g.layers] == [3, 3]
    agents = g.all_agents()
    assert {a.temperature for a in agents} == {0.0}
    assert {a.max_tokens for a in agents} == {9}
    assert {a.timeout_s for a in agents} == {30.0}
    assert [a.seed for a in agents] == [7, 8, 9, 10, 11, 12, 13]  # --seed's position rule


def test_self_moa_seeds_stay_distinct_over_repeated_layers(config) -> None:
    g = build_graph(config, None, Overrides(self_moa=("smollm2-135m", 4), layers=3))
    seeds = [a.seed for a in g.all_agents()]
    assert seeds == list(range(1000, 1013))
    again = build_graph(config, None, Overrides(self_moa=("smollm2-135m", 4), layers=3))
    assert again == g  # reproducible


@pytest.mark.parametrize(("overrides", "fragment"), [
    (Overrides(self_moa=("smollm2-135m", 4), proposers=("smollm2-135m",)),
     "--self replaces the proposers and the aggregator; drop --proposer/--aggregator"),
    (Overrides(self_moa=("smollm2-135m", 4), aggregator="smollm2-135m"),
     "drop --proposer/--aggregator"),
    (Overrides(self_moa=("ghost", 4)), "no model named 'ghost'"),
    (Overrides(self_moa=("smollm2-135m", 1)), "give 2 to 64 samples"),
    (Overrides(self_moa=("smollm2-135m", 4), layers=0), "--layers 0"),
])
def test_bad_self_moa_overrides(config, overrides: Overrides, fragment: str) -> None:
    with pytest.raises(UsageError) as exc:
        build_graph(config, None, overrides)
    assert fragment in str(exc.value)


def test_tiny_self_profile(config) -> None:
    g = build_graph(config, "tiny-self")
    assert g.profile == "tiny-self" and len(g.layers) == 1
    proposers = g.layers[0]
    assert len(proposers) == 6
    assert {a.model for a in g.all_agents()} == {"smollm2-135m"}
    assert len({a.seed for a in proposers}) == 6 and None not in {a.seed for a in proposers}
    assert [a.temperature for a in proposers] == [0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    assert {a.max_tokens for a in proposers} == {128}
    assert {a.system for a in proposers} == {None}
    assert (g.aggregator.temperature, g.aggregator.max_tokens) == (0.3, 192)
    assert "Self-MoA" in config.profiles["tiny-self"].description
