"""Each model's `localmoa eval` record, the selectors' tie-break.

Kept in ``LOCALMOA_HOME/eval-records.json`` (constants.eval_records_path): per model,
the answers its ``single:MODEL`` contender got right and scored, summed over every eval
run on this machine. `localmoa eval` adds to it after each run; the selectors read it
when two models tie. A missing or unreadable file is no record.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .. import constants
from ..fileio import atomic_write


def path() -> Path:
    return constants.eval_records_path()


def load(where: Path | None = None) -> dict[str, dict[str, int]]:
    """``{model: {"correct": c, "total": n}}``; empty when there is no readable record."""
    try:
        data: Any = json.loads((where or path()).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, dict):
        return {}
    out: dict[str, dict[str, int]] = {}
    for model, row in models.items():
        if (
            isinstance(row, dict)
            and isinstance(row.get("correct"), int)
            and isinstance(row.get("total"), int)
            and row["total"] > 0
        ):
            out[str(model)] = {"correct": row["correct"], "total": row["total"]}
    return out


def accuracy(records: Mapping[str, Mapping[str, int]], model: str) -> float | None:
    row = records.get(model)
    return row["correct"] / row["total"] if row else None


def add(results: Mapping[str, tuple[int, int]], where: Path | None = None) -> Path:
    """Add each model's (correct, total) of one eval run to the record; returns the path.
    The file is replaced atomically."""
    target = where or path()
    records = load(target)
    for model, (correct, total) in results.items():
        row = records.setdefault(model, {"correct": 0, "total": 0})
        row["correct"] += correct
        row["total"] += total
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(target, json.dumps({"models": records}, indent=2, sort_keys=True) + "\n")
    return target
