"""Read a GGUF file's header: metadata and tensor table, never the weights.

The `gguf` package's GGUFReader decodes every vocabulary entry (9 s for
Gemma-3's 262k tokens); this reader skips large arrays by their lengths and is
fast enough for `localmoa plan` (< 0.1 s). Quantisation block sizes come from
the `gguf` package.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InvalidModelFileError

# GGUF metadata value types
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
            10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
#: Arrays longer than this are summarised (the vocabulary), not decoded.
MAX_DECODED_ARRAY = 4096


@dataclass(frozen=True)
class ArraySummary:
    """A large metadata array, kept as its element type and length only."""

    type: int
    count: int


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


class _Cursor:
    def __init__(self, buf: Any, path: Path) -> None:
        self.buf = buf
        self.off = 0
        self.path = path

    def unpack(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        if self.off + size > len(self.buf):
            raise InvalidModelFileError(
                f"{self.path}: the GGUF header is truncated (file ends at byte {len(self.buf)}); "
                "the download was probably interrupted, fetch the file again")
        (value,) = struct.unpack_from(fmt, self.buf, self.off)
        self.off += size
        return value

    def string(self) -> str:
        n = self.unpack("<Q")
        if self.off + n > len(self.buf):
            self.unpack(f"<{n + 1}s")  # raises the truncation error
        raw = bytes(self.buf[self.off:self.off + n])
        self.off += n
        return raw.decode("utf-8", "replace")

    def skip_string(self) -> None:
        n = self.unpack("<Q")
        self.off += n

    def value(self, vtype: int) -> Any:
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            etype = self.unpack("<I")
            count = self.unpack("<Q")
            if count > MAX_DECODED_ARRAY:
                self._skip_array(etype, count)
                return ArraySummary(etype, count)
            return [self.value(etype) for _ in range(count)]
        raise InvalidModelFileError(f"{self.path}: unknown GGUF value type {vtype}; "
                                    "the file is corrupt or from a newer GGUF version")

    def _skip_array(self, etype: int, count: int) -> None:
        if etype in _SCALARS:
            self.off += struct.calcsize(_SCALARS[etype]) * count
        elif etype == _STRING:
            for _ in range(count):
                self.skip_string()
        else:
            for _ in range(count):
                self.value(etype)
        if self.off > len(self.buf):
            self.unpack("<B")  # raises the truncation error


def read_header(path: Path) -> GgufHeader:
    """Parse the header of the GGUF file at ``path``."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    try:
        with path.open("rb") as fh:
            size = path.stat().st_size
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
    header = GgufHeader(path=path, version=version)
    for _ in range(n_kv):
        key = cur.string()
        header.metadata[key] = cur.value(cur.unpack("<I"))
    data_end = 0
    for _ in range(n_tensors):
        name = cur.string()
        n_dims = cur.unpack("<I")
        shape = tuple(cur.unpack("<Q") for _ in range(n_dims))
        ttype = cur.unpack("<I")
        offset = cur.unpack("<Q")
        try:
            qtype = quant_type(ttype)
            block, type_size = quant_sizes[qtype]
        except (ValueError, KeyError):
            raise InvalidModelFileError(
                f"{path}: tensor {name!r} has unknown type {ttype}; update the gguf package "
                "(pip install -U gguf) or check the file") from None
        elements = 1
        for dim in shape:
            elements *= dim
        n_bytes = elements // block * type_size
        header.tensors.append(TensorInfo(name, shape, qtype.name, n_bytes))
        data_end = max(data_end, offset + n_bytes)
    alignment = int(header.metadata.get("general.alignment", 32))
    data_start = (cur.off + alignment - 1) // alignment * alignment
    if data_start + data_end > len(buf):
        raise InvalidModelFileError(
            f"{path}: the GGUF file is truncated: its tensors need {data_start + data_end} "
            f"bytes, the file has {len(buf)}; the download was probably interrupted, fetch "
            "the file again")
    return header
