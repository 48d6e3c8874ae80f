"""The plan executed on real models: swapping under a one-model budget, overlap when ample."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import cli

MiB = 1 << 20


@pytest.fixture
def two_model_config(tmp_path: Path, smollm2_path: Path, gemma_path: Path) -> Path:
    path = tmp_path / "two.yaml"
    path.write_text(f"""\
models:
  small:
    backend: llamacpp
    source: {{path: {smollm2_path}}}
    n_ctx: 512
  gemma:
    backend: llamacpp
    source: {{path: {gemma_path}}}
    n_ctx: 512
    chat_format: gemma
profiles:
  duo:
    layers:
      - [{{model: small}}, {{model: gemma}}, {{model: small}}]
      - [{{model: gemma}}, {{model: small}}]
    aggregator: {{model: small}}
""", encoding="utf-8")
    return path


def plan_json(config: Path, budget: str) -> dict:
    proc = cli("plan", "--config", str(config), "--profile", "duo", "--memory-budget", budget,
               "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_one_model_budget_swaps_and_stays_within_it(two_model_config: Path) -> None:
    planned = plan_json(two_model_config, "10GiB")
    sizes = {m: f["total_bytes"] for m, f in planned["footprints"].items()}
    extra = {m: f["extra_instance_bytes"] for m, f in planned["footprints"].items()}
    # room for the larger model alone: never two models, never two instances of gemma
    budget = max(sizes.values()) + min(extra["gemma"], sizes["small"]) // 2
    assert budget < sizes["small"] + sizes["gemma"]

    plan = plan_json(two_model_config, f"{budget}B")["plan"]
    assert all(len({t["model"] for t in w["tasks"]}) == 1 for w in plan["waves"])
    assert plan["peak_bytes"]["ram"] <= budget

    proc = cli("run", "Say hello.", "--config", str(two_model_config), "--profile", "duo",
               "--memory-budget", f"{budget}B", "--max-tokens", "12", "--temperature", "0",
               "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] and report["answer"]
    actual, predicted = report["actual"], report["plan"]
    assert actual["loads"] == predicted["loads"] >= 3  # swapped back and forth
    assert actual["unloads"] == predicted["unloads"]
    # measured: physical memory growth stays within the budget (5% tolerance)
    assert actual["peak_pss_growth_bytes"] <= budget * 1.05, (
        actual["peak_pss_growth_bytes"] / MiB, budget / MiB)
    for wave_no in {a["wave"] for a in report["agents"]}:
        models = {a["model"] for a in report["agents"] if a["wave"] == wave_no}
        assert len(models) == 1


def test_ample_budget_runs_the_layer_together(two_model_config: Path) -> None:
    proc = cli("run", "Say hello.", "--config", str(two_model_config), "--profile", "duo",
               "--memory-budget", "4GiB", "--max-tokens", "24", "--temperature", "0",
               "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    layer1 = [a for a in report["agents"] if a["layer"] == 1]
    assert len({a["wave"] for a in layer1}) == 1  # together (each starts once it is loaded)
    # small's two proposers are one batch of one instance; gemma's one
    assert report["plan"]["loads"] == report["actual"]["loads"] == 2
    assert {a["batch"] for a in layer1 if a["model"] == "small"} == {2}


def test_plan_refuses_before_loading(two_model_config: Path) -> None:
    proc = cli("run", "hi", "--config", str(two_model_config), "--profile", "duo",
               "--memory-budget", "200MiB")
    assert proc.returncode == 2
    line = proc.stderr.strip()
    assert len(line.splitlines()) == 1
    assert "model 'gemma' needs" in line and "budget is 200 MiB" in line and "short" in line
    assert "agents" not in proc.stderr  # nothing ran


def test_plan_command_table(two_model_config: Path) -> None:
    proc = cli("plan", "--config", str(two_model_config), "--profile", "duo",
               "--memory-budget", "1GiB")
    assert proc.returncode == 0, proc.stderr
    for text in ("footprints", "KV cache", "+instance", "small", "gemma", "waves",
                 "predicted peak", "1 GiB RAM budget"):
        assert text in " ".join(proc.stdout.split()), text


def test_memory_budget_from_environment(two_model_config: Path) -> None:
    proc = cli("plan", "--config", str(two_model_config), "--profile", "duo", "--json",
               env={"LOCALMOA_MEMORY_BUDGET": "900MiB"})
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["resources"]["pools_bytes"]["ram"] == 900 * MiB
    assert doc["resources"]["budget_source"] == "LOCALMOA_MEMORY_BUDGET"


@pytest.mark.parametrize(("budget", "fragment"), [
    ("lots", "write a size such as 1.5GiB"), ("-5GiB", "write a size"),
    ("0", "more than 0 bytes"), ("12 parsecs", "write a size")])
def test_bad_memory_budget(budget: str, fragment: str) -> None:
    proc = cli("plan", "--memory-budget", budget)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and fragment in proc.stderr


@pytest.mark.parametrize(("text", "expected"), [
    ("1.5GiB", int(1.5 * 2**30)), ("800MiB", 800 * MiB), ("2GB", 2 * 10**9), ("512KB", 512000),
    ("1024", 1024), ("3 gib", 3 * 2**30), ("100KiB", 100 * 1024)])
def test_parse_size(text: str, expected: int) -> None:
    from localmoa.memory.probe import parse_size

    assert parse_size(text) == expected
