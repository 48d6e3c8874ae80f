"""How soon the final answer starts: reference streaming on (the default) and staircase
aggregation (``--staircase``) against ``--no-stream-references`` (today's order), on
``tiny`` (one model: the aggregator joins the proposers' batch) and on a two-family
profile (``duo``: Qwen2.5-Coder-0.5B and two SmolLM2-135M propose, the Qwen aggregates:
it joins the Qwen proposer's instance as a batch of two).

Each (prompt, seed) pair runs in the three modes, one after the other (the order
rotated from pair to pair), in fresh processes (`localmoa run --json`: loads included,
as a user sees them). Reported per profile and mode, as medians over the pairs, and as
the median of the paired ratios (mode / off):

- ``after_s``: the aggregator's first text after its last reference ended
  (``latency.aggregator_first_text_after_references_s``), target <= 0.25x streamed
  (negative for a staircase: it wrote before);
- ``first_s``: the final answer's first text from the run's start, target <= 0.3x for
  the staircase;
- ``wall_s``: the whole run, target <= 1.02x;
- ``early``: reference tokens the aggregator evaluated before its last reference ended;
- ``proposers_first_s``: the proposers' first text from the run's start (their median):
  what reading the aggregator's prompt beside them costs them;
- ``worst after``: the slowest ``after_s`` of the mode (proposers that end at the same
  step, e.g. all at max_tokens, leave the aggregator their whole answers to read).
Sampled answers differ in length between modes (a batch's composition changes the
logits), which blurs the wall times; ``wall_per_token_s`` (the wall time over the
tokens all agents wrote) is given too, though the load's fixed cost skews it toward the
mode that wrote fewer.

Targets are ratios in one run of this script; absolute times are this machine's.

    python benchmarks/bench_latency.py --json benchmarks/results/latency.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

PROMPTS = ["Which is larger, 9.11 or 9.9?",
           "Name three uses of a paperclip, one sentence each.",
           "Write a Python function that returns the factorial of n."]
SEEDS = [1, 2]
DUO = """\
profiles:
  duo:
    description: Qwen2.5-Coder-0.5B and two SmolLM2-135M propose, the Qwen aggregates.
    layers:
      - - {model: qwen2.5-coder-0.5b, temperature: 0.7, max_tokens: 128,
           system: You are a careful assistant. Answer accurately and concisely.}
        - {model: smollm2-135m, temperature: 0.9, max_tokens: 128,
           system: "You are a teacher. Explain your reasoning step by step, briefly."}
        - {model: smollm2-135m, temperature: 0.5, max_tokens: 128,
           system: You are a skeptic. Check the question for traps before answering.}
    aggregator: {model: qwen2.5-coder-0.5b, temperature: 0.3, max_tokens: 192}
"""


MODES = {"streamed": [], "staircase": ["--staircase"], "off": ["--no-stream-references"]}
#: ``--temperature T`` for every agent of every run (``--temperature``); empty: the
#: profiles' own.
SAMPLING: list[str] = []


def run(profile: str, config: Path, prompt: str, seed: int, mode: str) -> dict[str, Any]:
    args = [sys.executable, "-m", "localmoa", "run", prompt, "--profile", profile,
            "--config", str(config), "--seed", str(seed), "--json", *SAMPLING, *MODES[mode]]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"{profile} failed: {proc.stderr.strip()[-400:]}")
    doc = json.loads(proc.stdout)
    latency = doc["latency"]
    return {"after_s": latency["aggregator_first_text_after_references_s"],
            "first_s": latency["answer_first_text_s"], "wall_s": doc["totals"]["wall_s"],
            "early": latency["references_prefilled_early_tokens"],
            "streamed": latency["references_streamed"],
            "order": latency["reference_order"],
            "tokens": doc["totals"]["completion_tokens"],
            "proposers_first_s": statistics.median([
                a["first_text_s"] for a in doc["agents"]
                if a["role"] == "proposer" and a["first_text_s"] is not None] or [float("nan")]),
            "wall_per_token_s": doc["totals"]["wall_s"] / max(1, doc["totals"][
                "completion_tokens"])}


#: What each run reports, summarized per mode.
KEYS = ("after_s", "first_s", "proposers_first_s", "wall_s", "tokens", "wall_per_token_s")


def summary(pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> dict[str, Any]:
    """(mode, off) pairs: medians of each, and the median of the paired ratios."""
    out: dict[str, Any] = {"pairs": len(pairs)}
    for key in KEYS:
        on = [p[0][key] for p in pairs]
        off = [p[1][key] for p in pairs]
        out[key] = {"on": round(statistics.median(on), 3), "off": round(statistics.median(off), 3),
                    "ratio_of_medians": round(statistics.median(on) / statistics.median(off), 3),
                    "median_paired_ratio": round(statistics.median(
                        a / b for a, b in zip(on, off, strict=True) if b), 3)}
    out["after_s"]["worst_on"] = max(p[0]["after_s"] for p in pairs)
    out["early_tokens_median"] = statistics.median(p[0]["early"] for p in pairs)
    out["streamed"] = all(p[0]["streamed"] and not p[1]["streamed"] for p in pairs)
    return out


def turn(n: int) -> list[str]:
    """The modes in the order of the n-th pair: rotated each pair, so that no mode
    always runs first (or last) on a warm page cache."""
    modes = list(MODES)
    return modes[n % len(modes):] + modes[:n % len(modes)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profiles", default="tiny,duo")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--temperature", type=float, help="every agent's temperature "
                        "(0: greedy, so that the modes' answers have nearly the same length)")
    parser.add_argument("--staircase-chunks", default="", help="more staircase modes with "
                        "these first chunks in tokens, e.g. 8,4 (mode staircase-8 ...)")
    args = parser.parse_args()
    if args.temperature is not None:
        SAMPLING.extend(["--temperature", str(args.temperature)])
    for chunk in filter(None, args.staircase_chunks.split(",")):
        MODES[f"staircase-{chunk}"] = ["--staircase-chunk", chunk]
    results: dict[str, Any] = {"prompts": PROMPTS, "seeds": SEEDS, "profiles": {},
                               "temperature": args.temperature}
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "duo.yaml"
        config.write_text(DUO, encoding="utf-8")
        for profile in args.profiles.split(","):
            raw = []
            for prompt in PROMPTS:
                for seed in SEEDS:
                    row = {m: run(profile, config, prompt, seed, m) for m in turn(len(raw))}
                    raw.append({"prompt": prompt, "seed": seed, **row})
                    print(f"{profile} seed {seed} {prompt[:30]!r}: " + "; ".join(
                        f"{m} after {r['after_s']} first {r['first_s']} wall {r['wall_s']}"
                        for m, r in row.items()), file=sys.stderr, flush=True)
            results["profiles"][profile] = {
                "summary": {m: summary([(r[m], r["off"]) for r in raw])
                            for m in MODES if m != "off"}, "runs": raw}
    print("| profile | mode | after last reference s | first text s | proposers' first text s "
          "| wall s | tokens | wall per token s | early tokens | worst after s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for profile, data in results["profiles"].items():
        for mode, s in data["summary"].items():
            print(f"| {profile} | {mode} | " + " | ".join(
                f"{s[k]['on']} / {s[k]['off']} ({s[k]['median_paired_ratio']}x)"
                for k in KEYS)
                + f" | {s['early_tokens_median']} | {s['after_s']['worst_on']} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
