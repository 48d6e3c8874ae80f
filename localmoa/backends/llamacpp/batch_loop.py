"""Batched decoding on llama.cpp: the sequences of a Batch in one llama context.

The context was created with room for several sequences in one unified KV cache
(``n_seq_max``, ``kv_unified``). A batch then runs as llama-server's slots and
``llama-batched`` do:

1. every chat is formatted and tokenized exactly as llama-cpp-python's own chat
   completion would (same handler, same tokens, same stop strings);
2. the tokens all prompts start with are decoded once, as positions of every
   sequence at the same time, so their KV cells are shared;
3. each prompt's own rest is decoded, all sequences in one batch, and each
   sequence samples its first token from its last prompt position;
4. then one ``llama_decode`` per step serves every live sequence, each with its
   own sampler chain (temperature, top_p, seed, and the grammar of its JSON schema
   when it has one), max_tokens and stop strings;
5. a sequence that ends, or whose agent stopped reading, leaves at once: its KV
   cells are freed and the others go on.

A sequence resumed after its worker died (``Sequence.resume_text``) is prompted with
its chat's tokens followed by that text's (the assistant turn starts with it); its
token budget counts what it produced before, and its grammar, if any, has read it.

At temperature 0 a batched agent gives the answer it gives alone as long as
llama.cpp's kernels compute the same numbers for a step of N rows as for one row;
on x86 some do not for every N (the sums are ordered differently), and a greedy
answer can then part from the lone one at a near tie. benchmarks/README.md measures
how often and how late.
"""

from __future__ import annotations

import codecs
import contextlib
import ctypes
import random
from collections.abc import Sequence as MessageList
from typing import Any

from ...errors import GenerationError
from ..base import Message
from ..batch import Sequence
from ..structured import check_json_answer, gbnf, stops_for

#: Sampling defaults of llama-cpp-python's chat completion, so that a batched agent
#: samples as a lone one does.
TOP_K = 40
MIN_P = 0.05
TYPICAL_P = 1.0


class _Captured(Exception):
    pass


class _PromptRecorder:
    """Stands in for the Llama object when its chat handler is called: records the
    prompt tokens and stop strings the handler would generate from, and stops there."""

    def __init__(self, llm: Any) -> None:
        self._llm = llm
        self.prompt: Any = None
        self.stop: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._llm, name)

    def create_completion(self, prompt: Any, stop: Any = None, **_: Any) -> Any:
        self.prompt = prompt
        self.stop = [stop] if isinstance(stop, str) else [s for s in (stop or []) if s]
        raise _Captured


def chat_prompt(llm: Any, messages: MessageList[Message]) -> tuple[list[int], list[str]]:
    """The prompt tokens and stop strings of a chat, as ``create_chat_completion`` makes them."""
    from llama_cpp import llama_chat_format

    handler = (llm.chat_handler or llm._chat_handlers.get(llm.chat_format)
               or llama_chat_format.get_chat_completion_handler(llm.chat_format))
    recorder: Any = _PromptRecorder(llm)
    chat: Any = [dict(m) for m in messages]
    with contextlib.suppress(_Captured):
        handler(llama=recorder, messages=chat, stream=True, stop=[])
    prompt = recorder.prompt
    if prompt is None:
        raise GenerationError("the chat handler produced no prompt")
    if isinstance(prompt, str):
        prompt = llm.tokenize(prompt.encode("utf-8"), special=True)
    return [int(t) for t in prompt], recorder.stop


class _Text:
    """Turns a sequence's tokens into text: whole UTF-8 characters only, and nothing
    that might be the start of a stop string until it is known not to be one."""

    def __init__(self, stops: list[str]) -> None:
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.stops = stops
        self.pending = ""

    def feed(self, data: bytes) -> tuple[str, bool]:
        """The text that can be written now, and whether a stop string was reached."""
        self.pending += self.decoder.decode(data)
        for stop in self.stops:
            at = self.pending.find(stop)
            if at >= 0:
                out, self.pending = self.pending[:at], ""
                return out, True
        keep = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(self.pending)), keep, -1):
                if self.pending.endswith(stop[:n]):
                    keep = n
                    break
        cut = len(self.pending) - keep
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending + self.decoder.decode(b"", final=True), ""
        return out


class _Live:
    """The state of one sequence while it decodes."""

    def __init__(self, seq: Sequence, seq_id: int, prompt: tuple[list[int], list[int]],
                 stops: list[str], n_ctx: int, lib: Any, vocab: Any, model: str) -> None:
        chat, resumed = prompt  # the chat's tokens, those of the text it had written
        self.seq = seq
        self.model = model
        self.id = seq_id
        self.tokens = chat + resumed
        self.prompt_tokens = len(chat)
        self.pos = 0  # positions decoded so far
        self.last = 0  # the token sampled last, decoded next
        self.index = 0  # its place in the batch being decoded
        self.generated = seq.resume_tokens  # produced before a restart count too
        options = seq.options
        room = n_ctx - len(self.tokens)
        left = options.max_tokens - self.generated if options.max_tokens > 0 else room
        self.max_tokens = self.generated + min(left, room)
        self.text = _Text([*stops, *stops_for(options)])
        #: The answer so far, kept only to check it is whole JSON (a schema is given).
        self.answer: list[str] | None = (None if options.json_schema is None
                                         else [seq.resume_text])
        grammar = None
        if options.json_schema is not None:
            try:
                grammar = grammar_sampler(lib, vocab, gbnf(options.json_schema))
            except GenerationError as exc:
                raise GenerationError(f"model {model!r}: {exc}") from None
        self.sampler = _sampler(lib, options.temperature, options.top_p, options.seed, grammar)
        for token in resumed:  # the grammar goes on from the text already written
            lib.llama_sampler_accept(self.sampler, token)

    def write(self, text: str) -> None:
        if self.answer is not None:
            self.answer.append(text)
        self.seq.write(text)

    def close(self, lib: Any) -> None:
        if self.sampler is not None:
            lib.llama_sampler_free(self.sampler)
            self.sampler = None


def grammar_sampler(lib: Any, vocab: Any, grammar: str) -> Any:
    """A llama.cpp grammar sampler for GBNF text whose root rule is ``root``."""
    sampler = lib.llama_sampler_init_grammar(vocab, grammar.encode("utf-8"), b"root")
    if not sampler:
        raise GenerationError("llama.cpp could not parse the grammar made from the JSON "
                              "schema")
    return sampler


def _sampler(lib: Any, temperature: float, top_p: float, seed: int | None,
             grammar: Any = None) -> Any:
    """The chain llama-cpp-python builds for a lone chat: the grammar first (only the
    tokens it allows are left to the others), then greedy, or top-k, typical, top-p,
    min-p, temperature and the seeded draw."""
    chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
    if grammar is not None:
        lib.llama_sampler_chain_add(chain, grammar)  # the chain owns it from here
    if temperature <= 0:
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_greedy())
        return chain
    seed = seed if seed is not None else random.getrandbits(32)
    for sampler in (lib.llama_sampler_init_top_k(TOP_K),
                    lib.llama_sampler_init_typical(TYPICAL_P, 1),
                    lib.llama_sampler_init_top_p(top_p, 1),
                    lib.llama_sampler_init_min_p(MIN_P, 1),
                    lib.llama_sampler_init_temp(temperature),
                    lib.llama_sampler_init_dist(seed)):
        lib.llama_sampler_chain_add(chain, sampler)
    return chain


def common_prefix(prompts: list[list[int]]) -> int:
    """Tokens all prompts start with, leaving each at least one of its own (its last
    position must be decoded for it, to sample its first token)."""
    if len(prompts) < 2:
        return 0
    n = 0
    for column in zip(*prompts, strict=False):
        if any(t != column[0] for t in column):
            break
        n += 1
    return min(n, min(len(p) for p in prompts) - 1)


def decode_batch(llm: Any, seqs: list[Sequence], n_threads: int, n_ctx_seq: int,
                 model: str = "") -> None:
    """Decode ``seqs`` together in ``llm``'s context until each has finished (``model``:
    its name, for messages)."""
    import llama_cpp.llama_cpp as lib

    ctx = llm.ctx
    n_seq_max = int(lib.llama_n_seq_max(ctx))
    if len(seqs) > n_seq_max:
        for seq in seqs[n_seq_max:]:
            seq.fail(f"the model instance was loaded for {n_seq_max} sequences, not "
                     f"{len(seqs)}")
        seqs = seqs[:n_seq_max]
    vocab = lib.llama_model_get_vocab(llm.model)
    memory = lib.llama_get_memory(ctx)
    lib.llama_memory_clear(memory, True)
    llm.reset()  # llama-cpp-python's own prompt cache no longer matches the context
    if n_threads:
        lib.llama_set_n_threads(ctx, n_threads, n_threads)
    live: list[_Live] = []
    try:
        for seq in seqs:
            state = _start(llm, seq, len(live), n_ctx_seq, lib, vocab, model)
            if state is not None:
                live.append(state)
        _run(lib, ctx, vocab, memory, live, int(lib.llama_n_batch(ctx)))
    finally:
        for state in live:
            state.close(lib)
        lib.llama_memory_clear(memory, True)


def _start(llm: Any, seq: Sequence, seq_id: int, n_ctx_seq: int, lib: Any, vocab: Any,
           model: str) -> _Live | None:
    """The decoding state of ``seq``, or None when it ends before its first step."""
    if seq.wants_stop():
        seq.finish("cancelled", seq.resume_tokens)
        return None
    tokens, stops = chat_prompt(llm, seq.messages)
    if len(tokens) >= n_ctx_seq:
        seq.fail(f"the prompt has {len(tokens)} tokens; the context window is "
                 f"{n_ctx_seq} (raise n_ctx or shorten the prompt)")
        return None
    resumed: list[int] = []
    if seq.resume_text:  # the text it wrote before a restart, as the start of its answer
        resumed = [int(t) for t in llm.tokenize(seq.resume_text.encode("utf-8"),
                                                add_bos=False, special=False)]
        spent = 0 < seq.options.max_tokens <= seq.resume_tokens
        if spent or len(tokens) + len(resumed) >= n_ctx_seq:
            seq.prompt(len(tokens), 0, 1)
            seq.finish("length", seq.resume_tokens)  # its tokens or its context are used up
            return None
    try:
        return _Live(seq, seq_id, (tokens, resumed), stops, n_ctx_seq, lib, vocab, model)
    except GenerationError as exc:  # its schema: only this sequence fails
        seq.fail(str(exc))
        return None


def _piece(lib: Any, vocab: Any, token: int, buffer: Any) -> bytes:
    """The bytes of one token (special tokens render as nothing, as in a lone chat)."""
    n = lib.llama_token_to_piece(vocab, token, buffer, len(buffer), 0, False)
    if n < 0:  # longer than the buffer: ask again with room for it
        buffer = ctypes.create_string_buffer(-n)
        n = lib.llama_token_to_piece(vocab, token, buffer, len(buffer), 0, False)
    return bytes(buffer.raw[:n]) if n > 0 else b""


class _Batch:
    """A llama_batch we fill token by token."""

    def __init__(self, lib: Any, capacity: int, n_seq: int) -> None:
        self.lib = lib
        self.capacity = capacity
        self.raw = lib.llama_batch_init(capacity, 0, max(1, n_seq))
        self.n = 0

    def add(self, token: int, pos: int, seq_ids: list[int], logits: bool) -> int:
        raw, i = self.raw, self.n
        raw.token[i] = token
        raw.pos[i] = pos
        raw.n_seq_id[i] = len(seq_ids)
        for k, seq_id in enumerate(seq_ids):
            raw.seq_id[i][k] = seq_id
        raw.logits[i] = logits
        self.n += 1
        return i

    def decode(self, ctx: Any) -> None:
        self.raw.n_tokens = self.n
        code = self.lib.llama_decode(ctx, self.raw)
        self.n = 0
        if code != 0:
            reason = ("no room left in the KV cache" if code == 1 else
                      "aborted" if code == 2 else f"error {code}")
            raise GenerationError(f"llama_decode failed: {reason}")

    def free(self) -> None:
        self.lib.llama_batch_free(self.raw)


def _run(lib: Any, ctx: Any, vocab: Any, memory: Any, live: list[_Live], n_batch: int) -> None:
    if live:
        _Loop(lib, ctx, vocab, memory, live, n_batch).run()


class _Loop:
    """The decoding of a batch's sequences in one context, steps 2 to 5 above."""

    def __init__(self, lib: Any, ctx: Any, vocab: Any, memory: Any, live: list[_Live],
                 n_batch: int) -> None:
        self.lib, self.ctx, self.vocab, self.memory = lib, ctx, vocab, memory
        self.live = live
        self.n_batch = n_batch
        self.batch = _Batch(lib, n_batch, len(live))
        self.piece = ctypes.create_string_buffer(256)

    def run(self) -> None:
        try:
            shared = common_prefix([s.tokens for s in self.live])
            for state in self.live:
                state.seq.prompt(state.prompt_tokens, min(shared, state.prompt_tokens),
                                 len(self.live))
            if self._shared_prefix(shared) and self._prompt_rests(shared):
                self._steps()
        finally:
            self.batch.free()

    def _shared_prefix(self, shared: int) -> bool:
        """The shared prefix, once, as positions of every sequence; False when every
        sequence has left."""
        ids = [s.id for s in self.live]
        for start in range(0, shared, self.n_batch):
            for pos in range(start, min(shared, start + self.n_batch)):
                self.batch.add(self.live[0].tokens[pos], pos, ids, False)
            self.batch.decode(self.ctx)
            if not self._drop_stopped():
                return False
        return True

    def _prompt_rests(self, shared: int) -> bool:
        """Each prompt's own rest; a sequence samples after the chunk holding its end.
        False when every sequence has left."""
        rest = [(s, pos) for s in self.live for pos in range(shared, len(s.tokens))]
        for start in range(0, len(rest), self.n_batch):
            ending: list[tuple[_Live, int]] = []
            for state, pos in rest[start:start + self.n_batch]:
                if state.seq.done:
                    continue
                last = pos == len(state.tokens) - 1
                index = self.batch.add(state.tokens[pos], pos, [state.id], last)
                if last:
                    ending.append((state, index))
            self.batch.decode(self.ctx)
            for state, index in ending:
                state.pos = len(state.tokens)
                if not state.seq.done:
                    self._sample(state, index)
            if not self._drop_stopped():
                return False
        return True

    def _steps(self) -> None:
        """One decode step for every live sequence, until none is left."""
        while running := self._drop_stopped():
            for state in running:
                state.index = self.batch.add(state.last, state.pos, [state.id], True)
                state.pos += 1
            self.batch.decode(self.ctx)
            for state in running:
                self._sample(state, state.index)

    def _leave(self, state: _Live, reason: str | None) -> None:
        tail = state.text.flush() if reason != "cancelled" else ""
        state.write(tail)
        try:
            if state.answer is not None and reason != "cancelled":
                check_json_answer(state.model, "".join(state.answer), reason,
                                  state.seq.options.max_tokens)
        except GenerationError as exc:
            state.seq.fail(str(exc))
        state.seq.finish(reason, state.generated)
        self.lib.llama_memory_seq_rm(self.memory, state.id, -1, -1)  # its cells are free
        state.close(self.lib)

    def _sample(self, state: _Live, index: int) -> None:
        lib = self.lib
        token = int(lib.llama_sampler_sample(state.sampler, self.ctx, index))
        state.seq.token()
        if lib.llama_vocab_is_eog(self.vocab, token):
            self._leave(state, "stop")
            return
        state.generated += 1
        text, stopped = state.text.feed(_piece(lib, self.vocab, token, self.piece))
        state.write(text)
        if stopped:
            self._leave(state, "stop")
        elif state.generated >= state.max_tokens:
            self._leave(state, "length")
        else:
            state.last = token

    def _drop_stopped(self) -> list[_Live]:
        for state in self.live:
            if not state.seq.done and state.seq.wants_stop():
                self._leave(state, "cancelled")
        return [s for s in self.live if not s.seq.done]
