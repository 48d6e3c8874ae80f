"""The llama.cpp backend: a model entry becomes a llama.cpp model in a worker process
of its own (backends/worker.py), or, with ``workers: off``, in this process
(backends/llamacpp_model.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import constants
from ..config import ModelSpec
from ..errors import ModelLoadError, UsageError
from . import repack
from .llamacpp_model import LoadParams, can_turn_repacking_off, load_llama

__all__ = ["LlamaCppBackend", "can_turn_repacking_off", "flash_attn_mode", "uses_workers"]


class LlamaCppBackend:
    """Loads GGUF models with llama-cpp-python, each in a worker process of its own
    unless ``workers: off`` (then in this process)."""

    name = "llamacpp"

    def load(self, name: str, spec: ModelSpec, path: Path | None, n_threads: int,
             n_seq: int = 1) -> Any:
        """Load ``path``; with ``n_seq`` > 1 its context has room for that many sequences
        of ``spec.n_ctx`` tokens each (a batch), in one unified KV cache."""
        if path is None:
            raise ModelLoadError(f"model {name!r}: llama.cpp needs a GGUF file")
        params = LoadParams(
            name=name, path=str(path), n_ctx=spec.n_ctx, n_seq=n_seq,
            n_batch=spec.n_batch, n_threads=n_threads, n_gpu_layers=spec.n_gpu_layers,
            kv_type=spec.kv_type, flash_attn=flash_attn_mode(spec), use_mmap=spec.use_mmap,
            chat_format=spec.chat_format, cpu_repack=repack.choose(spec.cpu_repack).enabled)
        if not uses_workers(spec):
            return load_llama(params)
        from .worker import load_in_worker

        return load_in_worker(params)

    def prestart(self, specs: list[ModelSpec]) -> None:
        """Have a worker process started (interpreter up, llama.cpp imported) for each
        of ``specs`` that loads in one, so that its load costs only the model's own."""
        from .worker import prestart

        count = sum(uses_workers(spec) for spec in specs)
        if count:
            prestart(count)

    def close(self) -> None:
        """Stop the spare workers nobody took."""
        from .worker import discard_spares

        discard_spares()


def uses_workers(spec: ModelSpec) -> bool:
    """Whether ``spec`` loads in a worker process: LOCALMOA_WORKERS, else its ``workers``
    (the top-level one by default), else on."""
    value = constants.workers()
    if value is not None and value not in ("on", "off"):
        raise UsageError(f"LOCALMOA_WORKERS={value!r}: give on or off")
    return (value or spec.workers or "on") == "on"


def flash_attn_mode(spec: ModelSpec) -> str:
    """auto (llama.cpp decides: on wherever it supports it, on a CPU always), on or off.
    A quantised KV cache needs flash attention, so ``off`` does not apply to it."""
    mode = spec.flash_attn or "auto"
    if mode == "off" and spec.kv_type not in ("f16", "f32", "bf16"):
        return "on"
    return str(mode)
