"""Downloading llama.cpp's GGUF files: with Ollama's daemon pull, the only code in
localmoa that uses the network.

Each backend pulls its own models (Backend.pull; localmoa/pull.py asks the model's
backend). Hugging Face files go into huggingface_hub's standard cache (resumable; the
sha256 is checked against the hub's metadata), where runs find them offline
(sources.py). Ollama tags are pulled by the daemon (backends/ollama/backend.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

from ... import constants
from ...config import Config
from ...errors import LocalMoaError, ModelNotFoundError, PullError
from ...memory.gguf_header import parse_split_name, split_file_name
from ...types import Progress
from .sources import resolve_model_path
from .spec import Source


def pull_gguf(config: Config, name: str, source: Source,
              report: Callable[[Progress], None]) -> str:
    """Fetch the GGUF of a model whose ``source`` is a Hugging Face repo (backend:
    llamacpp); any other source is already on the machine (a file, a package, part
    packages, Ollama's store, LM Studio's folder), and is only resolved."""
    if source.path is not None:
        path = resolve_model_path(config, name)
        return f"{name} is a local file ({path}); nothing to download"
    if source.package is not None:
        path = resolve_model_path(config, name)
        return f"{name} ships in the Python package {source.package} ({path})"
    if source.repo is None:  # chunks, ollama, lmstudio: on this machine, or one line why
        path = resolve_model_path(config, name)
        return f"{name} is on this machine ({path}); nothing to download"
    return _pull_hf(config, name, source.repo, source.file, report)


def _hf_files(repo: str, file: str | None, quant: str | None) -> list[str]:
    """The files to download: the named one (every shard when it is the first of a split
    model), or the GGUF of ``quant`` (every shard of the first match)."""
    if file:
        return _shards_of(file)
    from huggingface_hub import HfApi

    wanted = (quant or "").lower()
    names = [f for f in HfApi().list_repo_files(repo) if f.lower().endswith(".gguf")
             and wanted in f.lower() and "mmproj" not in f.lower()]
    if not names:
        raise ModelNotFoundError(f"{repo} has no GGUF file matching {quant!r}; list its files "
                                 f"on the hub and write repo + file in models.yaml")
    return _shards_of(sorted(names)[0])


def _shards_of(file: str) -> list[str]:
    """``file`` alone, or every shard of the split model whose first shard it is."""
    folder, _, name = file.rpartition("/")
    parsed = parse_split_name(name)
    if parsed is None or parsed[2] <= 1:
        return [file]
    prefix, _, count = parsed
    return [f"{folder}/" * bool(folder) + split_file_name(prefix, no, count)
            for no in range(1, count + 1)]


def _pull_hf(config: Config, name: str, source_repo: str, source_file: str | None,
             report: Callable[[Progress], None]) -> str:
    repo, _, quant = source_repo.partition(":")
    try:
        path = resolve_model_path(config, name)
        return f"{name} is already in the Hugging Face cache: {path}"
    except ModelNotFoundError:
        pass
    if constants.hf_hub_offline():
        raise PullError(f"model {name!r} is not in the Hugging Face cache and HF_HUB_OFFLINE is "
                        "set; unset it to download")
    try:
        from huggingface_hub import hf_hub_download

        files = _hf_files(repo, source_file, quant or None)
        paths = []
        for file in files:
            report(Progress(f"downloading {repo}/{file} from huggingface.co"))
            paths.append(Path(hf_hub_download(repo, file,
                                              cache_dir=str(constants.hf_hub_cache()))))
            report(Progress(f"checking the sha256 of {file}"))
            _check_sha256(repo, file, paths[-1])
    except LocalMoaError:
        raise
    except Exception as exc:  # noqa: BLE001 - the hub's many errors, one line
        raise PullError(f"could not download {repo} from huggingface.co: "
                        f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
                        "(check the connection and the repo name, or download the file yourself "
                        "and use `localmoa models add PATH`)") from None
    return f"{name}: downloaded {len(paths)} file(s) into {constants.hf_hub_cache()}"


def _check_sha256(repo: str, file: str, path: Path) -> None:
    from huggingface_hub import HfApi

    infos = HfApi().get_paths_info(repo, [file], expand=True)
    lfs = getattr(infos[0], "lfs", None) if infos else None
    expected = getattr(lfs, "sha256", None)
    if not expected:
        return  # not an LFS file: the hub publishes no sha256 for it
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != expected:
        path.unlink(missing_ok=True)
        raise PullError(f"{repo}/{file}: sha256 {digest.hexdigest()} does not match the hub's "
                        f"{expected}; the file was removed, pull again")
