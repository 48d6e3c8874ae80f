"""Run in a fresh process by the tests: load two instances of a model through localmoa's
backend (LOCALMOA_CPU_REPACK decides repacking), fill both contexts, and print as JSON
the PSS growth the second instance added, in bytes, and whether it was repacked."""

import json
import os
import sys
from pathlib import Path

os.environ["LOCALMOA_WORKERS"] = "off"  # the model's own memory, in this process

from localmoa.backends.llamacpp import LlamaCppBackend
from localmoa.backends.llamacpp_spec import LlamaCppSpec, Source
from localmoa.memory.probe import process_memory

path, n_ctx = Path(sys.argv[1]), int(sys.argv[2])
spec = LlamaCppSpec(backend="llamacpp", source=Source(path=str(path)), n_ctx=n_ctx)
prompt = [1000 + i % 5000 for i in range(n_ctx - 8)]
first = LlamaCppBackend().load("m", spec, path, n_threads=2)
first.llm.eval([first.llm.token_bos(), *prompt])
_, pss1 = process_memory()
second = LlamaCppBackend().load("m", spec, path, n_threads=2)
second.llm.eval([second.llm.token_bos(), *prompt])
_, pss2 = process_memory()
print(json.dumps({"second_pss": pss2 - pss1, "cpu_repack": second.runtime_facts["cpu_repack"],
                  "use_extra_bufts": bool(second.llm.model_params.use_extra_bufts)}))
