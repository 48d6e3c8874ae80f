"""`localmoa doctor`: the facts a bug report needs, from this machine."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer

from localmoa import doctor
from localmoa.backends.llamacpp import repack

from .child_server import free_port
from .conftest import cli

SEGFAULT = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"]


def doctor_json(*args: str, env: dict[str, str] | None = None) -> dict:
    proc = cli("doctor", "--json", *args, env=env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_doctor_json_reports_this_machine(tmp_path: Path) -> None:
    port = free_port()  # nobody listens: no daemon
    doc = doctor_json(env={"OLLAMA_HOST": f":{port}"})
    flags = set(Path("/proc/cpuinfo").read_text().split("flags", 1)[1].splitlines()[0].split()
                if Path("/proc/cpuinfo").exists() else [])
    cpu = doc["cpu"]
    assert cpu["amx"] == bool({"amx_tile", "amx_int8"} & flags)
    assert cpu["avx2"] == ("avx2" in flags) and set(cpu["flags"]) <= flags | {"neon"}
    assert cpu["usable_cores"] >= 1 and cpu["physical_cores"] >= 1
    assert doc["memory"]["ram_total_bytes"] > 0 and isinstance(doc["gpus"], list)
    llama = doc["llama_cpp"]
    assert llama["installed"] and llama["llama_cpp_python"]
    assert llama["system_info"].startswith("CPU :") or "CPU" in llama["system_info"]
    assert isinstance(llama["gpu_offload"], bool)
    verdict = llama["repack"]["verdict"]
    assert verdict["key"] == llama["build_key"] and verdict["works"] in (True, False)
    assert llama["repack"]["enabled"] is verdict["works"]  # auto follows the verdict
    daemon = doc["ollama"][0]
    assert daemon["host"] == f"http://127.0.0.1:{port}" and daemon["reachable"] is False
    assert "no Ollama daemon answers" in daemon["error"]
    assert doc["huggingface"]["cache"].endswith("hf-cache") and doc["huggingface"]["offline"]
    models = {m["name"]: m for m in doc["models"]}
    assert models["smollm2-135m"]["present"] is True
    assert models["qwen2.5-7b"]["present"] is False
    assert "not in the local Hugging Face cache" in models["qwen2.5-7b"]["problem"]
    assert doc["default_profile"] == "tiny"
    # on a CPU where repacking crashes, that is the one problem to report
    expected = [] if verdict["works"] else [
        f"llama.cpp weight repacking is off on this CPU: {llama['repack']['reason']}"]
    assert doc["problems"] == expected


def test_doctor_finds_an_ollama_daemon_and_its_models(httpserver: HTTPServer,
                                                      tmp_path: Path) -> None:
    httpserver.expect_request("/api/version", method="GET").respond_with_json(
        {"version": "0.12.3"})
    httpserver.expect_request("/api/tags", method="GET").respond_with_json({"models": [
        {"name": "llama3.2:1b", "model": "llama3.2:1b", "size": 1, "digest": "x",
         "modified_at": "2024-09-12T21:17:29Z", "details": {}}]})
    user = tmp_path / "o.yaml"
    user.write_text("models:\n"
                    "  here: {backend: ollama, source: {ollama: 'llama3.2:1b'}}\n"
                    "  gone: {backend: ollama, source: {ollama: 'qwen2.5:7b'}}\n",
                    encoding="utf-8")
    doc = doctor_json("--config", str(user), env={"OLLAMA_HOST": f":{httpserver.port}"})
    daemon = doc["ollama"][0]
    assert daemon["reachable"] and daemon["version"] == "0.12.3"
    assert daemon["models"] == ["llama3.2:1b"]
    models = {m["name"]: m for m in doc["models"]}
    assert models["here"]["present"] is True
    assert models["gone"]["present"] is False and "ollama pull qwen2.5:7b" in \
        models["gone"]["problem"]


def test_a_remote_ollama_host_is_not_contacted(tmp_path: Path) -> None:
    log = tmp_path / "net.log"
    doc = doctor_json(env={"OLLAMA_HOST": "10.11.12.13:11434", "LOCALMOA_NETWORK_LOG": str(log)})
    daemon = doc["ollama"][0]
    assert daemon["host"] == "http://10.11.12.13:11434" and not daemon["reachable"]
    assert daemon["error"].startswith("not contacted: not this machine")
    attempts = log.read_text().splitlines() if log.exists() else []
    assert not [a for a in attempts if "10.11.12.13" in a]


def test_doctor_still_reports_with_a_broken_config(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [\n", encoding="utf-8")
    doc = doctor_json("--config", str(bad))
    assert "malformed YAML" in doc["localmoa"]["config_error"]
    assert doc["problems"][0] == doc["localmoa"]["config_error"]
    assert doc["cpu"]["usable_cores"] >= 1 and doc["llama_cpp"]["installed"]


def test_doctor_human_output() -> None:
    proc = cli("doctor")
    assert proc.returncode == 0, proc.stderr
    for fragment in ("cpu flags", "weight repacking", "system info", "hf cache",
                     "configured models", "smollm2-135m"):
        assert fragment in proc.stdout, fragment


def test_recheck_runs_the_canary_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(repack, "_memo", {})
    before = repack.verdict()
    monkeypatch.setattr(repack, "CANARY_COMMAND", SEGFAULT)
    assert doctor.collect()["llama_cpp"]["repack"]["verdict"] == before.to_dict()  # cached
    report = doctor.collect(recheck=True)
    state = report["llama_cpp"]["repack"]
    assert state["enabled"] is False and "SIGSEGV" in state["verdict"]["detail"]
    assert state["repacked_types"] == []
    assert any("repacking is off on this CPU" in p for p in report["problems"])


def test_a_bad_ollama_host_is_a_problem_not_a_crash() -> None:
    doc = doctor_json(env={"OLLAMA_HOST": "localhost:port"})
    message = ("OLLAMA_HOST 'localhost:port' is not an Ollama host (Port could not be cast "
               "to integer value as 'port'); write [scheme://]host[:port], e.g. "
               "http://127.0.0.1:11434")
    assert doc["ollama"] == [{"host": "localhost:port", "reachable": False, "version": None,
                              "error": message}]
    assert message in doc["problems"]
    assert doc["llama_cpp"]["installed"]  # the rest is still reported
