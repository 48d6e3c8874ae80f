"""A verdict on one reply: what was read from it, and whether it is right (checks.py
gives it for every kind of task, codecheck.py for code)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Verdict:
    """What was read from a reply and whether it is right. ``extracted`` is a number
    written canonically, a letter, a JSON object or the reply's text; None when the
    reply held nothing of the kind. ``why`` says what was wrong ("" when right).
    ``status``: a code task's sandbox status (sandbox.STATUSES), else None."""

    extracted: Any
    correct: bool
    why: str = ""
    status: str | None = None
