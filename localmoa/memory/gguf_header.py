"""Read a GGUF file's header: metadata and tensor table, never the weights.

The `gguf` package's GGUFReader decodes every vocabulary entry (9 s for
Gemma-3's 262k tokens); this reader skips large arrays by their lengths and is
fast enough for `localmoa plan` (< 0.1 s). Quantisation block sizes come from
the `gguf` package.

A split model (llama.cpp's gguf-split, ``NAME-00001-of-00003.gguf`` ...) keeps
its metadata in the first shard and its tensors spread over all shards;
``read_model_header`` reads them all as one header.
"""

from __future__ import annotations

import mmap
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InvalidModelFileError, ModelNotFoundError, clip
from ..fileio import FileRefused, open_regular

# GGUF metadata value types
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
            10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
#: Arrays longer than this are summarised (the vocabulary), not decoded.
MAX_DECODED_ARRAY = 4096
#: Counts past these are a corrupt (or hostile) header, not a model: the largest models
#: have a few thousand tensors, a few hundred keys, vocabularies under a million tokens.
MAX_TENSORS = 1 << 20
MAX_KV = 1 << 20
MAX_ARRAY = 1 << 32
MAX_STRING_BYTES = 1 << 26
#: Array elements decoded in one header, nested arrays included; past it arrays are
#: summarised like the vocabulary (memory stays bounded whatever the nesting).
MAX_DECODED_ELEMENTS = 1 << 16
#: Arrays of arrays nest at most this deep (llama.cpp itself writes and reads none).
MAX_ARRAY_NESTING = 4
#: The architecture's keys memory/estimate.py model_facts reads as whole numbers, and those
#: that may hold one per layer instead (OpenELM's head counts).
COUNT_KEYS = ("block_count", "embedding_length", "attention.key_length",
              "attention.value_length", "attention.sliding_window", "vocab_size",
              "context_length")
PER_LAYER_KEYS = ("attention.head_count", "attention.head_count_kv")
#: More layers than this is a corrupt block_count (llama.cpp allows 512): the estimate
#: keeps a list of that many numbers.
MAX_LAYERS = 1 << 16
#: ggml's GGML_MAX_DIMS: a tensor has at most 4 dimensions.
MAX_DIMS = 4
#: Tensor data past this (1 PiB) is a corrupt shape, not a big model.
MAX_DATA_BYTES = 1 << 50
#: The fewest bytes one element of each kind takes in the header.
_MIN_TENSOR_BYTES = 8 + 4 + 4 + 8  # name length, dimensions, type, offset
_MIN_KV_BYTES = 8 + 4 + 1  # key length, value type, a one-byte value
_MIN_ELEMENT_BYTES = {_STRING: 8, _ARRAY: 4 + 8}
#: llama.cpp's shard names (llama_split_path): PREFIX-00001-of-00003.gguf, 1-based.
_SPLIT_NAME = re.compile(r"^(?P<prefix>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")
#: At most this many missing shards are named in an error; the rest are counted.
_NAMED_SHARDS = 4


@dataclass(frozen=True)
class ArraySummary:
    """A large metadata array, kept as its element type and length only (and, for strings,
    the bytes of the longest: the vocabulary's longest token)."""

    type: int
    count: int
    longest: int = 0


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    type_name: str
    n_bytes: int


@dataclass
class GgufHeader:
    path: Path
    version: int
    metadata: dict[str, Any] = field(default_factory=dict)
    tensors: list[TensorInfo] = field(default_factory=list)

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", "unknown"))

    def arch_value(self, key: str, default: Any = None) -> Any:
        """``{architecture}.{key}`` from the metadata."""
        return self.metadata.get(f"{self.architecture}.{key}", default)


def count_text(n: int) -> str:
    """``2^63`` for a large power of two (what a crafted header writes), else ``1,234``."""
    if n >= 1 << 16 and n & (n - 1) == 0:
        return f"2^{n.bit_length() - 1}"
    return f"{n:,}"


class _Cursor:
    def __init__(self, buf: Any, path: Path) -> None:
        self.buf = buf
        self.off = 0
        self.path = path
        self.decoded = 0

    def unpack(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        if self.off + size > len(self.buf):
            raise InvalidModelFileError(
                f"{self.path}: the GGUF header is truncated (file ends at byte {len(self.buf)}); "
                "the download was probably interrupted, fetch the file again")
        (value,) = struct.unpack_from(fmt, self.buf, self.off)
        self.off += size
        return value

    def claim(self, what: str, count: int, min_bytes: int, limit: int) -> None:
        """Refuse a count no GGUF has, or one whose elements cannot fit in the file,
        before anything loops over it."""
        if count > limit:
            raise InvalidModelFileError(
                f"{self.path}: the GGUF header claims {count_text(count)} {what} (at byte "
                f"{self.off}; no model has more than {count_text(limit)}): the file is "
                "corrupt, not a usable GGUF; check where it came from")
        if self.off + min_bytes > len(self.buf):
            raise InvalidModelFileError(
                f"{self.path}: the GGUF header claims {count_text(count)} {what} at byte "
                f"{self.off}, at least {min_bytes:,} bytes, past the end of the file "
                f"({len(self.buf):,} bytes): the file is corrupt, or truncated (fetch the "
                "file again)")

    def length(self) -> int:
        n = self.unpack("<Q")
        self.claim("bytes of string", n, n, MAX_STRING_BYTES)
        return int(n)

    def string(self) -> str:
        n = self.length()
        raw = bytes(self.buf[self.off:self.off + n])
        self.off += n
        return raw.decode("utf-8", "replace")

    def value(self, vtype: int, depth: int = 0) -> Any:
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            if depth >= MAX_ARRAY_NESTING:
                raise InvalidModelFileError(
                    f"{self.path}: the GGUF header nests arrays more than {MAX_ARRAY_NESTING} "
                    f"levels deep (at byte {self.off}): the file is corrupt, not a usable GGUF")
            etype = self.unpack("<I")
            count = self.unpack("<Q")
            self.claim("array elements", count, count * _element_bytes(etype), MAX_ARRAY)
            if count > MAX_DECODED_ARRAY or self.decoded + count > MAX_DECODED_ELEMENTS:
                longest = self._skip_array(etype, count, depth + 1)
                return ArraySummary(etype, count, longest)
            self.decoded += count
            return [self.value(etype, depth + 1) for _ in range(count)]
        raise InvalidModelFileError(f"{self.path}: unknown GGUF value type {vtype}; "
                                    "the file is corrupt or from a newer GGUF version")

    def _skip_array(self, etype: int, count: int, depth: int) -> int:
        """Past ``count`` elements; the bytes of the longest when they are strings."""
        longest = 0
        if etype in _SCALARS:
            self.off += struct.calcsize(_SCALARS[etype]) * count
        elif etype == _STRING:
            for _ in range(count):
                n = self.length()  # first: it moves the cursor past the length itself
                self.off += n
                longest = max(longest, n)
        else:
            for _ in range(count):
                self.value(etype, depth)
        if self.off > len(self.buf):
            self.unpack("<B")  # raises the truncation error
        return longest


def _element_bytes(etype: int) -> int:
    if etype in _SCALARS:
        return struct.calcsize(_SCALARS[etype])
    return _MIN_ELEMENT_BYTES.get(etype, 1)


def read_header(path: Path) -> GgufHeader:
    """Parse the header of the GGUF file at ``path``: one file, a single shard of a split
    model. A model's facts come from ``read_model_header``."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    try:
        fd = open_regular(path)  # a FIFO or a device is refused, never waited on
    except FileRefused as exc:
        raise InvalidModelFileError(f"{path} {exc.reason}") from None
    except OSError as exc:
        raise InvalidModelFileError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size < 24:
                raise InvalidModelFileError(f"{path}: too small to be a GGUF file ({size} bytes)")
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                return _parse(buf, path, GGML_QUANT_SIZES, GGMLQuantizationType)
    except OSError as exc:
        raise InvalidModelFileError(f"{path}: cannot read: {exc.strerror}") from None


def _parse(buf: Any, path: Path, quant_sizes: Any, quant_type: Any) -> GgufHeader:
    cur = _Cursor(buf, path)
    if bytes(buf[:4]) != b"GGUF":
        raise InvalidModelFileError(f"{path}: not a GGUF file (starts with {bytes(buf[:4])!r})")
    cur.off = 4
    version = cur.unpack("<I")
    if version not in (2, 3):
        raise InvalidModelFileError(f"{path}: GGUF version {version} is not supported (2 or 3)")
    n_tensors = cur.unpack("<Q")
    n_kv = cur.unpack("<Q")
    cur.claim("key-value pairs", n_kv, n_kv * _MIN_KV_BYTES, MAX_KV)
    header = GgufHeader(path=path, version=version)
    for _ in range(n_kv):
        key = cur.string()
        header.metadata[key] = cur.value(cur.unpack("<I"))
    _check_counts(header)
    cur.claim("tensors", n_tensors, n_tensors * _MIN_TENSOR_BYTES, MAX_TENSORS)
    data_end = 0
    for _ in range(n_tensors):
        name = cur.string()
        n_dims = cur.unpack("<I")
        if n_dims > MAX_DIMS:
            raise InvalidModelFileError(
                f"{path}: tensor {clip(name)!r} has {count_text(n_dims)} dimensions (GGUF "
                f"allows at most {MAX_DIMS}): the file is corrupt, not a usable GGUF")
        shape = tuple(cur.unpack("<Q") for _ in range(n_dims))
        ttype = cur.unpack("<I")
        offset = cur.unpack("<Q")
        try:
            qtype = quant_type(ttype)
            block, type_size = quant_sizes[qtype]
        except (ValueError, KeyError):
            raise InvalidModelFileError(
                f"{path}: tensor {clip(name)!r} has unknown type {ttype}; update the gguf package "
                "(pip install -U gguf) or check the file") from None
        elements = 1
        for dim in shape:
            elements *= dim
        n_bytes = elements // block * type_size
        header.tensors.append(TensorInfo(name, shape, qtype.name, n_bytes))
        data_end = max(data_end, offset + n_bytes)
    alignment = _alignment(header)
    data_start = (cur.off + alignment - 1) // alignment * alignment
    if data_end > MAX_DATA_BYTES:
        raise InvalidModelFileError(
            f"{path}: the GGUF header claims {count_text(data_end)} bytes of tensor data "
            "(tensor shapes no model has): the file is corrupt, not a usable GGUF")
    if data_start + data_end > len(buf):
        raise InvalidModelFileError(
            f"{path}: the GGUF file is truncated: its tensors need {data_start + data_end} "
            f"bytes, the file has {len(buf)}; the download was probably interrupted, fetch "
            "the file again")
    return header


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_counts(header: GgufHeader) -> None:
    """The architecture's numbers the estimate reads are whole numbers (a string or an
    array there is a corrupt file, not an internal error), block_count a sane one."""
    for key in (*COUNT_KEYS, *PER_LAYER_KEYS):
        name = f"{header.architecture}.{key}"
        value = header.metadata.get(name)
        if value is None:
            continue
        if key in PER_LAYER_KEYS and isinstance(value, list) and all(map(_is_count, value)):
            continue
        if _is_count(value) and (key != "block_count" or value <= MAX_LAYERS):
            continue
        if _is_count(value):
            problem = f"{value:,}, more layers than any model has (at most {MAX_LAYERS:,})"
        else:
            size = (len(value) if isinstance(value, list) else
                    value.count if isinstance(value, ArraySummary) else None)
            problem = (f"an array of {size:,} values" if size is not None
                       else clip(repr(value))) + ", not a whole number" + (
                " (or one per layer)" if key in PER_LAYER_KEYS else "")
        raise InvalidModelFileError(
            f"{header.path}: the GGUF header's {clip(name)} is {problem}: the file is "
            "corrupt, not a usable GGUF; check where it came from")


def _alignment(header: GgufHeader) -> int:
    value = header.metadata.get("general.alignment", 32)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 \
            or value & (value - 1) or value > 1 << 16:
        raise InvalidModelFileError(f"{header.path}: general.alignment is "
                                    f"{clip(repr(value))}, not a power of two: the file is "
                                    "corrupt")
    return value


def split_file_name(prefix: str, split_no: int, split_count: int) -> str:
    """llama.cpp's name of shard ``split_no`` (1-based) of ``split_count``."""
    return f"{prefix}-{split_no:05d}-of-{split_count:05d}.gguf"


def parse_split_name(name: str) -> tuple[str, int, int] | None:
    """``(prefix, split_no, split_count)`` of a shard's file name (1-based), else None."""
    m = _SPLIT_NAME.match(name)
    return (m["prefix"], int(m["no"]), int(m["count"])) if m else None


def shard_paths(path: Path) -> list[Path]:
    """The files llama.cpp opens for the model whose (first) file is ``path``.

    By name alone, as llama.cpp does: every shard when ``path`` is named as the
    first of several, else ``[path]``. ``read_model_header`` checks they agree.
    """
    parsed = parse_split_name(path.name)
    if parsed is None or parsed[1] != 1 or parsed[2] <= 1:
        return [path]
    prefix, _, count = parsed
    return [path.with_name(split_file_name(prefix, i, count)) for i in range(1, count + 1)]


def read_model_header(path: Path, model: str | None = None) -> GgufHeader:
    """The header of the model whose GGUF file is ``path``, over every shard of a split model.

    A split model's first shard holds the metadata (``split.count`` > 1) and its
    share of the tensors; llama.cpp opens the other shards by name next to it.
    Each shard must be there, say it is the shard its name says, and be whole.
    The header returned has the first shard's metadata and every shard's tensors.
    ``model`` (a config name) makes the errors say which model and how to fetch it.
    """
    header = read_header(path)
    count = _split_key(header, "split.count", 0)
    if count <= 1:
        return header
    who = f"model {model!r}: " if model else ""
    split_no = _split_key(header, "split.no", 0)
    parsed = parse_split_name(path.name)
    if split_no != 0:
        first = (split_file_name(parsed[0], 1, count) if parsed
                 else f"NAME-00001-of-{count:05d}.gguf")
        raise InvalidModelFileError(
            f"{who}{path} is shard {split_no + 1} of {count} of a split model; give the first "
            f"shard, {first} (the other shards are found next to it)")
    if parsed is None or parsed[1:] != (1, count):
        raise InvalidModelFileError(
            f"{who}{path} is the first of {count} shards of a split model but is not named "
            f"like one (...-00001-of-{count:05d}.gguf): llama.cpp finds the other shards by "
            "that name, so keep the file names gguf-split gave them")
    paths = shard_paths(path)
    missing = [p.name for p in paths[1:] if not p.is_file()]
    if missing:
        named = ", ".join(missing[:_NAMED_SHARDS]) + (
            f" and {len(missing) - _NAMED_SHARDS} more" if len(missing) > _NAMED_SHARDS else "")
        fetch = (f"`localmoa models pull {model}` fetches them all for a Hugging Face model"
                 if model else "all shards of the split must sit in the same folder")
        raise ModelNotFoundError(
            f"{who}{path.name} is the first of {count} shards of a split model, and "
            f"{len(missing)} of the others are not in {path.parent}: {named}; download every "
            f"shard ({fetch})")
    tensors = list(header.tensors)
    for i, shard_path in enumerate(paths[1:], start=1):
        shard = read_header(shard_path)
        says = (_split_key(shard, "split.no", -1), _split_key(shard, "split.count", -1))
        if says != (i, count):
            raise InvalidModelFileError(
                f"{who}{shard_path} says it is shard {says[0] + 1} of {says[1]}, its name shard "
                f"{i + 1} of {count}: the shards come from different splits; download every "
                "shard of one split again")
        tensors.extend(shard.tensors)
    expected = _split_key(header, "split.tensors.count", len(tensors))
    names = {t.name for t in tensors}
    if expected != len(tensors) or len(names) != len(tensors):
        raise InvalidModelFileError(
            f"{who}the {count} shards of {path} hold {len(tensors)} tensors "
            f"({len(names)} distinct), the first shard says {expected}: the shards come from "
            "different splits; download every shard of one split again")
    return GgufHeader(path=path, version=header.version, metadata=header.metadata,
                      tensors=tensors)


def _split_key(header: GgufHeader, key: str, default: int) -> int:
    value = header.metadata.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidModelFileError(f"{header.path}: {key} is {clip(repr(value))}, not an integer; "
                                    "the file is corrupt")
    return value
