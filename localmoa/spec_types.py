"""The building blocks of models.yaml's schemas: StrictModel (strict types, no unknown
keys), ModelSpec (what every model entry has; each backend's schema subclasses it), on/off
values as YAML writes them, KV cache types, and the help texts of the load options that
models.yaml may also set at its top level. Below config and the backends alike: it
imports no other localmoa module."""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

#: A model's name (in models.yaml, `models add --name`): serve lists each model by its
#: name beside moa:PROFILE, and --self takes NAME:N, so no colon, slash, space or control.
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
MODEL_NAME_RULE = ("use letters, digits, '.', '_' and '-', starting with a letter or digit "
                   "(at most 128 characters)")

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
