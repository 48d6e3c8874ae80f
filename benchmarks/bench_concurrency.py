"""Concurrent proposers (cores split) vs naive sequential (one agent at a time, all cores).

Both modes run the same tiny MoA (the shipped `tiny` profile: 3 SmolLM2-135M
proposers per layer, 2 proposer layers, 1 aggregator) in one process, with
temperature 0 and fixed seeds, interleaved A B A B so that drift on a noisy
machine favours neither. Prints medians and ratios; --json writes them.

    python benchmarks/bench_concurrency.py --repeat 3 --max-tokens 96
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from pathlib import Path
from typing import Any

from localmoa import build_graph, load_config, run_moa
from localmoa.memory.probe import cpu_cores
from localmoa.recipe import Overrides

PROMPTS = [
    "Which is larger, 9.11 or 9.9? Explain briefly.",
    "Give three tips for writing clear commit messages.",
    "What causes the seasons on Earth?",
]

MODES = {"planned": None, "naive": 1}  # engine `parallel`: None = whole layer at once


def one_run(config: Any, graph: Any, prompt: str, parallel: int | None) -> dict[str, float]:
    report = run_moa(config, graph, [{"role": "user", "content": prompt}], parallel=parallel)
    proposers = [s for s in report.layers if s.role == "proposer"]
    wall = sum(s.wall_s for s in proposers)
    tokens = sum(s.completion_tokens for s in proposers)
    return {"run_wall_s": report.totals.wall_s, "proposer_wall_s": wall,
            "proposer_tokens": tokens, "proposer_tok_per_s": tokens / wall if wall else 0.0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    config = load_config()
    graph = build_graph(config, "tiny", Overrides(layers=args.layers, temperature=0.0, seed=1,
                                                  max_tokens=args.max_tokens))
    samples: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
    one_run(config, graph, "warm up", None)  # page in the weights once
    for r in range(args.repeat):
        for prompt in PROMPTS:
            order = list(MODES) if r % 2 == 0 else list(reversed(MODES))
            for mode in order:
                samples[mode].append(one_run(config, graph, prompt, MODES[mode]))

    def median(mode: str, key: str) -> float:
        return statistics.median(s[key] for s in samples[mode])

    result = {
        "machine": {"cores": cpu_cores(), "cpu": platform.processor() or platform.machine(),
                    "python": sys.version.split()[0]},
        "setup": {"profile": "tiny", "proposer_layers": args.layers, "proposers_per_layer": 3,
                  "max_tokens": args.max_tokens, "prompts": len(PROMPTS),
                  "repeat": args.repeat},
        "median": {m: {k: round(median(m, k), 3) for k in samples[m][0]} for m in MODES},
    }
    p, n = result["median"]["planned"], result["median"]["naive"]
    result["ratios"] = {
        "proposer_wall_naive_over_planned": round(n["proposer_wall_s"] / p["proposer_wall_s"], 2),
        "proposer_tok_per_s_planned_over_naive":
            round(p["proposer_tok_per_s"] / n["proposer_tok_per_s"], 2),
        "run_wall_naive_over_planned": round(n["run_wall_s"] / p["run_wall_s"], 2),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({**result, "samples": samples}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
