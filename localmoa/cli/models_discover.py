"""`localmoa models list --discover`: the GGUFs already on this machine (the Hugging Face
cache, Ollama's store, LM Studio's folder), what each is, and the models.yaml line that
uses it in place."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from .. import constants
from ..backends.llamacpp.spec import LlamaCppSpec
from ..backends.llamacpp.stores import StoreModel, discover
from ..config import Config, load_config
from ..errors import LocalMoaError
from ..memory.estimate import model_facts
from ..memory.gguf_header import read_model_header
from ..memory.probe import Resources, format_bytes, probe
from ..preflight import estimate_model
from ._output import Output

#: The context a discovered model's footprint and models.yaml line use (its own if smaller).
DISCOVER_N_CTX = 4096
_NOT_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def suggested_name(found: StoreModel, taken: set[str]) -> str:
    """A model name for models.yaml: ``qwen2.5-7b`` for Ollama's qwen2.5:7b, the file's
    stem for a GGUF file; ``-ollama``, ``-lmstudio``, ``-hf`` (then ``-2`` ...) added when
    the config or another found model has that name already."""
    if found.store == "ollama":
        base = found.ref.rsplit("/", 1)[-1].replace(":latest", "")
    else:
        base = found.path.name if found.store == "lmstudio" else found.ref.rsplit("/", 1)[-1]
        base = base[:-5] if base.lower().endswith(".gguf") else base
    base = _NOT_NAME.sub("-", base.lower()).strip("-._")[:110] or "model"
    name = base if base not in taken else f"{base}-{found.store}"
    n = 1
    while name in taken:
        n += 1
        name = f"{base}-{found.store}-{n}"
    taken.add(name)
    return name


def yaml_line(name: str, found: StoreModel, n_ctx: int) -> str:
    """``NAME: {backend: llamacpp, source: {ollama: "qwen2.5:7b"}, n_ctx: 4096}``."""
    source = ", ".join(f"{key}: {json.dumps(value)}" for key, value in found.source.items())
    return f"{name}: {{backend: llamacpp, source: {{{source}}}, n_ctx: {n_ctx}}}"


def describe_found(found: StoreModel, name: str, resources: Resources) -> dict[str, Any]:
    """One discovered model: facts from its GGUF header, its footprint at its n_ctx by the
    estimator `models show` uses (its models.yaml source resolved as a run would)."""
    row: dict[str, Any] = {"store": found.store, "ref": found.ref, "name": name,
                           "path": str(found.path), "source": found.source, "problem": None}
    try:
        row["file_bytes"] = found.path.stat().st_size
        facts = model_facts(read_model_header(found.path, model=name))
        n_ctx = max(1, min(DISCOVER_N_CTX, facts.context_length or DISCOVER_N_CTX))
        spec = LlamaCppSpec.model_validate({"backend": "llamacpp", "source": found.source,
                                            "n_ctx": n_ctx})
        config = Config(models={name: spec}, profiles={}, default_profile=name)
        fp = estimate_model(config, name, resources).footprint
    except (LocalMoaError, OSError, ValueError) as exc:
        row["problem"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return row
    row.update(architecture=facts.architecture, quant=facts.quant,
               parameters=facts.parameters, context_length=facts.context_length,
               n_ctx=n_ctx, footprint_bytes=fp.total_bytes,
               yaml=yaml_line(name, found, n_ctx))
    return row


def discover_rows(config: Path | None = None) -> list[dict[str, Any]]:
    """Every GGUF found, described; named apart from the config's models."""
    resources = probe()
    try:
        taken = set(load_config(config).models)
    except LocalMoaError:  # a broken user config does not stop the listing
        taken = set()
    return [describe_found(f, suggested_name(f, taken), resources) for f in discover()]


def looked_in() -> dict[str, list[str]]:
    """The folders searched, per store."""
    return {"hf": [str(constants.hf_hub_cache())],
            "ollama": [str(p) for p in constants.ollama_models_dirs()],
            "lmstudio": [str(p) for p in constants.lmstudio_models_dirs()]}


def show_discovered(json_out: bool, config: Path | None = None) -> None:
    """The command's output: a table and the models.yaml lines, or one JSON document."""
    rows = discover_rows(config)
    out = Output(json_mode=json_out)
    if json_out:
        out.document({"discovered": rows, "looked_in": looked_in()})
        return
    if not rows:
        places = "; ".join(f"{k}: {', '.join(v)}" for k, v in looked_in().items())
        out.show(f"no GGUF models found (looked in {escape(places)})")
        return
    table = Table(header_style="bold")
    for col in ("store", "model", "arch", "quant", "params", "size", "n_ctx", "footprint"):
        table.add_column(col, justify="right" if col in ("params", "size", "n_ctx",
                                                         "footprint") else "left")
    for r in rows:
        ok = r["problem"] is None
        table.add_row(r["store"], escape(r["ref"]), escape(str(r.get("architecture", "-"))),
                      escape(str(r.get("quant", "-"))),
                      f"{r['parameters'] / 1e9:.2f}B" if r.get("parameters") else "-",
                      format_bytes(r["file_bytes"]) if "file_bytes" in r else "-",
                      str(r.get("n_ctx", "-")),
                      format_bytes(r["footprint_bytes"]) if ok else "[red]unreadable[/]")
    out.show(table)
    lines = [r["yaml"] for r in rows if r["problem"] is None]
    if lines:
        out.show("models.yaml lines (under models: in "
                 f"{escape(str(constants.user_config_path()))}):")
        for line in lines:
            out.out.print("  " + escape(line), soft_wrap=True)  # whole, to copy
    for r in rows:
        if r["problem"]:
            out.note(f"[yellow]{escape(r['ref'])}[/]: {escape(r['problem'])}")
