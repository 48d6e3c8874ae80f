"""models.yaml -> a validated Config.

The shipped models.yaml is read first; a user config (``--config FILE``,
``LOCALMOA_CONFIG`` or ``LOCALMOA_HOME/models.yaml``) then adds models and
profiles or replaces them by name. Every error names the file, the line and the
field, on one line.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from . import constants
from .errors import ConfigError
from .prompts import check_template, reference_slots

TEMPLATE_HELP = ("Replaces the aggregate-and-synthesize prompt and the numbered references at "
                 "the head of the agent's system message; placeholders {references} (alias "
                 "{helper_response}), {query} and {layer}; {{ and }} are literal braces.")

#: A prompt template: placeholders checked when the file is read (prompts.py).
PromptTemplate = Annotated[str, AfterValidator(check_template)]

KvType = Literal["f32", "f16", "bf16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0"]


def _yaml_on_off(value: Any) -> Any:
    """YAML 1.1 reads a bare on / off as true / false: take them as written."""
    if isinstance(value, bool):
        return "on" if value else "off"
    return value


OnOff = Annotated[Literal["on", "off"], BeforeValidator(_yaml_on_off)]
AutoOnOff = Annotated[Literal["auto", "on", "off"], BeforeValidator(_yaml_on_off)]
REPACK_HELP = ("llama.cpp weight repacking (AMX, AVX2/AVX-512 and ARM fast paths): auto checks "
               "once per CPU that it does not crash, on, or off.")
BATCH_HELP = ("Agents of one wave on this model decode as sequences of one llama.cpp context "
              "(shared prompt prefix, one decode step for all); off runs each agent on its "
              "own instance.")
FLASH_ATTN_HELP = ("llama.cpp flash attention: auto lets llama.cpp decide (on wherever it "
                   "supports it, which on CPU is always), on, or off.")
WORKERS_HELP = ("Each loaded llama.cpp model runs in a worker process of its own, so a native "
                "crash costs its agents, not the run, and unloading returns all its memory; "
                "off loads models into localmoa's process (LOCALMOA_WORKERS wins).")


class StrictModel(BaseModel):
    """A models.yaml mapping: strict types ("512" is not an int) and no unknown keys (a
    typo is an error, not ignored). Backends build their entry schemas on it."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ModelSpec(StrictModel):
    """What every model entry has. Each backend's ``spec_class`` subclasses it with its
    own keys, so each backend validates its own entries (with file:line errors)."""

    backend: str = Field(description="Which backend serves it: llamacpp, ollama, openai, "
                         "or an installed plugin's name.")
    description: str = ""
    n_ctx: int = Field(2048, ge=64, le=1_048_576, description="Context length in tokens.")

    #: Top-level keys of models.yaml that are this backend's entries' defaults.
    INHERITED: ClassVar[tuple[str, ...]] = ()
    #: Keys other backends take, with what to write on this one instead.
    MISPLACED: ClassVar[dict[str, str]] = {}

    def where(self) -> str:
        """Where the model lives, short (a path, hf:repo/file, ollama:tag, a URL)."""
        return ""

    def without_batching(self) -> ModelSpec:
        """This entry with its agents on separate instances (``--no-batch``)."""
        return self

    def report_facts(self) -> dict[str, Any]:
        """The settings of this entry the run report shows next to the model."""
        return {}


class HostSpec(StrictModel):
    """A daemon on another machine: how much the planner may place on it."""

    memory_budget: str | None = Field(None, description="e.g. 20GiB; default: no limit.")


class AgentSpec(StrictModel):
    """One agent of a profile: a model with its own prompt and sampling."""

    model: str
    system: str | None = Field(None, description="The agent's own system prompt.")
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    max_tokens: int = Field(512, ge=1, le=131_072)
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    timeout_s: float | None = Field(None, gt=0, le=86_400, description="Give up on this "
                                    "agent after this many seconds (dropped, reported).")
    stop: list[str] = Field(default_factory=list, max_length=16, description="Strings that "
                            "end the agent's answer where they appear (not included).")
    prompt_template: PromptTemplate | None = Field(
        default=None, description=TEMPLATE_HELP + " Default: the profile's "
        "prompt_template, else the paper's prompt.")

    @field_validator("stop")
    @classmethod
    def _no_empty_stop(cls, value: list[str]) -> list[str]:
        if any(not s for s in value):
            raise ValueError("a stop string cannot be empty")
        return value


class RouterSpec(StrictModel):
    """The model in front of a profile's specialists, and how it picks them."""

    model: str
    kind: Literal["choose", "embed"] = Field(
        default="choose", description="choose: the model reads the query and names the "
        "specialists (its output constrained to their names); embed: the query's "
        "embedding against each specialist's description (cosine), cheaper.")
    pick: int = Field(default=1, ge=1, le=8, description="The most specialists chosen.")
    system: str | None = Field(default=None, description="Extra instructions for the "
                               "choosing router.")
    max_tokens: int = Field(default=48, ge=8, le=1024)


class Specialist(StrictModel):
    """A named specialist: what it is good at, and its agents or a whole profile."""

    description: str = Field(min_length=1)
    agents: list[AgentSpec] | None = Field(default=None, min_length=1, description="One "
                                           "layer of proposers.")
    profile: str | None = Field(default=None, description="A profile whose proposer "
                                "layers this specialist runs.")

    @model_validator(mode="after")
    def _agents_or_profile(self) -> Specialist:
        if (self.agents is None) == (self.profile is None):
            raise ValueError("give either agents: (a list of agents) or profile: (a "
                             "profile's name), not both and not neither")
        return self


class Profile(StrictModel):
    """A MoA recipe: proposer layers, then the final aggregator. A routing profile has a
    router and specialists instead of layers: the router picks specialists per query and
    their agents are the proposers."""

    description: str = ""
    router: RouterSpec | None = None
    specialists: dict[str, Specialist] = Field(default_factory=dict)
    layers: list[list[AgentSpec]] = Field(default_factory=list)
    aggregator: AgentSpec
    prompt_template: PromptTemplate | None = Field(
        default=None, description=TEMPLATE_HELP + " The default of the profile's "
        "agents (aggregator included) that set none.")

    aggregate: Literal["always", "auto", "never"] = Field(
        default="always",
        description="always: the aggregator writes the answer; auto: skipped when "
        "the last layer's proposers agree (their answer is returned); never: the answer "
        "most proposers share (majority vote, ties to the first agent).")
    layers_up_to: int | None = Field(
        default=None, ge=1, le=32, description="Up to N proposer layers (the last one repeated), "
        "stopping early once a layer's answers agree.")

    def template_for(self, agent: AgentSpec) -> str | None:
        """The agent's prompt template: its own, else the profile's; None: the default."""
        return agent.prompt_template if agent.prompt_template is not None \
            else self.prompt_template

    @field_validator("layers")
    @classmethod
    def _some_layers(cls, value: list[list[AgentSpec]],
                     info: ValidationInfo) -> list[list[AgentSpec]]:
        if not value and info.data.get("router") is None:
            raise ValueError("needs at least 1 layer of proposer agents (or, instead, a "
                             "router: with specialists:)")
        return value

    @model_validator(mode="after")
    def _no_empty_layer(self) -> Profile:
        if self.router is not None and self.layers:
            raise ValueError("a routing profile's proposers are its specialists: drop layers:")
        if self.router is not None and len(self.specialists) < 2:
            raise ValueError("a router needs at least two specialists: to choose from")
        if self.specialists and self.router is None:
            raise ValueError("specialists: need a router: to choose among them")
        for i, layer in enumerate(self.layers):
            if not layer:
                raise ValueError(f"layer {i + 1} has no agents")
        return self


#: Top-level keys that are the default of the models whose backend lists them in INHERITED.
_TOP_LEVEL_DEFAULTS = ("cpu_repack", "batch", "flash_attn", "workers")


class ConfigFile(StrictModel):
    """The shape of one models.yaml."""

    default_profile: str | None = None
    cpu_repack: AutoOnOff | None = Field(None, description=REPACK_HELP + " Default: auto.")
    batch: OnOff | None = Field(None, description=BATCH_HELP + " Default: on.")
    flash_attn: AutoOnOff | None = Field(None, description=FLASH_ATTN_HELP + " Default: auto.")
    workers: OnOff | None = Field(None, description=WORKERS_HELP + " Default: on.")
    #: Each entry is validated by its backend's own schema (``parse_models``).
    models: dict[str, dict[str, Any]] = Field(default_factory=dict)
    profiles: dict[str, Profile] = Field(default_factory=dict)
    ollama_hosts: dict[str, HostSpec] = Field(default_factory=dict)


@dataclass(frozen=True)
class Origin:
    """Where a config entry was written, for error messages."""

    file: str
    line: int | None


@dataclass
class Config:
    """The merged configuration: shipped models.yaml, then the user's."""

    models: dict[str, ModelSpec]
    profiles: dict[str, Profile]
    default_profile: str
    files: list[str] = field(default_factory=list)
    ollama_hosts: dict[str, HostSpec] = field(default_factory=dict)
    #: The top-level cpu_repack (None: not written anywhere, i.e. auto).
    cpu_repack: AutoOnOff | None = None
    #: The top-level batch (None: not written anywhere, i.e. on).
    batch: OnOff | None = None
    #: The top-level flash_attn (None: not written anywhere, i.e. auto).
    flash_attn: AutoOnOff | None = None
    #: The top-level workers (None: not written anywhere, i.e. on).
    workers: OnOff | None = None
    # (kind, name) -> the file that defined the entry and its node index, for line numbers
    _origins: dict[tuple[str, str], tuple[Origin, _NodeIndex]] = field(default_factory=dict)

    def origin(self, kind: str, name: str, *path: str | int) -> Origin:
        """File and line of ``kind.name[.path...]`` in whichever file defined it."""
        entry = self._origins.get((kind, name))
        if entry is None:
            return Origin("<built-in>", None)
        origin, index = entry
        return Origin(origin.file, index.line_of((kind, name, *path)))

    def profile(self, name: str | None) -> tuple[str, Profile]:
        """The named profile (or the default), with a helpful error when unknown."""
        name = name or self.default_profile
        if name not in self.profiles:
            known = ", ".join(sorted(self.profiles)) or "none"
            raise ConfigError(f"no profile named {name!r}; known profiles: {known} "
                              "(add one under profiles: in your models.yaml)")
        return name, self.profiles[name]

    def without_batching(self) -> Config:
        """A copy in which every model runs each agent on its own instance (``--no-batch``;
        each backend's spec says what that means for it); origins and files are kept, so
        errors still name lines."""
        models = {name: spec.without_batching() for name, spec in self.models.items()}
        return replace(self, models=models, batch="off", files=list(self.files),
                       _origins=dict(self._origins))


class _NodeIndex:
    """Finds the line of a field path in a composed YAML node tree."""

    def __init__(self, root: yaml.Node | None) -> None:
        self.root = root

    def line_of(self, loc: tuple[Any, ...]) -> int | None:
        """Line of the deepest key (or list item) of ``loc`` present in the file."""
        node = self.root
        if node is None:
            return None
        line = node.start_mark.line + 1
        for key in loc:
            if isinstance(node, yaml.MappingNode):
                match = next(((k, v) for k, v in node.value if k.value == str(key)), None)
                if match is None:
                    break  # a missing field: the line of the entry that lacks it
                line, node = match[0].start_mark.line + 1, match[1]
            elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) \
                    and key < len(node.value):
                node = node.value[key]
                line = node.start_mark.line + 1
            else:
                break
        return line


def shipped_config_path() -> Path:
    """The models.yaml that ships with localmoa."""
    packaged = Path(str(resources.files("localmoa") / "models.yaml"))
    if packaged.is_file():
        return packaged
    # Running from a source checkout (editable install): the repo-root file.
    return Path(__file__).resolve().parent.parent / "models.yaml"


def _format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _find_duplicate_key(node: yaml.Node | None) -> tuple[str, int] | None:
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for k, v in node.value:
            if k.value in seen:
                return k.value, k.start_mark.line + 1
            seen.add(k.value)
            found = _find_duplicate_key(v)
            if found:
                return found
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            found = _find_duplicate_key(item)
            if found:
                return found
    return None


def _pydantic_message(err: Any, misplaced: dict[str, str] | None = None,
                      hide_input: bool = False) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        key = str(err["loc"][0]) if len(err["loc"]) == 1 else ""  # a key of the entry itself
        if misplaced and key in misplaced:
            return misplaced[key]
        return "unknown key (check the spelling; see models.yaml in the README)"
    if kind == "missing":
        return "required field is missing"
    msg = str(err["msg"])
    msg = msg.removeprefix("Value error, ")
    if (kind.endswith("_type") or kind in ("literal_error", "enum")) and not hide_input:
        msg += f" (got {err.get('input')!r})"
    return msg


def _raise_first(exc: ValidationError, file: str, index: _NodeIndex,
                 prefix: tuple[Any, ...] = (), misplaced: dict[str, str] | None = None,
                 hide_input: bool = False) -> None:
    """The first of pydantic's errors as one line with its file, line and field (without
    the value written when the schema hides inputs: it may be a secret)."""
    errors = exc.errors()
    first = errors[0]
    loc = (*prefix, *first["loc"])
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    raise ConfigError(_pydantic_message(first, misplaced, hide_input) + more, file=file,
                      line=index.line_of(loc), field=_format_loc(loc)) from None


def spec_class(backend: Any) -> type[ModelSpec]:
    """The schema of ``backend: NAME`` entries (the backend's own pydantic model);
    ConfigError when no installed backend has that name."""
    from .backends import backend_class

    if not isinstance(backend, str) or not backend:
        from .backends import known_backends

        raise ConfigError(f"backend must be a name: one of {', '.join(known_backends())}"
                          f" (got {backend!r})")
    return backend_class(backend).spec_class


def model_spec(data: dict[str, Any]) -> ModelSpec:
    """One model entry validated by its backend's schema (for code and tests; a file
    goes through ``read_config_file``, whose errors name the line)."""
    return spec_class(data.get("backend")).model_validate(data)


def parse_models(entries: dict[str, dict[str, Any]], file: str,
                 index: _NodeIndex) -> dict[str, ModelSpec]:
    """Each model entry of one file, validated by its own backend's schema."""
    specs: dict[str, ModelSpec] = {}
    for name, entry in entries.items():
        where = ("models", name)
        if "backend" not in entry:
            raise ConfigError("required field is missing (write backend: llamacpp, ollama, "
                              "openai, or an installed plugin's name)", file=file,
                              line=index.line_of(where), field=_format_loc((*where, "backend")))
        try:
            cls = spec_class(entry["backend"])
        except ConfigError as exc:
            raise ConfigError(exc.message, file=file,
                              line=index.line_of((*where, "backend")),
                              field=_format_loc((*where, "backend"))) from None
        try:
            specs[name] = cls.model_validate(entry)
        except ValidationError as exc:
            _raise_first(exc, file, index, where, cls.MISPLACED,
                         bool(cls.model_config.get("hide_input_in_errors")))
    return specs


def read_config_file(path: Path) -> tuple[ConfigFile, _NodeIndex, dict[str, ModelSpec]]:
    """Parse and validate one models.yaml: the file, its node index, its models."""
    name = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("config file not found (check --config / LOCALMOA_CONFIG)",
                          file=name) from None
    except UnicodeDecodeError:
        raise ConfigError("config file is not UTF-8 text", file=name) from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file: {exc.strerror}", file=name) from None
    try:
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"malformed YAML: {problem}", file=name,
                          line=mark.line + 1 if mark else None) from None
    index = _NodeIndex(root)
    dup = _find_duplicate_key(root)
    if dup:
        raise ConfigError("key appears twice in the same mapping", file=name, line=dup[1],
                          field=dup[0])
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("expected a mapping with models: and profiles:", file=name, line=1)
    try:
        parsed = ConfigFile.model_validate(data)
    except ValidationError as exc:
        _raise_first(exc, name, index)
    return parsed, index, parse_models(parsed.models, name, index)


def load_config(user_config: Path | None = None) -> Config:
    """The shipped config merged with the user's.

    ``user_config`` (``--config``) wins over LOCALMOA_CONFIG, which wins over
    LOCALMOA_HOME/models.yaml. A named user config that does not exist is an
    error; the default location may simply be absent.
    """
    paths = [shipped_config_path()]
    explicit = user_config is not None
    user = user_config or constants.user_config_path()
    if explicit or user.exists():
        paths.append(user)

    merged = Config(models={}, profiles={}, default_profile="tiny")
    for path in paths:
        parsed, index, models = read_config_file(path)
        merged.files.append(str(path))
        origin = Origin(str(path), None)
        for name, spec in models.items():
            merged.models[name] = spec
            merged._origins[("models", name)] = (origin, index)
        for name, prof in parsed.profiles.items():
            merged.profiles[name] = prof
            merged._origins[("profiles", name)] = (origin, index)
        merged.ollama_hosts.update(parsed.ollama_hosts)
        for key in _TOP_LEVEL_DEFAULTS:
            if getattr(parsed, key) is not None:
                setattr(merged, key, getattr(parsed, key))
        if parsed.default_profile:
            merged.default_profile = parsed.default_profile
    _check_references(merged)
    # A top-level value is the default of every model whose backend inherits that key.
    defaults = {key: getattr(merged, key) for key in _TOP_LEVEL_DEFAULTS
                if getattr(merged, key) is not None}
    merged.models = {name: spec.model_copy(update={k: v for k, v in defaults.items()
                                                   if k in spec.INHERITED
                                                   and getattr(spec, k) is None})
                     for name, spec in merged.models.items()}
    return merged


def _check_references(config: Config) -> None:
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
                    f"no model named {agent.model!r} (define it under models:; known: {known})",
                    file=origin.file, line=origin.line,
                    field=_format_loc(("profiles", pname, *path, "model")))
    if config.default_profile not in config.profiles:
        raise ConfigError(f"default_profile {config.default_profile!r} is not a profile",
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
                          field=_format_loc(("profiles", pname, *path)))

    known = ", ".join(sorted(config.models)) or "none"
    if prof.router is not None and prof.router.model not in config.models:
        fail(f"no model named {prof.router.model!r} (define it under models:; known: "
             f"{known})", "router", "model")
    for name, spec in prof.specialists.items():
        for j, agent in enumerate(spec.agents or []):
            if agent.model not in config.models:
                fail(f"no model named {agent.model!r} (define it under models:; known: "
                     f"{known})", "specialists", name, "agents", j, "model")
        if spec.profile is not None:
            other = config.profiles.get(spec.profile)
            if other is None:
                fail(f"no profile named {spec.profile!r}; known: "
                     f"{', '.join(sorted(config.profiles))}", "specialists", name, "profile")
            elif other.router is not None:
                fail(f"profile {spec.profile!r} routes itself; a specialist's profile must "
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
                          field=_format_loc(("profiles", pname, *where)))
