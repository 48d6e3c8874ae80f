"""The llama.cpp backend: a model entry becomes a llama.cpp model in a worker process
of its own (backends/llamacpp/worker.py), or, with ``workers: off``, in this process
(backends/llamacpp/model.py)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ... import constants
from ...config import Config
from ...errors import ModelLoadError, UsageError
from ...memory.estimate import WORKER_PROCESS_BYTES
from ...spec_types import ModelSpec
from ..base import BackendBase, Capabilities, Estimate
from . import repack
from .model import LoadParams, can_turn_repacking_off, load_llama
from .spec import LlamaCppSpec

if TYPE_CHECKING:
    from ...memory.estimate import LoadSettings
    from ...memory.probe import Resources

__all__ = ["LlamaCppBackend", "can_turn_repacking_off", "flash_attn_mode", "uses_workers"]

#: Most agents of one model decoded as one batch (sequences of one context).
MAX_BATCH = 64


class LlamaCppBackend(BackendBase):
    """Loads GGUF models with llama-cpp-python, each in a worker process of its own
    unless ``workers: off`` (then in this process)."""

    name = "llamacpp"
    spec_class = LlamaCppSpec
    capabilities: ClassVar[Capabilities] = Capabilities(
        batched_sequences=True, gpu_placement_report=True, pull=True, token_counting=True,
        worker_processes=True, constrained_output=True, embeddings=True)
    #: A prestarted worker process: the interpreter, numpy and llama-cpp-python.
    startup_bytes: ClassVar[int] = WORKER_PROCESS_BYTES

    def estimate(self, name: str, spec: ModelSpec, config: Config, resources: Resources,
                 batch_up_to: int = 1) -> Estimate:
        """The GGUF's header read (no weights loaded) into facts and a footprint; with
        batching on, batches of 2 to ``batch_up_to`` sequences too."""
        from ...memory.estimate import batched_pools, footprint, model_facts
        from ...memory.gguf_header import read_model_header
        from .sources import resolve_model_path

        spec = _own(spec)
        path = resolve_model_path(config, name)
        facts = model_facts(read_model_header(path, model=name))
        settings = load_settings(spec, resources)
        fp = dataclasses.replace(footprint(name, facts, settings), streams=True)
        if spec.batch != "off" and batch_up_to > 1:
            sizes = range(2, min(batch_up_to, MAX_BATCH) + 1)
            fp = dataclasses.replace(fp, batched_pools=batched_pools(name, facts, settings,
                                                                     sizes))
        return Estimate(path, facts, fp)

    def pull(self, config: Config, name: str, report: Callable[[Any], None]) -> str:
        from .pull import pull_gguf

        return pull_gguf(config, name, _own(config.models[name]).source, report)

    def runtime(self, config: Config, names: list[str]) -> tuple[dict[str, Any], list[str]]:
        """The cpu_repack choice of these models, and the notice it calls for."""
        choices = {m: repack.choose(_own(config.models[m]).cpu_repack) for m in names}
        if not choices:
            return {}, []
        summary = next(iter(choices.values())).to_dict()
        summary["models"] = {m: c.enabled for m, c in choices.items()}
        return {"cpu_repack": summary}, repack.take_notices(list(choices.values()))

    def check_machine(self, config: Config, names: list[str]) -> str | None:
        """The repack canary, when these models need its verdict and this llama.cpp build
        has never been checked on this CPU (about a second, once)."""
        modes = [_own(config.models[m]).cpu_repack for m in names]
        if modes and repack.needs_canary(modes):
            return "checking llama.cpp's CPU fast paths on this machine (once)"
        return None

    def run_machine_check(self) -> None:
        repack.verdict()

    def locate(self, config: Config, name: str) -> dict[str, Any]:
        """Where the model's GGUF is; never assembles or downloads (doctor reads it)."""
        from ...errors import LocalMoaError
        from .chunks import locate_chunks
        from .sources import resolve_model_path

        source = _own(config.models[name]).source
        if source.chunks is not None:
            return locate_chunks(source.chunks, name)
        try:
            return {"path": str(resolve_model_path(config, name)), "present": True}
        except LocalMoaError as exc:
            return {"present": False, "problem": str(exc)}

    def load(self, name: str, spec: ModelSpec, path: Path | None, n_threads: int,
             n_seq: int = 1) -> Any:
        """Load ``path``; with ``n_seq`` > 1 its context has room for that many sequences
        of ``spec.n_ctx`` tokens each (a batch), in one unified KV cache."""
        spec = _own(spec)
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

        count = sum(uses_workers(_own(spec)) for spec in specs)
        if count:
            prestart(count)

    def close(self) -> None:
        """Stop the spare workers nobody took."""
        from .worker import discard_spares

        discard_spares()


def _own(spec: ModelSpec) -> LlamaCppSpec:
    assert isinstance(spec, LlamaCppSpec), f"not a llamacpp entry: {spec.backend}"
    return spec


def load_settings(spec: LlamaCppSpec, resources: Resources) -> LoadSettings:
    """How ``spec`` will be loaded on this machine (may run the repack canary)."""
    from ...memory.estimate import LoadSettings

    return LoadSettings(n_ctx=spec.n_ctx, kv_type=spec.kv_type, n_gpu_layers=spec.n_gpu_layers,
                        n_batch=spec.n_batch, use_mmap=spec.use_mmap,
                        gpu_pool=resources.gpu_pool, flash_attn=spec.flash_attn != "off",
                        repacked_types=repack.private_types(repack.choose(spec.cpu_repack)),
                        worker_process=uses_workers(spec))


def uses_workers(spec: LlamaCppSpec) -> bool:
    """Whether ``spec`` loads in a worker process: LOCALMOA_WORKERS, else its ``workers``
    (the top-level one by default), else on."""
    value = constants.workers()
    if value is not None and value not in ("on", "off"):
        raise UsageError(f"LOCALMOA_WORKERS={value!r}: give on or off")
    return (value or spec.workers or "on") == "on"


def flash_attn_mode(spec: LlamaCppSpec) -> str:
    """auto (llama.cpp decides: on wherever it supports it, on a CPU always), on or off.
    A quantised KV cache needs flash attention, so ``off`` does not apply to it."""
    mode = spec.flash_attn or "auto"
    if mode == "off" and spec.kv_type not in ("f16", "f32", "bf16"):
        return "on"
    return str(mode)
