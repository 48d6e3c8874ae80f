"""Crafted GGUF headers through the real CLI: absurd counts, a string longer than the
file, arrays nested without end, impossible shapes. Each is one line naming what the
header claims, exit 2: not "the download was probably interrupted", not a
RecursionError, not an hour of looping. The files are built here with struct."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from localmoa.memory.gguf_header import MAX_ARRAY_NESTING, ArraySummary, read_header

from .conftest import cli
from .test_bad_input import assert_one_line, config_with_path

NET = 120
STRING, ARRAY, UINT8, UINT32, FLOAT32 = 8, 9, 0, 4, 6


def text(value: bytes) -> bytes:
    return struct.pack("<Q", len(value)) + value


def kv(key: bytes, vtype: int, payload: bytes) -> bytes:
    return text(key) + struct.pack("<I", vtype) + payload


def gguf(kvs: list[bytes] = (), n_kv: int | None = None, n_tensors: int = 0,
         tensors: bytes = b"", pad: int = 64) -> bytes:
    count = len(kvs) if n_kv is None else n_kv
    return (b"GGUF" + struct.pack("<IQQ", 3, n_tensors, count) + b"".join(kvs) + tensors
            + b"\0" * pad)


def nested_arrays(levels: int) -> bytes:
    """An array of one array of one array ... of one uint8, ``levels`` arrays deep."""
    return (struct.pack("<IQ", ARRAY, 1) * (levels - 1) + struct.pack("<IQ", UINT8, 1)
            + b"\x07")


def tensor(name: bytes, shape: tuple[int, ...], ttype: int = 0) -> bytes:
    return (text(name) + struct.pack("<I", len(shape)) + struct.pack(f"<{len(shape)}Q", *shape)
            + struct.pack("<IQ", ttype, 0))


CASES = {
    "2^63-tensors": (gguf(n_tensors=1 << 63), "the GGUF header claims 2^63 tensors"),
    "2^63-kv-pairs": (gguf(n_kv=1 << 63), "the GGUF header claims 2^63 key-value pairs"),
    "array-of-2^62": (gguf([kv(b"a", ARRAY, struct.pack("<IQ", UINT8, 1 << 62))]),
                      "the GGUF header claims 2^62 array elements"),
    "string-2^40": (gguf([kv(b"a", STRING, struct.pack("<Q", 1 << 40))]),
                    "the GGUF header claims 2^40 bytes of string"),
    "string-past-the-end": (gguf([kv(b"a", STRING, struct.pack("<Q", 1_000_000))]),
                            "the GGUF header claims 1,000,000 bytes of string at byte 45"),
    "strings-past-the-end": (gguf([kv(b"a", ARRAY, struct.pack("<IQ", STRING, 1 << 30))]),
                             "the GGUF header claims 2^30 array elements at byte 49, at least "
                             "8,589,934,592 "
                             "bytes, past the end of the file"),
    "nested-arrays": (gguf([kv(b"a", ARRAY, nested_arrays(100_000))]),
                      f"the GGUF header nests arrays more than {MAX_ARRAY_NESTING} levels "
                      "deep"),
    "2^32-dimensions": (gguf(n_tensors=1, tensors=text(b"t") + struct.pack("<I", 2**32 - 1)),
                        "tensor 't' has 4,294,967,295 dimensions (GGUF allows at most 4)"),
    "petabytes": (gguf(n_tensors=1, tensors=tensor(b"t", (1 << 40, 1 << 40))),  # F32: 4 B
                  "the GGUF header claims 2^82 bytes of tensor data"),
    "alignment-0": (gguf([kv(b"general.alignment", UINT32, struct.pack("<I", 0))]),
                    "general.alignment is 0, not a power of two"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_crafted_header_is_one_line(tmp_path: Path, case: str) -> None:
    data, fragment = CASES[case]
    model = tmp_path / "crafted.gguf"
    model.write_bytes(data)
    proc = cli("models", "add", str(model), "--name", "x", timeout=NET)
    assert_one_line(proc, 2, f"{model}: {fragment}")
    assert "interrupted" not in proc.stderr or "past the end" in proc.stderr


def test_crafted_header_as_a_models_source(tmp_path: Path) -> None:
    model = tmp_path / "crafted.gguf"
    model.write_bytes(CASES["2^63-tensors"][0])
    proc = cli("plan", "--config", str(config_with_path(tmp_path, model)), "--profile", "p",
               timeout=NET)
    assert_one_line(proc, 2, "the GGUF header claims 2^63 tensors", "the file is corrupt")


def arch_kv(key: bytes, vtype: int, payload: bytes) -> list[bytes]:
    return [kv(b"general.architecture", STRING, text(b"llama")), kv(key, vtype, payload)]


def u32_array(*values: int) -> bytes:
    return struct.pack("<IQ", UINT32, len(values)) + struct.pack(f"<{len(values)}I", *values)


# a number the memory estimate reads, written as something else: one line, not int()'s
# ValueError; through plan (the estimate) and models add (the header alone)
NOT_COUNTS = {
    "block_count-string": (arch_kv(b"llama.block_count", STRING, text(b"abc")),
                           "llama.block_count is 'abc', not a whole number"),
    "block_count-array": (arch_kv(b"llama.block_count", ARRAY, u32_array(1, 2)),
                          "llama.block_count is an array of 2 values, not a whole number"),
    "block_count-2^32": (arch_kv(b"llama.block_count", UINT32, struct.pack("<I", 2**32 - 1)),
                         "llama.block_count is 4,294,967,295, more layers than any model"),
    "context_length-float": (arch_kv(b"llama.context_length", FLOAT32, struct.pack("<f", 2)),
                             "llama.context_length is 2.0, not a whole number"),
    "head_count-long-string": (arch_kv(b"llama.attention.head_count", STRING,
                                       text(b"x" * 1_000_000)),
                               "llama.attention.head_count is 'xxx"),
    "head_count_kv-strings": (arch_kv(b"llama.attention.head_count_kv", ARRAY,
                                      struct.pack("<IQ", STRING, 1) + text(b"8")),
                              "head_count_kv is an array of 1 values, not a whole number "
                              "(or one per layer)"),
}


@pytest.mark.parametrize("command", ["plan", "add"])
@pytest.mark.parametrize("case", list(NOT_COUNTS))
def test_a_count_that_is_not_a_number_is_one_line(tmp_path: Path, case: str,
                                                  command: str) -> None:
    kvs, fragment = NOT_COUNTS[case]
    model = tmp_path / "crafted.gguf"
    model.write_bytes(gguf(kvs))
    args = (["plan", "--config", str(config_with_path(tmp_path, model)), "--profile", "p"]
            if command == "plan" else ["models", "add", str(model), "--name", "x"])
    proc = cli(*args, timeout=NET)
    assert_one_line(proc, 2, f"{model}: the GGUF header's ", fragment,
                    "the file is corrupt, not a usable GGUF")
    assert len(proc.stderr) < 400


@pytest.mark.parametrize(("data", "fragment"), [
    (gguf(n_tensors=1, tensors=tensor(b"t" * 5_000_000, (4,), ttype=999)),
     "tensor 'tttttttt"),
    (gguf(n_tensors=1, tensors=text(b"t" * 5_000_000) + struct.pack("<I", 9)),
     "tensor 'tttttttt"),
    (gguf([kv(b"general.alignment", STRING, text(b"a" * 5_000_000))]),
     "general.alignment is 'aaaaaaa"),
], ids=["unknown-type", "dimensions", "alignment"])
def test_long_names_and_values_are_clipped(tmp_path: Path, data: bytes, fragment: str) -> None:
    model = tmp_path / "crafted.gguf"
    model.write_bytes(data)
    proc = cli("models", "add", str(model), "--name", "x", timeout=NET)
    assert_one_line(proc, 2, fragment, "…")
    assert len(proc.stderr) < 400, proc.stderr[:1000]


def test_per_layer_head_counts_still_read(tmp_path: Path) -> None:
    model = tmp_path / "openelm.gguf"
    model.write_bytes(gguf([*arch_kv(b"llama.attention.head_count", ARRAY, u32_array(4, 8)),
                            kv(b"llama.block_count", UINT32, struct.pack("<I", 2))]))
    assert read_header(model).metadata["llama.attention.head_count"] == [4, 8]


def test_truncated_inside_a_string_says_truncated_too(tmp_path: Path) -> None:
    whole = gguf([kv(b"general.name", STRING, text(b"x" * 5000))], pad=0)
    model = tmp_path / "cut.gguf"
    model.write_bytes(whole[:3000])
    proc = cli("models", "add", str(model), "--name", "x", timeout=NET)
    assert_one_line(proc, 2, "claims 5,000 bytes of string", "truncated (fetch the file again)")


def test_modest_nesting_and_long_arrays_still_read(tmp_path: Path) -> None:
    vocab = b"".join(text(b"tok%d" % i) for i in range(5000)) + text(b"a-longer-token")
    model = tmp_path / "fine.gguf"
    model.write_bytes(gguf([kv(b"nested", ARRAY, nested_arrays(MAX_ARRAY_NESTING)),
                            kv(b"tokenizer.ggml.tokens", ARRAY,
                               struct.pack("<IQ", STRING, 5001) + vocab)]))
    header = read_header(model)
    assert header.metadata["nested"] == [[[[7]]]]
    assert header.metadata["tokenizer.ggml.tokens"] == ArraySummary(STRING, 5001, 14)


def test_decoded_elements_are_bounded(tmp_path: Path) -> None:
    # 40 arrays of 4,096 bytes: the first 16 decoded (65,536 elements), the rest summarised
    row = struct.pack("<IQ", UINT8, 4096) + bytes(4096)
    model = tmp_path / "many.gguf"
    model.write_bytes(gguf([kv(b"a%d" % i, ARRAY, row) for i in range(40)]))
    metadata = read_header(model).metadata
    assert [isinstance(metadata[f"a{i}"], list) for i in range(40)] == [True] * 16 + [False] * 24
    assert metadata["a39"] == ArraySummary(UINT8, 4096)
