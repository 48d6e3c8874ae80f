"""One sequence as the batch loop decodes it: its prompt (a fed one's head and tail, the
text written before a restart), its positions, sampler, budget and text, and how it
starts (its chat template failing fails it alone)."""

from __future__ import annotations

from typing import Any

from ...errors import GenerationError
from ..batch import Sequence, fed_messages
from ..structured import gbnf, stops_for
from .chat_prompt import chat_prompt, split_prompt
from .sampling import Text, grammar_sampler, sampler_chain

#: A staircase's later answer turns open with this many of its last written tokens, read
#: again, so that it goes on from its last words instead of starting a new reply (small
#: models otherwise restart, or end, at every turn).
RESUME_TOKENS = 16


class Prompt:
    """A sequence's prompt as the loop starts it: the tokens known now (a fed one's up to
    its FEED_MARK), those after the mark (added when its feed closes), the text it wrote
    before a restart, and whether the mark could not be placed in tokens (the chat
    handler gave tokens: the whole prompt is tokenized when the feed closes)."""

    def __init__(self, tokens: list[int], tail: list[int] | None = None,
                 resumed: list[int] | None = None, deferred: bool = False) -> None:
        self.tokens, self.tail = tokens, tail or []
        self.resumed, self.deferred = resumed or [], deferred


class Live:
    """The state of one sequence while it decodes."""

    def __init__(self, seq: Sequence, seq_id: int, prompt: Prompt,
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
        self.held = ""  # streamed text taken, not yet tokenized (its last word may go on)
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
        #: A fed sequence's answer as tokens, over all its turns (a staircase's next turn
        #: opens with its last ones).
        self.written: list[int] = []
        self.no_end = False  # its next token may not end its turn (it resumed its words)
        self.generated = seq.resume_tokens  # produced before a restart count too
        self.max_tokens = 0
        options = seq.options
        self.text = Text([*stops, *stops_for(options)])
        #: The answer so far, kept only to check it is whole JSON (a schema is given).
        self.answer: list[str] | None = (None if options.json_schema is None
                                         else [seq.resume_text])
        grammar = None
        if options.json_schema is not None:
            try:
                grammar = grammar_sampler(lib, vocab, gbnf(options.json_schema))
            except GenerationError as exc:
                raise GenerationError(f"model {model!r}: {exc}") from None
        self.sampler = sampler_chain(lib, options.temperature, options.top_p, options.seed, grammar)
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
        """Tokens its feed may still add: the context less its prompt, its tail (and the
        words it resumes with) and the answer it must have room to write."""
        options = self.seq.options
        answer = options.max_tokens if options.max_tokens > 0 else self.n_ctx // 4
        answer = max(0, answer - self.generated)  # (what it wrote is in ``tokens``)
        tail = 0 if self.in_answer else len(self.tail) + len(self.resumes())
        return self.n_ctx - len(self.tokens) - tail - answer

    def resumes(self) -> list[int]:
        """The words its next answer turn opens with: its last written tokens."""
        return self.written[-RESUME_TOKENS:]

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


def start_sequence(llm: Any, seq: Sequence, seq_id: int, n_ctx_seq: int, lib: Any, vocab: Any,
           model: str) -> Live | None:
    """The decoding state of ``seq``, or None when it ends before its first step. Its
    chat template failing fails it alone, never the batch it joins."""
    try:
        return _started(llm, seq, seq_id, n_ctx_seq, lib, vocab, model)
    except (GenerationError, RuntimeError, ValueError, TypeError, KeyError) as exc:
        seq.fail(f"model {model!r}: its chat template failed on this prompt: {exc}")
        return None


def _started(llm: Any, seq: Sequence, seq_id: int, n_ctx_seq: int, lib: Any, vocab: Any,
             model: str) -> Live | None:
    if seq.wants_stop():
        seq.finish("cancelled", seq.resume_tokens)
        return None
    if seq.feed is not None and not seq.resume_text:
        split = split_prompt(llm, seq.messages)
        if split is None:  # the whole prompt is tokenized when its feed closes
            _, stops = chat_prompt(llm, fed_messages(seq.messages, ""))
            prompt = Prompt([], deferred=True)
        else:
            head, tail, stops = split
            prompt = Prompt(head, tail)
            if len(head) + len(tail) >= n_ctx_seq:
                seq.fail(f"the prompt has {len(head) + len(tail)} tokens before its "
                         f"references; the context window is {n_ctx_seq} (raise n_ctx or "
                         "shorten the prompt)")
                return None
    else:
        messages = (seq.messages if seq.feed is None
                    else fed_messages(seq.messages, seq.feed.text()))  # resumed: it was whole
        tokens, stops = chat_prompt(llm, messages)
        prompt = Prompt(tokens, resumed=_resumed(llm, seq))
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
        return Live(seq, seq_id, prompt, stops, n_ctx_seq, lib, vocab, model)
    except GenerationError as exc:  # its schema: only this sequence fails
        seq.fail(str(exc))
        return None


def _resumed(llm: Any, seq: Sequence) -> list[int]:
    """The tokens of the text a sequence wrote before a restart (its answer's start)."""
    if not seq.resume_text:
        return []
    return [int(t) for t in llm.tokenize(seq.resume_text.encode("utf-8"), add_bos=False,
                                         special=False)]
