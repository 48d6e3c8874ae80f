"""The keys of a ``backend: openai`` entry in models.yaml: a model some OpenAI-compatible
server already serves (llama-server, vLLM, LM Studio, llama-cpp-python's server)."""

from __future__ import annotations

import re
from typing import ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import ConfigDict, Field, ValidationInfo, field_validator

from ...spec_types import ModelSpec, StrictModel

BASE_URL_HELP = ("The server's OpenAI API root, e.g. http://127.0.0.1:8080/v1 (llama-server, "
                 "LM Studio and vLLM serve it under /v1: write it); used as written, less a "
                 "trailing /.")
API_KEY_ENV_HELP = ("The name of the environment variable that holds the API key (e.g. "
                    "OPENAI_API_KEY); the key itself is never written in models.yaml.")
RESPONSE_FORMAT_HELP = (
    "How the server takes the JSON schema an answer must follow (a router's choice): "
    "json_schema, OpenAI's {type: json_schema, json_schema: {name, schema, strict}} "
    "(llama-server, vLLM, LM Studio, OpenAI); json_object, {type: json_object, schema} "
    "(llama-cpp-python's server, which refuses json_schema). Default: json_schema.")
CONCURRENCY_HELP = ("How many requests the server takes at once (llama-server --parallel, vLLM "
                    "max_num_seqs); localmoa sends no more. Default: 1.")

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _looks_like_a_key(value: str) -> bool:
    """A secret pasted where a variable's name belongs: not a name at all, a known key
    prefix, or long mixed-case-and-digits text no one names a variable with."""
    if not _ENV_NAME.fullmatch(value) or value.lower().startswith(("sk-", "sk_")):
        return True
    return (len(value) >= 32 and any(c.islower() for c in value)
            and any(c.isdigit() for c in value))


class OpenAISpec(ModelSpec):
    """A model served by an OpenAI-compatible server, on this machine or (allow_remote)
    another. localmoa neither starts nor stops the server, nor budgets its memory."""

    # An api_key_env that is a pasted key must not reach a traceback or a log.
    model_config = ConfigDict(**StrictModel.model_config, hide_input_in_errors=True)

    # Declared before base_url so that base_url's check can read it (fields validate in order).
    allow_remote: bool = Field(False, description="Allow a base_url whose host is not this "
                               "machine.")
    base_url: str = Field(description=BASE_URL_HELP)
    model: str = Field(min_length=1, description="The model name the server serves (what its "
                       "/v1/models lists).")
    api_key_env: str | None = Field(None, description=API_KEY_ENV_HELP)
    concurrency: int = Field(1, ge=1, le=256, description=CONCURRENCY_HELP)
    timeout_s: float = Field(600.0, gt=0, le=86_400, description="How long one request may "
                             "wait for the server's next bytes, in seconds.")
    retries: int = Field(4, ge=0, le=20, description="Tries again on HTTP 429 / 503 (server "
                         "busy), with exponential backoff or the server's Retry-After.")
    response_format: Literal["json_schema", "json_object"] = Field(
        "json_schema", description=RESPONSE_FORMAT_HELP)
    prompt_cache: bool = Field(True, description="The server keeps a prompt cache "
                               "(llama-server's cache_prompt, vLLM's prefix caching): "
                               "with reference streaming, an aggregator on it sends its "
                               "prompt's head while the proposers write (one request of "
                               "one token), so its real request evaluates only the "
                               "references. false for a server that keeps none or bills "
                               "each request.")

    MISPLACED: ClassVar[dict[str, str]] = {
        "source": "source applies to backends llamacpp and ollama; an openai model is "
                  "base_url: and model:",
        "host": "host applies to backend: ollama only; an openai server is base_url:",
        "parallel": "parallel applies to backend: ollama only; a server's requests at once "
                    "is concurrency",
        "kv_type": "kv_type applies to backends llamacpp and ollama; the server sets its own "
                   "KV cache",
        "n_gpu_layers": "n_gpu_layers applies to backend: llamacpp only; the server places "
                        "layers itself",
        "n_batch": "n_batch applies to backend: llamacpp only",
        "batch": "batch applies to backend: llamacpp only; for a server set concurrency",
        "workers": "workers applies to backend: llamacpp only; the server is its own process",
        "cpu_repack": "cpu_repack applies to backend: llamacpp only; llama-server has "
                      "--no-repack",
        "flash_attn": "flash_attn applies to backend: llamacpp only; set it on the server",
        "use_mmap": "use_mmap applies to backend: llamacpp only",
        "chat_format": "chat_format applies to backend: llamacpp only; the server applies "
                       "its own chat template",
        "api_key": "write the key's environment variable name as api_key_env (e.g. "
                   "OPENAI_API_KEY); the key itself never goes in models.yaml",
    }

    @field_validator("base_url")
    @classmethod
    def _a_server_url(cls, value: str, info: ValidationInfo) -> str:
        from ...netguard import is_this_machine

        fix = "write it as http://HOST:PORT/v1, e.g. http://127.0.0.1:8080/v1"
        parts = urlsplit(value.strip())
        if "@" in parts.netloc:  # checked first: the value is not repeated, it holds a secret
            raise ValueError("base_url must not carry credentials; put the key in an "
                             "environment variable and name it in api_key_env")
        try:
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            raise ValueError(f"base_url is not a URL (a bad port); {fix}") from None
        if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
            raise ValueError(f"base_url needs http:// or https:// and a host; {fix}")
        if parts.query or parts.fragment:  # the value is not repeated: a query may hold a key
            raise ValueError(f"base_url takes no ?query or #fragment; {fix}")
        if not info.data.get("allow_remote") and not is_this_machine(parts.hostname):
            raise ValueError(
                f"host {parts.hostname} is not this machine; localmoa only talks to loopback "
                "unless you add allow_remote: true to this model")
        return value.strip().rstrip("/")

    @field_validator("api_key_env")
    @classmethod
    def _a_variable_name(cls, value: str | None) -> str | None:
        if value is not None and _looks_like_a_key(value):
            # the message never repeats the value: it may be a secret
            raise ValueError("api_key_env names an environment variable (e.g. OPENAI_API_KEY), "
                             "not the key itself; export the key and write its variable's "
                             "name here")
        return value

    @property
    def origin(self) -> str:
        """``scheme://host:port`` of the server (the port filled in from the scheme): the
        models of one server share its pool and its concurrency."""
        from ...netguard import is_this_machine

        parts = urlsplit(self.base_url)
        host = parts.hostname or ""
        if is_this_machine(host):  # localhost, 127.0.0.1, ::1: one server on this machine
            host = "127.0.0.1"
        host = f"[{host}]" if ":" in host else host
        return f"{parts.scheme}://{host}:{parts.port or _DEFAULT_PORTS[parts.scheme]}"

    @property
    def is_remote(self) -> bool:
        """Whether the server is on another machine."""
        from ...netguard import is_this_machine

        return not is_this_machine(urlsplit(self.base_url).hostname or "")

    def where(self) -> str:
        return f"{self.base_url} ({self.model})"
