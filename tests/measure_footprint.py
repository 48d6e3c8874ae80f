"""Run in a fresh process by the tests: load a model through localmoa's backend (with
room for N sequences when a 4th argument gives N), fill its context, print the PSS and
RSS growth in bytes as JSON."""

import json
import os
import sys
from pathlib import Path

os.environ["LOCALMOA_WORKERS"] = "off"  # the model's own memory, in this process

from localmoa.backends.llamacpp.backend import LlamaCppBackend
from localmoa.backends.llamacpp.spec import LlamaCppSpec, Source
from localmoa.memory.probe import process_memory

path, n_ctx, kv_type = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
n_seq = int(sys.argv[4]) if len(sys.argv) > 4 else 1  # room for a batch of n_seq sequences
spec = LlamaCppSpec(backend="llamacpp", source=Source(path=str(path)), n_ctx=n_ctx, kv_type=kv_type)
rss0, pss0 = process_memory()
model = LlamaCppBackend().load("m", spec, path, n_threads=2, n_seq=n_seq)
llm = model.llm
# every cell of the (unified) cache filled, as n_seq full sequences would
llm.eval([llm.token_bos()] + [1000 + i % 5000 for i in range(n_ctx * n_seq - 8)])
rss1, pss1 = process_memory()
print(json.dumps({"pss": pss1 - pss0, "rss": rss1 - rss0}))
