"""Majority vote over samples, with a stated rule for ties."""

from __future__ import annotations

from collections.abc import Sequence


def majority(keys: Sequence[str | None]) -> int | None:
    """The index of the sample the vote picks: one of the largest group of equal keys.

    A None key (a failed sample, or one with no answer extracted) never votes. Ties go to
    the group whose first member comes earliest (L1.1 before L1.2: the profile's own
    order), and the pick is that first member. None when no sample has a key.
    """
    first: dict[str, int] = {}
    count: dict[str, int] = {}
    for index, key in enumerate(keys):
        if key is None:
            continue
        first.setdefault(key, index)
        count[key] = count.get(key, 0) + 1
    if not count:
        return None
    best = max(count, key=lambda k: (count[k], -first[k]))
    return first[best]
