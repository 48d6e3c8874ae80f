"""Accuracy with its Wilson interval, and the per-contender summary of an eval."""

from __future__ import annotations

import math
import statistics
from typing import Any

#: The normal quantile of a two-sided 95% interval.
Z_95 = 1.959963984540054


def wilson(correct: int, total: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95% by default): unlike the normal
    approximation it stays inside [0, 1] and is honest at 0/n and n/n. (0, 1) when
    ``total`` is 0: nothing is known."""
    if total <= 0:
        return 0.0, 1.0
    if not 0 <= correct <= total:
        raise ValueError(f"{correct} correct out of {total}")
    p = correct / total
    z2 = z * z
    denominator = 1 + z2 / total
    centre = (p + z2 / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z2 / (4 * total * total)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def summarise(answers: list[dict[str, Any]]) -> dict[str, Any]:
    """One contender's answers -> accuracy (with its 95% Wilson interval), tokens
    generated, seconds answering (model loading excluded), tok/s, seconds per answer (mean,
    and the median: steadier on a busy machine) and accuracy per second (accuracy / mean
    seconds per answer: right answers per second)."""
    total = len(answers)
    correct = sum(bool(a["correct"]) for a in answers)
    tokens = sum(int(a["tokens"]) for a in answers)
    seconds = sum(float(a["seconds"]) for a in answers)
    accuracy = correct / total if total else 0.0
    low, high = wilson(correct, total)
    per_answer = seconds / total if total else 0.0
    by_set: dict[str, dict[str, Any]] = {}
    for a in answers:
        row = by_set.setdefault(a["set"], {"answers": 0, "correct": 0})
        row["answers"] += 1
        row["correct"] += bool(a["correct"])
    for row in by_set.values():
        row["accuracy"] = round(row["correct"] / row["answers"], 4)
    return {
        "answers": total, "correct": correct, "accuracy": round(accuracy, 4),
        "ci95": [round(low, 4), round(high, 4)],
        "tokens": tokens, "wall_s": round(seconds, 3),
        "s_per_answer": round(per_answer, 4),
        "median_s": round(statistics.median(a["seconds"] for a in answers), 4) if answers
        else 0.0,
        "tok_per_s": round(tokens / seconds, 2) if seconds > 0 else 0.0,
        "acc_per_s": round(accuracy / per_answer, 4) if per_answer > 0 else 0.0,
        "load_s": round(sum(float(a.get("load_s", 0.0)) for a in answers), 3),
        "failed_runs": sum(a.get("error") is not None for a in answers),
        "no_answer": sum(a["extracted"] is None for a in answers),
        "by_set": dict(sorted(by_set.items())),
        **pass_at_1(answers),
    }


def pass_at_1(answers: list[dict[str, Any]]) -> dict[str, Any]:
    """Over the code tasks' answers (those with a sandbox ``status``): pass@1, the share
    whose one answer passed its tests, with its 95% Wilson interval, and how many ended
    in each status. Empty when no answer is code."""
    code = [a for a in answers if "status" in a]
    if not code:
        return {}
    passed = sum(bool(a["correct"]) for a in code)
    low, high = wilson(passed, len(code))
    statuses: dict[str, int] = {}
    for a in code:
        statuses[a["status"]] = statuses.get(a["status"], 0) + 1
    return {"pass_at_1": {"value": round(passed / len(code), 4),
                          "ci95": [round(low, 4), round(high, 4)], "passed": passed,
                          "problems": len(code), "statuses": dict(sorted(statuses.items()))}}
