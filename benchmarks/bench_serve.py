"""`localmoa serve` against `localmoa run` on the same profile, and its throughput.

(1) Overhead: the tiny profile (3 SmolLM2-135M proposers batched, then the aggregator;
temperature 0, seed 1, the profile's own max_tokens) asked R times over HTTP (`POST
/v1/chat/completions`, not streamed) of a warm server, and R times with `localmoa run
--json` in a fresh process each, interleaved. Ratios: the client's wall time per
request over the engine's own wall time of that run (what HTTP, the queue and the JSON
add), and the served request over the `localmoa run` command (what keeping models
loaded saves).

(2) Throughput: 1, 4 and 8 concurrent clients, each asking the same profile K times
in a row (queue 16, the aggregator's max_tokens 96): requests per second and generated
tokens per second (every agent's). --requests 0 skips it.

(3) Merged requests: 4 concurrent clients against a second server that runs each
request alone (--batch-requests 1), the two servers taking turns; the ratio of
requests per second, merged over alone.

    python benchmarks/bench_serve.py --repeat 5 --requests 4
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402

from tests.serve_process import Served  # noqa: E402

QUESTION = "Which is larger, 9.11 or 9.9?"


def ask(url: str, max_tokens: int | None, content: str = QUESTION) -> dict[str, Any]:
    started = time.perf_counter()
    body: dict[str, Any] = {"model": "moa:tiny", "temperature": 0, "seed": 1,
                            "messages": [{"role": "user", "content": content}]}
    if max_tokens:
        body["max_tokens"] = max_tokens
    response = httpx.post(f"{url}/v1/chat/completions", timeout=600, json=body)
    wall = time.perf_counter() - started
    response.raise_for_status()
    body = response.json()
    return {"wall_s": wall, "engine_s": body["localmoa"]["wall_s"],
            "tokens": body["usage"]["completion_tokens"],
            "answer": body["choices"][0]["message"]["content"]}


def run_command(env: dict[str, str]) -> dict[str, Any]:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "localmoa", "run", QUESTION, "--json",
                           "--temperature", "0", "--seed", "1"], capture_output=True,
                          text=True, env=env, check=True)
    wall = time.perf_counter() - started
    report = json.loads(proc.stdout)
    return {"wall_s": wall, "engine_s": report["totals"]["wall_s"], "answer": report["answer"]}


def throughput(url: str, clients: int, requests: int, max_tokens: int) -> dict[str, Any]:
    def client(k: int) -> list[dict[str, Any]]:
        return [ask(url, max_tokens, f"{QUESTION} ({k}.{i})") for i in range(requests)]

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        done = [r for batch in pool.map(client, range(clients)) for r in batch]
    wall = time.perf_counter() - started
    return {"clients": clients, "requests": len(done), "wall_s": round(wall, 2),
            "requests_per_s": round(len(done) / wall, 3),
            "tokens_per_s": round(sum(r["tokens"] for r in done) / wall, 1),
            "latency_s_median": round(statistics.median(r["wall_s"] for r in done), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--requests", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=96)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "LOCALMOA_HOME": home}
        with Served("--queue", "16", env=env) as served:
            ask(served.url, None)  # load the models once: a server keeps them
            served_runs, commands = [], []
            for i in range(args.repeat):  # the profile's own max_tokens on both sides
                for side in (["serve", "run"] if i % 2 == 0 else ["run", "serve"]):
                    if side == "serve":
                        served_runs.append(ask(served.url, None))
                    else:
                        commands.append(run_command(env))
            results: dict[str, Any] = {
                "serve_request_s": statistics.median(r["wall_s"] for r in served_runs),
                "serve_engine_s": statistics.median(r["engine_s"] for r in served_runs),
                "run_command_s": statistics.median(r["wall_s"] for r in commands),
                "run_engine_s": statistics.median(r["engine_s"] for r in commands),
                "same_answers": {r["answer"] for r in served_runs} == {r["answer"]
                                                                       for r in commands}}
            results["http_overhead_ratio"] = round(
                statistics.median(r["wall_s"] / r["engine_s"] for r in served_runs), 4)
            results["serve_vs_run_command"] = round(
                results["serve_request_s"] / results["run_command_s"], 3)
            results["serve_vs_run_engine"] = round(
                results["serve_request_s"] / results["run_engine_s"], 3)
            results["throughput"] = [throughput(served.url, n, args.requests, args.max_tokens)
                                     for n in (1, 4, 8) if args.requests]
            if args.requests:
                with Served("--queue", "16", "--batch-requests", "1", env=env) as alone:
                    ask(alone.url, None)
                    merged, single = [], []
                    for i in range(2):  # taking turns: drift favours neither
                        for side in ([served, alone] if i == 0 else [alone, served]):
                            rate = throughput(side.url, 4, args.requests, args.max_tokens)
                            (merged if side is served else single).append(rate)
                results["merged_4_clients"] = merged
                results["alone_4_clients"] = single
                results["merged_vs_alone_requests_per_s"] = round(
                    statistics.median(r["requests_per_s"] for r in merged)
                    / statistics.median(r["requests_per_s"] for r in single), 3)
    results.update(repeat=args.repeat, max_tokens=args.max_tokens)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
