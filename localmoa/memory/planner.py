"""Pure planning: how the work of a MoA run is laid over the machine. No I/O here.

``plan(graph, footprints, budgets, cores)`` returns a Plan: ordered waves of
agents that run at the same time, the model instances to load before each wave
and to unload after it, threads per agent and the predicted memory per pool.

Policy, in order: never exceed any pool's budget; an instance serves one agent
at a time, and agents of one model share its mapped weights (an extra instance
costs only its private part); run agents together when their instances fit,
else in sequence; evict the model whose next use is farthest (Belady: the whole
graph is known); order each layer so the model resident at the end of one layer
is used first in the next; split the cores among agents that run together.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import InsufficientMemoryError
from ..recipe import Agent, MoaGraph
from .estimate import KV_TYPE_BYTES, Footprint
from .probe import format_bytes

NEVER = float("inf")


@dataclass(frozen=True, order=True)
class Instance:
    """One loaded copy of a model (a llama.cpp context); ``slot`` numbers the copies."""

    model: str
    slot: int = 0

    def __str__(self) -> str:
        return f"{self.model}#{self.slot}"


@dataclass(frozen=True)
class Task:
    """An agent of a wave: which instance serves it, with how many threads."""

    agent: str
    model: str
    slot: int
    threads: int


@dataclass
class Wave:
    """Agents that run at the same time. Loads happen before, unloads after."""

    index: int
    layer: int
    tasks: list[Task]
    loads: list[Instance] = field(default_factory=list)
    unloads: list[Instance] = field(default_factory=list)
    resident: list[Instance] = field(default_factory=list)
    resident_bytes: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelCost:
    """Bytes per pool of one model's first instance, and of each further one."""

    first: dict[str, int]
    extra: dict[str, int]

    @classmethod
    def of(cls, fp: Footprint) -> ModelCost:
        one, two = fp.cost(1), fp.cost(2)
        return cls(first=one, extra={pool: two[pool] - one.get(pool, 0) for pool in two})


@dataclass
class Plan:
    waves: list[Wave]
    budgets: dict[str, int]
    peak_bytes: dict[str, int]
    cores: int
    #: Instances resident from before the run that must go before the first wave.
    unloads_first: list[Instance] = field(default_factory=list)
    #: Instances per model still loaded after the last wave (with ``keep``).
    resident_at_end: dict[str, int] = field(default_factory=dict)
    #: What an instance of each model costs: the engine's check when reality departs
    #: from the plan (an agent that timed out keeps its instance busy).
    costs: dict[str, ModelCost] = field(default_factory=dict)

    @property
    def loads(self) -> int:
        return sum(len(w.loads) for w in self.waves)

    @property
    def unloads(self) -> int:
        return len(self.unloads_first) + sum(len(w.unloads) for w in self.waves)

    def waves_of_layer(self, layer: int) -> list[Wave]:
        return [w for w in self.waves if w.layer == layer]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for wave in data["waves"]:
            for key in ("loads", "unloads", "resident"):
                wave[key] = [f"{i['model']}#{i['slot']}" for i in wave[key]]
        data["unloads_first"] = [str(i) for i in self.unloads_first]
        data["loads"] = self.loads
        data["unloads"] = self.unloads
        return data


def split_threads(cores: int, agents: int) -> list[int]:
    """CPU threads for ``agents`` running at once on ``cores`` cores.

    Every agent gets at least one; spare cores go to the first agents. Running
    small models side by side with one thread each beats running them one after
    another with all threads (see benchmarks/README.md).
    """
    if agents <= 0:
        return []
    if agents >= cores:
        return [1] * agents
    base, extra = divmod(cores, agents)
    return [base + (1 if i < extra else 0) for i in range(agents)]


def cost(footprints: Mapping[str, Footprint], counts: Mapping[str, int]) -> dict[str, int]:
    """Bytes per pool of the given number of instances of each model."""
    total: dict[str, int] = {}
    for model, n in counts.items():
        for pool, amount in footprints[model].cost(n).items():
            total[pool] = total.get(pool, 0) + amount
    return total


def fits(usage: Mapping[str, int], budgets: Mapping[str, int]) -> bool:
    return all(amount <= budgets.get(pool, 0) for pool, amount in usage.items())


def order_layers(layers: Sequence[Sequence[Agent]]) -> list[list[Agent]]:
    """Order each layer's agents by model so that, with room for one model at a
    time, the fewest loads are needed: agents of a model together, and the model
    that ends a layer starts the next one when it can (dynamic programming over
    the first and last model of every layer)."""
    groups = [list(dict.fromkeys(a.model for a in layer)) for layer in layers]
    # best[last] = (loads so far, choices), choices = [(first, last) per layer]
    best: dict[str | None, tuple[int, list[tuple[str, str]]]] = {None: (0, [])}
    for models in groups:
        nxt: dict[str | None, tuple[int, list[tuple[str, str]]]] = {}
        pairs = [(models[0], models[0])] if len(models) == 1 else [
            (f, g) for f in models for g in models if f != g]
        # the profile's own order first, so ties keep it
        pairs.sort(key=lambda p: (p[0] != models[0], p[1] != models[-1]))
        for prev, (loads, choices) in best.items():
            for first, last in pairs:
                total = loads + len(models) - (1 if first == prev else 0)
                if last not in nxt or total < nxt[last][0]:
                    nxt[last] = (total, [*choices, (first, last)])
        best = nxt
    _, choices = min(best.values(), key=lambda v: v[0])
    ordered = []
    for layer, models, (first, last) in zip(layers, groups, choices, strict=True):
        middle = [m for m in models if m not in (first, last)]
        sequence = [first, *middle] + ([last] if last != first else [])
        ordered.append([a for m in sequence for a in layer if a.model == m])
    return ordered


def plan(graph: MoaGraph, footprints: Mapping[str, Footprint], budgets: Mapping[str, int],
         cores: int, *, resident: Mapping[str, int] | None = None, keep: bool = False) -> Plan:
    """The Plan for ``graph``; InsufficientMemoryError when a model can never fit.

    ``resident``: instances already loaded when the run starts (a chat's previous
    turn). ``keep``: leave models loaded at the end instead of freeing them (the
    next turn uses them); under memory pressure they are still evicted first.
    """
    for model in graph.models:
        refuse_if_too_big(footprints[model], budgets)
    layers = order_layers([*graph.layers, [graph.aggregator]])
    flat = [a for layer in layers for a in layer]
    uses: dict[str, list[int]] = {}
    for pos, agent in enumerate(flat):
        uses.setdefault(agent.model, []).append(pos)

    def next_use(model: str, pos: int) -> float:
        return next((p for p in uses.get(model, []) if p >= pos), NEVER)

    loaded: Counter[str] = Counter({m: n for m, n in (resident or {}).items() if n > 0})
    before: list[Instance] = []  # evictions before the first wave
    waves: list[Wave] = []
    pos = 0
    for layer_no, layer in enumerate(layers, start=1):
        i = 0
        while i < len(layer):
            j = i + 1  # the largest prefix of what is left that fits at once
            while j < len(layer) and fits(cost(footprints, Counter(
                    a.model for a in layer[i:j + 1])), budgets):
                j += 1
            members = layer[i:j]
            need = Counter(a.model for a in members)
            evicted = _make_room(loaded, need, footprints, budgets,
                                 lambda m, at=pos: next_use(m, at))
            (waves[-1].unloads if waves else before).extend(evicted)
            loads = [Instance(m, s) for m in need for s in range(loaded[m], need[m])]
            for m in need:
                loaded[m] = max(loaded[m], need[m])
            slot_of: Counter[str] = Counter()
            # Only agents running in this process share its cores; a daemon has its own.
            local = [a for a in members if footprints[a.model].local]
            threads = dict(zip((a.id for a in local), split_threads(cores, len(local)),
                               strict=True))
            tasks = []
            for agent in members:
                tasks.append(Task(agent.id, agent.model, slot_of[agent.model],
                                  threads.get(agent.id, 0)))
                slot_of[agent.model] += 1
            in_use = cost(footprints, loaded)
            waves.append(Wave(index=len(waves) + 1, layer=layer_no, tasks=tasks, loads=loads,
                              resident=_instances(loaded), resident_bytes=in_use))
            pos += len(members)
            i = j
            # Models the rest of the run never uses are freed right away (unless kept).
            for m in [m for m in loaded if next_use(m, pos) == NEVER and not keep]:
                waves[-1].unloads.extend(Instance(m, s) for s in range(loaded.pop(m)))
    peak: dict[str, int] = {}
    for wave in waves:
        for pool, amount in wave.resident_bytes.items():
            peak[pool] = max(peak.get(pool, 0), amount)
    return Plan(waves=waves, budgets=dict(budgets), peak_bytes=peak, cores=cores,
                unloads_first=before, resident_at_end=dict(loaded),
                costs={m: ModelCost.of(footprints[m]) for m in graph.models})


def _instances(resident: Mapping[str, int]) -> list[Instance]:
    return [Instance(m, s) for m in sorted(resident) for s in range(resident[m])]


def _make_room(resident: Counter[str], need: Counter[str],
               footprints: Mapping[str, Footprint], budgets: Mapping[str, int],
               next_use: Any) -> list[Instance]:
    """Unload (Belady) until what stays plus what ``need`` adds fits. Mutates ``resident``."""
    evicted: list[Instance] = []

    def after() -> dict[str, int]:
        merged = Counter(resident)
        for m, n in need.items():
            merged[m] = max(merged[m], n)
        return cost(footprints, merged)

    # Whole models not needed now, the one needed farthest in the future first.
    for model in sorted((m for m in resident if m not in need), key=next_use, reverse=True):
        if fits(after(), budgets):
            break
        evicted.extend(Instance(model, s) for s in range(resident.pop(model)))
    # Then spare instances of the models in use (beyond what this wave needs).
    for model in sorted((m for m in resident if resident[m] > need[m]), key=next_use,
                        reverse=True):
        while resident[model] > need[model] and not fits(after(), budgets):
            resident[model] -= 1
            evicted.append(Instance(model, resident[model]))
    return evicted


def refuse_if_too_big(fp: Footprint, budgets: Mapping[str, int]) -> None:
    """Say, before anything loads, that ``fp`` cannot fit, and what would make it fit."""
    for pool, needed in fp.pools.items():
        budget = budgets.get(pool, 0)
        if needed <= budget:
            continue
        short = needed - budget
        where = "RAM" if pool == "ram" else pool.upper()
        raise InsufficientMemoryError(
            f"model {fp.model!r} needs {format_bytes(needed)} of {where} (weights "
            f"{format_bytes(fp.weights_bytes)} + KV cache {format_bytes(fp.kv_bytes)} at n_ctx "
            f"{fp.n_ctx} + compute {format_bytes(fp.compute_bytes)} + overhead "
            f"{format_bytes(fp.overhead_bytes)}) but the budget is {format_bytes(budget)}: "
            f"{format_bytes(short)} short. To fit: {'; '.join(fit_suggestions(fp, short))}")


def fit_suggestions(fp: Footprint, short: int) -> list[str]:
    """What would save ``short`` bytes, most specific first."""
    ideas = []
    per_token = (fp.kv_bytes + fp.compute_bytes) / max(fp.n_ctx, 1)
    if per_token > 0:
        n_ctx = int((fp.n_ctx - short / per_token) // 256 * 256)
        if n_ctx >= 512:
            ideas.append(f"n_ctx: {n_ctx} (saves {format_bytes(per_token * (fp.n_ctx - n_ctx))})")
    if fp.kv_type in ("f16", "f32", "bf16"):
        saving = fp.kv_bytes * (1 - KV_TYPE_BYTES["q8_0"] / KV_TYPE_BYTES[fp.kv_type])
        enough = "" if saving >= short else ", not enough alone"
        ideas.append(f"kv_type: q8_0 (saves {format_bytes(saving)}{enough})")
    ideas.append("a smaller quant of the model (e.g. Q4_K_M instead of Q8_0; Q3_K_M saves "
                 "about a fifth of the weights)")
    ideas.append("n_gpu_layers: -1 on a machine with a GPU, or a larger --memory-budget")
    return ideas
