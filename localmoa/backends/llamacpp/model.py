"""One llama.cpp model (model + context) in this process, through llama-cpp-python.

This module is what a model worker process runs (backends/llamacpp/worker_main.py), and
what ``workers: off`` loads into localmoa's own process. It reads no config:
``LoadParams`` says everything a load needs, as plain values a pipe can carry.

Timings are measured here, not read from llama.cpp's private perf counters: a
pass-through logits processor is called once per sampled token with the whole
token sequence, which gives the exact prompt length, the end of prefill and the
time of every decoded token.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ...errors import GenerationError, ModelLoadError
from ..base import ChatStream, GenerateOptions, GenerationStats, LoadedModel, Message
from ..batch import Batch
from ..batch import Sequence as BatchSequence
from ..structured import check_json_answer, gbnf, stops_for
from . import repack
from .batch_loop import decode_batch
from .embed import embed_texts
from .sampling import grammar_sampler

# llama.cpp's ggml_type numbers for the KV cache element types models.yaml accepts.
_GGML_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "q8_0": 8,
               "bf16": 30}


_LOG_CALLBACK: Any = None


def _quiet_llama_logs() -> None:
    """llama.cpp prints some notices even with verbose=False; keep stderr ours.

    With LOCALMOA_DEBUG=1 everything llama.cpp logs is shown.
    """
    global _LOG_CALLBACK
    if _LOG_CALLBACK is not None:
        return
    import ctypes
    import sys

    import llama_cpp

    from ... import constants

    show = constants.debug()

    @llama_cpp.llama_log_callback
    def callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        if show:
            sys.stderr.write(text.decode("utf-8", "replace"))

    _LOG_CALLBACK = callback  # keep a reference: ctypes must not free it
    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))


_PARAMS_LOCK = threading.Lock()


def can_turn_repacking_off() -> bool:
    """Whether this llama-cpp-python's model parameters have ``use_extra_bufts`` (ctypes
    would accept setting an unknown attribute and silently change nothing)."""
    import llama_cpp.llama_cpp as lib

    return any(name == "use_extra_bufts" for name, *_ in lib.llama_model_params._fields_)


def repack_allowed(cpu_repack: bool | None = None) -> bool:
    """``cpu_repack`` where given, else whether this machine may repack weights: the
    cpu_repack setting (LOCALMOA_CPU_REPACK), else the canary's verdict."""
    return repack.choose(None).enabled if cpu_repack is None else cpu_repack


@contextlib.contextmanager
def llama_defaults(use_extra_bufts: bool, n_seq: int, flash_attn: str) -> Iterator[None]:
    """Make ``Llama(...)`` load as given where its constructor has no parameter for it:
    ``use_extra_bufts`` (weight repacking; llama-server's --no-repack), room for
    ``n_seq`` sequences in one unified KV cache, and flash attention ``auto``
    (llama.cpp decides). The defaults the constructor starts from are adjusted for
    the length of the call."""
    import llama_cpp.llama_cpp as lib

    if not use_extra_bufts and not can_turn_repacking_off():
        raise ModelLoadError(
            f"llama-cpp-python {repack.llama_cpp_version()} cannot load a model with weight "
            "repacking off (its llama_model_params has no use_extra_bufts), and repacking is "
            "off because it crashes on this CPU or you said so; upgrade it: pip install -U "
            "llama-cpp-python")
    with _PARAMS_LOCK:
        model_defaults = lib.llama_model_default_params
        context_defaults = lib.llama_context_default_params
        enabled = lib.LLAMA_FLASH_ATTN_TYPE_ENABLED

        def model_params() -> Any:
            params = model_defaults()
            params.use_extra_bufts = use_extra_bufts
            return params

        def context_params() -> Any:
            params = context_defaults()
            if n_seq > 1:
                params.n_seq_max = n_seq
                params.kv_unified = True  # one cache: a shared prefix is stored once
            return params

        lib.llama_model_default_params = model_params
        lib.llama_context_default_params = context_params
        if flash_attn == "auto":  # the constructor writes ENABLED for flash_attn=True
            lib.LLAMA_FLASH_ATTN_TYPE_ENABLED = lib.LLAMA_FLASH_ATTN_TYPE_AUTO
        try:
            yield
        finally:
            lib.llama_model_default_params = model_defaults
            lib.llama_context_default_params = context_defaults
            lib.LLAMA_FLASH_ATTN_TYPE_ENABLED = enabled


class _TokenClock:
    """A logits processor that only watches: counts sampled tokens and times them."""

    def __init__(self) -> None:
        self.prompt_tokens = 0
        self.sampled = 0
        self.first_at: float | None = None
        self.last_at: float | None = None

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        now = time.perf_counter()
        if self.first_at is None:
            self.first_at = now
            self.prompt_tokens = len(input_ids)
        self.last_at = now
        self.sampled += 1
        return scores


class LlamaCppModel(LoadedModel):
    """One llama.cpp model instance (model + context). One chat at a time."""

    def __init__(self, name: str, llm: Any, load_s: float, n_seq: int, n_ctx_seq: int,
                 flash_attn: str) -> None:
        self.name = name
        self.llm = llm
        self.load_s = load_s
        self.n_ctx_seq = n_ctx_seq
        self.runtime_facts: dict[str, Any] = {  # cpu_repack: what llama.cpp was given
            "cpu_repack": bool(getattr(llm.model_params, "use_extra_bufts", True)),
            "flash_attn": flash_attn,
            "n_seq": n_seq}
        self._lock = threading.Lock()  # any use of the llama object (tokenizer included)
        self._owner: int | None = None  # the thread whose generation holds ``_lock``
        self._unload_pending = False  # unload() came during a generation
        self._state = threading.Lock()  # orders unload() against giving ``_lock`` back

    def chat(self, messages: Sequence[Message], options: GenerateOptions) -> ChatStream:
        return ChatStream(lambda stream: self._generate(stream, messages, options))

    def _generate(self, stream: ChatStream, messages: Sequence[Message],
                  options: GenerateOptions) -> Iterator[str]:
        from llama_cpp import LogitsProcessorList, llama_cpp

        with self._claim():
            yield from self._stream(stream, messages, options, llama_cpp, LogitsProcessorList)

    def run_batch(self, batch: Batch, n_threads: int) -> None:
        """Decode the chats of ``batch`` together, as sequences of this instance's context
        (the driver thread's call; the members read their own streams)."""
        # once every member joined or withdrew; a joinable batch takes more as it runs
        self.decode(batch.sequences(), n_threads, batch if batch.joinable else None,
                    lambda: batch.threads)

    def decode(self, seqs: list[BatchSequence], n_threads: int, join: Batch | None = None,
               threads_now: Callable[[], int] | None = None) -> None:
        """Decode ``seqs`` together (a model worker's batch arrives as sequences);
        ``join``: a batch whose later members join the running loop; ``threads_now``:
        the threads to use, read at every step."""
        if not seqs:
            return
        with self._claim():
            if self.llm is None:
                raise GenerationError(f"model instance {self.name!r} was unloaded")
            try:
                decode_batch(self.llm, seqs, n_threads, self.n_ctx_seq, self.name, join,
                             threads_now)
            except (RuntimeError, ValueError) as exc:
                raise GenerationError(f"{self.name}: {exc}") from exc

    @contextlib.contextmanager
    def _claim(self) -> Iterator[None]:
        """The instance for one generation (or one batch) by this thread."""
        with self.occupancy.generation():
            self._lock.acquire()
            self._owner = threading.get_ident()
            try:
                yield
            finally:
                self._owner = None
                self._release()

    def _stream(self, stream: ChatStream, messages: Sequence[Message], options: GenerateOptions,
                llama_cpp: Any, processors: Any) -> Iterator[str]:
        llm = self.llm
        if llm is None:
            raise GenerationError(f"model instance {self.name!r} was unloaded")
        if options.n_threads:
            llama_cpp.llama_set_n_threads(llm.ctx, options.n_threads, options.n_threads)
        grammar = self._grammar(llm, options.json_schema)
        previous = list(llm.input_ids[: llm.n_tokens])
        clock = _TokenClock()
        started = time.perf_counter()
        first_text_at: float | None = None
        finish: str | None = None
        answer: list[str] = []
        try:
            chunks = llm.create_chat_completion(
                messages=[dict(m) for m in messages], temperature=options.temperature,
                top_p=options.top_p, max_tokens=options.max_tokens, seed=options.seed,
                stop=list(stops_for(options)) or None, stream=True,
                logits_processor=processors([clock]), grammar=grammar)
            with contextlib.closing(chunks):
                for chunk in chunks:
                    choice = chunk["choices"][0]
                    text = choice.get("delta", {}).get("content")
                    if text:
                        if first_text_at is None:
                            first_text_at = time.perf_counter()
                        if grammar is not None:
                            answer.append(text)
                        yield text
                    finish = choice.get("finish_reason") or finish
        except (RuntimeError, ValueError) as exc:
            raise GenerationError(f"{self.name}: {exc}") from exc
        if grammar is not None:
            check_json_answer(self.name, "".join(answer), finish, options.max_tokens)
        ended = time.perf_counter()
        prefill_end = clock.first_at or ended
        # A final end-of-generation token is sampled but never part of the answer.
        completion = max(0, clock.sampled - (1 if finish == "stop" else 0))
        prompt_ids = list(llm.input_ids[: clock.prompt_tokens])
        stream.stats = GenerationStats(
            prompt_tokens=clock.prompt_tokens,
            completion_tokens=completion,
            ttft_s=(first_text_at or ended) - started,
            prompt_s=prefill_end - started,
            decode_s=(clock.last_at or prefill_end) - prefill_end,
            decode_tokens=max(0, clock.sampled - 1),
            cached_tokens=_reused_prefix(previous, prompt_ids),
            finish_reason=finish,
        )

    def _grammar(self, llm: Any, schema: dict[str, Any] | None) -> Any:
        """llama-cpp-python's grammar for answers that follow ``schema`` (None: no schema),
        checked by llama.cpp's own parser first: a grammar it refuses would crash the
        sampler chain instead of failing the call."""
        if schema is None:
            return None
        import llama_cpp.llama_cpp as lib
        from llama_cpp import LlamaGrammar

        try:
            text = gbnf(schema)
            lib.llama_sampler_free(grammar_sampler(lib, lib.llama_model_get_vocab(llm.model),
                                                   text))
        except GenerationError as exc:
            raise GenerationError(f"model {self.name!r}: {exc}") from None
        return LlamaGrammar.from_string(text, verbose=False)

    def embed(self, texts: Sequence[str]) -> list[list[float]] | None:
        """One mean-pooled, L2-normalised vector per text (backends/llamacpp/embed.py),
        between chats or batches; None for a reranker. The KV cache is left empty."""
        with self._claim():
            if self.llm is None:
                raise GenerationError(f"model instance {self.name!r} was unloaded")
            try:
                return embed_texts(self.llm, list(texts), self.n_ctx_seq)
            except (RuntimeError, ValueError) as exc:
                raise GenerationError(f"{self.name}: {exc}") from exc

    @contextlib.contextmanager
    def _using(self) -> Iterator[Any]:
        """The llama object, for this thread alone. A generation in progress on another
        thread holds it until it ends; the thread whose own stream is paused may use it."""
        if self._owner == threading.get_ident():
            yield self.llm
            return
        self._lock.acquire()
        try:
            yield self.llm
        finally:
            self._release()

    def _release(self) -> None:
        """Give the llama object back; free it now if unload() came meanwhile."""
        with self._state:
            closing, self._unload_pending = self._unload_pending, False
            self._lock.release()
        if closing:
            self.unload()

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` in this model's vocabulary."""
        with self._using() as llm:
            return len(llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def cut_tokens(self, text: str, n: int) -> str:
        """The first ``n`` tokens of ``text``, as text."""
        with self._using() as llm:
            tokens = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)[:n]
            return str(llm.detokenize(tokens).decode("utf-8", "ignore"))

    def unload(self) -> None:
        """Free the weights and the context now, not whenever the GC runs. During a
        generation (one paused in a stream not yet closed, too) it is freed when that
        generation ends: never under it, and never by waiting for it."""
        with self._state:
            if not self._lock.acquire(blocking=False):
                self._unload_pending = True  # whoever holds the lock frees it on release
                return
        try:
            llm, self.llm = self.llm, None
        finally:
            self._lock.release()
        if llm is not None:
            llm.close()


def _reused_prefix(previous: list[int], prompt: list[int]) -> int:
    """Tokens llama-cpp-python keeps from the last call (it re-evaluates at least one)."""
    n = 0
    for a, b in zip(previous, prompt, strict=False):
        if a != b:
            break
        n += 1
    return min(n, max(0, len(prompt) - 1))


@dataclass(frozen=True)
class LoadParams:
    """Everything one llama.cpp load needs (the backend derives it from a model entry)."""

    name: str
    path: str
    n_ctx: int  # per sequence
    n_seq: int = 1
    n_batch: int = 512
    n_threads: int = 1
    n_gpu_layers: int = 0
    kv_type: str = "f16"
    flash_attn: str = "auto"  # auto, on or off, as flash_attn_mode() resolved it
    use_mmap: bool = True
    chat_format: str | None = None
    cpu_repack: bool | None = None  # llama.cpp's use_extra_bufts; None: what cpu_repack
    # and the canary's verdict allow on this machine (repacking crashes on some CPUs)


def load_llama(params: LoadParams) -> LlamaCppModel:
    """Load a GGUF with llama-cpp-python; with ``n_seq`` > 1 its context has room for
    that many sequences of ``n_ctx`` tokens each (a batch), in one unified KV cache."""
    try:
        from llama_cpp import Llama
    except ImportError as exc:  # pragma: no cover - a broken install
        raise ModelLoadError(f"llama-cpp-python is not importable ({exc}); "
                             "reinstall localmoa: pip install --force-reinstall "
                             "llama-cpp-python") from None
    _quiet_llama_logs()
    kv = _GGML_TYPES[params.kv_type]
    n_seq = max(1, params.n_seq)
    started = time.perf_counter()
    try:
        with llama_defaults(repack_allowed(params.cpu_repack), n_seq, params.flash_attn):
            llm = Llama(
                model_path=params.path, n_ctx=params.n_ctx * n_seq,
                n_batch=min(params.n_batch, params.n_ctx), n_threads=params.n_threads,
                n_threads_batch=params.n_threads, n_gpu_layers=params.n_gpu_layers,
                type_k=kv, type_v=kv, flash_attn=params.flash_attn != "off",
                use_mmap=params.use_mmap, chat_format=params.chat_format, verbose=False)
    except (ValueError, RuntimeError, OSError) as exc:
        raise ModelLoadError(
            f"model {params.name!r}: llama.cpp could not load {params.path}: {exc} (is it a "
            f"complete GGUF file? is there enough memory for n_ctx={params.n_ctx}?)") from None
    return LlamaCppModel(params.name, llm, time.perf_counter() - started, n_seq=n_seq,
                         n_ctx_seq=params.n_ctx, flash_attn=params.flash_attn)
