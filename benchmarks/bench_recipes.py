"""Recipes: what the consensus short-cut saves, and what routing costs.

(1) Consensus: the tiny-auto profile (three SmolLM2-135M proposers at temperature 0,
then the aggregator) on the bench prompts plus short factual ones, with
`aggregate: always` and `aggregate: auto`, taking turns (always, auto; then auto,
always) on one warm model host. Reported: how often the aggregator was skipped, the
median wall time per prompt of each, their ratio, and the estimated time saved the
reports claim next to what was measured.

(2) Routing: tiny-router on the same prompts: the router's wall time, TTFT and tokens,
as a share of the whole run, and which specialist each prompt went to.

    python benchmarks/bench_recipes.py --repeat 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from localmoa.bench import BUILTIN_PROMPTS  # noqa: E402
from localmoa.config import load_config  # noqa: E402
from localmoa.recipe import Overrides, build_graph  # noqa: E402
from localmoa.runtime import Request, Runtime  # noqa: E402

SHORT = ["Which is larger, 9.11 or 9.9? Answer with the number only.",
         "What is 12 times 12? Answer with the number only.",
         "What is the capital of France? One word.",
         "How many legs does a spider have? Answer with the number only."]


def consensus(prompts: list[str], repeat: int) -> dict[str, Any]:
    config = load_config()
    runtime = Runtime(config, keep_loaded=True)
    walls: dict[str, list[float]] = {"always": [], "auto": []}
    skipped, claimed, measured = 0, [], []
    try:
        for r in range(repeat):
            for i, prompt in enumerate(prompts):
                order = ["always", "auto"] if (i + r) % 2 == 0 else ["auto", "always"]
                pair = {}
                for mode in order:
                    graph = build_graph(config, "tiny-auto", Overrides(aggregate=mode))
                    report = runtime.run(Request([{"role": "user", "content": prompt}], graph))
                    walls[mode].append(report.totals.wall_s)
                    pair[mode] = report
                auto = pair["auto"].recipe.get("consensus", {})
                if auto.get("aggregation") == "skipped":
                    skipped += 1
                    claimed.append(auto["estimated_time_saved_s"])
                    measured.append(pair["always"].totals.wall_s - pair["auto"].totals.wall_s)
    finally:
        runtime.close()
    runs = len(walls["auto"])
    return {"runs_each": runs, "aggregation_skipped": f"{skipped}/{runs}",
            "median_wall_s_always": round(statistics.median(walls["always"]), 3),
            "median_wall_s_auto": round(statistics.median(walls["auto"]), 3),
            "auto_vs_always_wall": round(sum(walls["auto"]) / sum(walls["always"]), 3),
            "estimated_saved_s_median": round(statistics.median(claimed), 3) if claimed else None,
            "measured_saved_s_median": round(statistics.median(measured), 3) if measured
            else None}


def routing(prompts: list[str]) -> dict[str, Any]:
    config = load_config()
    runtime = Runtime(config, keep_loaded=True)
    rows = []
    try:
        for prompt in prompts:
            report = runtime.run(Request.for_profile(
                config, "tiny-router", None, [{"role": "user", "content": prompt}]))
            decided = report.recipe["routing"]
            rows.append({"prompt": prompt[:40], "chosen": decided["chosen"],
                         "router_s": decided["wall_s"], "ttft_s": decided["ttft_s"],
                         "tokens": decided["tokens"], "moa_s": report.totals.wall_s})
    finally:
        runtime.close()
    router = sum(r["router_s"] for r in rows)
    return {"prompts": rows, "router_share_of_time": round(
        router / (router + sum(r["moa_s"] for r in rows)), 3),
        "median_router_s": round(statistics.median(r["router_s"] for r in rows), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    prompts = SHORT + BUILTIN_PROMPTS
    print(json.dumps({"consensus": consensus(prompts, args.repeat),
                      "routing": routing(prompts)}, indent=2))


if __name__ == "__main__":
    main()
