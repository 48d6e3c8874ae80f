"""Run in a fresh process by the tests and benchmarks/bench_estimate.py: load a model
through localmoa's backend (with room for N sequences when a 4th argument gives N),
fill its context, print the PSS and RSS growth in bytes as JSON.

Besides the final growth (``pss``, ``rss``) it reports each stage's PSS split by where
it lives (``stages``: after the load before any eval, after one short eval, after the
fill, after sampling a few tokens, after one embedding call), so that each part of
the footprint is seen on its own: ``gguf`` is the model file's mapped pages (weights),
``anon`` everything the process allocated (repacked weights, KV cache, compute and
output buffers, tokenizer tables, llama-cpp-python's arrays), each stage's ``peak_rss``
the most RSS growth a 20 ms sampler saw since the stage before. RSS, not PSS: PSS
divides the GGUF's pages with any other process that maps the same file.
"""

import json
import os
import sys
import threading
from pathlib import Path

os.environ["LOCALMOA_WORKERS"] = "off"  # the model's own memory, in this process

from localmoa.backends.base import GenerateOptions
from localmoa.backends.llamacpp.backend import LlamaCppBackend
from localmoa.backends.llamacpp.spec import LlamaCppSpec, Source
from localmoa.memory.probe import process_memory, resident_bytes


def split_rss(gguf: Path) -> dict[str, int]:
    """RSS in bytes of this process: the GGUF's mapping, anonymous memory, the rest (RSS:
    the GGUF's pages count whole even where another process maps the file too)."""
    out = {"gguf": 0, "anon": 0, "other": 0}
    kind = "other"
    for line in Path("/proc/self/smaps").read_text().splitlines():
        first = line.split(maxsplit=1)[0]
        if "-" in first and not first.endswith(":"):  # a mapping's header line
            fields = line.split(maxsplit=5)
            name = fields[5] if len(fields) > 5 else ""
            kind = ("gguf" if name == str(gguf) else "anon" if not name or name == "[heap]"
                    else "other")
        elif first == "Rss:":
            out[kind] += int(line.split()[1]) * 1024
    return out


class Peak(threading.Thread):
    """The most RSS seen while it runs (statm, every 20 ms)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.02):
            self.peak = max(self.peak, resident_bytes())


def main() -> None:
    path, n_ctx, kv_type = Path(sys.argv[1]).resolve(), int(sys.argv[2]), sys.argv[3]
    n_seq = int(sys.argv[4]) if len(sys.argv) > 4 else 1  # room for a batch of n_seq
    spec = LlamaCppSpec(backend="llamacpp", source=Source(path=str(path)), n_ctx=n_ctx,
                        kv_type=kv_type, flash_attn="off" if "--flash-off" in sys.argv else None)
    rss0, pss0 = process_memory()
    base = split_rss(path)
    peak = Peak()
    peak.start()
    stages: dict[str, dict[str, int]] = {}

    def stage(name: str) -> None:
        now = split_rss(path)
        stages[name] = {k: now[k] - base[k] for k in now}
        rss, pss = process_memory()
        stages[name].update(rss=rss - rss0, pss=pss - pss0,
                            peak_rss=max(peak.peak, rss) - rss0)
        peak.peak = 0  # each stage's peak: the most since the stage before

    model = LlamaCppBackend().load("m", spec, path, n_threads=2, n_seq=n_seq)
    llm = model.llm
    stage("loaded")
    llm.eval([llm.token_bos()] + [1000 + i for i in range(31)])
    stage("short_eval")
    # every cell of the (unified) cache filled, as n_seq full sequences would
    llm.eval([1000 + i % 5000 for i in range(32, n_ctx * n_seq - 8)])
    rss1, pss1 = process_memory()
    stage("filled")
    # a chat as the engine runs one (its sampler chain and logits processor); it keeps
    # the cells of the prefix it shares with the fill (none) and evaluates its prompt
    model.chat([{"role": "user", "content": "Say hello."}],
               GenerateOptions(temperature=0.7, max_tokens=8, seed=1, n_threads=2)).text()
    stage("sampled")
    if "--embed" in sys.argv:
        model.embed(["a short text to embed, as a router would"])
        stage("embedded")
    peak.stop.set()
    peak.join()
    print(json.dumps({"pss": pss1 - pss0, "rss": rss1 - rss0, "stages": stages,
                      "peak_rss": max(s["peak_rss"] for s in stages.values())}))


if __name__ == "__main__":
    main()
