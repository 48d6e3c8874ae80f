"""The GGUFs other tools already keep on this machine: Ollama's store and LM Studio's
models folder, read in place (nothing copied, no daemon, no network).

Ollama (its manifest and blob layout, as ollama/ollama writes it): under $OLLAMA_MODELS
(default ~/.ollama/models), ``manifests/HOST/NAMESPACE/MODEL/TAG`` is a JSON manifest
whose layer of media type ``application/vnd.ollama.image.model`` names the GGUF by its
digest, stored as ``blobs/sha256-HEX``. A name is ``[[host/]namespace/]model[:tag]``,
defaulting to registry.ollama.ai, library and latest, matched without regard to case.

LM Studio: ``PUBLISHER/REPO/FILE.gguf`` under ~/.lmstudio/models (or the older
~/.cache/lm-studio/models, or LOCALMOA_LMSTUDIO_MODELS).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ... import constants
from ...errors import ConfigError, InvalidModelFileError, ModelNotFoundError
from ...fileio import FileRefused, read_capped
from ...memory.gguf_header import parse_split_name

OLLAMA_MODEL_LAYER = "application/vnd.ollama.image.model"
_DEFAULT_HOST, _DEFAULT_NAMESPACE, _DEFAULT_TAG = "registry.ollama.ai", "library", "latest"
_DIGEST = re.compile(r"sha256[:-]([0-9a-fA-F]{64})")
_MANIFEST_MAX_BYTES = 1 << 20  # a manifest is a few hundred bytes


@dataclass(frozen=True)
class OllamaName:
    """An Ollama model name, every part filled in."""

    host: str
    namespace: str
    model: str
    tag: str

    @property
    def parts(self) -> tuple[str, str, str, str]:
        return self.host, self.namespace, self.model, self.tag

    def short(self) -> str:
        """As Ollama shows it: ``qwen2.5:7b``, ``me/mine:latest``, ``hf.co/org/repo:Q4_K_M``."""
        if self.host.lower() != _DEFAULT_HOST:
            return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"
        if self.namespace.lower() != _DEFAULT_NAMESPACE:
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.model}:{self.tag}"


def _valid_part(kind: str, text: str) -> bool:
    """Ollama's rule: 1 to 80 characters (a host 350), letters, digits and ``_`` first,
    then also ``-``, ``.`` (not in a namespace) and ``:`` (a host's port)."""
    if not 1 <= len(text) <= (350 if kind == "host" else 80):
        return False
    extra = {"host": "-_.:", "namespace": "-_"}.get(kind, "-_.")
    return (text[0].isascii() and (text[0].isalnum() or text[0] == "_")
            and all(c.isascii() and (c.isalnum() or c in extra) for c in text[1:]))


def parse_ollama_name(text: str) -> OllamaName:
    """``[[scheme://]host/][namespace/]model[:tag]``; ValueError says which part is wrong."""
    rest = text.strip()
    if "://" in rest:  # a scheme before the host (http://host/ns/model) is not stored
        rest = rest.split("://", 1)[1]
    tag = ""
    if rest.rfind(":") > rest.rfind("/"):
        rest, _, tag = rest.rpartition(":")
        if not tag:
            raise ValueError("the tag after ':' is empty")
    parts = rest.split("/")
    if len(parts) > 3:
        raise ValueError("write [host/][namespace/]model[:tag]")
    host, namespace, model = [""] * (3 - len(parts)) + parts
    name = OllamaName(host or _DEFAULT_HOST, namespace or _DEFAULT_NAMESPACE, model,
                      tag or _DEFAULT_TAG)
    for kind, part in zip(("host", "namespace", "model", "tag"), name.parts, strict=True):
        if not _valid_part(kind, part):
            raise ValueError(f"{kind} {part!r} is not a valid name part")
    return name


def _casefold_child(folder: Path, name: str) -> Path | None:
    """``folder/name``, or the entry whose name matches it without regard to case."""
    exact = folder / name
    if exact.exists():
        return exact
    try:
        return next((p for p in folder.iterdir() if p.name.lower() == name.lower()), None)
    except OSError:
        return None


def _manifest_path(root: Path, name: OllamaName) -> Path | None:
    found: Path | None = root / "manifests"
    for part in name.parts:
        found = _casefold_child(found, part) if found is not None else None
    return found if found is not None and found.is_file() else None


def _model_digest(manifest: Path) -> str | None:
    """The digest of the manifest's GGUF layer; ValueError when it is not a manifest."""
    data = json.loads(read_capped(manifest, _MANIFEST_MAX_BYTES, "Ollama manifests",
                                  "this is not an Ollama manifest"))
    layers = data.get("layers") if isinstance(data, dict) else None
    if not isinstance(layers, list):
        raise ValueError("it has no layers")
    for layer in layers:
        if isinstance(layer, dict) and layer.get("mediaType") == OLLAMA_MODEL_LAYER:
            digest = str(layer.get("digest", ""))
            if not _DIGEST.fullmatch(digest):
                raise ValueError(f"its model layer's digest {digest[:80]!r} is not sha256:HEX")
            return digest
    return None


def _blob_path(root: Path, digest: str) -> Path:
    return root / "blobs" / digest.replace(":", "-")


def _where_ollama() -> str:
    return " or ".join(str(d) for d in constants.ollama_models_dirs())


def ollama_blob(text: str, model: str, where: str = "") -> Path:
    """The GGUF blob of the Ollama model ``text`` (``qwen2.5:7b``), read from the store."""
    at = f" (source.ollama at {where})" if where else ""
    try:
        name = parse_ollama_name(text)
    except ValueError as exc:
        raise ConfigError(f"model {model!r}: {text!r} is not an Ollama model name: {exc}{at}"
                          ) from None
    for root in constants.ollama_models_dirs():
        manifest = _manifest_path(root, name)
        if manifest is None:
            continue
        try:
            digest = _model_digest(manifest)
        except (OSError, FileRefused, ValueError) as exc:
            reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc
            raise InvalidModelFileError(f"model {model!r}: Ollama's manifest {manifest} "
                                        f"cannot be read: {reason}{at}") from None
        if digest is None:
            raise InvalidModelFileError(
                f"model {model!r}: Ollama's {name.short()} has no GGUF layer (manifest "
                f"{manifest}){at}; it is not a model llama.cpp can load")
        blob = _blob_path(root, digest)
        if not blob.is_file():
            raise ModelNotFoundError(
                f"model {model!r}: the blob {blob.name} of Ollama's {name.short()} is missing "
                f"from {root / 'blobs'}{at}; pull it again with `ollama pull {name.short()}`")
        return blob
    raise ModelNotFoundError(
        f"model {model!r}: Ollama's store has no {name.short()} (looked in "
        f"{_where_ollama()}){at}; `ollama pull {name.short()}`, or set OLLAMA_MODELS to "
        "the folder that holds it")


def model_gguf(name: str) -> bool:
    """A model's GGUF, or the first shard of a split one; not a vision projector."""
    lower = name.lower()
    if not lower.endswith(".gguf") or "mmproj" in lower:
        return False
    shard = parse_split_name(name)
    return not shard or shard[1] == 1


def match_quant(files: list[str], quant: str) -> str | None:
    """The GGUF whose name carries ``quant`` (first shard of a split file, never mmproj)."""
    wanted = quant.lower()
    hits = []
    for file in files:
        base = PurePosixPath(file).name
        if not base.endswith(".gguf") or wanted not in base.lower() or "mmproj" in base.lower():
            continue
        shard = parse_split_name(base)
        if shard and shard[1] != 1:
            continue
        hits.append(file)
    return sorted(hits)[0] if hits else None


def lmstudio_file(text: str, model: str, where: str = "") -> Path:
    """The GGUF of ``publisher/repo/file.gguf``, ``publisher/repo:QUANT`` or
    ``publisher/repo`` (its only model GGUF) in LM Studio's models folder."""
    at = f" (source.lmstudio at {where})" if where else ""
    ref, _, quant = text.strip().partition(":")
    parts = PurePosixPath(ref).parts
    if (len(parts) < 2 or any(p in ("..", ".", "/") for p in parts)
            or (len(parts) > 2 and not ref.lower().endswith(".gguf"))):
        raise ConfigError(f"model {model!r}: lmstudio {text!r}: write publisher/repo/FILE.gguf, "
                          f"publisher/repo:QUANT or publisher/repo{at}")
    roots = constants.lmstudio_models_dirs()
    for root in roots:
        folder = root.joinpath(*parts[:2])
        if not folder.is_dir():
            continue
        if len(parts) > 2:
            path = root.joinpath(*parts)
            if path.is_file():
                return path
            continue
        try:
            files = sorted(p.name for p in folder.iterdir() if model_gguf(p.name))
        except OSError as exc:
            raise ModelNotFoundError(f"model {model!r}: cannot list LM Studio's {folder}: "
                                     f"{exc.strerror or exc}") from None
        chosen = match_quant(files, quant) if quant else (files[0] if len(files) == 1 else None)
        if chosen:
            return folder / chosen
        raise ModelNotFoundError(
            f"model {model!r}: LM Studio's {ref} holds " + (
                f"no GGUF of quant {quant}" if quant else f"{len(files)} model GGUFs")
            + f" ({', '.join(files[:6]) or 'none'}){at}; name one: lmstudio: {ref}/FILE.gguf")
    raise ModelNotFoundError(
        f"model {model!r}: LM Studio's models folder has no {ref} (looked in "
        f"{' and '.join(str(r) for r in roots)}){at}; download it in LM Studio, or set "
        "LOCALMOA_LMSTUDIO_MODELS to the folder that holds it")


@dataclass(frozen=True)
class StoreModel:
    """A GGUF found in another tool's store: where, how models.yaml names it."""

    store: str  # hf, ollama, lmstudio
    ref: str  # what source: takes, e.g. qwen2.5:7b
    path: Path
    source: dict[str, str]  # the models.yaml source: mapping


def ollama_models() -> list[StoreModel]:
    """Every model of Ollama's store that has a GGUF blob here."""
    found = []
    for root in constants.ollama_models_dirs():
        manifests = root / "manifests"
        if not manifests.is_dir():
            continue
        for manifest in sorted(manifests.glob("*/*/*/*")):
            try:
                name = OllamaName(*manifest.relative_to(manifests).parts)
                digest = _model_digest(manifest) if manifest.is_file() else None
            except (OSError, FileRefused, ValueError, TypeError):
                continue  # a manifest we cannot read is not listed
            blob = _blob_path(root, digest) if digest else None
            if blob is not None and blob.is_file():
                found.append(StoreModel("ollama", name.short(), blob, {"ollama": name.short()}))
    return found


def lmstudio_models() -> list[StoreModel]:
    """Every model GGUF in LM Studio's models folders."""
    found = []
    for root in constants.lmstudio_models_dirs():
        if not root.is_dir():
            continue
        for path in sorted(root.glob("*/*/*.gguf")):
            if path.is_file() and model_gguf(path.name):
                ref = path.relative_to(root).as_posix()
                found.append(StoreModel("lmstudio", ref, path, {"lmstudio": ref}))
    return found


def hf_models() -> list[StoreModel]:
    """Every model GGUF of the Hugging Face cache's ``main`` revisions."""
    from huggingface_hub import CacheNotFound, scan_cache_dir

    try:
        info = scan_cache_dir(constants.hf_hub_cache())
    except (CacheNotFound, ValueError, OSError):
        return []
    found = []
    for repo in sorted(info.repos, key=lambda r: r.repo_id):
        main = repo.refs.get("main") if repo.repo_type == "model" else None
        if main is None:
            continue
        for file in sorted(main.files, key=lambda f: f.file_name):
            inside = file.file_path.relative_to(main.snapshot_path).as_posix()
            if model_gguf(file.file_name):
                found.append(StoreModel("hf", f"{repo.repo_id}/{inside}", file.file_path,
                                        {"repo": repo.repo_id, "file": inside}))
    return found


def discover() -> list[StoreModel]:
    """The GGUFs of the Hugging Face cache, Ollama's store and LM Studio's folder."""
    return [*hf_models(), *ollama_models(), *lmstudio_models()]
