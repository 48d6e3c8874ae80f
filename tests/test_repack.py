"""cpu_repack: the canary, its cached verdict, the override, and what it changes.

The injected crash is a canary child that dies by SIGSEGV, as llama.cpp's AMX
kernels do on the machines of llama.cpp issue #20824; everything after it (the
load without repacking, the run, the report) is real.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from localmoa.backends.base import GenerateOptions
from localmoa.backends.llamacpp import repack
from localmoa.backends.llamacpp.backend import LlamaCppBackend
from localmoa.backends.llamacpp.model import LoadParams, load_llama
from localmoa.backends.llamacpp.spec import LlamaCppSpec, Source
from localmoa.config import load_config
from localmoa.errors import UsageError
from localmoa.memory.estimate import LoadSettings, footprint, model_facts
from localmoa.memory.gguf_header import read_header

from .conftest import SAFETY_S, cli

HERE = Path(__file__).parent
MiB = 1 << 20
SEGFAULT = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"]
AVX2_LINE = ("CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | "
             "OPENMP = 1 | REPACK = 1 |")


@pytest.fixture
def fresh(isolated_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No verdict known yet: not in the cache file, not in this process."""
    (isolated_home / repack.CACHE_FILE).unlink(missing_ok=True)
    monkeypatch.setattr(repack, "_memo", {})
    monkeypatch.setattr(repack, "_fresh", set())
    monkeypatch.setattr(repack, "_announced", set())
    return isolated_home / repack.CACHE_FILE


def test_the_real_canary_decides_and_its_verdict_is_cached(
        fresh: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    found = repack.verdict()
    assert found.works is not None, found.detail  # it ran and decoded, or it crashed
    if found.works:
        assert "decoded fine" in found.detail and "REPACK" in found.system_info
    else:
        assert "died with" in found.detail
    cached = json.loads(fresh.read_text())["verdicts"]
    assert cached[repack.build_key()]["works"] == found.works
    # known now: a canary that would crash is never started again
    monkeypatch.setattr(repack, "CANARY_COMMAND", SEGFAULT)
    monkeypatch.setattr(repack, "_memo", {})
    assert repack.verdict() == found
    assert repack.choose(None).enabled is found.works


def test_an_injected_segfault_turns_repacking_off(fresh: Path, monkeypatch: pytest.MonkeyPatch,
                                                  smollm2_path: Path) -> None:
    monkeypatch.setattr(repack, "CANARY_COMMAND", SEGFAULT)
    choice = repack.choose(None)
    assert not choice.enabled and choice.verdict is not None
    assert choice.verdict.works is False
    assert choice.verdict.detail == "the canary died with SIGSEGV (signal 11) in llama.cpp"
    assert choice.notice and "crashed on this CPU" in choice.notice
    assert repack.take_notices([choice, choice]) == [choice.notice]  # said once
    assert repack.take_notices([choice]) == []
    # a real model now loads without repacking, and answers
    spec = LlamaCppSpec(backend="llamacpp", source=Source(path=str(smollm2_path)), n_ctx=512)
    model = LlamaCppBackend().load("smollm2", spec, smollm2_path, n_threads=1)
    try:
        assert model.runtime_facts["cpu_repack"] is False  # what llama.cpp was given
        assert model.chat([{"role": "user", "content": "Hi"}],
                          GenerateOptions(max_tokens=8, temperature=0)).text().strip()
    finally:
        model.unload()
    # so does a load that names no choice (the tests' and benchmarks' own loads)
    direct = load_llama(LoadParams(name="smollm2", path=str(smollm2_path), n_ctx=256))
    try:
        assert direct.runtime_facts["cpu_repack"] is False
    finally:
        direct.unload()


CRASHING_CLI = """
import os, signal, sys
from localmoa.backends.llamacpp import repack
repack.CANARY_COMMAND = [sys.executable, "-c",
                         "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"]
from localmoa.cli import main
main(sys.argv[1:])
"""


def test_a_run_after_the_canary_crashed(fresh: Path) -> None:
    """The real CLI, whose canary child dies by SIGSEGV: the run goes on without
    repacking, says so once, and records it in the report."""
    args = ["run", "Which is larger, 9.11 or 9.9?", "--max-tokens", "16", "--json"]
    first = subprocess.run([sys.executable, "-c", CRASHING_CLI, *args], capture_output=True,
                           text=True, timeout=SAFETY_S)
    assert first.returncode == 0, first.stderr
    notice = [line for line in first.stderr.splitlines() if line.startswith("localmoa: notice:")]
    assert len(notice) == 1 and "repacking crashed on this CPU" in notice[0]
    assert "SIGSEGV" in notice[0] and "cpu_repack" in notice[0]
    report = json.loads(first.stdout)
    assert report["ok"] and report["answer"].strip()
    state = report["runtime"]["cpu_repack"]
    assert state["enabled"] is False and state["mode"] == "auto"
    assert "SIGSEGV" in state["reason"] and state["models"] == {"smollm2-135m": False}
    assert report["models"]["smollm2-135m"]["cpu_repack"] is False
    # the verdict is cached: the next run says nothing and still loads without repacking
    second = cli(*args)
    assert second.returncode == 0, second.stderr
    assert "notice" not in second.stderr
    assert json.loads(second.stdout)["runtime"]["cpu_repack"]["enabled"] is False


def test_the_override_wins_and_starts_no_canary(fresh: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    marker = fresh.parent / "canary-ran"
    monkeypatch.setattr(repack, "CANARY_COMMAND", [
        sys.executable, "-c", f"open({str(marker)!r}, 'w').close()"])
    monkeypatch.setenv("LOCALMOA_CPU_REPACK", "off")
    choice = repack.choose("on")
    assert (choice.enabled, choice.mode, choice.source) == (False, "off", "LOCALMOA_CPU_REPACK")
    monkeypatch.setenv("LOCALMOA_CPU_REPACK", "ON ")
    assert repack.choose(None).enabled
    monkeypatch.delenv("LOCALMOA_CPU_REPACK")
    assert repack.choose("off") == repack.RepackChoice(False, "off", "models.yaml")
    assert not marker.exists()
    monkeypatch.setenv("LOCALMOA_CPU_REPACK", "sometimes")
    with pytest.raises(UsageError, match="LOCALMOA_CPU_REPACK='sometimes': give auto, on or off"):
        repack.choose(None)


def test_cpu_repack_in_models_yaml(tmp_path: Path, smollm2_path: Path) -> None:
    user = tmp_path / "user.yaml"
    user.write_text(f"""\
cpu_repack: off
models:
  mine: {{backend: llamacpp, source: {{path: {smollm2_path}}}}}
  pinned: {{backend: llamacpp, source: {{path: {smollm2_path}}}, cpu_repack: on}}
""", encoding="utf-8")
    config = load_config(user)
    assert config.cpu_repack == "off"
    assert config.models["mine"].cpu_repack == "off"  # the top level is every model's default
    assert config.models["smollm2-135m"].cpu_repack == "off"
    assert config.models["pinned"].cpu_repack == "on"


@pytest.mark.parametrize(("text", "fragment"), [
    ("cpu_repack: never\n", "user.yaml:1: cpu_repack: Input should be 'auto', 'on' or 'off'"),
    ("models:\n  o: {backend: ollama, source: {ollama: x}, cpu_repack: off}\n",
     "user.yaml:2: models.o.cpu_repack: cpu_repack applies to backend: llamacpp only"),
])
def test_bad_cpu_repack_is_one_line_exit_2(tmp_path: Path, text: str, fragment: str) -> None:
    user = tmp_path / "user.yaml"
    user.write_text(text, encoding="utf-8")
    proc = cli("plan", "--config", str(user))
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1
    assert fragment in proc.stderr, proc.stderr


def test_bad_env_value_is_one_line_exit_2() -> None:
    proc = cli("plan", env={"LOCALMOA_CPU_REPACK": "maybe"})
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("localmoa: error: LOCALMOA_CPU_REPACK='maybe': give auto, "
                                   "on or off")


@pytest.mark.parametrize(("line", "expected"), [
    (AVX2_LINE, {"Q4_0", "Q4_K", "IQ4_NL", "MXFP4"}),
    (AVX2_LINE + " AVX512 = 1 |", {"Q4_0", "Q4_K", "IQ4_NL", "MXFP4", "Q2_K"}),
    (AVX2_LINE + " AVX512 = 1 | AMX_INT8 = 1 |",
     {"Q4_0", "Q4_K", "IQ4_NL", "MXFP4", "Q2_K", "amx:Q4_0", "amx:Q4_1", "amx:Q8_0",
      "amx:Q4_K", "amx:Q5_K", "amx:Q6_K", "amx:IQ4_XS", "amx:F16"}),
    ("CPU : NEON = 1 | ARM_FMA = 1 | DOTPROD = 1 | REPACK = 1 |",
     {"Q4_0", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "MXFP4", "Q8_0"}),
    (AVX2_LINE.replace("REPACK = 1 |", ""), set()),  # built without repacking
])
def test_repacked_types_follow_the_build(line: str, expected: set[str]) -> None:
    assert repack.repacked_types(line) == expected


def test_amx_takes_only_whole_tiles(smollm2_path: Path, gemma_path: Path) -> None:
    from dataclasses import replace

    amx = repack.repacked_types(AVX2_LINE + " AVX512 = 1 | AMX_INT8 = 1 |")
    smollm2 = model_facts(read_header(smollm2_path))
    # SmolLM2's Q4_1 rows (576, 1536 elements) are whole 32-element tiles: all in AMX
    assert smollm2.repacked_bytes_of(amx) == sum(n for *_, n in smollm2.matrices) > 60 << 20
    gemma = model_facts(read_header(gemma_path))
    # Gemma-3's Q4_K and Q6_K rows (1024, 2048) are whole 256-element tiles, its Q8_0
    # rows 640 = 20 x 32: all in AMX; its Q5_0 (most of it) has no AMX kernel
    assert gemma.repacked_bytes_of(amx) == 13_271_040 + 9_676_800 + 1_566_720
    # a K-quant whose rows are not whole tiles goes to the AVX2 repack kernels, if any
    odd = replace(gemma, matrices=(("Q4_K", 640, 256, 1000), ("Q6_K", 640, 256, 2000)))
    assert odd.repacked_bytes_of(amx) == 1000


def test_the_estimator_follows_the_choice(gemma_path: Path) -> None:
    facts = model_facts(read_header(gemma_path))
    on = footprint("g", facts, LoadSettings(n_ctx=1024, repacked_types=repack.repacked_types(
        AVX2_LINE)))
    off = footprint("g", facts, LoadSettings(n_ctx=1024, repacked_types=frozenset()))
    assert facts.repacked_bytes_of(frozenset({"Q4_K"})) == 13_271_040
    # repacked rows are copied, and the mapped pages read at load stay: counted twice
    # (measured: Gemma-3's first instance holds 12.67 MiB more with repacking on)
    assert on.total_bytes - off.total_bytes == 13_271_040
    # a second instance shares every mapped weight when nothing is repacked
    assert on.extra_instance_bytes - off.extra_instance_bytes == 13_271_040
    assert off.shared_weights_bytes == off.weights_bytes


def test_plan_follows_the_override(gemma_path: Path, tmp_path: Path) -> None:
    user = tmp_path / "g.yaml"
    user.write_text(f"models:\n  g: {{backend: llamacpp, source: {{path: {gemma_path}}}}}\n"
                    "profiles:\n  g: {layers: [[{model: g}]], aggregator: {model: g}}\n",
                    encoding="utf-8")
    extra = {}
    for mode in ("on", "off"):
        proc = cli("plan", "--config", str(user), "--profile", "g", "--json",
                   env={"LOCALMOA_CPU_REPACK": mode})
        assert proc.returncode == 0, proc.stderr
        extra[mode] = json.loads(proc.stdout)["footprints"]["g"]["extra_instance_bytes"]
    assert extra["on"] - extra["off"] == model_facts(read_header(gemma_path)).repacked_bytes_of(
        repack.private_types(repack.RepackChoice(True, "on", "test")))


def second_instance(path: Path, n_ctx: int, mode: str) -> dict:
    proc = subprocess.run([sys.executable, str(HERE / "measure_second_instance.py"), str(path),
                           str(n_ctx)], capture_output=True, text=True, timeout=SAFETY_S,
                          check=True, env=dict(os.environ, LOCALMOA_CPU_REPACK=mode))
    return json.loads(proc.stdout)


@pytest.mark.slow
def test_a_second_instance_costs_what_the_estimator_says(gemma_path: Path) -> None:
    """Measured: the second Gemma-3 instance's growth of anonymous memory at n_ctx 4096,
    with repacking off and (where the canary says it works) on, against the estimator's
    extra-instance bytes.
    (At small contexts the allocator's reuse of freed pages makes this number noisy.)"""
    modes = ["off", "on"] if repack.verdict().works else ["off"]
    facts = model_facts(read_header(gemma_path))
    measured = {}
    for mode in modes:
        got = second_instance(gemma_path, 4096, mode)
        assert got["cpu_repack"] is (mode == "on") and got["use_extra_bufts"] is (mode == "on")
        choice = repack.RepackChoice(mode == "on", mode, "test")  # type: ignore[arg-type]
        predicted = footprint("g", facts, LoadSettings(
            n_ctx=4096, repacked_types=repack.private_types(choice))).extra_instance_bytes
        assert 0.8 <= predicted / got["second_bytes"] <= 1.2, (mode, predicted / MiB,
                                                                got["second_bytes"] / MiB)
        measured[mode] = got["second_bytes"]
    if "on" in measured:  # the repacked copies are what a second instance adds on top
        repacked = facts.repacked_bytes_of(
            repack.private_types(repack.RepackChoice(True, "on", "test")))
        assert abs(measured["on"] - measured["off"] - repacked) < 0.25 * repacked


@pytest.mark.parametrize(("command", "timeout_s", "works", "detail"), [
    ([sys.executable, "-c", "import threading; threading.Event().wait()"], 1.0, False,
     "the canary timed out after 1 s"),
    ([sys.executable, "-c", "import os; os.abort()"], 60.0, False,
     "the canary died with SIGABRT (signal 6) in llama.cpp"),
    ([sys.executable, "-c", "raise SystemExit('no llama.cpp here')"], 60.0, None,
     "the canary failed (exit 1: no llama.cpp here)"),
    ([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"], 60.0,
     None, "the canary was killed by SIGKILL (signal 9)"),  # the OOM killer, say
])
def test_how_a_canary_ends_decides(fresh: Path, monkeypatch: pytest.MonkeyPatch,
                                   command: list[str], timeout_s: float, works: bool | None,
                                   detail: str) -> None:
    monkeypatch.setattr(repack, "CANARY_COMMAND", command)
    monkeypatch.setattr(repack, "CANARY_TIMEOUT_S", timeout_s)
    choice = repack.choose(None)
    assert choice.verdict is not None
    assert (choice.verdict.works, choice.verdict.detail) == (works, detail)
    assert choice.enabled is False  # anything but a clean run: repacking off, to be safe
    assert choice.notice and ("crashed" if works is False else "could not be checked") in \
        choice.notice
    cached = json.loads(fresh.read_text())["verdicts"] if fresh.exists() else {}
    if works is None:  # it could not tell: the next process asks again
        assert repack.build_key() not in cached
    else:
        assert cached[repack.build_key()]["detail"] == detail


def test_llama_cpp_python_can_turn_repacking_off() -> None:
    """The field localmoa sets is really in llama.cpp's model parameters (ctypes would
    accept an unknown attribute and change nothing)."""
    import llama_cpp.llama_cpp as lib

    from localmoa.backends.llamacpp.backend import can_turn_repacking_off

    assert can_turn_repacking_off()
    assert "use_extra_bufts" in [name for name, *_ in lib.llama_model_params._fields_]
