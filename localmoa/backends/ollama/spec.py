"""The keys of a ``backend: ollama`` entry in models.yaml."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field, model_validator

from ... import constants
from ...errors import ConfigError
from ...spec_types import KvType, ModelSpec, StrictModel

PARALLEL_HELP = ("How many agents of this model are sent to the Ollama daemon at once; set it "
                 "to the daemon's OLLAMA_NUM_PARALLEL. Default: 1.")


class OllamaSource(StrictModel):
    """A model pulled into an Ollama daemon: ``source: {ollama: TAG}``."""

    ollama: str | None = Field(None, description="Ollama tag, e.g. qwen2.5:7b-instruct.")
    path: str | None = Field(None, description="(backend: llamacpp only)")
    repo: str | None = Field(None, description="(backend: llamacpp only)")
    file: str | None = Field(None, description="(backend: llamacpp only)")
    package: str | None = Field(None, description="(backend: llamacpp only)")

    @model_validator(mode="after")
    def _a_tag(self) -> OllamaSource:
        if self.ollama is None:
            raise ValueError("backend ollama needs source: {ollama: TAG}")
        if self.path or self.repo or self.package or self.file:
            raise ValueError("ollama: TAG stands alone; remove path/repo/package/file")
        if not self.ollama.strip():
            raise ValueError("ollama needs a tag such as qwen2.5:7b-instruct")
        return self


class OllamaSpec(ModelSpec):
    """A model served by an Ollama daemon, on this machine or (allow_remote) another."""

    source: OllamaSource
    host: str | None = Field(None, description="Ollama daemon URL; default $OLLAMA_HOST or "
                             "http://127.0.0.1:11434.")
    allow_remote: bool = Field(False, description="Allow a host that is not this machine.")
    kv_type: KvType = Field("f16", description="The daemon's OLLAMA_KV_CACHE_TYPE, for the "
                            "footprint.")
    parallel: int | None = Field(None, ge=1, le=64, description=PARALLEL_HELP)

    MISPLACED: ClassVar[dict[str, str]] = {
        "batch": "batch applies to backend: llamacpp only; for Ollama set parallel",
        "flash_attn": "flash_attn applies to backend: llamacpp only; Ollama sets it with "
                      "OLLAMA_FLASH_ATTENTION on the daemon",
        "workers": "workers applies to backend: llamacpp only; an Ollama daemon runs its own "
                   "runner processes",
        "cpu_repack": "cpu_repack applies to backend: llamacpp only",
        "n_gpu_layers": "n_gpu_layers applies to backend: llamacpp only; the Ollama daemon "
                        "places layers itself",
        "n_batch": "n_batch applies to backend: llamacpp only",
        "use_mmap": "use_mmap applies to backend: llamacpp only",
        "chat_format": "chat_format applies to backend: llamacpp only; Ollama uses the "
                       "model's template",
        "base_url": "base_url applies to backend: openai only; an Ollama daemon is host:",
    }

    @model_validator(mode="after")
    def _host_allowed(self) -> OllamaSpec:
        if self.host is not None:
            try:  # the client's parser: a bad port is a config error with file:line
                constants.ollama_host(self.host)
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
            if not self.allow_remote and not is_loopback(self.host):
                raise ValueError(
                    f"host {self.host} is not this machine; localmoa only talks to loopback "
                    "unless you add allow_remote: true to this model")
        return self

    @property
    def tag(self) -> str:
        assert self.source.ollama is not None
        return self.source.ollama

    def where(self) -> str:
        return f"ollama:{self.tag}"

    def report_facts(self) -> dict[str, Any]:
        return {"kv_type": self.kv_type}


def is_loopback(url: str) -> bool:
    """Whether an Ollama host, in any form OLLAMA_HOST takes, names this machine.

    The host is parsed as the official client parses it (``:56789`` is 127.0.0.1,
    empty is OLLAMA_HOST's daemon); this machine is what the socket guard lets
    through: localhost, 127/8, ::1 and the unspecified 0.0.0.0 / ::.
    """
    from urllib.parse import urlsplit

    from ...netguard import is_this_machine

    return is_this_machine(urlsplit(constants.ollama_host(url)).hostname or "")
