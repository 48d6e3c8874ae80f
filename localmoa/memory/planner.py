"""Pure planning: how the work of a MoA run is laid over the machine. No I/O here.

``plan(graph, footprints, budgets, cores)`` returns a Plan: ordered waves of
agents that run at the same time, the model instances to load before each wave
and to unload after it, threads per agent and the predicted memory per pool.

Policy, in order: never exceed any pool's budget; agents of a wave that share a
model whose backend batches run as sequences of one instance (a batch), when that
is predicted faster than separate instances and fits; otherwise an instance
serves one agent at a time, and agents of one model share its mapped weights (an
extra instance costs only its private part); run agents together when their
instances fit, else in sequence; evict the model whose next use is farthest
(Belady: the whole graph is known); order each layer so the model resident at
the end of one layer is used first in the next; split the cores among the
instances that run together.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import InsufficientMemoryError
from ..recipe import Agent, MoaGraph
from . import speed
from .estimate import Footprint
from .probe import format_bytes

NEVER = float("inf")


@dataclass(frozen=True, order=True)
class Instance:
    """One loaded copy of a model (a llama.cpp context); ``slot`` numbers the copies.
    ``seqs``: the sequences its context has room for (a batch); not part of its key."""

    model: str
    slot: int = 0
    seqs: int = field(default=1, compare=False)

    def __str__(self) -> str:
        return f"{self.model}#{self.slot}" + (f"x{self.seqs}" if self.seqs > 1 else "")


@dataclass(frozen=True)
class Task:
    """An agent of a wave: which instance serves it, with how many threads. ``batch``
    agents (more than one) share the instance as sequences of one batch."""

    agent: str
    model: str
    slot: int
    threads: int
    batch: int = 1
    #: It starts with the wave before its stage's and reads that wave's answers as they
    #: come (reference streaming, overlap.py).
    follows: bool = False
    #: A follower on a server that takes only whole prompts: it sends its prompt's head
    #: at once (the server's prompt cache keeps it), and the whole prompt once the
    #: references are in (overlap.py).
    warm: bool = False


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
    #: Model -> agents decoded together as one batch in this wave.
    batches: dict[str, int] = field(default_factory=dict)
    #: Model -> why it runs as a batch or as separate instances (predicted seconds).
    choices: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelCost:
    """Bytes per pool of one model's first instance, and of each further one; and of
    one instance with room for n sequences."""

    first: dict[str, int]
    extra: dict[str, int]
    batched: dict[int, dict[str, int]] = field(default_factory=dict)

    @classmethod
    def of(cls, fp: Footprint) -> ModelCost:
        one, two = fp.cost(1), fp.cost(2)
        return cls(first=one, extra={pool: two[pool] - one.get(pool, 0) for pool in two},
                   batched={n: dict(p) for n, p in fp.batched_pools.items()})

    def instance(self, seqs: int = 1) -> dict[str, int]:
        """Bytes per pool of one instance with room for ``seqs`` sequences."""
        return dict(self.batched.get(seqs, self.first)) if seqs > 1 else dict(self.first)


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
    #: Reference streaming (overlap.py): ``on``, and the wave the aggregator follows, or
    #: why it waits for the whole layer.
    streaming: dict[str, Any] = field(default_factory=dict)

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
                wave[key] = [str(Instance(**i)) for i in wave[key]]
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


def cost(footprints: Mapping[str, Footprint], counts: Mapping[str, int],
         seqs: Mapping[str, int] | None = None) -> dict[str, int]:
    """Bytes per pool of the given number of instances of each model (the first one
    with room for ``seqs[model]`` sequences)."""
    total: dict[str, int] = {}
    for model, n in counts.items():
        for pool, amount in footprints[model].cost(n, (seqs or {}).get(model, 1)).items():
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
         cores: int, *, resident: Mapping[str, int] | None = None,
         resident_seqs: Mapping[str, int] | None = None, keep: bool = False) -> Plan:
    """The Plan for ``graph``; InsufficientMemoryError when a model can never fit.

    ``resident``: instances already loaded when the run starts (a chat's previous
    turn), and ``resident_seqs`` the sequences the first of them has room for.
    ``keep``: leave models loaded at the end instead of freeing them (the next turn
    uses them); under memory pressure they are still evicted first.
    """
    for model in graph.models:
        refuse_if_too_big(footprints[model], budgets)
    layers = order_layers(graph.stages())
    flat = [a for layer in layers for a in layer]
    uses: dict[str, list[int]] = {}
    for pos, agent in enumerate(flat):
        uses.setdefault(agent.model, []).append(pos)
    widest = graph.widest()  # loading room for a model's largest batch once saves reloads

    def next_use(model: str, pos: int) -> float:
        return next((p for p in uses.get(model, []) if p >= pos), NEVER)

    loaded: Counter[str] = Counter({m: n for m, n in (resident or {}).items() if n > 0})
    seqs: dict[str, int] = {m: (resident_seqs or {}).get(m, 1) for m in loaded}
    before: list[Instance] = []  # evictions before the first wave
    waves: list[Wave] = []
    pos = 0
    for layer_no, layer in enumerate(layers, start=1):
        i = 0
        while i < len(layer):
            j = i + 1  # the largest prefix of what is left that fits at once
            while j < len(layer) and _fits_at_once(layer[i:j + 1], footprints, budgets, cores):
                j += 1
            members = layer[i:j]
            shape, choices = _shape(members, footprints, budgets, cores)
            need = Counter({m: n for m, (n, _) in shape.items()})
            want = {m: k for m, (_, k) in shape.items()}
            for m, k in want.items():  # room for the widest batch ahead, if it fits now
                wider = min(widest[m], max(footprints[m].batched_pools, default=1))
                if k > 1 and wider > k and fits(cost(footprints, need, {**want, m: wider}),
                                                budgets):
                    want[m] = wider
            # an instance with room for too few sequences is loaded again, larger
            small = [m for m in want if m in loaded and seqs.get(m, 1) < shape[m][1]]
            evicted = [_slot(m, s, seqs) for m in small for s in range(loaded[m])]
            for m in small:
                del loaded[m]
            evicted += _make_room(loaded, need, footprints, budgets,
                                  lambda m, at=pos: next_use(m, at), seqs, want)
            (waves[-1].unloads if waves else before).extend(evicted)
            loads: list[Instance] = []
            for m in need:
                if loaded[m] == 0:
                    seqs[m] = want[m]
                loads.extend(_slot(m, s, seqs) for s in range(loaded[m], need[m]))
                loaded[m] = max(loaded[m], need[m])
            tasks = _tasks(members, shape, footprints, cores)
            in_use = cost(footprints, loaded, seqs)
            waves.append(Wave(index=len(waves) + 1, layer=layer_no, tasks=tasks, loads=loads,
                              resident=_instances(loaded, seqs), resident_bytes=in_use,
                              batches={m: k for m, (_, k) in shape.items() if k > 1},
                              choices=choices))
            pos += len(members)
            i = j
            # Models the rest of the run never uses are freed right away (unless kept).
            for m in [m for m in loaded if next_use(m, pos) == NEVER and not keep]:
                waves[-1].unloads.extend(_slot(m, s, seqs) for s in range(loaded.pop(m)))
                seqs.pop(m, None)
    peak: dict[str, int] = {}
    for wave in waves:
        for pool, amount in wave.resident_bytes.items():
            peak[pool] = max(peak.get(pool, 0), amount)
    return Plan(waves=waves, budgets=dict(budgets), peak_bytes=peak, cores=cores,
                unloads_first=before, resident_at_end=dict(loaded),
                costs={m: ModelCost.of(footprints[m]) for m in graph.models})


def _shape(members: Sequence[Agent], footprints: Mapping[str, Footprint],
           budgets: Mapping[str, int], cores: int
           ) -> tuple[dict[str, tuple[int, int]], dict[str, str]]:
    """Per model of a wave: (instances, sequences of the first), batched or separate,
    whichever is predicted faster among the shapes that fit; and why."""
    counts = Counter(a.model for a in members)
    shape = {m: (n, 1) for m, n in counts.items()}
    choices: dict[str, str] = {}
    units = sum(1 for m in counts if footprints[m].local)
    for model, n in counts.items():
        fp = footprints[model]
        if n < 2 or n not in fp.batched_pools:
            continue
        tokens = [a.max_tokens for a in members if a.model == model]
        share = max(1, cores // max(units, 1))  # the cores this model's agents get
        batched = speed.batched_seconds(fp.weights_bytes, tokens, share)
        separate = speed.separate_seconds(fp.weights_bytes, tokens, share)
        fits_batched = fits(cost(footprints, {**{m: k for m, (k, _) in shape.items()},
                                              model: 1}, {model: n}), budgets)
        if fits_batched and batched <= separate:
            shape[model] = (1, n)
            choices[model] = (f"batched x{n}: {batched:.1f} s predicted, vs {separate:.1f} s "
                              f"as {n} instances")
        else:
            why = "does not fit" if not fits_batched else f"{batched:.1f} s predicted"
            choices[model] = (f"{n} instances: {separate:.1f} s predicted, batched {why}")
    return shape, choices


def _fits_at_once(members: Sequence[Agent], footprints: Mapping[str, Footprint],
                  budgets: Mapping[str, int], cores: int) -> bool:
    """Whether these agents can run in one wave: their shape fits the budgets, and no
    model (or group of models: one server) gets more agents at once than it takes (an
    Ollama daemon's parallel, a server's concurrency)."""
    limits: dict[str, int] = {}  # a group's limit: the smallest any of its models gives
    for fp in footprints.values():
        if fp.parallel_limit:
            group = fp.parallel_group or fp.model
            limits[group] = min(limits.get(group, fp.parallel_limit), fp.parallel_limit)
    groups = Counter(footprints[a.model].parallel_group or a.model for a in members
                     if footprints[a.model].parallel_limit)
    if any(n > limits[group] for group, n in groups.items()):
        return False
    shape, _ = _shape(members, footprints, budgets, cores)
    return fits(cost(footprints, {m: k for m, (k, _) in shape.items()},
                     {m: s for m, (_, s) in shape.items()}), budgets)


def _tasks(members: Sequence[Agent], shape: Mapping[str, tuple[int, int]],
           footprints: Mapping[str, Footprint], cores: int) -> list[Task]:
    """The wave's tasks: slots, batch sizes, and the cores split among the instances
    that run in this process (a batch is one instance; a daemon has its own cores)."""
    units: list[tuple[str, int]] = []  # (model, slot) of each local instance in use
    slot_of: Counter[str] = Counter()
    placed = []
    for agent in members:
        n, k = shape[agent.model]
        slot = 0 if k > 1 else slot_of[agent.model]
        slot_of[agent.model] += 0 if k > 1 else 1
        placed.append((agent, slot, k))
        if footprints[agent.model].local and (agent.model, slot) not in units:
            units.append((agent.model, slot))
    threads = dict(zip(units, split_threads(cores, len(units)), strict=True))
    return [Task(agent.id, agent.model, slot, threads.get((agent.model, slot), 0), batch=k)
            for agent, slot, k in placed]


def _slot(model: str, slot: int, seqs: Mapping[str, int]) -> Instance:
    """Instance ``slot`` of ``model``: the first has room for ``seqs[model]`` sequences."""
    return Instance(model, slot, seqs.get(model, 1) if slot == 0 else 1)


def _instances(resident: Mapping[str, int], seqs: Mapping[str, int]) -> list[Instance]:
    return [_slot(m, s, seqs) for m in sorted(resident) for s in range(resident[m])]


def _make_room(resident: Counter[str], need: Counter[str],
               footprints: Mapping[str, Footprint], budgets: Mapping[str, int],
               next_use: Any, seqs: dict[str, int], want: Mapping[str, int]) -> list[Instance]:
    """Unload (Belady) until what stays plus what ``need`` adds fits. Mutates
    ``resident`` (and ``seqs``)."""
    evicted: list[Instance] = []

    def after() -> dict[str, int]:
        merged = Counter(resident)
        room = dict(seqs)
        for m, n in need.items():
            merged[m] = max(merged[m], n)
            room[m] = max(room.get(m, 1), want.get(m, 1))
        return cost(footprints, merged, room)

    # Whole models not needed now, the one needed farthest in the future first.
    for model in sorted((m for m in resident if m not in need), key=next_use, reverse=True):
        if fits(after(), budgets):
            break
        evicted.extend(_slot(model, s, seqs) for s in range(resident.pop(model)))
        seqs.pop(model, None)
    # Then spare instances of the models in use (beyond what this wave needs).
    for model in sorted((m for m in resident if resident[m] > need[m]), key=next_use,
                        reverse=True):
        while resident[model] > need[model] and not fits(after(), budgets):
            resident[model] -= 1
            evicted.append(_slot(model, resident[model], seqs))
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
    """What would save ``short`` bytes, most specific first: a shorter context (every
    entry has n_ctx), then the backend's own hints (``Footprint.refusal_hints``), then a
    larger budget."""
    ideas = []
    per_token = (fp.kv_bytes + fp.compute_bytes) / max(fp.n_ctx, 1)
    if per_token > 0:
        n_ctx = int((fp.n_ctx - short / per_token) // 256 * 256)
        if n_ctx >= 512:
            ideas.append(f"n_ctx: {n_ctx} (saves {format_bytes(per_token * (fp.n_ctx - n_ctx))})")
    hints = fp.refusal_hints()
    for setting, saves in hints:
        if saves is None:
            ideas.append(setting)
            continue
        enough = "" if saves >= short else ", not enough alone"
        ideas.append(f"{setting} (saves {format_bytes(saves)}{enough})")
    larger = "a larger --memory-budget"
    if hints:
        ideas[-1] = f"{ideas[-1]}, or {larger}"
    else:
        ideas.append(larger)
    return ideas
