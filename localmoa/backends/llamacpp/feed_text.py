"""Streamed text as a fed sequence reads it: tokenized piece by piece, yet the same
tokens however its pieces came (a worker's replies and a proposer's held-back stop
strings cut it where timing says), and cut to the context's room."""

from __future__ import annotations

from typing import Any

#: Marks a streamed piece cut to fit the context (as prompts.TRIM_MARK).
_TRIM = " [...]"
#: Streamed text a fed sequence holds (waiting for a place to cut it that the tokenizer
#: agrees with) is read whole past this many characters.
HELD_MAX_CHARS = 512
#: How many places to cut held text are checked with the tokenizer before it waits for
#: more text; and what a line may end with for a cut after it (CJK text has no spaces).
_CUTS_TRIED = 3
_LINE_ENDS = "\n。！？；"


class FeedText:
    """Tokenizes a fed sequence's streamed text with ``llm``'s vocabulary."""

    def __init__(self, llm: Any) -> None:
        self.llm = llm
        #: The tokenizer puts a space before every text (SentencePiece's prefix): None
        #: until a piece is tokenized.
        self.space_prefix: bool | None = None

    def held_cut(self, text: str, everything: bool) -> int:
        """Where held ``text`` may be read up to now: all of it (``everything``, or once
        it is long), else a cut where the tokenizer reads both parts as the whole (a
        word's start, a line's end), or 0 to wait for more."""
        return len(text) if everything or len(text) > HELD_MAX_CHARS else self.cut(text)

    def cut(self, text: str) -> int:
        """The last of a few places before ``text``'s last word where it may be cut (0:
        none). The tokenizer must read both parts as it reads the whole: so it is for
        GPT-2-like vocabularies at a space after a non-space, not for all of them."""
        tried = 0
        for i in range(len(text) - 1, 0, -1):
            if not (text[i].isspace() and not text[i - 1].isspace()
                    or text[i - 1] in _LINE_ENDS and not text[i].isspace()):
                continue
            if self.tokens(text[:i]) + self.tokens(text[i:]) == self.tokens(text):
                return i
            tried += 1
            if tried == _CUTS_TRIED:
                break
        return 0

    def tokens(self, piece: str) -> list[int]:
        """A streamed piece's tokens, as they follow the text before it: a vocabulary
        that puts a space before every text it tokenizes (SentencePiece's prefix) reads
        a piece's own leading space as that one."""
        if self.space_prefix is None:
            a, b, ab = (self.raw(t) for t in ("a", "b", "a b"))
            self.space_prefix = a + b == ab != a + self.raw(" b")
        if self.space_prefix and piece.startswith(" "):
            piece = piece[1:]
        return self.raw(piece)

    def raw(self, piece: str) -> list[int]:
        return [int(t) for t in self.llm.tokenize(piece.encode("utf-8"), add_bos=False,
                                                  special=False)]

    def fitted(self, piece: str, room: int) -> list[int]:
        """A streamed piece's tokens, cut (and marked) where the context has ``room``
        tokens left."""
        tokens = self.tokens(piece)
        if len(tokens) <= room:
            return tokens
        mark = self.raw(_TRIM)
        return tokens[:max(0, room - len(mark))] + mark if room > len(mark) else []
