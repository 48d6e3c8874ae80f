"""The models users already have: Ollama's store and LM Studio's folder read in place, and
`localmoa models list --discover` over them and the Hugging Face cache."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from localmoa.backends.llamacpp.sources import resolve_model_path
from localmoa.backends.llamacpp.spec import LlamaCppSpec, Source
from localmoa.backends.llamacpp.stores import parse_ollama_name
from localmoa.config import Config, load_config
from localmoa.errors import ConfigError, InvalidModelFileError, ModelNotFoundError

from .conftest import cli
from .test_sources import fake_hf_repo

SMOL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def digest_of(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def add_ollama_model(root: Path, parts: tuple[str, str, str, str], gguf: Path,
                     layers: list[dict[str, object]] | None = None) -> Path:
    """A manifest at manifests/HOST/NAMESPACE/MODEL/TAG and its model blob (a link)."""
    hexdigest = digest_of("/".join(parts))
    blob = root / "blobs" / f"sha256-{hexdigest}"
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.symlink_to(gguf)
    template = {"mediaType": "application/vnd.ollama.image.template",
                "digest": f"sha256:{digest_of('t')}", "size": 10}
    model = {"mediaType": "application/vnd.ollama.image.model",
             "digest": f"sha256:{hexdigest}", "size": gguf.stat().st_size}
    manifest = root / "manifests" / Path(*parts)
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                   "digest": f"sha256:{digest_of('c')}", "size": 20},
        "layers": layers if layers is not None else [model, template]}))
    return blob


@pytest.fixture
def ollama_store(tmp_path: Path, smollm2_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "ollama-models"
    add_ollama_model(root, ("registry.ollama.ai", "library", "smollm2", "135m"), smollm2_path)
    add_ollama_model(root, ("registry.ollama.ai", "me", "tiny", "latest"), smollm2_path)
    add_ollama_model(root, ("hf.co", "bartowski", "SmolLM2-GGUF", "Q4_1"), smollm2_path)
    monkeypatch.setenv("OLLAMA_MODELS", str(root))
    return root


LMS_REPO = "lmstudio-community/SmolLM2-135M-Instruct-GGUF"


@pytest.fixture
def lmstudio_dir(tmp_path: Path, smollm2_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "lmstudio-models"
    folder = root / LMS_REPO
    folder.mkdir(parents=True)
    (folder / SMOL_FILE).symlink_to(smollm2_path)
    (folder / "mmproj-SmolLM2-f16.gguf").write_bytes(b"GGUF not a model")  # never chosen
    monkeypatch.setenv("LOCALMOA_LMSTUDIO_MODELS", str(root))
    return root


def config_with(source: Source) -> Config:
    return Config(models={"m": LlamaCppSpec(backend="llamacpp", source=source)},
                  profiles={}, default_profile="x")


def one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    assert "\n" not in str(exc.value)
    return str(exc.value)


@pytest.mark.parametrize(("text", "parts", "short"), [
    ("qwen2.5", ("registry.ollama.ai", "library", "qwen2.5", "latest"), "qwen2.5:latest"),
    ("qwen2.5:7b", ("registry.ollama.ai", "library", "qwen2.5", "7b"), "qwen2.5:7b"),
    ("me/mine:v1", ("registry.ollama.ai", "me", "mine", "v1"), "me/mine:v1"),
    ("hf.co/org/Repo-GGUF:Q4_K_M", ("hf.co", "org", "Repo-GGUF", "Q4_K_M"),
     "hf.co/org/Repo-GGUF:Q4_K_M"),
    ("localhost:5000/ns/m:t", ("localhost:5000", "ns", "m", "t"), "localhost:5000/ns/m:t"),
    ("https://example.com/ns/m", ("example.com", "ns", "m", "latest"), "example.com/ns/m:latest"),
])
def test_ollama_names(text: str, parts: tuple[str, ...], short: str) -> None:
    name = parse_ollama_name(text)
    assert name.parts == parts
    assert name.short() == short


@pytest.mark.parametrize(("text", "error"), [
    ("a/b/c/d", "[host/][namespace/]model[:tag]"),
    ("qwen:", "the tag after ':' is empty"),
    ("qwen 2", "model 'qwen 2'"),
    ("hf.co/a.b/c", "namespace 'a.b'"),
    (":7b", "model ''"),
])
def test_bad_ollama_names(text: str, error: str) -> None:
    with pytest.raises(ValueError, match=re.escape(error)):
        parse_ollama_name(text)


@pytest.mark.parametrize("ref", ["smollm2:135m", "SmolLM2:135M", "library/smollm2:135m",
                                 "registry.ollama.ai/library/smollm2:135m", "me/tiny",
                                 "hf.co/bartowski/SmolLM2-GGUF:Q4_1"])
def test_ollama_store_resolves(ollama_store: Path, ref: str) -> None:
    path = resolve_model_path(config_with(Source(ollama=ref)), "m")
    assert path.parent == ollama_store / "blobs" and path.name.startswith("sha256-")


def test_ollama_missing_manifest_is_one_line(ollama_store: Path) -> None:
    with pytest.raises(ModelNotFoundError) as exc:
        resolve_model_path(config_with(Source(ollama="qwen2.5:7b")), "m")
    message = one_line(exc)
    assert "Ollama's store has no qwen2.5:7b" in message
    assert str(ollama_store) in message and "`ollama pull qwen2.5:7b`" in message


def test_ollama_missing_blob_is_one_line(ollama_store: Path) -> None:
    blob = resolve_model_path(config_with(Source(ollama="smollm2:135m")), "m")
    blob.unlink()
    with pytest.raises(ModelNotFoundError) as exc:
        resolve_model_path(config_with(Source(ollama="smollm2:135m")), "m")
    assert f"the blob {blob.name} of Ollama's smollm2:135m is missing" in one_line(exc)


def test_ollama_manifest_without_a_model(ollama_store: Path, smollm2_path: Path) -> None:
    add_ollama_model(ollama_store, ("registry.ollama.ai", "library", "nomodel", "latest"),
                     smollm2_path, layers=[])
    with pytest.raises(InvalidModelFileError, match="has no GGUF layer"):
        resolve_model_path(config_with(Source(ollama="nomodel")), "m")


def test_ollama_broken_manifest(ollama_store: Path) -> None:
    manifest = ollama_store / "manifests/registry.ollama.ai/library/smollm2/135m"
    manifest.write_text("{not json")
    with pytest.raises(InvalidModelFileError) as exc:
        resolve_model_path(config_with(Source(ollama="smollm2:135m")), "m")
    assert "manifest" in one_line(exc) and "cannot be read" in str(exc.value)


def test_ollama_bad_name_is_a_config_error(ollama_store: Path) -> None:
    with pytest.raises(ConfigError, match="is not an Ollama model name"):
        resolve_model_path(config_with(Source(ollama="a/b/c/d")), "m")


@pytest.mark.parametrize("ref", [f"{LMS_REPO}/{SMOL_FILE}", LMS_REPO, f"{LMS_REPO}:q4_1"])
def test_lmstudio_resolves(lmstudio_dir: Path, smollm2_path: Path, ref: str) -> None:
    path = resolve_model_path(config_with(Source(lmstudio=ref)), "m")
    assert path == lmstudio_dir / LMS_REPO / SMOL_FILE
    assert path.resolve() == smollm2_path.resolve()


@pytest.mark.parametrize(("ref", "error", "kind"), [
    ("nobody/nothing", "LM Studio's models folder has no nobody/nothing", ModelNotFoundError),
    (f"{LMS_REPO}:Q8_0", "holds no GGUF of quant Q8_0", ModelNotFoundError),
    (f"{LMS_REPO}/other.gguf", "has no", ModelNotFoundError),
    ("../etc/passwd.gguf", "write publisher/repo/FILE.gguf", ConfigError),
    ("justone", "write publisher/repo/FILE.gguf", ConfigError),
])
def test_lmstudio_errors(lmstudio_dir: Path, ref: str, error: str,
                         kind: type[Exception]) -> None:
    with pytest.raises(kind) as exc:
        resolve_model_path(config_with(Source(lmstudio=ref)), "m")
    assert error in one_line(exc)


def test_source_forms_are_exclusive() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="not several"):
        Source(ollama="qwen2.5", lmstudio="a/b")
    with pytest.raises(ValidationError, match="file goes with repo or package"):
        Source(ollama="qwen2.5", file="x.gguf")
    assert Source(ollama="qwen2.5:7b").describe() == "ollama:qwen2.5:7b"


def test_cli_missing_ollama_model_is_one_line_exit_2(ollama_store: Path,
                                                     tmp_path: Path) -> None:
    config = tmp_path / "models.yaml"
    config.write_text("models:\n  q:\n    backend: llamacpp\n"
                      "    source: {ollama: \"qwen2.5:7b\"}\n")
    proc = cli("models", "show", "q", "--config", str(config))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "ollama pull qwen2.5:7b" in lines[0], proc.stderr


def test_run_on_a_model_from_the_ollama_store(ollama_store: Path, tmp_path: Path) -> None:
    config = tmp_path / "models.yaml"
    config.write_text("models:\n  smol-ollama:\n    backend: llamacpp\n"
                      "    source: {ollama: \"smollm2:135m\"}\n    n_ctx: 1024\n")
    proc = cli("run", "--config", str(config), "--proposer", "smol-ollama", "--aggregator",
               "smol-ollama", "--aggregate", "never", "-n", "4", "-t", "0", "--json",
               "Say hi.")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["ok"]


def test_discover_json(ollama_store: Path, lmstudio_dir: Path, smollm2_path: Path,
                       tmp_path: Path) -> None:
    fake_hf_repo(tmp_path / "hf-cache", "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF",
                 {SMOL_FILE: smollm2_path.read_bytes()})
    proc = cli("models", "list", "--discover", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    rows = {(r["store"], r["ref"]): r for r in doc["discovered"]}
    assert set(rows) == {
        ("hf", f"HuggingFaceTB/SmolLM2-135M-Instruct-GGUF/{SMOL_FILE}"),
        ("ollama", "smollm2:135m"), ("ollama", "me/tiny:latest"),
        ("ollama", "hf.co/bartowski/SmolLM2-GGUF:Q4_1"),
        ("lmstudio", f"{LMS_REPO}/{SMOL_FILE}")}  # not the mmproj file
    for row in rows.values():
        assert row["problem"] is None, row
        assert row["architecture"] == "llama" and row["quant"] == "Q4_1"
        assert row["file_bytes"] == smollm2_path.stat().st_size
        assert row["n_ctx"] == 4096 and 100 << 20 < row["footprint_bytes"] < 1 << 30
    ollama = rows[("ollama", "smollm2:135m")]
    assert ollama["name"] == "smollm2-135m-ollama"  # the shipped smollm2-135m keeps its name
    assert ollama["yaml"] == ('smollm2-135m-ollama: {backend: llamacpp, source: '
                              '{ollama: "smollm2:135m"}, n_ctx: 4096}')
    assert doc["looked_in"]["ollama"] == [str(ollama_store)]
    assert doc["looked_in"]["lmstudio"] == [str(lmstudio_dir)]

    # each line pasted under models: is a model that resolves to the file found
    config = tmp_path / "discovered.yaml"
    config.write_text("models:\n" + "".join(f"  {r['yaml']}\n" for r in rows.values()))
    cfg = load_config(config)
    for row in rows.values():
        assert resolve_model_path(cfg, row["name"]) == Path(row["path"])


def test_discover_table_and_nothing_found(ollama_store: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    proc = cli("models", "list", "--discover")
    assert proc.returncode == 0, proc.stderr
    assert 'source: {ollama: "me/tiny:latest"}' in proc.stdout
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "empty"))
    monkeypatch.setenv("LOCALMOA_LMSTUDIO_MODELS", str(tmp_path / "empty"))
    proc = cli("models", "list", "--discover")
    assert proc.returncode == 0, proc.stderr
    assert "no GGUF models found" in proc.stdout
