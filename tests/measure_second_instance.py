"""Run in a fresh process by the tests: load two instances of a model through localmoa's
backend (LOCALMOA_CPU_REPACK decides repacking), fill both contexts, and print as JSON
the memory the second instance added, in bytes, and whether it was repacked.

Anonymous memory, not PSS: a second instance adds KV cells, compute buffers and
repacked copies, all anonymous, and maps the GGUF again, which costs nothing. PSS would
also move when another process maps the same file meanwhile (another test run, a
localmoa run), since PSS divides file pages between the processes mapping them."""

import json
import os
import sys
from pathlib import Path

os.environ["LOCALMOA_WORKERS"] = "off"  # the model's own memory, in this process

from localmoa.backends.llamacpp.backend import LlamaCppBackend
from localmoa.backends.llamacpp.spec import LlamaCppSpec, Source


def anonymous() -> int:
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith("Anonymous:"):
            return int(line.split()[1]) * 1024
    raise SystemExit("no Anonymous line in /proc/self/smaps_rollup")


path, n_ctx = Path(sys.argv[1]), int(sys.argv[2])
spec = LlamaCppSpec(backend="llamacpp", source=Source(path=str(path)), n_ctx=n_ctx)
prompt = [1000 + i % 5000 for i in range(n_ctx - 8)]
first = LlamaCppBackend().load("m", spec, path, n_threads=2)
first.llm.eval([first.llm.token_bos(), *prompt])
anon1 = anonymous()
second = LlamaCppBackend().load("m", spec, path, n_threads=2)
second.llm.eval([second.llm.token_bos(), *prompt])
anon2 = anonymous()
print(json.dumps({"second_bytes": anon2 - anon1, "cpu_repack": second.runtime_facts["cpu_repack"],
                  "use_extra_bufts": bool(second.llm.model_params.use_extra_bufts)}))
