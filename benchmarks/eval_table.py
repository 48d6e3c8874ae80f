"""Print `localmoa eval` results as the Markdown tables of benchmarks/README.md.

    python benchmarks/eval_table.py DIR/results.json [MORE/results.json ...] [--versus NAME]

One row per contender (of every file, in order): right answers of all, the 95% Wilson
interval, mean seconds per answer (model loading excluded), tokens, and for code tasks
the sandbox statuses. With ``--versus NAME``, a paired column: on the tasks both
answered, how many this contender got right and NAME wrong, and the reverse (the
discordant pairs a McNemar test reads). Nothing is run; the figures are the files'.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path


def statuses(answers: list[dict], name: str) -> str:
    counts = Counter(a.get("status") for a in answers if a["contender"] == name)
    return ", ".join(f"{n} {s}" for s, n in counts.most_common() if s) or "-"


def rows(path: Path) -> list[str]:
    document = json.loads(path.read_text(encoding="utf-8"))
    out = []
    for name, s in document["summaries"].items():
        low, high = s["ci95"]
        out.append(f"| {name} | {s['correct']}/{s['answers']} ({s['accuracy']:.0%}) | "
                   f"{low:.0%}-{high:.0%} | {s['s_per_answer']:.2f} | {s['tokens']:,} | "
                   f"{statuses(document['answers'], name)} |")
    return out


def verdicts(paths: list[str]) -> dict[str, dict[tuple[str, int], bool]]:
    out: dict[str, dict[tuple[str, int], bool]] = {}
    for path in paths:
        for a in json.loads(Path(path).read_text(encoding="utf-8"))["answers"]:
            out.setdefault(a["contender"], {})[(a["task"], a["round"])] = bool(a["correct"])
    return out


def main(args: list[str]) -> None:
    versus = args[args.index("--versus") + 1] if "--versus" in args else None
    paths = [a for i, a in enumerate(args) if a != "--versus"
             and (i == 0 or args[i - 1] != "--versus")]
    print("| contender | right | 95% Wilson | s / answer | tokens | statuses |"
          + (f" vs {versus} (+/-) |" if versus else ""))
    print("|---|---:|---|---:|---:|---|" + ("---:|" if versus else ""))
    paired = verdicts(paths) if versus else {}
    for path in paths:
        for row in rows(Path(path)):
            if versus:
                name = row.split(" | ")[0].lstrip("| ")
                mine, theirs = paired.get(name, {}), paired.get(versus, {})
                both = mine.keys() & theirs.keys()
                plus = sum(mine[k] and not theirs[k] for k in both)
                minus = sum(theirs[k] and not mine[k] for k in both)
                row += f" +{plus} / -{minus} |"
            print(row)


if __name__ == "__main__":
    main(sys.argv[1:])
