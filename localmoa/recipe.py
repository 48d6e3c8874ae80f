"""A profile plus command-line overrides -> the MoA graph that will run.

The graph is a plain value: layers of agents, then the aggregator. Every agent
carries its resolved model name and sampling settings, and a stable id such as
``L1.2`` (layer 1, second agent) or ``AGG``.

Self-MoA (Li et al. 2025, "Rethinking Mixture-of-Agents") replaces a profile:
several samples of one model at varied temperatures and seeds, aggregated by
the same model (``--self MODEL[:N]``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from .backends import get_backend
from .config import Config
from .errors import UsageError
from .profile_spec import STAIRCASE_CHUNK_TOKENS, AgentSpec, Profile, SelectSpec
from .prompts import reference_slots
from .selection import SELECTORS, judge

#: Self-MoA samples when ``--self MODEL`` gives no N, and the range N may take.
SELF_DEFAULT_SAMPLES = 4
SELF_MIN_SAMPLES, SELF_MAX_SAMPLES = 2, 64
#: Without --seed, Self-MoA agent k gets this + k: distinct samples, reproducible runs.
SELF_SEED_BASE = 1000
SELF_PROPOSER_MAX_TOKENS = 256
SELF_AGGREGATOR_MAX_TOKENS = 384
SELF_AGGREGATOR_TEMPERATURE = 0.3


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
    stop: tuple[str, ...] = ()
    #: Which request of a merged run (``merge_graphs``) the agent belongs to; 0 alone.
    job: int = 0
    #: Its prompt template (its own, else its profile's; prompts.py); None: the default.
    prompt_template: str | None = None
    #: JSON schema (as JSON text) the agent's answer must follow: a router's choice.
    json_schema: str | None = None

    @property
    def is_aggregator(self) -> bool:
        return self.local_id == "AGG"

    @property
    def local_id(self) -> str:
        """The id within its own request's graph: ``L1.2`` for a merged run's ``2/L1.2``."""
        return self.id.rpartition("/")[2]


@dataclass(frozen=True)
class MoaGraph:
    """Proposer layers (each a list of agents that see the same references) and the aggregator."""

    profile: str
    layers: list[list[Agent]]
    aggregator: Agent
    models: list[str] = field(default_factory=list)
    #: A merged run's other requests' aggregators (``merge_graphs``); empty alone.
    more_aggregators: tuple[Agent, ...] = ()
    #: ``always`` | ``auto`` (skipped when the proposers agree) | ``never`` (majority vote).
    aggregate: str = "always"
    #: Stop adding proposer layers once a layer's answers agree (``layers_up_to``).
    early_exit: bool = False
    #: With ``aggregate: select``: how the answer is chosen (selection/); else None.
    select: SelectSpec | None = None
    #: The aggregator reads each proposer's answer as it ends (reference streaming),
    #: where the plan can overlap them (memory/overlap.py). Off for graphs built by hand.
    stream_references: bool = False
    #: Staircase aggregation's first chunk, in tokens (the profile's ``staircase_chunk``).
    staircase_chunk: int = STAIRCASE_CHUNK_TOKENS

    @property
    def jobs(self) -> int:
        """How many requests run in this graph (``merge_graphs``): 1 alone."""
        return 1 + len(self.more_aggregators)

    def stages(self) -> list[list[Agent]]:
        """The proposer layers, then the final stage: the aggregator(s)."""
        return [*self.layers, [self.aggregator, *self.more_aggregators]]

    def all_agents(self) -> list[Agent]:
        return [a for layer in self.stages() for a in layer]

    def widest(self) -> dict[str, int]:
        """The most agents of each model in one layer: its largest batch."""
        out: dict[str, int] = {}
        for layer in self.stages():
            for agent in layer:
                n = sum(a.model == agent.model for a in layer)
                out[agent.model] = max(out.get(agent.model, 0), n)
        return out

    def batch_room(self) -> dict[str, int]:
        """``widest()``, and with reference streaming one more sequence for the
        aggregator's model, which may join the last layer's batch (memory/overlap.py):
        the batches whose footprints the plan needs."""
        out = self.widest()
        if self.stream_references and self.layers:
            model = self.aggregator.model
            joined = sum(a.model == model for a in self.layers[-1])
            if joined:
                out[model] = max(out[model], joined + 1)
        return out


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
    #: Self-MoA: (model, samples) replaces the profile's proposers and aggregator.
    self_moa: tuple[str, int] | None = None
    #: ``always`` | ``auto`` | ``never`` | ``select``: the profile's ``aggregate``.
    aggregate: str | None = None
    #: ``--select BY``: ``aggregate: select`` chosen by BY (selection.SELECTORS).
    select: str | None = None
    #: ``--execute``: model-written code may run (the verify selector needs it).
    execute: bool = False
    #: ``--no-stream-references`` (False): the profile's ``stream_references`` off.
    stream_references: bool | None = None
    #: ``--staircase-chunk N``: the profile's ``staircase_chunk``.
    staircase_chunk: int | None = None


def self_moa_profile(model: str, samples: int) -> Profile:
    """The Self-MoA recipe: one layer of ``samples`` agents on ``model`` with
    temperatures spread evenly over 0.5..1.0 and distinct seeds, then ``model``
    aggregating at a low temperature."""
    # model_validate: the defaults (top_p, no system prompt) stay AgentSpec's own.
    proposers = [AgentSpec.model_validate({
        "model": model, "temperature": round(0.5 + 0.5 * k / (samples - 1), 2),
        "max_tokens": SELF_PROPOSER_MAX_TOKENS, "seed": SELF_SEED_BASE + k})
        for k in range(samples)]
    aggregator = AgentSpec.model_validate({
        "model": model, "temperature": SELF_AGGREGATOR_TEMPERATURE,
        "max_tokens": SELF_AGGREGATOR_MAX_TOKENS, "seed": SELF_SEED_BASE + samples})
    return Profile(description=f"Self-MoA: {samples} samples of {model}, aggregated by it",
                   layers=[proposers], aggregator=aggregator)


def parse_self(value: str | None, config: Config) -> tuple[str, int] | None:
    """``--self MODEL`` or ``--self MODEL:N`` -> (model, N); N defaults to 4. None when
    the option was not given.

    A model name may itself hold ':' (Ollama-style ``qwen2.5:7b``), so only a
    trailing ``:<digits>`` is N, and not when the whole value is a model's name
    and the part before the colon is not.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        raise UsageError("--self needs a model: --self MODEL or --self MODEL:N, e.g. "
                         "--self smollm2-135m:4")
    model, samples = text, SELF_DEFAULT_SAMPLES
    split = re.fullmatch(r"(.+):(-?[0-9]+)", text)
    if split and (split[1] in config.models or text not in config.models):
        model, samples = split[1], int(split[2])
    _check_self(config, model, samples, value)
    return model, samples


def _check_self(config: Config, model: str, samples: int, value: str) -> None:
    if model not in config.models:
        known = ", ".join(sorted(config.models)) or "none"
        raise UsageError(f"--self {value}: no model named {model!r} in the config; "
                         f"known models: {known}")
    if not SELF_MIN_SAMPLES <= samples <= SELF_MAX_SAMPLES:
        raise UsageError(f"--self {value}: give {SELF_MIN_SAMPLES} to {SELF_MAX_SAMPLES} "
                         f"samples, e.g. --self {model}:{SELF_DEFAULT_SAMPLES}")


def build_graph(config: Config, profile: str | None,
                overrides: Overrides | None = None,
                chosen: Sequence[str] | None = None) -> MoaGraph:
    """Expand a profile into agents, applying ``overrides``.

    - ``layers=N``: N proposer layers; the profile's layers are truncated, or
      its last layer repeated.
    - ``proposers``: every proposer layer gets one agent per model named, keeping
      the prompts and sampling of the profile's agent in the same position.
    - ``temperature`` / ``max_tokens`` / ``seed``: set on every agent. A seed is
      offset by the agent's position so agents sharing a model still differ,
      while the same command stays reproducible.
    - ``self_moa=(model, N)``: the profile is ignored; the graph is
      ``self_moa_profile`` (named ``self:MODEL``), and ``layers`` and the
      sampling overrides still apply. Without ``seed`` agent k gets 1000 + k.

    A routing profile needs ``chosen``, the specialists its router picked: their
    agents are the proposers (``routed_layers``).
    """
    ov = overrides or Overrides()
    name, prof = _profile_of(config, profile, ov)
    specs, agg_spec = _agent_specs(config, name, prof, ov, chosen)
    make = _AgentMaker(prof, ov)
    layers = [[make(s, i + 1, j + 1, f"L{i + 1}.{j + 1}") for j, s in enumerate(layer)]
              for i, layer in enumerate(specs)]
    aggregator = make(agg_spec, len(layers) + 1, 1, "AGG")
    aggregate = "select" if ov.select else ov.aggregate or prof.aggregate
    select = _select_spec(config, prof, ov, aggregator) if aggregate == "select" else None
    if select is not None and select.by == "judge":
        aggregator = judge_agent(aggregator, len(layers[-1]))
    models = list(dict.fromkeys(a.model for a in [*sum(layers, []), aggregator]))
    return MoaGraph(profile=name, layers=layers, aggregator=aggregator, models=models,
                    aggregate=aggregate, select=select,
                    early_exit=prof.layers_up_to is not None and ov.layers is None,
                    stream_references=(prof.stream_references == "on"
                                       if ov.stream_references is None
                                       else ov.stream_references),
                    staircase_chunk=ov.staircase_chunk or prof.staircase_chunk)


def _select_spec(config: Config, prof: Profile, ov: Overrides, aggregator: Agent) -> SelectSpec:
    """The run's SelectSpec: the profile's (else the default), ``--select`` and
    ``--execute`` applied; UsageError when verify may not run code, or the judge's model
    cannot constrain its output."""
    spec = prof.select or SelectSpec()
    spec = spec.model_copy(
        update={"by": ov.select or spec.by, "execute": spec.execute or ov.execute}
    )
    if spec.by == "verify" and not spec.execute:
        raise UsageError(
            "select by verify runs model-written code: pass --execute, or set "
            "execute: true in the profile's select: (README: HumanEval, on "
            "what the sandbox contains)"
        )
    backend = get_backend(config.models[aggregator.model].backend)
    if spec.by == "judge" and not backend.capabilities.constrained_output:
        raise UsageError(
            f"select by judge: the aggregator's model {aggregator.model!r} "
            f"(backend {backend.name}) cannot constrain its output to the "
            "answers' numbers; use --select confidence, or a llama.cpp, "
            "Ollama or OpenAI model as the aggregator"
        )
    return spec


def judge_agent(aggregator: Agent, candidates: int) -> Agent:
    """The aggregator as the judge of ``candidates`` answers: the judge's prompt, its
    output constrained to their numbers, a few tokens (selection/judge.py)."""
    return replace(
        aggregator,
        prompt_template=judge.template(candidates),
        json_schema=judge.schema_text(candidates),
        max_tokens=judge.MAX_TOKENS,
    )


def _profile_of(config: Config, profile: str | None, ov: Overrides) -> tuple[str, Profile]:
    """The profile's name and spec (a Self-MoA one for ``--self``), the overrides checked."""
    if ov.self_moa is not None:
        if ov.proposers or ov.aggregator:
            raise UsageError("--self replaces the proposers and the aggregator; drop "
                             "--proposer/--aggregator")
        model, samples = ov.self_moa
        _check_self(config, model, samples, f"{model}:{samples}")
        name, prof = f"self:{model}", self_moa_profile(model, samples)
    else:
        name, prof = config.profile(profile)
    for model in (*ov.proposers, *([ov.aggregator] if ov.aggregator else [])):
        if model not in config.models:
            known = ", ".join(sorted(config.models))
            raise UsageError(f"no model named {model!r} in the config; known models: {known}")
    _check_overrides(ov)
    return name, prof


def _agent_specs(config: Config, name: str, prof: Profile, ov: Overrides,
                 chosen: Sequence[str] | None) -> tuple[list[list[AgentSpec]], AgentSpec]:
    """The proposer layers' agent specs and the aggregator's, overrides applied."""
    if prof.router is not None:
        if chosen is None:
            raise UsageError(f"profile {name!r} routes each query to its specialists, which "
                             "only `localmoa run` and `localmoa serve` do so far; use one "
                             "of them, or a profile with layers:")
        specs = routed_layers(config, prof, chosen)
    else:
        specs = [list(layer) for layer in prof.layers]
    depth = ov.layers if ov.layers is not None else prof.layers_up_to
    if depth is not None:
        specs = [specs[min(i, len(specs) - 1)] for i in range(depth)]
    if ov.proposers:
        specs = [[replace_model(layer[j % len(layer)], m) for j, m in enumerate(ov.proposers)]
                 for layer in specs]
    agg_spec = prof.aggregator
    if ov.aggregator:
        agg_spec = replace_model(agg_spec, ov.aggregator)
    return specs, agg_spec


class _AgentMaker:
    """Agents from specs in graph order: seeds offset by position, overrides applied."""

    def __init__(self, prof: Profile, ov: Overrides) -> None:
        self.prof = prof
        self.ov = ov
        self.position = 0

    def __call__(self, spec: AgentSpec, layer: int, index: int, agent_id: str) -> Agent:
        ov = self.ov
        seed = spec.seed
        if ov.seed is not None:
            seed = ov.seed + self.position
        elif ov.self_moa is not None:  # distinct across repeated layers too
            seed = SELF_SEED_BASE + self.position
        self.position += 1
        agent = Agent(id=agent_id, layer=layer, index=index, model=spec.model,
                      system=spec.system, temperature=spec.temperature, top_p=spec.top_p,
                      max_tokens=spec.max_tokens, seed=seed, stop=tuple(spec.stop),
                      timeout_s=ov.timeout_s if ov.timeout_s is not None else spec.timeout_s,
                      prompt_template=self.prof.template_for(spec))
        if layer > 1 and agent.prompt_template is not None \
                and not reference_slots(agent.prompt_template):  # a first layer repeated
            repeats = f"--layers {ov.layers}" if ov.layers is not None else f"layer {layer}"
            raise UsageError(
                f"agent {agent_id} gets the previous layer's answers, but its prompt_template "
                "has no {references} (or {helper_response}): they would be lost "
                f"({repeats} repeats the profile's last layer); add {{references}} to it")
        if ov.temperature is not None:
            agent = replace(agent, temperature=ov.temperature)
        if ov.max_tokens is not None:
            agent = replace(agent, max_tokens=ov.max_tokens)
        return agent


def routed_layers(config: Config, prof: Profile, chosen: Sequence[str]) -> list[list[AgentSpec]]:
    """The proposer layers of the chosen specialists: layer k holds every chosen
    specialist's layer k (a specialist's ``agents`` are one layer; a ``profile``'s
    layers keep their own prompt templates)."""
    unknown = [c for c in chosen if c not in prof.specialists]
    if unknown or not chosen:
        raise UsageError(f"no specialist named {', '.join(unknown) or '(none)'}; the "
                         f"profile's specialists: {', '.join(prof.specialists)}")
    per: list[list[list[AgentSpec]]] = []
    for name in dict.fromkeys(chosen):
        spec = prof.specialists[name]
        if spec.agents is not None:
            per.append([list(spec.agents)])
        else:
            sub = config.profiles[str(spec.profile)]
            per.append([[a.model_copy(update={"prompt_template": sub.template_for(a)})
                         for a in layer] for layer in sub.layers])
    depth = max(len(layers) for layers in per)
    return [[a for layers in per if k < len(layers) for a in layers[k]] for k in range(depth)]


def merge_graphs(graphs: list[MoaGraph]) -> MoaGraph:
    """Several requests' graphs of the same shape as one run: layer k holds every
    request's layer k, so agents on one model decode as one batch across requests. The
    agents of request j > 0 get ``job = j`` and ids ``j/L1.1``, ``j/AGG``."""
    if len({len(g.layers) for g in graphs}) != 1:
        raise ValueError("merged graphs must have the same number of layers")
    tagged = [graphs[0]] + [
        replace(g, layers=[[_tag(a, j) for a in layer] for layer in g.layers],
                aggregator=_tag(g.aggregator, j)) for j, g in enumerate(graphs[1:], start=1)]
    layers = [[a for g in tagged for a in g.layers[k]] for k in range(len(graphs[0].layers))]
    models = list(dict.fromkeys(m for g in graphs for m in g.models))
    return MoaGraph(
        profile=graphs[0].profile,
        layers=layers,
        aggregator=tagged[0].aggregator,
        models=models,
        more_aggregators=tuple(g.aggregator for g in tagged[1:]),
        aggregate=graphs[0].aggregate,
        early_exit=graphs[0].early_exit,
        select=graphs[0].select,
    )


def _tag(agent: Agent, job: int) -> Agent:
    return replace(agent, id=f"{job}/{agent.id}", job=job)


def replace_model(spec: AgentSpec, model: str) -> AgentSpec:
    return spec.model_copy(update={"model": model})


def _check_overrides(ov: Overrides) -> None:
    if ov.aggregate is not None and ov.aggregate not in ("always", "auto", "never", "select",
                                                         "staircase"):
        raise UsageError(f"--aggregate {ov.aggregate}: give always, auto, never, select or "
                         "staircase")
    if ov.select is not None and ov.select not in SELECTORS:
        raise UsageError(f"--select {ov.select}: give {', '.join(SELECTORS)}")
    if ov.select is not None and ov.aggregate not in (None, "select"):
        raise UsageError(f"--select {ov.select} chooses an answer; --aggregate "
                         f"{ov.aggregate} writes or votes one: give one of the two")
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
