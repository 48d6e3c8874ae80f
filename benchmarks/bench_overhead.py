"""localmoa's engine against the same llama-cpp-python calls made directly.

Both sides run the tiny MoA (3 SmolLM2-135M proposers, then the aggregator)
one agent after another on one model instance with all cores, temperature 0,
a fixed seed and max_tokens, so they generate the same tokens (checked). The
engine side is `execute_plan` (loading, threads, streaming events, timing,
memory sampling, report); the direct side is a loop of `create_chat_completion`
calls with the same messages. Ratio of median wall times; target <= 1.03. The engine
runs its model in a worker process (the default): the text crosses a socket, token by
token; the worker is started before the clock, as `localmoa run` starts it during its
preflight (bench_workers.py measures that start-up on its own).

Every sample runs in a fresh process (the sides interleaved: E D, then D E),
timed inside it around the calls alone (model load included, Python start-up
not). One process per sample matters: llama.cpp built with OpenMP keeps thread
teams per calling thread, and the direct loop (main thread) and the engine
(worker threads) sharing one process slowed whichever ran second by up to 1.5x,
an artifact neither meets in real use.

    python benchmarks/bench_overhead.py --repeat 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from localmoa import build_graph, load_config
from localmoa.backends.llamacpp import worker
from localmoa.backends.llamacpp.backend import flash_attn_mode
from localmoa.backends.llamacpp.model import llama_defaults, repack_allowed
from localmoa.engine import execute_plan
from localmoa.memory.planner import Instance, Plan, Task, Wave
from localmoa.preflight import preflight
from localmoa.prompts import agent_messages
from localmoa.recipe import MoaGraph, Overrides

PROMPTS = [
    "Which is larger, 9.11 or 9.9? Explain briefly.",
    "Give three tips for writing clear commit messages.",
    "What causes the seasons on Earth?",
]


def sequential_plan(graph: MoaGraph, cores: int) -> Plan:
    """Every agent in turn on one instance with all cores (what the direct loop does)."""
    agents = [*[a for layer in graph.layers for a in layer], graph.aggregator]
    model = graph.aggregator.model
    waves = [Wave(index=i + 1, layer=a.layer, tasks=[Task(a.id, a.model, 0, cores)],
                  loads=[Instance(model, 0)] if i == 0 else []) for i, a in enumerate(agents)]
    waves[-1].unloads = [Instance(model, 0)]
    return Plan(waves=waves, budgets={}, peak_bytes={}, cores=cores)


def engine_run(config: Any, graph: MoaGraph, plan: Plan, paths: dict[str, Path],
               prompt: str) -> tuple[float, list[str]]:
    started = time.perf_counter()
    report = execute_plan(config, graph, [{"role": "user", "content": prompt}], plan, paths)
    return time.perf_counter() - started, [a.answer for a in report.agents]


def direct_run(config: Any, graph: MoaGraph, path: Path, cores: int,
               prompt: str) -> tuple[float, list[str]]:
    from llama_cpp import Llama

    spec = config.models[graph.aggregator.model]
    started = time.perf_counter()
    with llama_defaults(repack_allowed(), 1, "off"):  # no repacking where it crashes
        llm = Llama(model_path=str(path), n_ctx=spec.n_ctx,
                    n_batch=min(spec.n_batch, spec.n_ctx), n_threads=cores,
                    n_threads_batch=cores, n_gpu_layers=0, verbose=False,
                    flash_attn=flash_attn_mode(spec) != "off")  # as localmoa loads it
    conversation = [{"role": "user", "content": prompt}]

    def ask(agent: Any, references: list[str] | None) -> str:
        messages = agent_messages(conversation, agent.system, references)
        pieces = []
        for chunk in llm.create_chat_completion(
                messages=[dict(m) for m in messages], temperature=agent.temperature,
                top_p=agent.top_p, max_tokens=agent.max_tokens, seed=agent.seed, stream=True):
            text = chunk["choices"][0].get("delta", {}).get("content")
            if text:
                pieces.append(text)
        return "".join(pieces).strip()

    answers = [ask(a, None) for a in graph.layers[0]]
    answers.append(ask(graph.aggregator, answers))
    llm.close()
    return time.perf_counter() - started, answers


def one_sample(side: str, prompt_index: int, max_tokens: int) -> dict[str, Any]:
    """Run in a child process: one side, one prompt; the time and the answers."""
    config = load_config()
    graph = build_graph(config, "tiny", Overrides(layers=1, temperature=0.0, seed=7,
                                                  max_tokens=max_tokens))
    pre = preflight(config, graph)
    cores = pre.resources.usable_cores
    prompt = PROMPTS[prompt_index]
    if side == "engine":
        # the model's worker process started and llama.cpp imported, as `localmoa run`
        # has it by the time the plan is made (the direct side imports llama.cpp untimed)
        worker.prestart(1)
        assert all(w.ready.wait(60) for w in worker.live_workers())
        took, answers = engine_run(config, graph, sequential_plan(graph, cores), pre.paths,
                                   prompt)
    else:
        took, answers = direct_run(config, graph, pre.paths[graph.aggregator.model], cores,
                                   prompt)
    return {"took": took, "answers": answers, "cores": cores}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--one", nargs=2, metavar=("SIDE", "PROMPT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(one_sample(args.one[0], int(args.one[1]), args.max_tokens)))
        return 0

    def sample(side: str, index: int) -> dict[str, Any]:
        proc = subprocess.run([sys.executable, __file__, "--one", side, str(index),
                               "--max-tokens", str(args.max_tokens)], capture_output=True,
                              text=True, check=True)
        return json.loads(proc.stdout)

    times: dict[str, list[float]] = {"engine": [], "direct": []}
    same = True
    cores = 0
    for r in range(args.repeat):
        for i in range(len(PROMPTS)):
            order = ("engine", "direct") if (r + i) % 2 == 0 else ("direct", "engine")
            answers = {}
            for side in order:
                result = sample(side, i)
                times[side].append(result["took"])
                answers[side], cores = result["answers"], result["cores"]
            same = same and answers["engine"] == answers["direct"]
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {"runs_per_side": len(times["engine"]), "cores": cores,
              "max_tokens": args.max_tokens, "same_answers": same,
              "median_s": {k: round(v, 3) for k, v in med.items()},
              "total_s": {k: round(sum(v), 3) for k, v in times.items()},
              "ratio_engine_over_direct": round(med["engine"] / med["direct"], 3),
              "target": 1.03}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({**result, "samples_s": times}, indent=2))
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
