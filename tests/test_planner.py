"""The memory planner (pure): tables of cases, an optimum check, and random graphs."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from localmoa.errors import InsufficientMemoryError
from localmoa.memory.estimate import Footprint
from localmoa.memory.planner import Instance, Plan, order_layers, plan
from localmoa.recipe import Agent, MoaGraph

MiB = 1 << 20


def fp(name: str, total_mib: int, shared_mib: int = 0) -> Footprint:
    """A footprint of ``total_mib``; ``shared_mib`` of it is mapped weights a second
    instance shares."""
    total = total_mib * MiB
    return Footprint(model=name, n_ctx=2048, kv_type="f16", weights_bytes=total // 2,
                     kv_bytes=total // 4, compute_bytes=total // 8,
                     overhead_bytes=total - total // 2 - total // 4 - total // 8,
                     shared_weights_bytes=shared_mib * MiB, pools={"ram": total})


def graph(*layers: str, aggregator: str = "A") -> MoaGraph:
    """graph("AAB", "BC") -> two proposer layers of models A,A,B and B,C."""
    built = [[Agent(f"L{i}.{j}", i, j, m, None, 0.7, 0.95, 16, None)
              for j, m in enumerate(layer, 1)] for i, layer in enumerate(layers, 1)]
    agg = Agent("AGG", len(layers) + 1, 1, aggregator, None, 0.7, 0.95, 16, None)
    models = list(dict.fromkeys([*"".join(layers), aggregator]))
    return MoaGraph(profile="t", layers=built, aggregator=agg, models=models)


FOOTPRINTS = {"A": fp("A", 100, shared_mib=50), "B": fp("B", 200, shared_mib=150),
              "C": fp("C", 300)}
# Room for exactly one of these at a time: 250 MiB each, a second instance 150 MiB more.
EQUAL = {m: fp(m, 250, shared_mib=100) for m in "ABC"}
ONE_MODEL = {"ram": 300 * MiB}


def check_invariants(g: MoaGraph, p: Plan, footprints: dict[str, Footprint]) -> None:
    """Never over budget; every agent runs once on a loaded instance of its model."""
    resident: set[Instance] = set()
    ran: list[str] = []
    for wave in p.waves:
        for inst in wave.loads:
            assert inst not in resident, f"{inst} loaded twice"
            resident.add(inst)
        assert set(wave.resident) == resident
        counts = Counter(i.model for i in resident)
        used = sum(footprints[m].cost(n)["ram"] for m, n in counts.items())
        assert used == wave.resident_bytes["ram"]
        assert wave.resident_bytes["ram"] <= p.budgets["ram"], "over budget"
        instances = [Instance(t.model, t.slot) for t in wave.tasks]
        assert len(set(instances)) == len(instances), "one instance serves one agent at a time"
        for inst in instances:
            assert inst in resident, f"{inst} used but not loaded"
        ran.extend(t.agent for t in wave.tasks)
        for inst in wave.unloads:
            resident.remove(inst)
    assert sorted(ran) == sorted(a.id for a in g.all_agents())
    assert not resident, "everything is freed at the end"
    assert p.peak_bytes["ram"] == max(w.resident_bytes["ram"] for w in p.waves)


def test_everything_fits_one_wave_per_layer_each_model_loaded_once() -> None:
    g = graph("ABC", "ABC")
    p = plan(g, FOOTPRINTS, {"ram": 10_000 * MiB}, cores=6)
    check_invariants(g, p, FOOTPRINTS)
    assert [w.layer for w in p.waves] == [1, 2, 3]
    assert Counter(i.model for w in p.waves for i in w.loads) == {"A": 1, "B": 1, "C": 1}
    assert [t.threads for t in p.waves[0].tasks] == [2, 2, 2]
    assert p.waves[-1].tasks[0].threads == 6  # the aggregator alone gets every core


def test_shared_model_runs_concurrently_on_cheap_extra_instances() -> None:
    g = graph("AAA")
    # A costs 100 MiB, each further instance 50 (its mapped weights are shared)
    p = plan(g, FOOTPRINTS, {"ram": 200 * MiB}, cores=3)
    check_invariants(g, p, FOOTPRINTS)
    assert len(p.waves[0].tasks) == 3
    assert p.peak_bytes["ram"] == 200 * MiB
    assert sorted(str(i) for i in p.waves[0].loads) == ["A#0", "A#1", "A#2"]


def test_shared_model_without_room_for_a_second_instance_is_loaded_once() -> None:
    g = graph("AAA", "AAA")
    p = plan(g, FOOTPRINTS, {"ram": 120 * MiB}, cores=2)
    check_invariants(g, p, FOOTPRINTS)
    assert p.loads == 1
    assert all(len(w.tasks) == 1 and w.tasks[0].threads == 2 for w in p.waves)


def test_budget_for_one_model_runs_sequentially_with_swapping() -> None:
    g = graph("ABC", "ABC")
    p = plan(g, EQUAL, ONE_MODEL, cores=2)
    check_invariants(g, p, EQUAL)
    assert all(len(w.tasks) == 1 for w in p.waves)
    assert p.loads == optimal_loads(g)
    assert p.peak_bytes["ram"] <= 300 * MiB


def test_resident_model_at_a_layer_end_is_used_first_in_the_next() -> None:
    g = graph("ABC", "ABC", aggregator="B")
    p = plan(g, EQUAL, ONE_MODEL, cores=2)
    check_invariants(g, p, EQUAL)
    for before, after in zip(p.waves, p.waves[1:], strict=False):
        if after.layer != before.layer:
            assert after.tasks[0].model == before.tasks[-1].model
    # A B C | C A B | B: 3 loads, then 2 (C reused), then 0 (B reused)
    assert p.loads == 5 == optimal_loads(g)


def test_belady_evicts_the_model_needed_farthest_away() -> None:
    # Room for A+B or A+C, not all three. When C comes, A is needed again in layer 3
    # and B only in layer 4: B goes, A stays and is loaded once.
    g = graph("AB", "C", "A", "B", aggregator="A")
    p = plan(g, FOOTPRINTS, {"ram": 420 * MiB}, cores=2)
    check_invariants(g, p, FOOTPRINTS)
    assert [i.model for i in p.waves_of_layer(1)[-1].unloads] == ["B"]
    loads = Counter(i.model for w in p.waves for i in w.loads)
    assert loads == {"A": 1, "B": 2, "C": 1}


def test_impossible_budget_is_refused_naming_the_model_and_shortfall() -> None:
    g = graph("AB", aggregator="C")
    with pytest.raises(InsufficientMemoryError) as exc:
        plan(g, FOOTPRINTS, {"ram": 250 * MiB}, cores=2)
    msg = str(exc.value)
    assert "model 'C' needs 300 MiB of RAM" in msg
    assert "the budget is 250 MiB: 50 MiB short" in msg
    assert "n_ctx" in msg and "q8_0" in msg and "quant" in msg


def capacity_one_loads(layers: list[list[str]]) -> int:
    loads, resident = 0, None
    for layer in layers:
        for model in layer:
            if model != resident:
                loads, resident = loads + 1, model
    return loads


def optimal_loads(g: MoaGraph) -> int:
    """Brute force over every order of every layer, room for one model at a time."""
    layers = [[a.model for a in layer] for layer in [*g.layers, [g.aggregator]]]
    choices = [sorted(set(itertools.permutations(layer))) for layer in layers]
    return min(capacity_one_loads([list(c) for c in combo])
               for combo in itertools.product(*choices))


@pytest.mark.parametrize("layers", [
    ("AB", "BA"), ("ABC", "CBA", "B"), ("AAB", "BBC", "CA"), ("ABAB", "BABA"), ("CAB", "ABC"),
    ("ABC", "ABC", "ABC"), ("A", "B", "A"),
])
def test_one_model_budget_loads_equal_the_optimum(layers: tuple[str, ...]) -> None:
    g = graph(*layers, aggregator="C")
    p = plan(g, EQUAL, ONE_MODEL, cores=2)
    check_invariants(g, p, EQUAL)
    assert p.loads == optimal_loads(g)


def test_order_layers_keeps_agents_of_a_model_together() -> None:
    g = graph("ABAB")
    ordered = order_layers(g.layers)
    assert [a.model for a in ordered[0]] == ["A", "A", "B", "B"]
    assert [a.id for a in ordered[0]] == ["L1.1", "L1.3", "L1.2", "L1.4"]


models_st = st.sampled_from("ABCD")
graphs_st = st.builds(
    lambda layers, agg: graph(*layers, aggregator=agg),
    st.lists(st.text(alphabet="ABCD", min_size=1, max_size=4), min_size=1, max_size=4),
    models_st)
footprints_st = st.fixed_dictionaries({
    m: st.builds(lambda total, share, m=m: fp(m, total, min(share, total)),
                 st.integers(10, 400), st.integers(0, 400)) for m in "ABCD"})


@settings(max_examples=300, deadline=None)
@given(g=graphs_st, footprints=footprints_st, budget_mib=st.integers(1, 2000),
       cores=st.integers(1, 16))
def test_random_graphs_never_exceed_the_budget(g: MoaGraph, footprints: dict[str, Footprint],
                                               budget_mib: int, cores: int) -> None:
    budget = {"ram": budget_mib * MiB}
    try:
        p = plan(g, footprints, budget, cores)
    except InsufficientMemoryError:
        assert any(footprints[m].total_bytes > budget["ram"] for m in g.models)
        return
    check_invariants(g, p, footprints)
    for wave in p.waves:
        assert sum(t.threads for t in wave.tasks) == max(cores, len(wave.tasks))


def test_warm_start_reuses_what_is_loaded_and_keep_leaves_it() -> None:
    g = graph("AB", aggregator="A")
    first = plan(g, FOOTPRINTS, {"ram": 10_000 * MiB}, cores=2, keep=True)
    assert first.unloads == 0 and first.resident_at_end == {"A": 1, "B": 1}
    second = plan(g, FOOTPRINTS, {"ram": 10_000 * MiB}, cores=2,
                  resident=first.resident_at_end, keep=True)
    assert second.loads == 0 and second.unloads == 0  # the next chat turn loads nothing


def test_warm_start_evicts_before_the_first_wave_when_memory_is_short() -> None:
    g = graph("B", aggregator="B")
    p = plan(g, EQUAL, ONE_MODEL, cores=2, resident={"A": 1}, keep=True)
    assert [str(i) for i in p.unloads_first] == ["A#0"]
    assert p.peak_bytes["ram"] <= ONE_MODEL["ram"] and p.resident_at_end == {"B": 1}


def server(name: str, concurrency: int, pool: str = "openai@http://127.0.0.1:8080") -> Footprint:
    """A model on an OpenAI-compatible server: external, its server's pool and limit."""
    return Footprint(model=name, n_ctx=2048, kv_type="", weights_bytes=0, kv_bytes=0,
                     compute_bytes=0, overhead_bytes=0, shared_weights_bytes=0,
                     pools={pool: 0}, local=False, parallel_limit=concurrency,
                     parallel_group=pool, external=True)


@pytest.mark.parametrize(("limits", "widest"), [
    ((1, 1), 1),  # one request at a time: two models of one server never share a wave
    ((3, 3), 3),
    ((3, 1), 1),  # models that disagree: the server takes the smallest
    ((2, 4), 2),
])
def test_models_of_one_server_share_its_concurrency(limits: tuple[int, int],
                                                    widest: int) -> None:
    footprints = {"X": server("X", limits[0]), "Y": server("Y", limits[1]),
                  "A": FOOTPRINTS["A"]}
    g = graph("XYXY", aggregator="A")
    budgets = {"ram": 10_000 * MiB, "openai@http://127.0.0.1:8080": 1 << 62}
    p = plan(g, footprints, budgets, cores=2)
    on_server = [sum(t.model in "XY" for t in w.tasks) for w in p.waves if w.layer == 1]
    assert max(on_server) == widest and sum(on_server) == 4
    assert all(t.threads == 0 for w in p.waves for t in w.tasks if t.model in "XY")
    assert p.peak_bytes["openai@http://127.0.0.1:8080"] == 0  # external: nothing budgeted
    assert p.peak_bytes["ram"] == FOOTPRINTS["A"].total_bytes


def test_two_servers_each_keep_their_own_limit() -> None:
    other = "openai@http://10.0.0.2:8000"
    footprints = {"X": server("X", 1), "Z": server("Z", 1, other), "A": FOOTPRINTS["A"]}
    budgets = {"ram": 10_000 * MiB, "openai@http://127.0.0.1:8080": 1 << 62, other: 1 << 62}
    p = plan(graph("XZ", aggregator="A"), footprints, budgets, cores=2)
    assert [sorted(t.model for t in w.tasks) for w in p.waves if w.layer == 1] == [["X", "Z"]]
