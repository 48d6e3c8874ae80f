"""A profile plus command-line overrides -> the MoA graph that will run.

The graph is a plain value: layers of agents, then the aggregator. Every agent
carries its resolved model name and sampling settings, and a stable id such as
``L1.2`` (layer 1, second agent) or ``AGG``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from .config import AgentSpec, Config
from .errors import UsageError


@dataclass(frozen=True)
class Agent:
    """One agent of the graph. ``layer`` counts from 1; the aggregator's is L+1."""

    id: str
    layer: int
    index: int
    model: str
    system: str | None
    temperature: float
    top_p: float
    max_tokens: int
    seed: int | None
    timeout_s: float | None = None

    @property
    def is_aggregator(self) -> bool:
        return self.id == "AGG"


@dataclass(frozen=True)
class MoaGraph:
    """Proposer layers (each a list of agents that see the same references) and the aggregator."""

    profile: str
    layers: list[list[Agent]]
    aggregator: Agent
    models: list[str] = field(default_factory=list)

    def all_agents(self) -> list[Agent]:
        return [a for layer in self.layers for a in layer] + [self.aggregator]


@dataclass(frozen=True)
class Overrides:
    """What the command line can change about a profile."""

    layers: int | None = None
    proposers: tuple[str, ...] = ()
    aggregator: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    seed: int | None = None
    timeout_s: float | None = None


def build_graph(config: Config, profile: str | None,
                overrides: Overrides | None = None) -> MoaGraph:
    """Expand a profile into agents, applying ``overrides``.

    - ``layers=N``: N proposer layers; the profile's layers are truncated, or
      its last layer repeated.
    - ``proposers``: every proposer layer gets one agent per model named, keeping
      the prompts and sampling of the profile's agent in the same position.
    - ``temperature`` / ``max_tokens`` / ``seed``: set on every agent. A seed is
      offset by the agent's position so agents sharing a model still differ,
      while the same command stays reproducible.
    """
    ov = overrides or Overrides()
    name, prof = config.profile(profile)
    for model in (*ov.proposers, *([ov.aggregator] if ov.aggregator else [])):
        if model not in config.models:
            known = ", ".join(sorted(config.models))
            raise UsageError(f"no model named {model!r} in the config; known models: {known}")
    _check_overrides(ov)

    specs: list[list[AgentSpec]] = [list(layer) for layer in prof.layers]
    if ov.layers is not None:
        specs = [specs[min(i, len(specs) - 1)] for i in range(ov.layers)]
    if ov.proposers:
        specs = [[replace_model(layer[j % len(layer)], m) for j, m in enumerate(ov.proposers)]
                 for layer in specs]
    agg_spec = prof.aggregator
    if ov.aggregator:
        agg_spec = replace_model(agg_spec, ov.aggregator)

    position = 0

    def make(spec: AgentSpec, layer: int, index: int, agent_id: str) -> Agent:
        nonlocal position
        seed = spec.seed
        if ov.seed is not None:
            seed = ov.seed + position
        position += 1
        agent = Agent(id=agent_id, layer=layer, index=index, model=spec.model,
                      system=spec.system, temperature=spec.temperature, top_p=spec.top_p,
                      max_tokens=spec.max_tokens, seed=seed,
                      timeout_s=ov.timeout_s if ov.timeout_s is not None else spec.timeout_s)
        if ov.temperature is not None:
            agent = replace(agent, temperature=ov.temperature)
        if ov.max_tokens is not None:
            agent = replace(agent, max_tokens=ov.max_tokens)
        return agent

    layers = [[make(s, i + 1, j + 1, f"L{i + 1}.{j + 1}") for j, s in enumerate(layer)]
              for i, layer in enumerate(specs)]
    aggregator = make(agg_spec, len(layers) + 1, 1, "AGG")
    models = list(dict.fromkeys(a.model for a in [*sum(layers, []), aggregator]))
    return MoaGraph(profile=name, layers=layers, aggregator=aggregator, models=models)


def replace_model(spec: AgentSpec, model: str) -> AgentSpec:
    return spec.model_copy(update={"model": model})


def _check_overrides(ov: Overrides) -> None:
    if ov.layers is not None and not 1 <= ov.layers <= 32:
        raise UsageError(f"--layers {ov.layers}: give 1 to 32 proposer layers")
    if ov.temperature is not None and not 0.0 <= ov.temperature <= 2.0:
        raise UsageError(f"--temperature {ov.temperature}: give a value from 0 to 2")
    if ov.max_tokens is not None and not 1 <= ov.max_tokens <= 131_072:
        raise UsageError(f"--max-tokens {ov.max_tokens}: give 1 to 131072 tokens")
    if ov.timeout_s is not None and not 0 < ov.timeout_s <= 86_400:
        raise UsageError(f"--agent-timeout {ov.timeout_s:g}: give seconds from 0 to 86400")
    if ov.seed is not None and not 0 <= ov.seed <= 2**31 - 1:
        raise UsageError(f"--seed {ov.seed}: give a whole number from 0 to 2147483647")
