"""`localmoa doctor`: this machine, this llama.cpp build, Ollama, the model cache."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from ..doctor import collect
from ..memory.probe import format_bytes
from ._options import ConfigOpt, JsonOpt
from ._output import Output

EPILOG = """\
Examples:

\b
  localmoa doctor                 # read it, or paste it into a bug report

\b
  localmoa doctor --json > doctor.json

\b
  localmoa doctor --recheck       # run the CPU fast-path check again (after a rebuild)
"""


def doctor(
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
    recheck: Annotated[bool, typer.Option(
        "--recheck", help="Check llama.cpp's weight repacking on this CPU again instead of "
        "using the cached verdict.")] = False,
) -> int:
    """What a bug report needs: CPU and its flags (AVX2, AVX-512, AMX), cores, RAM, GPUs;
    the llama.cpp build and whether its weight repacking works here; the Ollama
    daemon; the Hugging Face cache and which configured models are on this machine.

    Loads no model. Contacts nothing but this machine (and Ollama hosts the config
    allows with allow_remote). Exit 0 even when it finds problems: they are listed.
    """
    out = Output(json_mode=json_out)
    with out.status("checking this machine"):
        report = collect(config, recheck=recheck)
    if json_out:
        out.document(report)
        return 0
    out.show(_facts(report))
    out.show(_models(report["models"]))
    if report["problems"]:
        out.show("[bold]problems[/]")
        for line in report["problems"]:
            out.show(f"  [yellow]![/] {escape(line)}")
    else:
        out.show("[green]no problems found[/]")
    return 0


def _facts(report: dict[str, Any]) -> Table:
    table = Table(show_header=False, title="localmoa doctor", title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    lm = report["localmoa"]
    table.add_row("localmoa", f"{lm['version']} (Python {lm['python']}, {lm['platform']})")
    table.add_row("home", escape(lm["home"]))
    table.add_row("config", escape(lm.get("config_error") or ", ".join(lm.get("config_files",
                                                                             []))))
    cpu = report["cpu"]
    if "error" in cpu:
        table.add_row("cpu", escape(cpu["error"]))
    else:
        table.add_row("cpu", f"{escape(cpu['model'])} ({cpu['arch']}), {cpu['physical_cores']} "
                      f"cores ({cpu['logical_cores']} threads), localmoa uses "
                      f"{cpu['usable_cores']}")
        table.add_row("cpu flags", " ".join(cpu["flags"]) or "-")
    mem = report["memory"]
    if "error" not in mem:
        table.add_row("memory", f"{format_bytes(mem['ram_available_bytes'])} available of "
                      f"{format_bytes(mem['ram_total_bytes'])}; budget "
                      f"{format_bytes(mem['budget_bytes'] or 0)} ({mem['budget_source']})")
    gpus = report["gpus"]
    none = escape("none found (NVIDIA GPUs need: pip install 'localmoa[gpu]')")
    table.add_row("gpus", escape(gpus["error"]) if isinstance(gpus, dict) else (
        ", ".join(f"{g['index']}: {escape(g['name'])} {format_bytes(g['free_bytes'])} free"
                  for g in gpus) or none))
    llama = report["llama_cpp"]
    if llama.get("error"):
        table.add_row("llama.cpp", escape(llama["error"]))
    else:
        table.add_row("llama.cpp", f"llama-cpp-python {llama['llama_cpp_python']}, GPU offload "
                      f"{'yes' if llama['gpu_offload'] else 'no'}")
        table.add_row("system info", escape(llama["system_info"]))
        rp = llama["repack"]
        state = "[green]on[/]" if rp["enabled"] else "[yellow]off[/]"
        table.add_row("weight repacking", f"{state}: {escape(rp['reason'])}")
    table.add_row("backends", ", ".join(
        b["name"] + ("" if b.get("package") == "localmoa" else
                     f" ({escape(b.get('package') or b.get('error', '?'))})")
        for b in report["backends"]))
    for backend in report["backends"]:  # a backend's section: its daemons or servers
        section = report.get(backend["name"])
        for entry in section if isinstance(section, list) else []:
            text = entry.get("summary") if entry.get("reachable") else entry.get("error")
            table.add_row(backend["name"], f"{escape(str(entry.get('host')))}: "
                          f"{escape(str(text))}")
    hf = report["huggingface"]
    if "error" not in hf:
        table.add_row("hf cache", f"{escape(hf['cache'])}"
                      + ("" if hf["exists"] else " (does not exist yet)"))
    return table


def _models(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="configured models", title_justify="left", header_style="bold")
    for col in ("model", "backend", "source", "here"):
        table.add_column(col)
    for r in rows:
        here = {True: "[green]yes[/]", False: "[red]no[/]", None: "[dim]?[/]"}[r["present"]]
        table.add_row(escape(r["name"]), r["backend"], escape(r["source"]), here)
    return table
