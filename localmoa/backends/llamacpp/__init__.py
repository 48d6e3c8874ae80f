"""The llama.cpp backend (``backend: llamacpp``): GGUF models loaded with
llama-cpp-python, each in a worker process of its own.

- backend.py: LlamaCppBackend (estimate, load, pull, prestart, the repack check)
- spec.py: the keys of its entries and Source (path / repo / package / chunks / ollama / lmstudio)
- sources.py, pull.py: a source resolved to a local GGUF (offline), and downloaded
- model.py: a llama.cpp model in this process; batch_loop.py: sequences of one context
  decoded together; embed.py: embeddings
- worker.py, worker_process.py, worker_batch.py: localmoa's side of a model worker;
  worker_main.py: the worker process itself
- repack.py, canary.py: whether llama.cpp's CPU fast paths are safe here

Kept light: nothing is imported here, so a worker process starts fast.
"""
