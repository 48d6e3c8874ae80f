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
import threading
from collections.abc import Callable
from collections.abc import Sequence as MessageList
from typing import Any

from ...errors import GenerationError
from ..base import Message
from ..batch import FEED_MARK, Sequence, Turn, Write, fed_messages
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
        #: The text the handler tokenized last, with its add_bos and special flags.
        self.text: tuple[bytes, bool, bool] | None = None

    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = False) -> Any:
        self.text = (text, add_bos, special)
        return self._llm.tokenize(text, add_bos, special)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._llm, name)

    def create_completion(self, prompt: Any, stop: Any = None, **_: Any) -> Any:
        self.prompt = prompt
        self.stop = [stop] if isinstance(stop, str) else [s for s in (stop or []) if s]
        raise _Captured


def _recorded(llm: Any, messages: MessageList[Message]) -> _PromptRecorder:
    """What the chat handler made of a chat: its prompt (text or tokens), stop strings,
    and the text it tokenized (when it did)."""
    from llama_cpp import llama_chat_format

    handler = (llm.chat_handler or llm._chat_handlers.get(llm.chat_format)
               or llama_chat_format.get_chat_completion_handler(llm.chat_format))
    recorder: Any = _PromptRecorder(llm)
    chat: Any = [dict(m) for m in messages]
    with contextlib.suppress(_Captured):
        handler(llama=recorder, messages=chat, stream=True, stop=[])
    if recorder.prompt is None:
        raise GenerationError("the chat handler produced no prompt")
    return recorder


def chat_prompt(llm: Any, messages: MessageList[Message]) -> tuple[list[int], list[str]]:
    """The prompt tokens and stop strings of a chat, as ``create_chat_completion`` makes them."""
    recorder = _recorded(llm, messages)
    prompt = recorder.prompt
    if isinstance(prompt, str):
        prompt = llm.tokenize(prompt.encode("utf-8"), special=True)
    return [int(t) for t in prompt], recorder.stop


def split_prompt(llm: Any, messages: MessageList[Message]
                 ) -> tuple[list[int], list[int], list[str]] | None:
    """A fed chat's prompt tokens before its FEED_MARK and after it (the text the handler
    tokenized, cut at the mark and tokenized as it did), and its stop strings; None when
    the mark is not there once."""
    recorder = _recorded(llm, messages)
    if isinstance(recorder.prompt, str):
        text, add_bos, special = recorder.prompt.encode("utf-8"), True, True
    elif recorder.text is not None:
        text, add_bos, special = recorder.text
    else:
        return None
    mark = FEED_MARK.encode("utf-8")
    if text.count(mark) != 1:
        return None
    head, tail = text.split(mark)
    return ([int(t) for t in llm.tokenize(head, add_bos, special)],
            [int(t) for t in llm.tokenize(tail, False, special)], recorder.stop)


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


class _Prompt:
    """A sequence's prompt as the loop starts it: the tokens known now (a fed one's up to
    its FEED_MARK), those after the mark (added when its feed closes), the text it wrote
    before a restart, and whether the mark could not be placed in tokens (the chat
    handler gave tokens: the whole prompt is tokenized when the feed closes)."""

    def __init__(self, tokens: list[int], tail: list[int] | None = None,
                 resumed: list[int] | None = None, deferred: bool = False) -> None:
        self.tokens, self.tail = tokens, tail or []
        self.resumed, self.deferred = resumed or [], deferred


class _Live:
    """The state of one sequence while it decodes."""

    def __init__(self, seq: Sequence, seq_id: int, prompt: _Prompt,
                 stops: list[str], n_ctx: int, lib: Any, vocab: Any, model: str) -> None:
        self.seq = seq
        self.model = model
        self.id = seq_id
        self.n_ctx = n_ctx
        self.tokens = prompt.tokens + prompt.resumed
        self.tail, self.deferred = prompt.tail, prompt.deferred
        self.head = len(prompt.tokens)  # a fed prompt: the tokens before its first piece
        self.open = seq.feed is not None  # its feed may still bring text
        self.taken = 0  # feed pieces taken so far
        self.prompt_tokens = len(prompt.tokens)
        self.shared = 0  # positions evaluated once with other sequences
        self.pos = 0  # positions decoded so far
        self.last = 0  # the token sampled last, decoded next
        self.index = 0  # its place in the batch being decoded
        self.sampling = False  # its prompt is evaluated: it writes
        #: A staircase: its answer's turn has begun; it stops writing at ``pause_at``
        #: tokens to read what its feed brings next; ``read_now``: sample at the end of
        #: what is known (a ``Write`` came); ``between``: the template's tokens that end
        #: an answer's turn and begin a user's.
        self.in_answer = False
        self.pause_at: int | None = None
        self.read_now = False
        self.between: list[int] | None = None
        self.own = 0  # tokens it wrote that are in ``tokens`` (a staircase reads on after them)
        self.generated = seq.resume_tokens  # produced before a restart count too
        self.max_tokens = 0
        options = seq.options
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
        for token in prompt.resumed:  # the grammar goes on from the text already written
            lib.llama_sampler_accept(self.sampler, token)
        if not self.open:
            self.limit()

    def limit(self) -> None:
        """Its token budget, once its prompt is whole: max_tokens, within the context."""
        options = self.seq.options
        room = self.n_ctx - len(self.tokens)
        left = options.max_tokens - self.generated if options.max_tokens > 0 else room
        self.max_tokens = self.generated + min(left, room)

    def room_for_feed(self) -> int:
        """Tokens its feed may still add: the context less its prompt, its tail and the
        answer it must have room to write."""
        options = self.seq.options
        answer = options.max_tokens if options.max_tokens > 0 else self.n_ctx // 4
        answer = max(0, answer - self.generated)  # (what it wrote is in ``tokens``)
        tail = 0 if self.in_answer else len(self.tail)
        return self.n_ctx - len(self.tokens) - tail - answer

    def pending(self) -> int:
        """Prompt tokens known and not yet evaluated."""
        return 0 if self.sampling else len(self.tokens) - self.pos

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
                 model: str = "", join: Any = None,
                 threads_now: Callable[[], int] | None = None) -> None:
    """Decode ``seqs`` together in ``llm``'s context until each has finished (``model``:
    its name, for messages). ``join``: a Batch whose members may join while it decodes
    (``late()``, ``on_join``). ``threads_now``: the threads to use, read at every step
    (0: ``n_threads``)."""
    import llama_cpp.llama_cpp as lib

    ctx = llm.ctx
    n_seq_max = int(lib.llama_n_seq_max(ctx))
    if len(seqs) > n_seq_max:
        for seq in seqs[n_seq_max:]:
            seq.fail(f"the model instance was loaded for {n_seq_max} sequences, not "
                     f"{len(seqs)}")
        seqs = seqs[:n_seq_max]
    memory = lib.llama_get_memory(ctx)
    lib.llama_memory_clear(memory, True)
    llm.reset()  # llama-cpp-python's own prompt cache no longer matches the context
    if n_threads:
        lib.llama_set_n_threads(ctx, n_threads, n_threads)
    loop = _Loop(lib, llm, memory, n_ctx_seq, model, n_seq_max, join)
    loop.threads = (n_threads, threads_now)
    try:
        for seq in seqs:
            loop.start(seq)
        loop.run()
    finally:
        loop.close()
        lib.llama_memory_clear(memory, True)


def _start(llm: Any, seq: Sequence, seq_id: int, n_ctx_seq: int, lib: Any, vocab: Any,
           model: str) -> _Live | None:
    """The decoding state of ``seq``, or None when it ends before its first step. Its
    chat template failing fails it alone, never the batch it joins."""
    try:
        return _started(llm, seq, seq_id, n_ctx_seq, lib, vocab, model)
    except (GenerationError, RuntimeError, ValueError, TypeError, KeyError) as exc:
        seq.fail(f"model {model!r}: its chat template failed on this prompt: {exc}")
        return None


def _started(llm: Any, seq: Sequence, seq_id: int, n_ctx_seq: int, lib: Any, vocab: Any,
             model: str) -> _Live | None:
    if seq.wants_stop():
        seq.finish("cancelled", seq.resume_tokens)
        return None
    if seq.feed is not None and not seq.resume_text:
        split = split_prompt(llm, seq.messages)
        if split is None:  # the whole prompt is tokenized when its feed closes
            _, stops = chat_prompt(llm, fed_messages(seq.messages, ""))
            prompt = _Prompt([], deferred=True)
        else:
            head, tail, stops = split
            prompt = _Prompt(head, tail)
            if len(head) + len(tail) >= n_ctx_seq:
                seq.fail(f"the prompt has {len(head) + len(tail)} tokens before its "
                         f"references; the context window is {n_ctx_seq} (raise n_ctx or "
                         "shorten the prompt)")
                return None
    else:
        messages = (seq.messages if seq.feed is None
                    else fed_messages(seq.messages, seq.feed.text()))  # resumed: it was whole
        tokens, stops = chat_prompt(llm, messages)
        prompt = _Prompt(tokens, resumed=_resumed(llm, seq))
        if len(tokens) >= n_ctx_seq:
            seq.fail(f"the prompt has {len(tokens)} tokens; the context window is "
                     f"{n_ctx_seq} (raise n_ctx or shorten the prompt)")
            return None
        spent = 0 < seq.options.max_tokens <= seq.resume_tokens
        if seq.resume_text and (spent or len(tokens) + len(prompt.resumed) >= n_ctx_seq):
            seq.prompt(len(tokens), 0, 1)
            seq.finish("length", seq.resume_tokens)  # its tokens or its context are used up
            return None
    try:
        return _Live(seq, seq_id, prompt, stops, n_ctx_seq, lib, vocab, model)
    except GenerationError as exc:  # its schema: only this sequence fails
        seq.fail(str(exc))
        return None


def _resumed(llm: Any, seq: Sequence) -> list[int]:
    """The tokens of the text a sequence wrote before a restart (its answer's start)."""
    if not seq.resume_text:
        return []
    return [int(t) for t in llm.tokenize(seq.resume_text.encode("utf-8"), add_bos=False,
                                         special=False)]


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


#: How long an idle loop (every sequence waiting for its feed) sleeps between looks
#: at its agents' stops; a feed's text or a join wakes it at once.
IDLE_WAIT_S = 0.05
#: A fed sequence evaluates its streamed text in chunks of at least this many tokens
#: while its feed is open (one token at a time, each a row of every step, costs several
#: times more per token on a CPU than a chunk does); what is left goes once it closes.
FEED_CHUNK_TOKENS = 32
#: Marks a streamed piece cut to fit the context (as prompts.TRIM_MARK).
_TRIM = " [...]"


class _Loop:
    """Continuous batching of a batch's sequences in one context, as llama-server's slots:
    each step is one ``llama_decode`` of at most ``n_batch`` tokens that holds the next
    token of every sequence that writes, then prompt tokens of those still reading
    (chunked prefill: a long prompt spreads over steps), in the order they came. A fed
    sequence reads its prompt as its feed brings it; a sequence may join (a joinable
    batch) and starts from the longest prefix another one has evaluated; one that ends
    leaves and frees its cells."""

    def __init__(self, lib: Any, llm: Any, memory: Any, n_ctx: int, model: str,
                 n_seq_max: int, join: Any) -> None:
        self.lib, self.llm, self.ctx, self.memory = lib, llm, llm.ctx, memory
        self.vocab = lib.llama_model_get_vocab(llm.model)
        self.n_ctx, self.model, self.n_seq_max, self.join = n_ctx, model, n_seq_max, join
        self.n_batch = int(lib.llama_n_batch(self.ctx))
        self.live: list[_Live] = []
        self.batch = _Batch(lib, self.n_batch, n_seq_max)
        self.piece = ctypes.create_string_buffer(256)
        self.wake = threading.Event()
        self.began = False  # the first sequences' shared prefix is evaluated
        #: The threads set now, and what says how many to use (None: they never change).
        self.threads: tuple[int, Callable[[], int] | None] = (0, None)
        if join is not None:
            join.on_join(self.wake.set)

    def start(self, seq: Sequence) -> None:
        """Take ``seq`` in: at the next step it reads its prompt (or its first tokens
        are copied from a sequence that has evaluated them)."""
        used = {s.id for s in self.live if not s.seq.done}
        free = next((i for i in range(self.n_seq_max) if i not in used), None)
        if free is None:
            seq.fail(f"the model instance was loaded for {self.n_seq_max} sequences, and "
                     "all are in use")
            return
        state = _start(self.llm, seq, free, self.n_ctx, self.lib, self.vocab, self.model)
        if state is None:
            return
        self.live = [s for s in self.live if not s.seq.done]
        if seq.feed is not None:
            seq.feed.listen(self.wake.set)
        if self.began:  # it joins a running batch: reuse what another has evaluated
            self._copy_prefix(state)
        self.live.append(state)

    def close(self) -> None:
        for state in self.live:
            state.close(self.lib)
        self.batch.free()

    def run(self) -> None:
        self._shared_prefix()
        self.began = True
        while self._step():
            pass

    def _shared_prefix(self) -> None:
        """The tokens the first sequences' prompts start with, once, as positions of
        every one of them (their KV cells are shared)."""
        members = [s for s in self.live if s.tokens]
        shared = common_prefix([s.tokens for s in members])
        ids = [s.id for s in members]
        for begin in range(0, shared, self.n_batch):
            for pos in range(begin, min(shared, begin + self.n_batch)):
                self.batch.add(members[0].tokens[pos], pos, ids, False)
            self.batch.decode(self.ctx)
        for state in members:
            state.pos = state.shared = shared
        for state in self.live:
            if not state.open and not state.deferred:
                state.seq.prompt(state.prompt_tokens, min(state.shared, state.prompt_tokens),
                                 len(self.live))

    def _copy_prefix(self, state: _Live) -> None:
        best, n = None, 0
        for other in self.live:
            if other.seq.done:
                continue
            k = common_prefix([state.tokens, other.tokens[:other.pos] + [-1]])
            if k > n:
                best, n = other, k
        if best is not None:
            self.lib.llama_memory_seq_cp(self.memory, best.id, state.id, 0, n)
            state.pos = state.shared = n
        if not state.open:
            state.seq.prompt(state.prompt_tokens, state.shared, len(self.live) + 1)

    def _step(self) -> bool:
        """One decode; False when nothing is left to decode, nor can come."""
        if self.join is not None:
            for seq in self.join.late():
                self.start(seq)
        for state in self.live:
            if state.open and not state.seq.done:
                try:
                    self._take_feed(state)
                except (GenerationError, RuntimeError, ValueError, TypeError, KeyError) as exc:
                    state.seq.fail(f"model {self.model!r}: its streamed prompt failed: {exc}")
                    self._free(state)
        running = self._drop_stopped()
        if not running and not (self.join is not None and self.join.joinable):
            late = self.join.late() if self.join is not None else []
            for seq in late:  # joined as the batch was sealed
                self.start(seq)
            return bool(late)
        sampling = self._fill(running)
        now, wanted = self.threads
        if wanted is not None and wanted() and wanted() != now:
            self.threads = (wanted(), wanted)
            self.lib.llama_set_n_threads(self.ctx, self.threads[0], self.threads[0])
        if self.batch.n == 0:  # every sequence waits for its feed (or none is left)
            self.wake.wait(IDLE_WAIT_S)
            self.wake.clear()
            return True
        self.batch.decode(self.ctx)
        for state, index in sampling:
            if not state.seq.done:
                self._sample(state, index)
        return True

    def _fill(self, running: list[_Live]) -> list[tuple[_Live, int]]:
        """This step's tokens: every writer's next one, then prompt tokens up to the
        budget; the sequences that sample after it, with their rows."""
        budget = self.n_batch
        sampling = []
        for state in running:
            if state.sampling:
                if state.seq.feed is not None:  # its prompt goes on after what it writes
                    state.tokens.append(state.last)
                    state.own += 1
                sampling.append((state, self.batch.add(state.last, state.pos, [state.id], True)))
                state.pos += 1
                budget -= 1
        for state in running:
            pending = state.pending()
            if state.open and not state.read_now and pending < FEED_CHUNK_TOKENS:
                continue  # a whole chunk, or its end, is worth a place in a step
            n = min(budget, pending)
            if n <= 0:
                continue
            for pos in range(state.pos, state.pos + n):
                last = pos == len(state.tokens) - 1 and (not state.open or state.read_now)
                index = self.batch.add(state.tokens[pos], pos, [state.id], last)
                if last:
                    sampling.append((state, index))
            state.pos += n
            budget -= n
        return sampling

    def _take_feed(self, state: _Live) -> None:
        """The items its feed brought since the last step (text to read; a staircase's
        ``Write`` and ``Turn``), taken while it is not writing; at its close, the rest
        of its prompt."""
        feed = state.seq.feed
        assert feed is not None
        items, closed = feed.since(state.taken)
        for item in items:
            if state.sampling or state.read_now:
                break  # it writes: what comes next waits until it stops to read
            state.taken += 1
            if isinstance(item, Write):
                self._write_now(state, item.tokens)
            elif state.deferred:
                continue  # the whole prompt is read at the close
            elif isinstance(item, Turn):
                if state.in_answer:  # its answer so far ends its turn
                    state.tokens += self._between(state)
                    state.in_answer = False
                state.tokens += self._fitted(state, item.text)
            else:
                state.tokens += self._fitted(state, item)
        if not closed or feed.since(state.taken)[0]:
            return  # open, or items wait for its writing to stop
        if state.sampling or state.read_now:
            state.pause_at = None  # nothing more will come: it writes to its end
            state.open = False
            self._whole(state)
            return
        self._close_feed(state)

    def _whole(self, state: _Live) -> None:
        """Its prompt is whole: what it read early, and its size, for its stats."""
        state.seq.early_tokens = max(0, min(state.pos, len(state.tokens)) - state.head
                                     - state.own)
        state.prompt_tokens = len(state.tokens) - state.own
        state.seq.prompt(state.prompt_tokens, state.shared, len(self.live))

    def _close_feed(self, state: _Live) -> None:
        """Its feed closed: the rest of its prompt, and it writes to its end."""
        feed = state.seq.feed
        assert feed is not None
        state.open = False
        state.seq.early_tokens = max(0, min(state.pos, len(state.tokens)) - state.head
                                     - state.own)  # (before its tail is added)
        if state.deferred:
            state.tokens, _ = chat_prompt(self.llm, fed_messages(state.seq.messages,
                                                                 feed.text()))
        else:
            if not state.in_answer:
                state.tokens += state.tail
            state.in_answer = True
            if state.pos >= len(state.tokens):  # no tail: its last position again, to sample
                state.pos = len(state.tokens) - 1
                self.lib.llama_memory_seq_rm(self.memory, state.id, state.pos, -1)
        early = state.seq.early_tokens
        self._whole(state)
        state.seq.early_tokens = early
        if len(state.tokens) >= self.n_ctx:
            state.seq.fail(f"the prompt has {len(state.tokens)} tokens; the context window "
                           f"is {self.n_ctx} (raise n_ctx or shorten the prompt)")
            self._free(state)
            return
        state.limit()

    def _write_now(self, state: _Live, tokens: int) -> None:
        """A staircase's ``Write``: it answers now, up to ``tokens`` tokens, then reads on."""
        if state.deferred:
            return  # its prompt is read whole at the close, and it writes then
        if not state.in_answer:
            state.tokens += state.tail
            state.in_answer = True
        if state.pos >= len(state.tokens):  # all of it read: its last position again
            state.pos = len(state.tokens) - 1
            self.lib.llama_memory_seq_rm(self.memory, state.id, state.pos, -1)
        state.read_now = True
        state.pause_at = state.generated + tokens
        if not state.max_tokens:
            state.limit()

    def _between(self, state: _Live) -> list[int]:
        """The chat template's tokens between an answer and the user's next turn."""
        if state.between is None:
            answer, user = "\ue002", "\ue003"
            messages = [*fed_messages(state.seq.messages, ""),
                        Message(role="assistant", content=answer),
                        Message(role="user", content=user)]
            text = _recorded(self.llm, messages)
            raw = (text.prompt if isinstance(text.prompt, str) else
                   text.text[0].decode("utf-8", "replace") if text.text else "")
            if answer in raw and user in raw.split(answer, 1)[1]:
                middle = raw.split(answer, 1)[1].split(user, 1)[0]
            else:
                middle = "\n\n"
            state.between = [int(t) for t in self.llm.tokenize(middle.encode("utf-8"), False,
                                                                True)]
        return state.between

    def _fitted(self, state: _Live, piece: str) -> list[int]:
        """A streamed piece's tokens, cut (and marked) where the context has no room."""
        tokens = [int(t) for t in self.llm.tokenize(piece.encode("utf-8"), add_bos=False,
                                                     special=False)]
        room = state.room_for_feed()
        if len(tokens) <= room:
            return tokens
        mark = [int(t) for t in self.llm.tokenize(_TRIM.encode("utf-8"), add_bos=False,
                                                   special=False)]
        return tokens[:max(0, room - len(mark))] + mark if room > len(mark) else []

    def _free(self, state: _Live) -> None:
        self.lib.llama_memory_seq_rm(self.memory, state.id, -1, -1)  # its cells are free
        state.close(self.lib)

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
        self._free(state)

    def _sample(self, state: _Live, index: int) -> None:
        lib = self.lib
        token = int(lib.llama_sampler_sample(state.sampler, self.ctx, index))
        state.sampling, state.read_now = True, False
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
        elif state.pause_at is not None and state.generated >= state.pause_at:
            state.sampling, state.pause_at = False, None  # a staircase's part is written:
            state.tokens.append(token)  # its last token is read with what comes next
            state.own += 1
        else:
            state.last = token

    def _drop_stopped(self) -> list[_Live]:
        for state in self.live:
            if not state.seq.done and state.seq.wants_stop():
                self._leave(state, "cancelled")
        return [s for s in self.live if not s.seq.done]
