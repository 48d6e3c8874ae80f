"""Predicted decode time of a model's agents: one batch, or separate instances. Pure.

A rough CPU model, enough to rank the two shapes (not to promise seconds):

- decoding reads every weight once per step: one step of one sequence on t threads
  takes ``weights / (STREAM_BYTES_PER_S_PER_THREAD * t ** THREAD_SCALING)``; a small
  model's context gains little from more threads (SmolLM2-135M, 3 sequences: 71 tok/s
  on 1 thread, 102 on 2), while separate one-thread instances scale with the cores;
- in a batched step each further live sequence adds ``BATCH_ROW_COST`` of that
  (its share of the matmuls, its attention and sampling), since the weights are
  read once for all of them (fitted on SmolLM2-135M, 2 cores: 3 sequences batched
  in 4.7-5.2 s against 8.7-8.9 s as 3 instances, benchmarks/README.md);
- separate instances each read the weights for themselves; more instances than
  cores share the cores.

The model knows nothing of prompts: a batch also evaluates its shared prefix once,
which is most of its gain in the layers that read references (benchmarks/README.md).
"""

from __future__ import annotations

from collections.abc import Sequence

STREAM_BYTES_PER_S_PER_THREAD = 4.0e9
BATCH_ROW_COST = 0.3
THREAD_SCALING = 0.5  # 2 threads on one context: 1.42x one thread, measured


def step_seconds(weights_bytes: int, threads: int) -> float:
    """One decode step of one sequence."""
    return weights_bytes / (STREAM_BYTES_PER_S_PER_THREAD * max(1, threads) ** THREAD_SCALING)


def batched_seconds(weights_bytes: int, tokens: Sequence[int], cores: int) -> float:
    """``len(tokens)`` sequences of one context, sequence i generating ``tokens[i]``."""
    step = step_seconds(weights_bytes, cores)
    left = sorted(tokens)
    total, done = 0.0, 0
    for i, until in enumerate(left):  # between two endings, len(left) - i live rows
        live = len(left) - i
        total += (until - done) * step * (1 + BATCH_ROW_COST * (live - 1))
        done = until
    return total


def separate_seconds(weights_bytes: int, tokens: Sequence[int], cores: int) -> float:
    """One instance per sequence, running at once on ``cores`` cores."""
    n = len(tokens)
    if n == 0:
        return 0.0
    if n <= cores:
        threads = cores // n
        return max(tokens) * step_seconds(weights_bytes, threads)
    return sum(tokens) * step_seconds(weights_bytes, 1) / cores  # one thread each, time-shared
