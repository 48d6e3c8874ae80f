"""Environment variables, all read here and nowhere else.

They are functions rather than module constants so a test (or an embedding
program) that changes the environment is seen without re-importing.
"""

from __future__ import annotations

import os
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


def memory_budget() -> str | None:
    """LOCALMOA_MEMORY_BUDGET, e.g. ``1.5GiB``: the RAM models may use (default: what is free)."""
    return os.environ.get("LOCALMOA_MEMORY_BUDGET") or None


def ollama_host() -> str:
    """OLLAMA_HOST as the official client reads it, else the local daemon."""
    value = os.environ.get("OLLAMA_HOST", "").strip()
    if not value:
        return "http://127.0.0.1:11434"
    if "://" not in value:
        value = "http://" + value
    if value.count(":") < 2:  # no port
        value += ":11434"
    return value.rstrip("/")
