"""Routing (Octopus v4 style): a router in front of a profile's named specialists picks
the ones that fit each query, and the MoA runs over those only.

Two routers:

- ``kind: choose``: the router model reads the specialists' names and descriptions and
  the query, and answers ``{"specialist": NAME}`` (or ``{"specialists": [NAME, ...]}``
  when ``pick`` > 1). Its output is constrained to that JSON schema (a grammar on
  llama.cpp), so it always parses and names only real specialists.
- ``kind: embed``: the query's embedding against each specialist's description
  (cosine similarity); the ``pick`` best. No generation at all.

What runs the router is the runtime (runtime.py: ``Runtime.route``): on the same model
host as the MoA after it, planned on its own first and kept loaded: when its model is
also a specialist's, the MoA reuses the instance; when memory is short, the MoA's plan
evicts it. Here: the router's graph and prompt, the embedding router's call, and what
each router's answer means.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .backends import get_backend
from .config import Config
from .errors import RunFailedError, UsageError
from .host import ModelHost
from .memory.planner import Instance, Plan
from .metrics import RunReport
from .profile_spec import Profile
from .recipe import Agent, MoaGraph

ROUTER_PROMPT = (
    "You are a router. Pick the specialist best suited to answer the user's message. "
    "The specialists:\n{catalogue}\n\nAnswer with JSON naming {how}.")


class RoutingError(RunFailedError):
    """The router could not decide (its model failed, or cannot embed)."""


@dataclass
class Decision:
    """What the router chose, why, and what deciding cost."""

    router: str
    kind: str
    chosen: list[str]
    reason: str
    scores: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0
    load_s: float = 0.0
    ttft_s: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    #: The router model's footprint (what keeping it loaded holds); not reported.
    footprint: Any = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("footprint")
        data["tokens"] = self.prompt_tokens + self.completion_tokens
        return data


def routes(config: Config, profile: str | None) -> bool:
    """Whether ``profile`` (None: the default) is a routing profile."""
    return config.profile(profile)[1].router is not None


def choice_schema(names: Sequence[str], pick: int) -> dict[str, Any]:
    """The JSON schema of the choosing router's answer."""
    if pick == 1:
        return {"type": "object", "properties": {"specialist": {"enum": list(names)}},
                "required": ["specialist"], "additionalProperties": False}
    return {"type": "object",
            "properties": {"specialists": {"type": "array", "items": {"enum": list(names)},
                                           "minItems": 1, "maxItems": pick}},
            "required": ["specialists"], "additionalProperties": False}


def router_system(prof: Profile) -> str:
    """The choosing router's instructions: the specialists, then how to answer."""
    assert prof.router is not None
    catalogue = "\n".join(f"- {name}: {spec.description}"
                          for name, spec in prof.specialists.items())
    how = ('one of them: {"specialist": "NAME"}' if prof.router.pick == 1 else
           f'1 to {prof.router.pick} of them, best first: {{"specialists": ["NAME", ...]}}')
    text = ROUTER_PROMPT.format(catalogue=catalogue, how=how)
    return f"{text}\n\n{prof.router.system}" if prof.router.system else text


def router_graph(config: Config, profile: str | None) -> tuple[Profile, MoaGraph]:
    """``profile``'s router as a graph of one agent (its answer constrained to the
    specialists' names for ``kind: choose``); UsageError when the profile has no router,
    or its model cannot do what its kind needs."""
    name, prof = config.profile(profile)
    if prof.router is None:
        raise UsageError(f"profile {name!r} has no router")
    backend = get_backend(config.models[prof.router.model].backend)
    if prof.router.kind == "choose" and not backend.capabilities.constrained_output:
        raise UsageError(f"the router model {prof.router.model!r} (backend "
                         f"{backend.name}) cannot constrain its output to the specialists' "
                         "names; use kind: embed, or a llama.cpp, Ollama or OpenAI model")
    if prof.router.kind == "embed" and not backend.capabilities.embeddings:
        raise UsageError(f"the router model {prof.router.model!r} (backend "
                         f"{backend.name}) cannot embed text; use kind: choose, or a "
                         "llama.cpp, Ollama or OpenAI model")
    agent = Agent("AGG", 1, 1, prof.router.model, router_system(prof), 0.0, 1.0,
                  prof.router.max_tokens, 0,
                  json_schema=json.dumps(choice_schema(list(prof.specialists),
                                                       prof.router.pick)))
    return prof, MoaGraph(profile=f"{name}:router", layers=[], aggregator=agent,
                          models=[prof.router.model])


def chosen(prof: Profile, report: RunReport) -> Decision:
    """What the choosing router's run (``report``) chose; RoutingError when its answer
    names no specialist."""
    assert prof.router is not None
    run = report.agents[0]
    try:
        data = json.loads(run.answer)
        picked = [data["specialist"]] if "specialist" in data else list(data["specialists"])
    except (ValueError, KeyError, TypeError):
        raise RoutingError(f"the router's answer did not parse ({run.answer[:80]!r}); "
                           f"raise router.max_tokens ({prof.router.max_tokens})",
                           report) from None
    chosen = [p for p in dict.fromkeys(picked) if p in prof.specialists][:prof.router.pick]
    if not chosen:
        raise RoutingError(f"the router named no specialist ({run.answer[:80]!r})", report)
    return Decision(router=prof.router.model, kind="choose", chosen=chosen,
                    reason=f"{prof.router.model} answered {run.answer.strip()}",
                    wall_s=round(report.totals.wall_s, 4), load_s=run.load_s,
                    ttft_s=run.ttft_s, prompt_tokens=run.prompt_tokens,
                    completion_tokens=run.completion_tokens)


def embedded(prof: Profile, query: str, host: ModelHost, plan: Plan) -> Decision:
    """The embedding router's choice: ``plan``'s one wave loaded on ``host`` (after its
    unloads), the query and every description embedded, the closest specialists."""
    assert prof.router is not None
    started = time.perf_counter()
    for inst in plan.unloads_first:
        host.unload(inst)
    wave = plan.waves[0]
    task = wave.tasks[0]
    inst = Instance(task.model, task.slot)
    before = host.load_s
    for load in wave.loads:
        if not host.load(load, task.threads):
            raise RoutingError(f"the router model could not load: {host.load_errors.get(load)}")
    load_s = host.load_s - before
    entry = host.acquire(inst)
    if entry is None:
        raise RoutingError(f"the router model is not loaded: {host.load_errors.get(inst)}")
    try:
        names = list(prof.specialists)
        texts = [query, *(prof.specialists[n].description for n in names)]
        vectors = entry.model.embed(texts)
        tokens = sum(entry.model.count_tokens(t) or 0 for t in texts)
    finally:
        host.release(entry)
    if vectors is None:
        raise RoutingError(f"the router model {prof.router.model!r} cannot embed text; see "
                           "docs: give it a model that can (kind: embed), or use kind: choose")
    scores = {n: round(cosine(vectors[0], v), 4) for n, v in zip(names, vectors[1:],
                                                                 strict=True)}
    ranked = sorted(names, key=lambda n: -scores[n])
    chosen = ranked[:prof.router.pick]
    reason = "cosine similarity to the query: " + ", ".join(f"{n} {scores[n]:.3f}"
                                                            for n in ranked)
    return Decision(router=prof.router.model, kind="embed", chosen=chosen, reason=reason,
                    scores=scores, wall_s=round(time.perf_counter() - started, 4),
                    load_s=round(load_s, 4), prompt_tokens=tokens)


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / norm if norm else 0.0
