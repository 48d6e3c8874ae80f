"""Batched decoding on llama.cpp: the sequences of a Batch in one llama context.

The context was created with room for several sequences in one unified KV cache
(``n_seq_max``, ``kv_unified``). A batch then runs as llama-server's slots and
``llama-batched`` do:

1. every chat is formatted and tokenized exactly as llama-cpp-python's own chat
   completion would (same handler, same tokens, same stop strings: chat_prompt.py),
   each sequence's state kept in sequence_state.py, its sampling in sampling.py;
2. the tokens all prompts start with are decoded once, as positions of every
   sequence at the same time, so their KV cells are shared;
3. each prompt's own rest is decoded, all sequences in one batch, and each
   sequence samples its first token from its last prompt position (a fed sequence's
   head, the part of its prompt known from the start, follows the others' prompts and
   rides along their steps: ``_head_room``);
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

import ctypes
import threading
from collections.abc import Callable
from typing import Any

from ...errors import GenerationError
from ..batch import Sequence, Turn, Write, fed_messages
from ..structured import check_json_answer
from .chat_prompt import chat_prompt, turn_boundary
from .feed_text import FeedText
from .sampling import token_bytes
from .sequence_state import Live, start_sequence
from .token_batch import TokenBatch, common_prefix, end_tokens


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


#: How long an idle loop (every sequence waiting for its feed) sleeps between looks
#: at its agents' stops; a feed's text or a join wakes it at once.
IDLE_WAIT_S = 0.05
#: A fed sequence evaluates its streamed text in chunks of at least this many tokens
#: while its feed is open (one token at a time, each a row of every step, costs several
#: times more per token on a CPU than a chunk does); what is left goes once it closes.
FEED_CHUNK_TOKENS = 32
#: A fed sequence (the next stage, reading the proposers as they write) reads the head
#: of its prompt, known from the start, once the others have read their prompts, and
#: then at most this many tokens a step while they write: the proposers it waits for
#: write their first tokens first, and its head rides along their steps instead of
#: delaying them (chunked prefill, as llama-server's and vLLM's schedulers do).
HEAD_STEP_TOKENS = 32


class _Loop:
    """Continuous batching of a batch's sequences in one context, as llama-server's slots:
    each step is one ``llama_decode`` of at most ``n_batch`` tokens that holds the next
    token of every sequence that writes, then prompt tokens of those still reading
    (chunked prefill: a long prompt spreads over steps), in the order they came, fed
    ones last. A fed sequence reads its prompt as its feed brings it, and its head in
    pieces while others decode; a sequence may join (a joinable batch) and starts from
    the longest prefix another one has evaluated; one that ends leaves and frees its
    cells."""

    def __init__(self, lib: Any, llm: Any, memory: Any, n_ctx: int, model: str,
                 n_seq_max: int, join: Any) -> None:
        self.lib, self.llm, self.ctx, self.memory = lib, llm, llm.ctx, memory
        self.vocab = lib.llama_model_get_vocab(llm.model)
        self.n_ctx, self.model, self.n_seq_max, self.join = n_ctx, model, n_seq_max, join
        self.n_batch = int(lib.llama_n_batch(self.ctx))
        self.live: list[Live] = []
        self.batch = TokenBatch(lib, self.n_batch, n_seq_max)
        self.piece = ctypes.create_string_buffer(256)
        self.wake = threading.Event()
        self.began = False  # the first sequences' shared prefix is evaluated
        self.ends: list[int] | None = None  # the vocabulary's end-of-generation tokens
        self.text = FeedText(llm)  # its streamed text, as tokens
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
        state = start_sequence(self.llm, seq, free, self.n_ctx, self.lib, self.vocab, self.model)
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

    def _copy_prefix(self, state: Live) -> None:
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

    def _fill(self, running: list[Live]) -> list[tuple[Live, int]]:
        """This step's tokens: every writer's next one, then prompt tokens up to the
        budget (a fed sequence's after the others': see ``_head_room``); the sequences
        that sample after it, with their rows."""
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
        reading = False  # a sequence that is not fed reads its prompt in this step
        for state in sorted(running, key=lambda s: s.seq.feed is not None):
            pending = state.pending()
            if (state.open and not state.read_now and pending < FEED_CHUNK_TOKENS
                    and state.pos >= state.head):
                continue  # a whole chunk, or its end, is worth a place in a step
            n = min(budget, pending, self._head_room(state, reading))
            if n <= 0:
                continue
            reading = reading or state.seq.feed is None
            for pos in range(state.pos, state.pos + n):
                last = pos == len(state.tokens) - 1 and (not state.open or state.read_now)
                index = self.batch.add(state.tokens[pos], pos, [state.id], last)
                if last:
                    sampling.append((state, index))
            state.pos += n
            budget -= n
        return sampling

    def _head_room(self, state: Live, reading: bool) -> int:
        """How much of its prompt a sequence may read in this step: a fed one's head
        waits while the others read their prompts, then rides along their steps in
        HEAD_STEP_TOKENS pieces; alone in the step, past its head, or once it must write
        (a staircase's Write, its feed closed: its head is then what it waits for), all
        of it."""
        if (state.seq.feed is None or state.pos >= state.head or state.read_now
                or not state.open):
            return self.n_batch
        if reading:
            return 0
        return HEAD_STEP_TOKENS if self.batch.n else self.n_batch

    def _take_feed(self, state: Live) -> None:
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
                self._read_held(state, everything=True)
                self._write_now(state, item.tokens)
            elif state.deferred:
                continue  # the whole prompt is read at the close
            elif isinstance(item, Turn):
                self._read_held(state, everything=True)
                if state.in_answer:  # its answer so far ends its turn
                    state.tokens += self._between(state)
                    state.in_answer = False
                state.tokens += self._fitted(state, item.text)
            else:
                state.held += item
                self._read_held(state, everything=False)
        if not closed or feed.since(state.taken)[0]:
            return  # open, or items wait for its writing to stop
        self._read_held(state, everything=True)
        if state.sampling or state.read_now:
            state.pause_at = None  # nothing more will come: it writes to its end
            state.open = False
            state.limit()
            self._whole(state, self._early(state))
            return
        self._close_feed(state)

    def _read_held(self, state: Live, everything: bool) -> None:
        """Tokenize the streamed text it holds, all of it or up to where FeedText says
        it reads the same however its pieces came."""
        cut = self.text.held_cut(state.held, everything)
        if cut:
            state.tokens += self._fitted(state, state.held[:cut])
            state.held = state.held[cut:]

    @staticmethod
    def _early(state: Live) -> int:
        """Streamed prompt tokens it has read so far (not its head, not its own words)."""
        return max(0, min(state.pos, len(state.tokens)) - state.head - state.own)

    def _whole(self, state: Live, early: int) -> None:
        """Its prompt is whole: what it read early, and its size, for its stats."""
        state.seq.early_tokens = early
        state.prompt_tokens = len(state.tokens) - state.own
        state.seq.prompt(state.prompt_tokens, state.shared, len(self.live))

    def _close_feed(self, state: Live) -> None:
        """Its feed closed: the rest of its prompt, and it writes to its end."""
        feed = state.seq.feed
        assert feed is not None
        state.open = False
        early = self._early(state)  # (before its tail is added)
        if state.deferred:
            state.tokens, _ = chat_prompt(self.llm, fed_messages(state.seq.messages,
                                                                 feed.text()))
        else:
            self._answer_turn(state)
        self._whole(state, early)
        if len(state.tokens) >= self.n_ctx:
            state.seq.fail(f"the prompt has {len(state.tokens)} tokens; the context window "
                           f"is {self.n_ctx} (raise n_ctx or shorten the prompt)")
            self._free(state)
            return
        state.limit()

    def _write_now(self, state: Live, tokens: int) -> None:
        """A staircase's ``Write``: it answers now, up to ``tokens`` tokens, then reads on."""
        if state.deferred:
            return  # its prompt is read whole at the close, and it writes then
        self._answer_turn(state)
        state.read_now = True
        state.pause_at = state.generated + tokens
        state.limit()  # (the context's room shrinks with every round)

    def _answer_turn(self, state: Live) -> None:
        """Its answer's turn begins (the template's start of it, unless it is in it) and
        it samples from the end of what it has read (read again when all of it is)."""
        if not state.in_answer:
            room = max(0, state.n_ctx - len(state.tokens) - len(state.tail) - 1)
            again = state.resumes()[-room:] if room else []  # it goes on from its last words
            state.tokens += state.tail + again
            state.own += len(again)
            # (its earlier turn ended after these very words; a grammar keeps its own ends)
            state.no_end = bool(again) and state.answer is None
            state.in_answer = True
        if state.pos >= len(state.tokens):
            state.pos = len(state.tokens) - 1
            self.lib.llama_memory_seq_rm(self.memory, state.id, state.pos, -1)

    def _between(self, state: Live) -> list[int]:
        """The chat template's tokens between an answer and the user's next turn."""
        if state.between is None:
            middle = turn_boundary(self.llm, fed_messages(state.seq.messages, ""))
            state.between = [int(t) for t in self.llm.tokenize(middle.encode("utf-8"), False,
                                                                True)]
        return state.between

    def _fitted(self, state: Live, piece: str) -> list[int]:
        """A streamed piece's tokens, within the room its context has for its feed."""
        return self.text.fitted(piece, state.room_for_feed())

    def _free(self, state: Live) -> None:
        self.lib.llama_memory_seq_rm(self.memory, state.id, -1, -1)  # its cells are free
        state.close(self.lib)

    def _leave(self, state: Live, reason: str | None) -> None:
        if state.open:  # it ended before its feed closed (a staircase's answer can):
            state.open = False  # what it has read is its prompt, all of it read early
            self._whole(state, self._early(state))
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

    def _sample(self, state: Live, index: int) -> None:
        lib = self.lib
        if state.no_end:  # a resumed turn's first token: not the end it copied
            self._ban_end(index)
            state.no_end = False
        token = int(lib.llama_sampler_sample(state.sampler, self.ctx, index))
        state.sampling, state.read_now = True, False
        state.seq.token()
        if lib.llama_vocab_is_eog(self.vocab, token):
            self._leave(state, "stop")
            return
        state.generated += 1
        if state.seq.feed is not None:
            state.written.append(token)
        text, stopped = state.text.feed(token_bytes(lib, self.vocab, token, self.piece))
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

    def _ban_end(self, index: int) -> None:
        """No end of turn at this row: every end-of-generation token's logit to -inf."""
        if self.ends is None:
            self.ends = end_tokens(self.lib, self.vocab)
        logits = self.lib.llama_get_logits_ith(self.ctx, index)
        for token in self.ends:
            logits[token] = float("-inf")

    def _drop_stopped(self) -> list[Live]:
        for state in self.live:
            if not state.seq.done and state.seq.wants_stop():
                self._leave(state, "cancelled")
        return [s for s in self.live if not s.seq.done]
