"""The keys of a ``backend: llamacpp`` entry in models.yaml, and where its GGUF comes from."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field, model_validator

from ...spec_types import (
    BATCH_HELP,
    FLASH_ATTN_HELP,
    REPACK_HELP,
    WORKERS_HELP,
    AutoOnOff,
    KvType,
    ModelSpec,
    OnOff,
    StrictModel,
)


class Source(StrictModel):
    """Where a model's GGUF comes from. Exactly one form:

    - ``path``: a local GGUF file;
    - ``repo`` + ``file``: a file of a Hugging Face repo, from the local cache only;
    - ``repo: org/name:QUANT``: the GGUF of that quant in a cached Hugging Face repo;
    - ``package`` + ``file``: a GGUF shipped inside an installed Python package.
    """

    path: str | None = Field(None, description="Local GGUF path (~ expanded).")
    repo: str | None = Field(None, description="Hugging Face repo id, optionally ':QUANT'.")
    file: str | None = Field(None, description="File inside the repo or the package.")
    package: str | None = Field(None, description="Importable Python package holding the GGUF.")
    ollama: str | None = Field(None, description="(backend: ollama only)")

    @model_validator(mode="after")
    def _one_form(self) -> Source:
        if self.ollama is not None:
            raise ValueError("source ollama needs backend: ollama")
        if self.path is not None:
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
            raise ValueError("give one of path, repo (+ file), or package + file")
        return self

    def describe(self) -> str:
        """Short human form: the path, hf:repo/file or pkg:package/file."""
        if self.path is not None:
            return self.path
        if self.package is not None:
            return f"pkg:{self.package}/{self.file}"
        return f"hf:{self.repo}" + (f"/{self.file}" if self.file else "")


class LlamaCppSpec(ModelSpec):
    """A GGUF model run by llama.cpp (llama-cpp-python) on this machine."""

    source: Source
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
                                "batch, else on.")
    flash_attn: AutoOnOff | None = Field(None, description=FLASH_ATTN_HELP + " Default: the "
                                         "top-level flash_attn, else auto.")
    workers: OnOff | None = Field(None, description=WORKERS_HELP + " Default: the top-level "
                                  "workers, else on.")

    INHERITED: ClassVar[tuple[str, ...]] = ("cpu_repack", "batch", "flash_attn", "workers")
    MISPLACED: ClassVar[dict[str, str]] = {
        "parallel": "parallel applies to backend: ollama only; llama.cpp models batch "
                    "their agents themselves (batch: on)",
        "host": "host applies to backend: ollama only",
        "allow_remote": "allow_remote applies to backends that talk to a host (ollama, "
                        "openai); a llama.cpp model runs on this machine",
        "base_url": "base_url applies to backend: openai only",
    }

    def where(self) -> str:
        return self.source.describe()

    def report_facts(self) -> dict[str, Any]:
        return {"kv_type": self.kv_type, "n_gpu_layers": self.n_gpu_layers}

    def without_batching(self) -> LlamaCppSpec:
        return self.model_copy(update={"batch": "off"})
