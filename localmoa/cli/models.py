"""`localmoa models ...`: what models the config names, what they are, getting them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table

from .. import constants
from ..backends import backend_class
from ..config import (
    Config,
    load_config,
    model_spec,
    parse_config_text,
    read_config_file,
    read_config_text,
    shipped_config_path,
)
from ..config_yaml import add_model_text, load_yaml, pydantic_message
from ..errors import LocalMoaError, UsageError
from ..fileio import atomic_write, dated_backup, locked, regular_file_problem
from ..memory.estimate import Footprint, ModelFacts
from ..memory.gguf_header import read_model_header, shard_paths
from ..memory.probe import Resources, format_bytes, probe
from ..preflight import estimate_model
from ..pull import Progress as PullProgress
from ..pull import pull as pull_model
from ..spec_types import MODEL_NAME, MODEL_NAME_RULE
from ._options import ConfigOpt, JsonOpt
from ._output import Output

app = typer.Typer(
    help="The models of the config: list them, inspect one, pull or add one.\n\n"
    "Only `localmoa models pull` uses the network.",
    no_args_is_help=True, rich_markup_mode=None)


def _describe(config: Config, name: str, resources: Resources,
              strict: bool = False) -> dict[str, Any]:
    """Facts of one model for list/show. An error becomes the row's `problem`, or,
    with ``strict``, is raised as the one-line error it is."""
    spec = config.models[name]
    row: dict[str, Any] = {"name": name, "backend": spec.backend,
                           "source": spec.where(), "n_ctx": spec.n_ctx,
                           "present": False, "problem": None}
    try:
        found = estimate_model(config, name, resources)
    except LocalMoaError as exc:
        if strict:
            raise
        row["problem"] = str(exc)
        return row
    path, fp = found.path, found.footprint
    row.update(present=True, path=str(path) if path else None,
               file_bytes=sum(p.stat().st_size for p in shard_paths(path) if p.is_file())
               if path else fp.weights_bytes,
               **(_facts_dict(found.facts) if found.facts else {}),
               footprint=_footprint_dict(fp))
    return row


def _facts_dict(facts: ModelFacts) -> dict[str, Any]:
    return {"architecture": facts.architecture, "quant": facts.quant,
            "parameters": facts.parameters, "layers": facts.n_layers,
            "heads": facts.n_head, "kv_heads": max(facts.n_head_kv, default=0),
            "key_length": facts.key_length, "value_length": facts.value_length,
            "context_length": facts.context_length, "vocab": facts.n_vocab,
            "sliding_window": facts.sliding_window,
            "sliding_window_layers": sum(facts.swa_layers),
            "chat_template": facts.has_chat_template}


def _footprint_dict(fp: Footprint) -> dict[str, Any]:
    return {"weights_bytes": fp.weights_bytes, "kv_bytes": fp.kv_bytes,
            "compute_bytes": fp.compute_bytes, "overhead_bytes": fp.overhead_bytes,
            "total_bytes": fp.total_bytes, "extra_instance_bytes": fp.extra_instance_bytes,
            "pools_bytes": fp.pools, "external": fp.external}


@app.command("list")
def list_models(
    config: ConfigOpt = None, json_out: JsonOpt = False,
    discover: Annotated[bool, typer.Option(
        "--discover", help="List the GGUFs already on this machine instead: the Hugging "
        "Face cache, Ollama's store, LM Studio's models folder; each with its models.yaml "
        "line.")] = False,
) -> None:
    """Every model of the config: backend, source, whether it is here, size, quant,
    parameters, context length and its estimated footprint at its n_ctx. With
    --discover, the models other tools downloaded (read in place, nothing copied)."""
    if discover:
        from .models_discover import show_discovered

        show_discovered(json_out, config)
        return
    cfg = load_config(config)
    resources = probe()  # once: it asks psutil, the cgroup and NVML
    rows = [_describe(cfg, name, resources) for name in sorted(cfg.models)]
    out = Output(json_mode=json_out)
    if json_out:
        out.document({"models": rows})
        return
    table = Table(header_style="bold")
    for col in ("model", "backend", "source", "here", "size", "quant", "params", "context",
                "n_ctx", "footprint"):
        table.add_column(col, justify="right" if col in ("size", "params", "context", "n_ctx",
                                                         "footprint") else "left")
    for r in rows:
        here = "[green]yes[/]" if r["present"] else "[red]no[/]"
        table.add_row(escape(r["name"]), r["backend"], escape(r["source"]), here,
                      format_bytes(r["file_bytes"]) if r["present"] and r.get("path") else "-",
                      r.get("quant", "-"),
                      f"{r['parameters'] / 1e9:.2f}B" if r.get("parameters") else "-",
                      str(r.get("context_length", "-")), str(r["n_ctx"]),
                      ("external" if r["footprint"]["external"] else
                       format_bytes(r["footprint"]["total_bytes"])) if r["present"] else "-")
    out.show(table)
    missing = [r["name"] for r in rows if not r["present"]]
    if missing:
        out.show(f"not here: {', '.join(missing)}; `localmoa models show NAME` says why, "
                 "`localmoa models pull NAME` fetches it")


@app.command("show")
def show(name: Annotated[str, typer.Argument(help="A model name from the config.")],
         config: ConfigOpt = None, json_out: JsonOpt = False) -> None:
    """The GGUF header facts of a model (architecture, layers, heads, KV heads, context,
    chat template) and its memory footprint at its configured n_ctx."""
    cfg = load_config(config)
    if name not in cfg.models:
        raise UsageError(f"no model named {name!r}; known models: {', '.join(sorted(cfg.models))}")
    row = _describe(cfg, name, probe(), strict=True)
    out = Output(json_mode=json_out)
    if json_out:
        out.document(row)
        return
    facts = Table(show_header=False, title=escape(name), title_justify="left")
    for key in ("backend", "source", "path", "architecture", "quant", "parameters", "layers",
                "heads", "kv_heads", "key_length", "value_length", "context_length", "vocab",
                "sliding_window", "sliding_window_layers", "chat_template", "n_ctx"):
        value = row.get(key)
        if value is None and key not in ("backend", "source", "n_ctx"):
            continue  # the backend cannot know it (a server's model)
        if key == "parameters" and value:
            value = f"{value:,}"
        facts.add_row(key, escape(str(value)))
    out.show(facts)
    fp = row["footprint"]
    if fp["external"]:
        out.show(f"footprint: external ({', '.join(fp['pools_bytes'])}): not budgeted here")
        return
    parts = Table(title=f"footprint at n_ctx {row['n_ctx']}", title_justify="left",
                  header_style="bold")
    for col in ("weights", "KV cache", "compute", "overhead", "total", "+instance"):
        parts.add_column(col, justify="right")
    parts.add_row(*(format_bytes(fp[k]) for k in ("weights_bytes", "kv_bytes", "compute_bytes",
                                                   "overhead_bytes", "total_bytes",
                                                   "extra_instance_bytes")))
    out.show(parts)


@app.command("pull")
def pull(name: Annotated[str, typer.Argument(help="A model name from the config.")],
         config: ConfigOpt = None) -> None:
    """Download a model: Hugging Face files into the standard huggingface_hub cache
    (resumable, sha256 checked), Ollama tags through the daemon. The only command
    that uses the network."""
    cfg = load_config(config)
    out = Output()
    if name in cfg.models and backend_class(cfg.models[name].backend).capabilities.pull:
        out.note(f"[dim]localmoa models pull uses the network to fetch {escape(name)}[/]")
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), console=out.err, transient=True) as bar:
        tasks: dict[str, Any] = {}

        def report(p: PullProgress) -> None:
            if p.status not in tasks:
                tasks[p.status] = bar.add_task(escape(p.status[:60]), total=p.total or None)
            bar.update(tasks[p.status], completed=p.completed, total=p.total or None)

        result = pull_model(cfg, name, report)
    out.note(result)


@app.command("add")
def add(
    source: Annotated[str, typer.Argument(help="A GGUF path, a Hugging Face org/repo:QUANT, "
                                          "or ollama:TAG.", show_default=False)],
    name: Annotated[str, typer.Option("--name", help="The name profiles will use.",
                                      show_default=False)],
    n_ctx: Annotated[int, typer.Option("--n-ctx", help="Context length in tokens.")] = 4096,
    force: Annotated[bool, typer.Option("--force", help="Replace an entry of that name.")
                     ] = False,
    config: ConfigOpt = None,
) -> None:
    """Add a model entry to your user config (--config, $LOCALMOA_CONFIG or
    ~/.config/localmoa/models.yaml). The file is edited as text, so its comments and
    layout stay; the result is checked before it replaces the file, and the previous
    version is kept as models.yaml.bak-DATE."""
    if not MODEL_NAME.fullmatch(name):
        raise UsageError(f"--name {name!r}: {MODEL_NAME_RULE}; serve lists each model by its "
                         "name beside moa:PROFILE")
    entry = _entry_for(source, n_ctx)
    _check_entry(entry, source)
    target = config or constants.user_config_path()
    with _locked(target):  # two adds at once: the second reads what the first wrote
        exists = target.exists()
        old_text = read_config_text(target) if exists else ""
        old_data = _document(old_text, str(target))  # refuse to edit a file already broken
        models = old_data.get("models") or {}
        if name in models and not force:
            raise UsageError(f"{target} already has a model {name!r}; pick another --name "
                             "or add --force to replace it")
        _, _, shipped = read_config_file(shipped_config_path())
        if name in shipped and name not in models and not force:
            raise UsageError(f"{name!r} is a shipped model name; pick another --name or add "
                             "--force")
        new_text = add_model_text(old_text, str(target), name, entry)
        expected = {**old_data, "models": {**models, name: entry}}
        if _document(new_text, str(target)) != expected:
            raise UsageError(f"{target}: cannot add the entry without changing other lines; "
                             f"add it under models: by hand: {name}: {entry}")
        backup = _write(target, old_text if exists else None, new_text)
    kept = f" (the previous version is {escape(backup.name)})" if backup else ""
    Output().note(f"added model {escape(name)!r} to {escape(str(target))}{kept}"
                  + ("" if "path" in entry["source"]
                     else f"; fetch it with `localmoa models pull {escape(name)}`"))


def _document(text: str, file: str) -> dict[str, Any]:
    """A models.yaml's data, after every check `localmoa run` makes."""
    parse_config_text(text, file)
    _, data = load_yaml(text, file)
    return data or {}


def _check_entry(entry: dict[str, Any], source: str) -> None:
    """The same rules as models.yaml, said about the option that was given."""
    try:
        model_spec(entry)
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = error["loc"]
        option = f"--n-ctx {entry['n_ctx']}" if loc[:1] == ("n_ctx",) else repr(source)
        raise UsageError(f"{option}: {pydantic_message(error)}") from None


@contextlib.contextmanager
def _locked(target: Path) -> Iterator[None]:
    """fileio.locked on the user's models.yaml, its folder made first."""
    stack = contextlib.ExitStack()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        stack.enter_context(locked(target))
    except OSError as exc:
        raise LocalMoaError(f"cannot write {target}: {exc.strerror or exc} (the file is "
                            "unchanged)") from None
    with stack:
        yield


def _write(target: Path, old_text: str | None, new_text: str) -> Path | None:
    """The old file kept as a dated backup, then the new one written atomically."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        backup = dated_backup(target, old_text.encode("utf-8")) if old_text is not None else None
        atomic_write(target, new_text)
    except OSError as exc:
        raise LocalMoaError(f"cannot write {target}: {exc.strerror or exc} (the file is "
                            "unchanged)") from None
    return backup


def _entry_for(source: str, n_ctx: int) -> dict[str, Any]:
    if source.startswith("ollama:"):
        return {"backend": "ollama", "source": {"ollama": source.removeprefix("ollama:")},
                "n_ctx": n_ctx}
    path = Path(source).expanduser()
    if path.exists() or source.endswith(".gguf") or source.startswith((".", "/", "~")):
        problem = regular_file_problem(path)
        if problem:  # a FIFO, /dev/zero, a directory
            raise UsageError(f"{source} {problem}; give a GGUF file")
        if not path.is_file():
            raise UsageError(f"{source}: no such file; give a GGUF path, org/repo:QUANT "
                             "or ollama:TAG")
        read_model_header(path)  # a readable GGUF; the first shard of a complete split
        # The folder resolved, not the file: a Hugging Face cache file links to a blob named
        # by its hash, and llama.cpp finds a split model's other shards by the first's name.
        absolute = path.parent.resolve() / path.name
        return {"backend": "llamacpp", "source": {"path": str(absolute)}, "n_ctx": n_ctx}
    if source.count("/") == 1 and ":" in source:
        return {"backend": "llamacpp", "source": {"repo": source}, "n_ctx": n_ctx}
    raise UsageError(f"{source!r}: give a GGUF path, a Hugging Face org/repo:QUANT "
                     "(e.g. bartowski/Qwen2.5-7B-Instruct-GGUF:Q4_K_M) or ollama:TAG")
