"""`localmoa bench`: profiles over a prompt set, measured interleaved.

Each profile runs every prompt `repeat` times, the profiles taking turns
(A B, then B A) so that drift on a noisy machine favours none. With a
baseline, the profile's aggregator model also answers every prompt alone.
"""

from __future__ import annotations

import json
import platform
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from . import __version__
from .config import Config
from .errors import LocalMoaError, RunInterrupted, UsageError
from .fileio import FileRefused, read_prompt_bytes
from .memory.probe import nvidia_gpus
from .metrics import RunReport
from .preflight import Preflight
from .recipe import MoaGraph, Overrides, build_graph
from .runtime import Request, Runtime

BUILTIN_PROMPTS = [
    "Which is larger, 9.11 or 9.9? Explain briefly.",
    "Write a haiku about memory.",
    "Give three tips for writing clear commit messages.",
    "What causes the seasons on Earth?",
    "Translate 'good morning, how are you?' into French and Spanish.",
    "Explain what a hash table is to a ten-year-old.",
]
#: The seed every benchmarked run uses (agent k: SEED + k), so runs are comparable.
SEED = 1234


def load_prompts(path: Path | None) -> list[str]:
    """Prompts from a JSONL file ({"prompt": "..."} per line), or the built-in set."""
    if path is None:
        return list(BUILTIN_PROMPTS)
    try:
        lines = read_prompt_bytes(path).decode("utf-8").splitlines()
    except FileNotFoundError:
        raise UsageError(f"--prompts {path}: no such file") from None
    except UnicodeDecodeError:
        raise UsageError(f"--prompts {path}: not UTF-8 text") from None
    except FileRefused as exc:
        raise UsageError(f"--prompts {path}: {exc.reason}") from None
    except OSError as exc:
        raise UsageError(f"--prompts {path}: {exc.strerror}") from None
    prompts = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except RecursionError:  # the decoder's bound on nesting
            raise UsageError(f"{path}:{number}: JSON nested too deeply; write one object "
                             'per line, e.g. {"prompt": "..."}') from None
        except json.JSONDecodeError as exc:
            raise UsageError(f"{path}:{number}: not valid JSON ({exc.msg}); write one object "
                             'per line, e.g. {"prompt": "..."}') from None
        if not isinstance(item, dict) or not isinstance(item.get("prompt"), str) \
                or not item["prompt"].strip():
            raise UsageError(f'{path}:{number}: needs a non-empty "prompt" string, '
                             'e.g. {"prompt": "..."}')
        prompts.append(item["prompt"])
    if not prompts:
        raise UsageError(f"--prompts {path}: no prompts in the file")
    return prompts


def single_model_graph(graph: MoaGraph) -> MoaGraph:
    """The baseline: the profile's aggregator model answering alone."""
    return MoaGraph(profile=f"{graph.profile}:single", layers=[], aggregator=graph.aggregator,
                    models=[graph.aggregator.model])


@dataclass
class Contender:
    name: str
    graph: MoaGraph
    prepared: Preflight
    samples: list[dict[str, Any]] = field(default_factory=list)


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), linear between points."""
    if not values:
        return 0.0
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def _stats(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 4) if values else 0.0,
            "p90": round(percentile(values, 90), 4)}


def sample_of(report: RunReport, prompt_index: int, round_no: int) -> dict[str, Any]:
    agg = report.agents[-1]
    return {"prompt": prompt_index, "round": round_no, "ok": report.ok,
            "e2e_s": report.totals.wall_s,
            "final_ttft_s": round(agg.start_s + agg.ttft_s, 4),
            "completion_tokens": report.totals.completion_tokens,
            "report": report.to_dict()}


def summarise(c: Contender) -> dict[str, Any]:
    reports = [s["report"] for s in c.samples]
    agents: dict[str, dict[str, Any]] = {}
    for agent_id in [a["agent"] for a in reports[0]["agents"]]:
        runs = [a for r in reports for a in r["agents"] if a["agent"] == agent_id and a["ok"]]
        agents[agent_id] = {"model": runs[0]["model"] if runs else None, "runs": len(runs),
                            **{k: _stats([a[k] for a in runs])
                               for k in ("ttft_s", "prompt_tok_per_s", "decode_tok_per_s")}}
    layers: dict[str, dict[str, Any]] = {}
    for layer in reports[0]["layers"]:
        rows = [s for r in reports for s in r["layers"] if s["layer"] == layer["layer"]]
        layers[str(layer["layer"])] = {"role": layer["role"],
                                       "wall_s": _stats([s["wall_s"] for s in rows]),
                                       "agg_tok_per_s": _stats([s["agg_tok_per_s"]
                                                                for s in rows])}
    return {
        "runs": len(c.samples), "failed_runs": sum(not s["ok"] for s in c.samples),
        "e2e_s": _stats([s["e2e_s"] for s in c.samples]),
        "final_ttft_s": _stats([s["final_ttft_s"] for s in c.samples]),
        "completion_tokens": _stats([s["completion_tokens"] for s in c.samples]),
        "loads": _stats([r["actual"]["loads"] for r in reports]),
        "load_s": _stats([r["actual"]["load_s"] for r in reports]),
        "peak_rss_bytes": max(r["actual"]["peak_rss_growth_bytes"] for r in reports),
        "peak_pss_bytes": max(r["actual"]["peak_pss_growth_bytes"] for r in reports),
        "agents": agents, "layers": layers,
    }


def machine_facts() -> dict[str, Any]:
    import llama_cpp

    from .backends.llamacpp import repack

    verdict = repack.cached_verdict()
    return {"cpu": repack.cpu_model(), "cpu_flags": repack.key_cpu_flags(),
            "physical_cores": psutil.cpu_count(logical=False),
            "logical_cores": psutil.cpu_count(logical=True),
            "ram_bytes": psutil.virtual_memory().total,
            "gpus": [g.__dict__ for g in nvidia_gpus()],
            "os": platform.platform(), "python": platform.python_version(),
            "llama_cpp_python": llama_cpp.__version__,
            "llama_cpp_system_info": llama_cpp.llama_print_system_info().decode().strip(),
            "cpu_repack_verdict": verdict.to_dict() if verdict else None,
            "localmoa": __version__}


def run_bench(config: Config, profiles: list[str], prompts: list[str], *, repeat: int,
              warmup: int, memory_budget: str | None, baseline: bool,
              progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Measure; returns the results document (settings, machine, summaries, samples)."""
    if repeat < 1:
        raise UsageError(f"--repeat {repeat}: give at least 1")
    if warmup < 0:
        raise UsageError(f"--warmup {warmup}: give 0 or more")
    contenders: list[Contender] = []
    pairs: list[tuple[str, str]] = []  # (MoA, its single-model baseline)
    runtime = Runtime(config, memory_budget)  # one-shot: every run loads and frees its models
    for name in profiles:
        graph = build_graph(config, name, Overrides(seed=SEED))
        contenders.append(Contender(graph.profile, graph, runtime.preflight(graph)))
        if baseline:
            single = single_model_graph(graph)
            contenders.append(Contender(single.profile, single, runtime.preflight(single)))
            pairs.append((graph.profile, single.profile))

    def one(c: Contender, prompt: str) -> RunReport:
        try:
            return runtime.run(Request([{"role": "user", "content": prompt}], c.graph))
        except LocalMoaError as exc:
            report = getattr(exc, "report", None)
            if isinstance(report, RunReport) and not isinstance(exc, RunInterrupted):
                # a failed run is a sample; Ctrl-C or SIGTERM ends the benchmark
                return report
            raise

    for c in contenders:
        for _ in range(warmup):
            one(c, prompts[0])
            if progress:
                progress(f"warm-up {c.name}")
    for round_no in range(repeat):
        for index, prompt in enumerate(prompts):
            turn = index + round_no * len(prompts)
            for c in (contenders if turn % 2 == 0 else list(reversed(contenders))):
                c.samples.append(sample_of(one(c, prompt), index, round_no))
                if progress:
                    progress(f"{c.name}: prompt {index + 1}/{len(prompts)}, "
                             f"round {round_no + 1}/{repeat}")
    summaries = {c.name: summarise(c) for c in contenders}
    comparison = {}
    for moa, alone in pairs:
        comparison[moa] = {
            "e2e_latency_ratio": _ratio(summaries[moa]["e2e_s"]["median"],
                                        summaries[alone]["e2e_s"]["median"]),
            "tokens_ratio": _ratio(summaries[moa]["completion_tokens"]["median"],
                                   summaries[alone]["completion_tokens"]["median"])}
    return {"settings": {"profiles": profiles, "prompts": prompts, "repeat": repeat,
                         "warmup": warmup, "memory_budget": memory_budget,
                         "baseline": "single" if baseline else None, "seed": SEED,
                         "order": "interleaved, reversed every other prompt"},
            "machine": machine_facts(), "summaries": summaries, "comparison": comparison,
            "samples": {c.name: c.samples for c in contenders}}


def _ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else 0.0
