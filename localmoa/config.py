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
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
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
PARALLEL_HELP = ("How many agents of this model are sent to the Ollama daemon at once; set it "
                 "to the daemon's OLLAMA_NUM_PARALLEL. Default: 1.")

#: Keys that only one backend reads, and what to write instead on the other one.
_BACKEND_ONLY = {
    "batch": ("llamacpp", "batch applies to backend: llamacpp only; for Ollama set parallel"),
    "flash_attn": ("llamacpp", "flash_attn applies to backend: llamacpp only; Ollama sets it "
                   "with OLLAMA_FLASH_ATTENTION on the daemon"),
    "workers": ("llamacpp", "workers applies to backend: llamacpp only; an Ollama daemon "
                "runs its own runner processes"),
    "parallel": ("ollama", "parallel applies to backend: ollama only; llama.cpp models batch "
                 "their agents themselves (batch: on)"),
}
#: Top-level keys that are every llama.cpp model's default where the model does not set them.
_LLAMACPP_DEFAULTS = ("cpu_repack", "batch", "flash_attn", "workers")


class _Strict(BaseModel):
    # strict: "512" is not an int; extra=forbid: a typo is an error, not ignored.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Source(_Strict):
    """Where a model's GGUF comes from. Exactly one form:

    - ``path``: a local GGUF file;
    - ``repo`` + ``file``: a file of a Hugging Face repo, from the local cache only;
    - ``repo: org/name:QUANT``: the GGUF of that quant in a cached Hugging Face repo;
    - ``package`` + ``file``: a GGUF shipped inside an installed Python package;
    - ``ollama: TAG``: a model pulled into an Ollama daemon (backend: ollama).
    """

    path: str | None = Field(None, description="Local GGUF path (~ expanded).")
    repo: str | None = Field(None, description="Hugging Face repo id, optionally ':QUANT'.")
    file: str | None = Field(None, description="File inside the repo or the package.")
    package: str | None = Field(None, description="Importable Python package holding the GGUF.")
    ollama: str | None = Field(None, description="Ollama tag, e.g. qwen2.5:7b-instruct.")

    @model_validator(mode="after")
    def _one_form(self) -> Source:
        if self.ollama is not None:
            if self.path or self.repo or self.package or self.file:
                raise ValueError("ollama: TAG stands alone; remove path/repo/package/file")
            if not self.ollama.strip():
                raise ValueError("ollama needs a tag such as qwen2.5:7b-instruct")
        elif self.path is not None:
            if self.repo or self.package or self.file:
                raise ValueError("give either path, repo (+ file) or package + file, not several")
        elif self.package is not None:
            if self.repo:
                raise ValueError("give either repo or package, not both")
            if not self.file:
                raise ValueError("package needs file: the GGUF's name inside the package")
        elif self.repo is not None:
            if ":" not in self.repo and not self.file:
                raise ValueError("repo needs file, or write it as repo: org/name:QUANT")
        else:
            raise ValueError("give one of path, repo (+ file), package + file, or ollama")
        return self

    def describe(self) -> str:
        """Short human form: the path, hf:repo/file, pkg:package/file or ollama:tag."""
        if self.ollama is not None:
            return f"ollama:{self.ollama}"
        if self.path is not None:
            return self.path
        if self.package is not None:
            return f"pkg:{self.package}/{self.file}"
        return f"hf:{self.repo}" + (f"/{self.file}" if self.file else "")


class ModelSpec(_Strict):
    """A named model: which backend serves it, where its weights are, how to load it."""

    backend: Literal["llamacpp", "ollama"] = Field(description="Which backend serves it.")
    source: Source
    description: str = ""
    host: str | None = Field(None, description="Ollama daemon URL; default $OLLAMA_HOST or "
                             "http://127.0.0.1:11434.")
    allow_remote: bool = Field(False, description="Allow a host that is not this machine.")
    n_ctx: int = Field(2048, ge=64, le=1_048_576, description="Context length in tokens.")
    n_batch: int = Field(512, ge=1, le=65_536, description="Prompt batch size in tokens.")
    n_gpu_layers: int = Field(0, ge=-1, description="Layers offloaded to the GPU; -1 = all.")
    kv_type: KvType = Field("f16", description="KV cache element type (q8_0 halves it).")
    use_mmap: bool = True
    chat_format: str | None = Field(
        None, description="llama-cpp-python chat format (e.g. chatml, gemma, llama-3) for a "
        "GGUF without a chat template; default: the template in the GGUF.")
    cpu_repack: AutoOnOff | None = Field(None, description=REPACK_HELP + " Default: the "
                                          "top-level cpu_repack, else auto.")
    batch: OnOff | None = Field(None, description=BATCH_HELP + " Default: the top-level "
                                "batch, else on. llamacpp only.")
    flash_attn: AutoOnOff | None = Field(None, description=FLASH_ATTN_HELP + " Default: the "
                                         "top-level flash_attn, else auto. llamacpp only.")
    workers: OnOff | None = Field(None, description=WORKERS_HELP + " Default: the top-level "
                                  "workers, else on. llamacpp only.")
    parallel: int | None = Field(None, ge=1, le=64, description=PARALLEL_HELP + " ollama only.")

    @field_validator("batch", "flash_attn", "workers", "parallel")
    @classmethod
    def _only_for_its_backend(cls, value: Any, info: ValidationInfo) -> Any:
        # A field validator (not the model's) so the error names the key and its line.
        backend, message = _BACKEND_ONLY[str(info.field_name)]
        if value is not None and info.data.get("backend", backend) != backend:
            raise ValueError(message)
        return value

    @model_validator(mode="after")
    def _backend_matches_source(self) -> ModelSpec:
        if self.backend == "ollama":
            if self.source.ollama is None:
                raise ValueError("backend ollama needs source: {ollama: TAG}")
            if self.cpu_repack is not None:
                raise ValueError("cpu_repack applies to backend: llamacpp only")
            if self.host is not None:
                try:  # the client's parser: a bad port is a config error with file:line
                    constants.ollama_host(self.host)
                except ConfigError as exc:
                    raise ValueError(str(exc)) from None
            if self.host is not None and not self.allow_remote and not is_loopback(self.host):
                raise ValueError(
                    f"host {self.host} is not this machine; localmoa only talks to loopback "
                    "unless you add allow_remote: true to this model")
        else:
            if self.source.ollama is not None:
                raise ValueError("source ollama needs backend: ollama")
            if self.host is not None:
                raise ValueError("host applies to backend: ollama only")
        return self


def is_loopback(url: str) -> bool:
    """Whether an Ollama host, in any form OLLAMA_HOST takes, names this machine.

    The host is parsed as the official client parses it (``:56789`` is 127.0.0.1,
    empty is OLLAMA_HOST's daemon); this machine is what the socket guard lets
    through: localhost, 127/8, ::1 and the unspecified 0.0.0.0 / ::.
    """
    from urllib.parse import urlsplit

    from .netguard import is_this_machine

    return is_this_machine(urlsplit(constants.ollama_host(url)).hostname or "")


class HostSpec(_Strict):
    """An Ollama daemon on another machine: how much the planner may place on it."""

    memory_budget: str | None = Field(None, description="e.g. 20GiB; default: no limit.")


class AgentSpec(_Strict):
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

    @field_validator("stop")
    @classmethod
    def _no_empty_stop(cls, value: list[str]) -> list[str]:
        if any(not s for s in value):
            raise ValueError("a stop string cannot be empty")
        return value


class Profile(_Strict):
    """A MoA recipe: proposer layers, then the final aggregator."""

    description: str = ""
    layers: list[list[AgentSpec]] = Field(min_length=1)
    aggregator: AgentSpec

    @model_validator(mode="after")
    def _no_empty_layer(self) -> Profile:
        for i, layer in enumerate(self.layers):
            if not layer:
                raise ValueError(f"layer {i + 1} has no agents")
        return self


class ConfigFile(_Strict):
    """The shape of one models.yaml."""

    default_profile: str | None = None
    cpu_repack: AutoOnOff | None = Field(None, description=REPACK_HELP + " Default: auto.")
    batch: OnOff | None = Field(None, description=BATCH_HELP + " Default: on.")
    flash_attn: AutoOnOff | None = Field(None, description=FLASH_ATTN_HELP + " Default: auto.")
    workers: OnOff | None = Field(None, description=WORKERS_HELP + " Default: on.")
    models: dict[str, ModelSpec] = Field(default_factory=dict)
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
        """A copy in which every llama.cpp model runs each agent on its own instance
        (``--no-batch``); origins and files are kept, so errors still name lines."""
        models = {name: spec.model_copy(update={"batch": "off"})
                  if spec.backend == "llamacpp" else spec
                  for name, spec in self.models.items()}
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


def _pydantic_message(err: Any) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        return "unknown key (check the spelling; see models.yaml in the README)"
    if kind == "missing":
        return "required field is missing"
    msg = str(err["msg"])
    msg = msg.removeprefix("Value error, ")
    if kind.endswith("_type") or kind in ("literal_error", "enum"):
        msg += f" (got {err.get('input')!r})"
    return msg


def read_config_file(path: Path) -> tuple[ConfigFile, _NodeIndex]:
    """Parse and validate one models.yaml."""
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
        errors = exc.errors()
        first = errors[0]
        loc = tuple(first["loc"])
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ConfigError(_pydantic_message(first) + more, file=name,
                          line=index.line_of(loc), field=_format_loc(loc)) from None
    return parsed, index


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
        parsed, index = read_config_file(path)
        merged.files.append(str(path))
        origin = Origin(str(path), None)
        for name, spec in parsed.models.items():
            merged.models[name] = spec
            merged._origins[("models", name)] = (origin, index)
        for name, prof in parsed.profiles.items():
            merged.profiles[name] = prof
            merged._origins[("profiles", name)] = (origin, index)
        merged.ollama_hosts.update(parsed.ollama_hosts)
        for key in _LLAMACPP_DEFAULTS:
            if getattr(parsed, key) is not None:
                setattr(merged, key, getattr(parsed, key))
        if parsed.default_profile:
            merged.default_profile = parsed.default_profile
    _check_references(merged)
    # A top-level value is every llama.cpp model's default.
    defaults = {key: getattr(merged, key) for key in _LLAMACPP_DEFAULTS
                if getattr(merged, key) is not None}
    merged.models = {name: spec.model_copy(update={k: v for k, v in defaults.items()
                                                   if getattr(spec, k) is None})
                     if spec.backend == "llamacpp" else spec
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
