"""The ``confidence`` selector (SLM-MUX, Wang et al. 2025, arXiv 2510.05077).

Each model's candidates are its samples. Its confidence is the share of its samples
whose key (keys.py) equals its own majority key: 3 of 3 agreeing is 1.0, 2 of 3 is
0.67, a model with one sample is 1.0. The most confident model wins, and its answer is
its majority's first sample. On a tie, the model with the better `localmoa eval`
record (records.py) wins when every tied model has one, else the first listed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..consensus import majority
from . import Candidate, Selection
from .records import accuracy


@dataclass(frozen=True)
class ModelScore:
    """One model's samples, how many agree with its majority, its record, and which
    candidate stands for its majority (``answer``)."""

    model: str
    samples: int
    agree: int
    record: float | None
    answer: int
    key: str | None

    @property
    def confidence(self) -> float:
        return self.agree / self.samples

    def to_dict(self) -> dict[str, object]:
        return {
            "model": self.model,
            "samples": self.samples,
            "agree": self.agree,
            "confidence": round(self.confidence, 4),
            "record": self.record,
            "key": self.key,
        }


def model_scores(
    candidates: Sequence[Candidate],
    keys: Sequence[str | None],
    records: Mapping[str, Mapping[str, int]],
) -> list[ModelScore]:
    """Per model, in the order first listed (see ModelScore)."""
    out: list[ModelScore] = []
    for model in dict.fromkeys(c.model for c in candidates):
        mine = [i for i, c in enumerate(candidates) if c.model == model]
        found = majority([keys[i] for i in mine])
        agree, first = (found[1], mine[found[0]]) if found else (0, mine[0])
        out.append(
            ModelScore(model, len(mine), agree, accuracy(records, model), first, keys[first])
        )
    return out


def tie_break(tied: list[ModelScore]) -> tuple[ModelScore, str]:
    """The winner among equally confident models, and how it won."""
    if len(tied) == 1:
        return tied[0], "the only model at that confidence"
    rated = [s for s in tied if s.record is not None]
    if len(rated) == len(tied):
        best = max(rated, key=lambda s: s.record or 0.0)
        return best, f"{len(tied)} models tied; the best eval record ({best.record:.0%})"
    return tied[0], f"{len(tied)} models tied, not all with an eval record: the first listed"


def by_confidence(
    candidates: Sequence[Candidate],
    keys: Sequence[str | None],
    records: Mapping[str, Mapping[str, int]],
) -> Selection:
    """The answer of the most confident model (see the module)."""
    scores = model_scores(candidates, keys, records)
    top = max(s.confidence for s in scores)
    winner, how = tie_break([s for s in scores if s.confidence == top])
    why = (
        f"{winner.model}: {winner.agree}/{winner.samples} of its samples agree "
        f"(confidence {winner.confidence:.2f}); {how}"
    )
    return Selection("confidence", winner.answer, why, [s.to_dict() for s in scores])
