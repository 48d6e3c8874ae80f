"""OLLAMA_HOST and a model's ``host:``, read exactly as the official client reads them.

localmoa parses both with the client's own parser, so the URL it plans for (and
names in its messages) is the URL the client connects to; this machine or not
decides the memory pool: a daemon here draws on "ram", another is its own pool.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ollama._client import _parse_host
from pytest_httpserver import HTTPServer

from localmoa.backends.ollama.backend import ollama_pool
from localmoa.backends.ollama.spec import OllamaSource, OllamaSpec, is_loopback
from localmoa.config import load_config
from localmoa.constants import ollama_host
from localmoa.errors import ConfigError

from .conftest import cli
from .test_ollama import QUESTION, TAG, expect_describe, expect_one_good_agent, write_config

# (OLLAMA_HOST or host:, the URL the client uses, whether it is this machine)
HOSTS = [
    ("", "http://127.0.0.1:11434", True),
    (":56789", "http://127.0.0.1:56789", True),
    ("1.2.3.4", "http://1.2.3.4:11434", False),
    ("1.2.3.4:56789", "http://1.2.3.4:56789", False),
    ("http://example.com", "http://example.com:80", False),
    ("https://example.com", "https://example.com:443", False),
    ("example.com:56789/path", "http://example.com:56789/path", False),
    ("https://gpu-box.lan:11434/", "https://gpu-box.lan:11434", False),
    ("[::1]", "http://[::1]:11434", True),
    ("[::1]:56789", "http://[::1]:56789", True),
    ("http://[::1]", "http://[::1]:80", True),
    ("http://[::1]:11434", "http://[::1]:11434", True),
    ("[2001:db8::1]:56789", "http://[2001:db8::1]:56789", False),
    ("localhost", "http://localhost:11434", True),
    ("localhost:11500", "http://localhost:11500", True),
    ("http://127.0.0.1:56789", "http://127.0.0.1:56789", True),
    ("127.0.0.1:56789/", "http://127.0.0.1:56789", True),
    ("127.8.9.10", "http://127.8.9.10:11434", True),
    ("0.0.0.0", "http://0.0.0.0:11434", True),  # set for `ollama serve`; a connection stays here
    ("  :56789 ", "http://127.0.0.1:56789", True),
]


def pool_for(url: str, local: bool) -> str:
    return "ram" if local else f"ollama@{url}"


@pytest.mark.parametrize(("value", "url", "local"), HOSTS)
def test_ollama_host_env(monkeypatch: pytest.MonkeyPatch, value: str, url: str,
                         local: bool) -> None:
    monkeypatch.setenv("OLLAMA_HOST", value)
    assert ollama_host() == url
    assert _parse_host(value.strip()) == url  # the client agrees
    assert is_loopback(value) is local
    spec = OllamaSpec(backend="ollama", source=OllamaSource(ollama=TAG))  # no host: OLLAMA_HOST
    assert ollama_pool(spec) == pool_for(url, local)


@pytest.mark.parametrize(("value", "url", "local"), [h for h in HOSTS if h[0]])
def test_model_host_key(monkeypatch: pytest.MonkeyPatch, value: str, url: str,
                        local: bool) -> None:
    monkeypatch.setenv("OLLAMA_HOST", "10.9.8.7:1234")  # a model's host wins over it
    spec = OllamaSpec(backend="ollama", source=OllamaSource(ollama=TAG), host=value,
                     allow_remote=not local)
    assert ollama_host(value) == url
    assert ollama_pool(spec) == pool_for(url, local)


def test_no_ollama_host_is_the_local_daemon(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OLLAMA_HOST", raising=False)
    assert ollama_host() == "http://127.0.0.1:11434"
    assert ollama_pool(OllamaSpec(backend="ollama", source=OllamaSource(ollama=TAG))) == "ram"


@pytest.mark.parametrize("value", ["example.com:abc", "localhost:99999", "[::1"])
def test_a_host_the_client_cannot_use_is_a_config_error(monkeypatch: pytest.MonkeyPatch,
                                                         tmp_path: Path, value: str) -> None:
    monkeypatch.setenv("OLLAMA_HOST", value)
    with pytest.raises(ConfigError, match=r"OLLAMA_HOST .* is not an Ollama host"):
        ollama_host()
    monkeypatch.delenv("OLLAMA_HOST")
    path = tmp_path / "bad.yaml"
    path.write_text(f'models:\n  m:\n    backend: ollama\n    source: {{ollama: "{TAG}"}}\n'
                    f'    host: "{value}"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad\.yaml:2: .*is not an Ollama host"):
        load_config(path)


def test_a_remote_host_key_still_needs_allow_remote(tmp_path: Path) -> None:
    path = tmp_path / "remote.yaml"
    path.write_text(f'models:\n  m:\n    backend: ollama\n    source: {{ollama: "{TAG}"}}\n'
                    '    host: "http://example.com"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="allow_remote: true"):
        load_config(path)
    for local in (":56789", "[::1]:56789", "localhost"):  # this machine: no allow_remote needed
        path.write_text(f'models:\n  m:\n    backend: ollama\n    source: {{ollama: "{TAG}"}}\n'
                        f'    host: "{local}"\n', encoding="utf-8")
        assert load_config(path).models["m"].host == local


def write_config_without_host(tmp_path: Path) -> Path:
    return write_config(tmp_path, None)


def test_plan_puts_the_daemon_named_by_a_bare_port_in_ram(httpserver: HTTPServer,
                                                          tmp_path: Path) -> None:
    expect_describe(httpserver)
    proc = cli("plan", "--config", str(write_config_without_host(tmp_path)), "--profile",
               "mixed", "--json", env={"OLLAMA_HOST": f":{httpserver.port}"})
    assert proc.returncode == 0, proc.stderr
    httpserver.check_assertions()
    fp = json.loads(proc.stdout)["footprints"]["llama-ollama"]
    assert list(fp["pools_bytes"]) == ["ram"]  # this machine's daemon, not a remote pool


def test_run_reaches_the_daemon_named_by_a_bare_port(httpserver: HTTPServer,
                                                      tmp_path: Path) -> None:
    # OLLAMA_HOST=:PORT is 127.0.0.1:PORT for the client; the model has no host: key
    expect_one_good_agent(httpserver)
    config = write_config_without_host(tmp_path)
    proc = cli("run", QUESTION, "--config", str(config), "--profile", "mixed", "--temperature",
               "0", "--seed", "0", "--max-tokens", "16", "--json",
               env={"OLLAMA_HOST": f":{httpserver.port}"})
    assert proc.returncode == 0, proc.stderr
    httpserver.check_assertions()  # every request arrived, in order, with the exact JSON
    report = json.loads(proc.stdout)
    agent = next(a for a in report["agents"] if a["model"] == "llama-ollama")
    assert agent["ok"] and agent["answer"] == "9.9 is larger."
    assert report["models"]["llama-ollama"]["size_bytes"] > 0
