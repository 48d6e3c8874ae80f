"""The memory planner against naive schedules, on a tiny MoA, in one run.

(a) ample memory: the planned run (a layer's proposers together, cores split)
    vs naive sequential (every agent one after another with all cores);
(b) a one-model budget: the planned run (load once, reuse, swap only when
    needed) vs naive load-use-unload for every agent.

All schedules are Plans run by the same engine on the same graph: the shipped
`tiny` profile (3 SmolLM2-135M proposers) with 2 proposer layers and the
aggregator, temperature 0, fixed seeds. Modes are interleaved (A B C D, then
reversed) so drift on a noisy machine favours none.

    python benchmarks/bench_planner.py --repeat 2 --max-tokens 96
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from pathlib import Path
from typing import Any

from localmoa import build_graph, load_config
from localmoa.engine import execute_plan
from localmoa.memory.planner import Instance, Plan, Task, Wave, plan
from localmoa.preflight import preflight
from localmoa.recipe import MoaGraph, Overrides

PROMPTS = [
    "Which is larger, 9.11 or 9.9? Explain briefly.",
    "Give three tips for writing clear commit messages.",
    "What causes the seasons on Earth?",
]


def naive_plan(graph: MoaGraph, cores: int, unload_each: bool, budgets: dict[str, int]) -> Plan:
    """One agent at a time with every core, in the profile's order. With
    ``unload_each`` every agent loads its model and frees it afterwards (what a
    memory-unaware tool must do to stay within one model's memory)."""
    waves: list[Wave] = []
    loaded: set[str] = set()
    agents = [*[a for layer in graph.layers for a in layer], graph.aggregator]
    for i, agent in enumerate(agents, start=1):
        inst = Instance(agent.model, 0)
        loads = [inst] if unload_each or agent.model not in loaded else []
        loaded.add(agent.model)
        waves.append(Wave(index=i, layer=agent.layer,
                          tasks=[Task(agent.id, agent.model, 0, cores)], loads=loads,
                          unloads=[inst] if unload_each else []))
    if not unload_each:
        waves[-1].unloads = [Instance(m, 0) for m in sorted(loaded)]
    return Plan(waves=waves, budgets=budgets, peak_bytes={}, cores=cores)


def one_run(config: Any, graph: MoaGraph, the_plan: Plan, paths: dict[str, Path],
            prompt: str) -> dict[str, float]:
    report = execute_plan(config, graph, [{"role": "user", "content": prompt}], the_plan, paths)
    proposers = [s for s in report.layers if s.role == "proposer"]
    wall = sum(s.wall_s for s in proposers)
    tokens = sum(s.completion_tokens for s in proposers)
    return {"run_wall_s": report.totals.wall_s, "proposer_wall_s": wall,
            "proposer_tokens": tokens, "proposer_tok_per_s": tokens / wall if wall else 0.0,
            "loads": report.actual["loads"], "load_s": report.actual["load_s"],
            "peak_pss_growth_mib": report.actual["peak_pss_growth_bytes"] / 2**20}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--json", type=Path, help="also write every sample here")
    args = parser.parse_args(argv)

    config = load_config()
    graph = build_graph(config, "tiny", Overrides(layers=2, temperature=0.0, seed=1,
                                                  max_tokens=args.max_tokens))
    pre = preflight(config, graph)
    cores = pre.resources.usable_cores
    one_model = {"ram": pre.footprints["smollm2-135m"].total_bytes + 16 * 2**20}
    plans = {
        "a_planned": pre.plan,
        "a_naive_sequential": naive_plan(graph, cores, False, pre.plan.budgets),
        "b_planned_one_model": plan(graph, pre.footprints, one_model, cores),
        "b_naive_load_use_unload": naive_plan(graph, cores, True, one_model),
    }
    samples: dict[str, list[dict[str, float]]] = {m: [] for m in plans}
    one_run(config, graph, pre.plan, pre.paths, "warm up")  # page the weights in once
    for r in range(args.repeat):
        for prompt in PROMPTS:
            for mode in (list(plans) if r % 2 == 0 else list(reversed(plans))):
                samples[mode].append(one_run(config, graph, plans[mode], pre.paths, prompt))

    med = {m: {k: round(statistics.median(s[k] for s in samples[m]), 3) for k in samples[m][0]}
           for m in plans}
    a, an = med["a_planned"], med["a_naive_sequential"]
    b, bn = med["b_planned_one_model"], med["b_naive_load_use_unload"]
    result = {
        "machine": {"cores": cores, "cpu": platform.processor() or platform.machine(),
                    "python": sys.version.split()[0]},
        "setup": {"profile": "tiny", "proposer_layers": 2, "proposers_per_layer": 3,
                  "max_tokens": args.max_tokens, "prompts": len(PROMPTS), "repeat": args.repeat,
                  "one_model_budget_mib": round(one_model["ram"] / 2**20, 1)},
        "median": med,
        "ratios": {
            "a_proposer_wall_naive_over_planned": round(an["proposer_wall_s"]
                                                        / a["proposer_wall_s"], 2),
            "a_proposer_tok_per_s_planned_over_naive": round(a["proposer_tok_per_s"]
                                                             / an["proposer_tok_per_s"], 2),
            "a_run_wall_naive_over_planned": round(an["run_wall_s"] / a["run_wall_s"], 2),
            "b_loads_naive_over_planned": round(bn["loads"] / b["loads"], 2),
            "b_run_wall_naive_over_planned": round(bn["run_wall_s"] / b["run_wall_s"], 2),
        },
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({**result, "samples": samples}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
