"""`localmoa profiles`: the MoA recipes the config defines."""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.table import Table

from ..config import load_config
from ._options import ConfigOpt, JsonOpt
from ._output import Output


def profiles(config: ConfigOpt = None, json_out: JsonOpt = False) -> None:
    """List the profiles: their layers, agents and models.

    A profile is a MoA recipe from models.yaml; pick one with `localmoa run --profile NAME`.
    """
    cfg = load_config(config)
    out = Output(json_mode=json_out)
    if json_out:
        rows: list[dict[str, Any]] = [{
            "name": name,
            "default": name == cfg.default_profile,
            "description": prof.description,
            "layers": [[a.model for a in layer] for layer in prof.layers],
            "aggregator": prof.aggregator.model,
            "aggregate": prof.aggregate,
            "select": prof.select.model_dump() if prof.select else None,
            "why": prof.why,
            "layers_up_to": prof.layers_up_to,
            "router": prof.router.model_dump() if prof.router else None,
            "specialists": {n: {"description": s.description, "profile": s.profile,
                                "agents": [a.model for a in s.agents or []]}
                            for n, s in prof.specialists.items()},
        } for name, prof in sorted(cfg.profiles.items())]
        out.document({"profiles": rows, "config_files": cfg.files})
        return
    table = Table(header_style="bold")
    for col in ("profile", "proposer layers", "aggregator", "description"):
        table.add_column(col)
    for name, prof in sorted(cfg.profiles.items()):
        layers = "\n".join(f"{i}: " + ", ".join(a.model for a in layer)
                           for i, layer in enumerate(prof.layers, 1))
        if prof.router is not None:
            layers = f"router {prof.router.model} ({prof.router.kind}) picks:\n" + "\n".join(
                f"{n}: " + (f"profile {s.profile}" if s.profile else
                            ", ".join(a.model for a in s.agents or []))
                for n, s in prof.specialists.items())
        if prof.layers_up_to:
            layers += f"\n(up to {prof.layers_up_to} layers, early exit)"
        if prof.aggregate != "always":
            by = f" by {prof.select.by if prof.select else 'confidence'}" \
                if prof.aggregate == "select" else ""
            layers += f"\n(aggregate: {prof.aggregate}{by})"
        label = name + (" (default)" if name == cfg.default_profile else "")
        about = prof.description + (f"\nWhy: {prof.why}" if prof.why else "")
        table.add_row(escape(label), escape(layers), escape(prof.aggregator.model),
                      escape(about))
    out.show(table)
