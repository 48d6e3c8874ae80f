"""`localmoa bench` on the tiny profile: results.json, the timeline, bad arguments."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from localmoa.bench import percentile

from .conftest import cli


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench")
    prompts = out / "prompts.jsonl"
    prompts.write_text('{"prompt": "What is 2 + 2?"}\n\n{"prompt": "Name a colour."}\n',
                       encoding="utf-8")
    proc = cli("bench", "--prompts", str(prompts), "--repeat", "1", "--warmup", "0",
               "--baseline", "single", "--out", str(out / "results"))
    assert proc.returncode == 0, proc.stderr
    assert "profiles (median / p90)" in proc.stdout and "vs its aggregator alone" in proc.stdout
    return out / "results"


def test_results_json_has_every_field_with_sane_values(bench_run: Path) -> None:
    doc = json.loads((bench_run / "results.json").read_text())
    assert doc["settings"]["prompts"] == ["What is 2 + 2?", "Name a colour."]
    machine = doc["machine"]
    assert machine["physical_cores"] >= 1 and machine["ram_bytes"] > 2**30
    assert machine["llama_cpp_python"] and "CPU" in machine["llama_cpp_system_info"]
    assert set(doc["samples"]) == {"tiny", "tiny:single"}
    assert len(doc["samples"]["tiny"]) == 2  # 2 prompts x 1 round
    tiny = doc["summaries"]["tiny"]
    assert tiny["runs"] == 2 and tiny["failed_runs"] == 0
    assert 0 < tiny["final_ttft_s"]["median"] < tiny["e2e_s"]["median"]
    assert tiny["e2e_s"]["median"] <= tiny["e2e_s"]["p90"]
    # the three proposers are one batch of one instance, which the aggregator reuses
    assert tiny["loads"]["median"] == 1 and tiny["peak_rss_bytes"] > 90 * 2**20
    assert set(tiny["agents"]) == {"L1.1", "L1.2", "L1.3", "AGG"}
    for agent in tiny["agents"].values():
        assert agent["runs"] == 2
        assert agent["decode_tok_per_s"]["median"] > 0 and agent["ttft_s"]["median"] > 0
    assert tiny["layers"]["1"]["agg_tok_per_s"]["median"] > 0
    single = doc["summaries"]["tiny:single"]
    assert set(single["agents"]) == {"AGG"} and single["loads"]["median"] == 1
    ratio = doc["comparison"]["tiny"]
    assert ratio["e2e_latency_ratio"] > 1 and ratio["tokens_ratio"] > 1
    report = doc["samples"]["tiny"][0]["report"]
    assert report["agents"][0]["load_start_s"] is not None


def test_timeline_is_a_valid_image(bench_run: Path) -> None:
    import matplotlib.image

    png = bench_run / "timeline.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width = matplotlib.image.imread(png).shape[:2]
    assert width > 800 and height > 200
    svg = (bench_run / "timeline.svg").read_text()
    assert svg.lstrip().startswith("<?xml") and "wave 1" in svg and "L1.1" in svg


@pytest.mark.parametrize(("args", "files", "fragment"), [
    (["--prompts", "{tmp}/missing.jsonl"], {}, "no such file"),
    (["--prompts", "{tmp}/bad.jsonl"], {"bad.jsonl": '{"prompt": "ok"}\n{"prompt": oops}\n'},
     "bad.jsonl:2: not valid JSON"),
    (["--prompts", "{tmp}/nokey.jsonl"], {"nokey.jsonl": '{"question": "hi"}\n'},
     'nokey.jsonl:1: needs a non-empty "prompt" string'),
    (["--repeat", "0"], {}, "--repeat 0: give at least 1"),
    (["--baseline", "double"], {}, "the only baseline is `single`"),
    (["--profile", "nope"], {}, "no profile named 'nope'"),
])
def test_bad_arguments(tmp_path: Path, args: list[str], files: dict[str, str],
                       fragment: str) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    proc = cli("bench", *[a.format(tmp=tmp_path) for a in args], "--out", str(tmp_path / "o"))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], proc.stderr


@pytest.mark.parametrize(("values", "q", "expected"), [
    ([1, 2, 3, 4, 5], 90, 4.6), ([3], 90, 3), ([], 90, 0.0), ([1, 2], 50, 1.5)])
def test_percentile(values: list[float], q: float, expected: float) -> None:
    assert percentile(values, q) == pytest.approx(expected)
