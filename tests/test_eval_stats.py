"""The Wilson interval and a contender's summary (localmoa/eval/stats.py). Pure."""

from __future__ import annotations

import pytest

from localmoa.eval.stats import summarise, wilson


@pytest.mark.parametrize(("correct", "total", "low", "high"), [
    # published values (e.g. R's prop.test(x, n, correct = FALSE))
    (5, 10, 0.2366, 0.7634),
    (0, 10, 0.0, 0.2775),
    (10, 10, 0.7225, 1.0),
    (1, 20, 0.0089, 0.2361),
    (20, 20, 0.8389, 1.0),
    (1, 5, 0.0362, 0.6245),
    (50, 100, 0.4038, 0.5962),
])
def test_wilson_matches_known_values(correct: int, total: int, low: float, high: float) -> None:
    assert wilson(correct, total) == pytest.approx((low, high), abs=1e-4)


def test_wilson_edges() -> None:
    assert wilson(0, 0) == (0.0, 1.0)  # nothing known
    low, high = wilson(3, 7)
    assert 0 < low < 3 / 7 < high < 1
    # more answers, a narrower interval around the same proportion
    assert wilson(30, 70)[1] - wilson(30, 70)[0] < high - low
    with pytest.raises(ValueError):
        wilson(8, 7)


def answer(correct: bool, tokens: int, seconds: float, set_name: str = "arith",
           error: str | None = None) -> dict:
    return {"correct": correct, "tokens": tokens, "seconds": seconds, "set": set_name,
            "load_s": 0.5, "error": error, "extracted": "1" if correct else None}


def test_summarise() -> None:
    s = summarise([answer(True, 10, 1.0), answer(True, 30, 2.0, "mcq"),
                   answer(False, 20, 1.0, "mcq", error="run failed"),
                   answer(False, 40, 4.0)])
    assert (s["answers"], s["correct"], s["accuracy"]) == (4, 2, 0.5)
    assert s["ci95"] == [round(v, 4) for v in wilson(2, 4)]
    assert (s["tokens"], s["wall_s"], s["s_per_answer"], s["median_s"]) == (100, 8.0, 2.0, 1.5)
    assert s["tok_per_s"] == 12.5
    assert s["acc_per_s"] == 0.25  # 0.5 accuracy / 2 s per answer: 1 right answer in 4 s
    assert (s["load_s"], s["failed_runs"], s["no_answer"]) == (2.0, 1, 2)
    assert s["by_set"] == {"arith": {"answers": 2, "correct": 1, "accuracy": 0.5},
                           "mcq": {"answers": 2, "correct": 1, "accuracy": 0.5}}


def test_summarise_nothing() -> None:
    s = summarise([])
    assert (s["answers"], s["accuracy"], s["tok_per_s"], s["acc_per_s"], s["median_s"]) == (
        0, 0.0, 0.0, 0.0, 0.0)
    assert s["ci95"] == [0.0, 1.0]
