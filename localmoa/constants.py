"""Environment variables, all read here and nowhere else.

They are functions rather than module constants so a test (or an embedding
program) that changes the environment is seen without re-importing.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value).expanduser() if value else None


def localmoa_home() -> Path:
    """LOCALMOA_HOME, else $XDG_CONFIG_HOME/localmoa, else ~/.config/localmoa."""
    return _env_path("LOCALMOA_HOME") or (
        (_env_path("XDG_CONFIG_HOME") or Path.home() / ".config") / "localmoa"
    )


def user_config_path() -> Path:
    """LOCALMOA_CONFIG, else the models.yaml in localmoa_home()."""
    return _env_path("LOCALMOA_CONFIG") or localmoa_home() / "models.yaml"


def debug() -> bool:
    """LOCALMOA_DEBUG=1: show tracebacks instead of one-line errors."""
    return os.environ.get("LOCALMOA_DEBUG", "") not in ("", "0", "false", "no")


def hf_hub_cache() -> Path:
    """The Hugging Face hub cache, with huggingface_hub's precedence.

    HF_HUB_CACHE, else HF_HOME/hub, else $XDG_CACHE_HOME/huggingface/hub, else
    ~/.cache/huggingface/hub. Read on each call (huggingface_hub reads it once).
    """
    explicit = _env_path("HF_HUB_CACHE") or _env_path("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return explicit
    hf_home = _env_path("HF_HOME") or (
        (_env_path("XDG_CACHE_HOME") or Path.home() / ".cache") / "huggingface")
    return hf_home / "hub"


def cpu_repack() -> str | None:
    """LOCALMOA_CPU_REPACK: auto, on or off; wins over cpu_repack: in models.yaml."""
    return os.environ.get("LOCALMOA_CPU_REPACK") or None


def workers() -> str | None:
    """LOCALMOA_WORKERS: on or off; wins over workers: in models.yaml."""
    value = (os.environ.get("LOCALMOA_WORKERS") or "").strip().lower()
    return {"1": "on", "true": "on", "yes": "on", "0": "off", "false": "off",
            "no": "off"}.get(value, value) or None


def cores() -> str | None:
    """LOCALMOA_CORES: the CPU cores localmoa plans for, instead of the ones it finds."""
    return os.environ.get("LOCALMOA_CORES") or None


def event_log() -> Path | None:
    """LOCALMOA_EVENT_LOG=FILE: every engine event appended as one JSON line."""
    return _env_path("LOCALMOA_EVENT_LOG")


def memory_budget() -> str | None:
    """LOCALMOA_MEMORY_BUDGET, e.g. ``1.5GiB``: the RAM models may use (default: what is free)."""
    return os.environ.get("LOCALMOA_MEMORY_BUDGET") or None


def max_prompt_bytes() -> str | None:
    """LOCALMOA_MAX_PROMPT_BYTES, e.g. ``32MiB``: the largest prompt, prompt file or task
    file read (default 8 MiB, in fileio.py)."""
    return os.environ.get("LOCALMOA_MAX_PROMPT_BYTES") or None


def _list(name: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, "").split(",") if item.strip()]


def serve_allowed_hosts() -> list[str]:
    """LOCALMOA_ALLOWED_HOSTS=a,b: Host names `localmoa serve` answers besides loopback
    (as --allow-host)."""
    return _list("LOCALMOA_ALLOWED_HOSTS")


def serve_origins() -> list[str]:
    """LOCALMOA_ORIGINS=https://a,https://b: browser origins allowed to call `localmoa
    serve` (as --cors; Ollama's OLLAMA_ORIGINS)."""
    return _list("LOCALMOA_ORIGINS")


def hf_hub_offline() -> bool:
    """HF_HUB_OFFLINE set (huggingface_hub's own switch): nothing is downloaded."""
    return os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")


def go_offline() -> None:
    """Set HF_HUB_OFFLINE=1 for this process and its children (every command but
    `models pull`): huggingface_hub then never looks anything up."""
    os.environ["HF_HUB_OFFLINE"] = "1"


def network_log() -> Path | None:
    """LOCALMOA_NETWORK_LOG=FILE: every socket attempt the guard sees, allowed or refused."""
    return _env_path("LOCALMOA_NETWORK_LOG")


def secret(name: str) -> str:
    """The value of the variable a config entry names for a key (``api_key_env``),
    stripped; empty when unset. Keys are never read from files."""
    return os.environ.get(name, "").strip()


def child_environment(without: tuple[str, ...] = ()) -> dict[str, str]:
    """This process's environment for a child process, less the variables ``without``."""
    return {k: v for k, v in os.environ.items() if k not in without}


def ollama_host_raw() -> str:
    """OLLAMA_HOST as it is set (empty when unset), for reports that show the value."""
    return os.environ.get("OLLAMA_HOST", "")


def _client_host_parser() -> Callable[[str | None], str]:
    """The official client's parser (private, but the client's one parser). Importing
    ``ollama`` builds a default client from OLLAMA_HOST and fails on a bad value, so
    that import is made without it: the value is then reported as a config error."""
    try:
        from ollama._client import _parse_host
    except ValueError:
        saved = os.environ.pop("OLLAMA_HOST", None)
        try:
            from ollama._client import _parse_host
        finally:
            if saved is not None:
                os.environ["OLLAMA_HOST"] = saved
    return _parse_host


def ollama_host(configured: str | None = None) -> str:
    """The Ollama daemon's URL: ``configured`` (a model's ``host:``), else OLLAMA_HOST.

    Parsed by the official client's own parser, with the client's precedence, so
    localmoa and the client always name the same daemon: empty is
    http://127.0.0.1:11434, ``:56789`` is http://127.0.0.1:56789, ``http://h`` is
    port 80, ``https://h`` port 443, ``[::1]`` is http://[::1]:11434.
    Raises ConfigError for a value the client cannot use (a bad port).
    """
    from .errors import ConfigError

    _parse_host = _client_host_parser()

    source = "host" if configured else "OLLAMA_HOST"
    value = (configured or os.environ.get("OLLAMA_HOST") or "").strip()
    try:
        return str(_parse_host(value))
    except ValueError as exc:  # a port that is not a number or out of range, a broken [v6]
        raise ConfigError(f"{source} {value!r} is not an Ollama host ({exc}); write "
                          "[scheme://]host[:port], e.g. http://127.0.0.1:11434") from None


def ollama_models_dirs() -> list[Path]:
    """Where Ollama keeps pulled models (manifests/ and blobs/): OLLAMA_MODELS (as Ollama
    reads it: quotes and spaces trimmed), else ~/.ollama/models, then the Linux service's
    /usr/share/ollama/.ollama/models."""
    value = os.environ.get("OLLAMA_MODELS", "").strip().strip("'\"").strip()
    if value:
        return [Path(value).expanduser()]
    return [Path.home() / ".ollama" / "models", Path("/usr/share/ollama/.ollama/models")]


def lmstudio_models_dirs() -> list[Path]:
    """LM Studio's models folders (PUBLISHER/REPO/*.gguf): LOCALMOA_LMSTUDIO_MODELS, else
    ~/.lmstudio/models, then the older ~/.cache/lm-studio/models."""
    explicit = _env_path("LOCALMOA_LMSTUDIO_MODELS")
    if explicit:
        return [explicit]
    return [Path.home() / ".lmstudio" / "models",
            Path.home() / ".cache" / "lm-studio" / "models"]


def assembled_models_dir() -> Path:
    """LOCALMOA_MODELS_DIR, else LOCALMOA_HOME/models: where GGUFs shipped as part packages
    (source: {chunks: ...}) are assembled, once."""
    return _env_path("LOCALMOA_MODELS_DIR") or localmoa_home() / "models"


def eval_records_path() -> Path:
    """LOCALMOA_EVAL_RECORDS, else LOCALMOA_HOME/eval-records.json: each model's summed
    `localmoa eval` record, the selectors' tie-break (selection/records.py)."""
    return _env_path("LOCALMOA_EVAL_RECORDS") or localmoa_home() / "eval-records.json"
