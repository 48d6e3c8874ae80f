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
from typing import Any

from pydantic import Field, ValidationError

from . import constants
from .config_checks import check_references
from .config_yaml import NodeIndex, find_duplicate_key, format_loc, load_yaml, raise_first
from .errors import CLIP_CHARS, ConfigError, clip
from .fileio import CONFIG_MAX_BYTES, FileRefused, read_capped
from .profile_spec import Profile
from .registry import backend_class, known_backends
from .spec_types import (
    BATCH_HELP,
    FLASH_ATTN_HELP,
    MODEL_NAME,
    MODEL_NAME_RULE,
    REPACK_HELP,
    WORKERS_HELP,
    AutoOnOff,
    ModelSpec,
    OnOff,
    StrictModel,
)


class HostSpec(StrictModel):
    """A daemon on another machine: how much the planner may place on it."""

    memory_budget: str | None = Field(None, description="e.g. 20GiB; default: no limit.")


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
    _origins: dict[tuple[str, str], tuple[Origin, NodeIndex]] = field(default_factory=dict)

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
            raise ConfigError(f"no profile named {clip(name)!r}; known profiles: {known} "
                              "(add one under profiles: in your models.yaml)")
        return name, self.profiles[name]

    def without_batching(self) -> Config:
        """A copy in which every model runs each agent on its own instance (``--no-batch``;
        each backend's spec says what that means for it); origins and files are kept, so
        errors still name lines."""
        models = {name: spec.without_batching() for name, spec in self.models.items()}
        return replace(self, models=models, batch="off", files=list(self.files),
                       _origins=dict(self._origins))


def shipped_config_path() -> Path:
    """The models.yaml that ships with localmoa."""
    packaged = Path(str(resources.files("localmoa") / "models.yaml"))
    if packaged.is_file():
        return packaged
    # Running from a source checkout (editable install): the repo-root file.
    return Path(__file__).resolve().parent.parent / "models.yaml"


def spec_class(backend: Any) -> type[ModelSpec]:
    """The schema of ``backend: NAME`` entries (the backend's own pydantic model);
    ConfigError when no installed backend has that name."""
    if not isinstance(backend, str) or not backend or len(backend) > CLIP_CHARS:
        raise ConfigError(f"backend must be a name: one of {', '.join(known_backends())}"
                          f" (got {clip(repr(backend))})")
    return backend_class(backend).spec_class


def model_spec(data: dict[str, Any]) -> ModelSpec:
    """One model entry validated by its backend's schema (for code and tests; a file
    goes through ``read_config_file``, whose errors name the line)."""
    return spec_class(data.get("backend")).model_validate(data)


def parse_models(entries: dict[str, dict[str, Any]], file: str,
                 index: NodeIndex) -> dict[str, ModelSpec]:
    """Each model entry of one file, validated by its own backend's schema."""
    specs: dict[str, ModelSpec] = {}
    for name, entry in entries.items():
        where = ("models", name)
        if not MODEL_NAME.fullmatch(name):
            raise ConfigError(f"{clip(name)!r} cannot be a model name: {MODEL_NAME_RULE}",
                              file=file, line=index.line_of(where), field="models")
        if "backend" not in entry:
            raise ConfigError("required field is missing (write backend: llamacpp, ollama, "
                              "openai, or an installed plugin's name)", file=file,
                              line=index.line_of(where), field=format_loc((*where, "backend")))
        try:
            cls = spec_class(entry["backend"])
        except ConfigError as exc:
            raise ConfigError(exc.message, file=file,
                              line=index.line_of((*where, "backend")),
                              field=format_loc((*where, "backend"))) from None
        try:
            specs[name] = cls.model_validate(entry)
        except ValidationError as exc:
            raise_first(exc, file, index, where, cls.MISPLACED,
                         bool(cls.model_config.get("hide_input_in_errors")))
    return specs


def read_config_text(path: Path) -> str:
    """A models.yaml's text: a regular file of at most CONFIG_MAX_BYTES, UTF-8."""
    name = str(path)
    try:
        raw = read_capped(path, CONFIG_MAX_BYTES, "config files",
                          "a models.yaml is a few KiB: check --config / LOCALMOA_CONFIG")
        return raw.decode("utf-8")
    except FileNotFoundError:
        raise ConfigError("config file not found (check --config / LOCALMOA_CONFIG)",
                          file=name) from None
    except FileRefused as exc:
        raise ConfigError(f"config file {exc.reason}", file=name) from None
    except UnicodeDecodeError:
        raise ConfigError("config file is not UTF-8 text", file=name) from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file: {exc.strerror}", file=name) from None


def read_config_file(path: Path) -> tuple[ConfigFile, NodeIndex, dict[str, ModelSpec]]:
    """Parse and validate one models.yaml: the file, its node index, its models."""
    return parse_config_text(read_config_text(path), str(path))


def parse_config_text(text: str, name: str) -> tuple[ConfigFile, NodeIndex,
                                                     dict[str, ModelSpec]]:
    """Parse and validate the text of one models.yaml (``name``: its file, for errors)."""
    root, data = load_yaml(text, name)
    index = NodeIndex(root)
    dup = find_duplicate_key(root)
    if dup:
        raise ConfigError("key appears twice in the same mapping", file=name, line=dup[1],
                          field=clip(dup[0]))
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("expected a mapping with models: and profiles:", file=name, line=1)
    try:
        parsed = ConfigFile.model_validate(data)
    except ValidationError as exc:
        raise_first(exc, name, index)
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
    check_references(merged)
    # A top-level value is the default of every model whose backend inherits that key.
    defaults = {key: getattr(merged, key) for key in _TOP_LEVEL_DEFAULTS
                if getattr(merged, key) is not None}
    merged.models = {name: spec.model_copy(update={k: v for k, v in defaults.items()
                                                   if k in spec.INHERITED
                                                   and getattr(spec, k) is None})
                     for name, spec in merged.models.items()}
    return merged


