"""What must hold across a config's entries once every file is read: each agent names a
configured model, each routing profile's router and specialists exist, and every agent
that receives the previous layer's answers has a template that places them. Each error
names the file and line of the entry at fault."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from .config_yaml import format_loc
from .errors import ConfigError, clip
from .profile_spec import AgentSpec, Profile
from .prompts import reference_slots


class _Where(Protocol):
    """Where an entry was written (config.Origin)."""

    @property
    def file(self) -> str: ...

    @property
    def line(self) -> int | None: ...


class Config(Protocol):
    """What the checks read of a merged config.Config (typed here, so that this module,
    which config imports, does not import config)."""

    @property
    def models(self) -> Mapping[str, object]: ...

    @property
    def profiles(self) -> Mapping[str, Profile]: ...

    @property
    def default_profile(self) -> str: ...

    @property
    def files(self) -> Sequence[str]: ...

    def origin(self, kind: str, name: str, *path: str | int) -> _Where: ...


def check_references(config: Config) -> None:
    for pname, prof in config.profiles.items():
        agents: list[tuple[tuple[str | int, ...], AgentSpec]] = [
            (("layers", i, j), a) for i, layer in enumerate(prof.layers)
            for j, a in enumerate(layer)]
        agents.append((("aggregator",), prof.aggregator))
        for path, agent in agents:
            if agent.model not in config.models:
                origin = config.origin("profiles", pname, *path, "model")
                known = ", ".join(sorted(config.models)) or "none"
                raise ConfigError(
                    f"no model named {clip(agent.model)!r} (define it under models:; known: "
                    f"{known})",
                    file=origin.file, line=origin.line,
                    field=format_loc(("profiles", pname, *path, "model")))
    if config.default_profile not in config.profiles:
        raise ConfigError(f"default_profile {clip(config.default_profile)!r} is not a profile",
                          file=config.files[-1])
    for pname, prof in config.profiles.items():
        _check_templates(config, pname, prof)
        _check_routing(config, pname, prof)


def _check_routing(config: Config, pname: str, prof: Profile) -> None:
    """The router's model exists; each specialist's agents' models exist and its profile
    is a plain profile."""
    def fail(message: str, *path: str | int) -> None:
        origin = config.origin("profiles", pname, *path)
        raise ConfigError(message, file=origin.file, line=origin.line,
                          field=format_loc(("profiles", pname, *path)))

    known = ", ".join(sorted(config.models)) or "none"
    if prof.router is not None and prof.router.model not in config.models:
        fail(f"no model named {clip(prof.router.model)!r} (define it under models:; known: "
             f"{known})", "router", "model")
    for name, spec in prof.specialists.items():
        for j, agent in enumerate(spec.agents or []):
            if agent.model not in config.models:
                fail(f"no model named {clip(agent.model)!r} (define it under models:; known: "
                     f"{known})", "specialists", name, "agents", j, "model")
        if spec.profile is not None:
            other = config.profiles.get(spec.profile)
            if other is None:
                fail(f"no profile named {clip(spec.profile)!r}; known: "
                     f"{', '.join(sorted(config.profiles))}", "specialists", name, "profile")
            elif other.router is not None:
                fail(f"profile {clip(spec.profile)!r} routes itself; a specialist's profile must "
                     "have layers:", "specialists", name, "profile")


def _check_templates(config: Config, pname: str, prof: Profile) -> None:
    """Every agent that gets the previous layer's answers (layer 2 on, the aggregator)
    has a template that places them, or none (the default does); the error names the
    line of the template it uses, its own or the profile's."""
    agents: list[tuple[str, tuple[str | int, ...], AgentSpec]] = [
        (f"L{i + 1}.{j + 1}", ("layers", i, j), a) for i, layer in enumerate(prof.layers)
        for j, a in enumerate(layer) if i > 0]
    agents.append(("AGG", ("aggregator",), prof.aggregator))
    for agent_id, path, agent in agents:
        template = prof.template_for(agent)
        if template is None or reference_slots(template) > 0:
            continue
        who = "the aggregator (AGG)" if agent_id == "AGG" else f"agent {agent_id}"
        if agent.prompt_template is not None:
            where: tuple[str | int, ...] = (*path, "prompt_template")
            message = (f"has no {{references}} (or {{helper_response}}), but {who} gets the "
                       "previous layer's answers: they would be lost; put {references} "
                       "where they belong")
        else:
            where = ("prompt_template",)
            message = (f"has no {{references}} (or {{helper_response}}), but {who}, which gets "
                       "the previous layer's answers, uses it (it sets no prompt_template of "
                       "its own): they would be lost; put {references} where they belong, or "
                       "give that agent its own prompt_template")
        origin = config.origin("profiles", pname, *where)
        raise ConfigError(message, file=origin.file, line=origin.line,
                          field=format_loc(("profiles", pname, *where)))
