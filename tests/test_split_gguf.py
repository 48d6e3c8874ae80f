"""Split GGUF models (llama.cpp's gguf-split) are read whole: every shard's tensors.

The shards are made from the real SmolLM2-135M GGUF with the `gguf` package's
writer, in gguf-split's layout, and llama.cpp loads them: they are real split files.
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import pytest

from localmoa.backends.base import GenerateOptions
from localmoa.backends.llamacpp.backend import LlamaCppBackend
from localmoa.backends.llamacpp.sources import resolve_model_path
from localmoa.backends.llamacpp.spec import LlamaCppSpec, Source
from localmoa.config import Config
from localmoa.errors import InvalidModelFileError, ModelNotFoundError
from localmoa.memory.estimate import LoadSettings, footprint, model_facts
from localmoa.memory.gguf_header import (
    ArraySummary,
    read_header,
    read_model_header,
    shard_paths,
)

from .conftest import cli
from .test_sources import fake_hf_repo

N_SHARDS = 3
SHARD_NAMES = [f"SmolLM2-{i:05d}-of-{N_SHARDS:05d}.gguf" for i in range(1, N_SHARDS + 1)]


def write_split(source: Path, folder: Path, stem: str, n_shards: int) -> list[Path]:
    """Split ``source`` as `llama-gguf-split --split-max-tensors` does: all metadata and
    split.no/count/tensors.count in shard 1, only the split keys in the others, tensors
    in order, each shard's data aligned to 32 bytes, named STEM-0000i-of-0000n.gguf."""
    reader = gguf.GGUFReader(source)
    per_shard = -(-len(reader.tensors) // n_shards)
    writer = gguf.GGUFWriter(folder / stem, reader.fields["general.architecture"].contents(),
                             split_max_tensors=per_shard)
    for fld in reader.fields.values():
        if fld.name == "general.architecture" or fld.name.startswith("GGUF."):
            continue  # the writer adds the first; the others are the reader's own
        vtype = fld.types[0]
        sub_type = fld.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(fld.name, fld.contents(), vtype, sub_type=sub_type)
    for tensor in reader.tensors:
        writer.add_tensor_info(tensor.name, tensor.data.shape, tensor.data.dtype,
                               tensor.data.nbytes, tensor.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for tensor in reader.tensors:
        writer.write_tensor_data(tensor.data)
    writer.close()
    return sorted(folder.glob(f"{stem}-*-of-*.gguf"))


@pytest.fixture(scope="module")
def shards(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    made = write_split(smollm2_path, tmp_path_factory.mktemp("split"), "SmolLM2", N_SHARDS)
    assert [p.name for p in made] == SHARD_NAMES
    return made


def linked(folder: Path, files: dict[str, Path]) -> Path:
    """``folder`` holding links named as given; returns the folder."""
    folder.mkdir(exist_ok=True)
    for name, target in files.items():
        (folder / name).symlink_to(target)
    return folder


def test_the_shards_have_gguf_splits_layout(shards: list[Path]) -> None:
    for i, shard in enumerate(shards):
        fields = gguf.GGUFReader(shard).fields
        assert fields["split.no"].contents() == i
        assert fields["split.count"].contents() == N_SHARDS
        assert fields["split.tensors.count"].contents() == 272
        assert fields["split.no"].types == [gguf.GGUFValueType.UINT16]
        assert fields["split.tensors.count"].types == [gguf.GGUFValueType.INT32]
        user_keys = {k for k in fields if not k.startswith("GGUF.")}
        if i > 0:  # the metadata lives in the first shard only
            assert user_keys == {"split.no", "split.count", "split.tensors.count"}


def test_split_facts_equal_the_unsplit_models(shards: list[Path], smollm2_path: Path) -> None:
    whole = model_facts(read_header(smollm2_path))
    split = model_facts(read_model_header(shards[0]))
    assert split == whole
    assert (split.weights_bytes, split.parameters, split.n_layers) == (
        96_576_768, 134_515_008, 30)
    assert split.layer_bytes == whole.layer_bytes and split.output_bytes == whole.output_bytes
    # the first shard alone, as read before, misses the other shards' weights
    first_only = model_facts(read_header(shards[0]))
    others = sum(t.n_bytes for shard in shards[1:] for t in read_header(shard).tensors)
    assert others > 40 << 20 and first_only.weights_bytes + others == whole.weights_bytes


def test_split_footprint_equals_the_unsplit_models(shards: list[Path],
                                                   smollm2_path: Path) -> None:
    settings = LoadSettings(n_ctx=2048)
    whole = footprint("m", model_facts(read_header(smollm2_path)), settings)
    split = footprint("m", model_facts(read_model_header(shards[0])), settings)
    assert split == whole


def test_reading_a_split_header_skips_the_vocabulary(shards: list[Path]) -> None:
    # what keeps it fast (GGUFReader takes seconds: it decodes every token)
    tokens = read_model_header(shards[0]).metadata["tokenizer.ggml.tokens"]
    assert isinstance(tokens, ArraySummary) and tokens.count == 49152


def test_shard_paths_follow_llama_cpps_names(shards: list[Path], smollm2_path: Path) -> None:
    assert shard_paths(shards[0]) == shards
    assert shard_paths(shards[1]) == [shards[1]]  # only a first shard names the set
    assert shard_paths(smollm2_path) == [smollm2_path]


def one_line(exc: pytest.ExceptionInfo[Exception]) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize("absent", [[1], [1, 2]])
def test_a_missing_shard_is_named(shards: list[Path], tmp_path: Path, absent: list[int]) -> None:
    folder = linked(tmp_path / "m", {s.name: s for i, s in enumerate(shards) if i not in absent})
    with pytest.raises(ModelNotFoundError) as exc:
        read_model_header(folder / SHARD_NAMES[0], model="big")
    msg = one_line(exc)
    for i in absent:
        assert SHARD_NAMES[i] in msg
    assert SHARD_NAMES[0] not in msg.partition("are not in")[2]
    assert f"{len(absent)} of the others are not in" in msg
    assert "model 'big'" in msg and "localmoa models pull big" in msg


def test_a_later_shard_is_refused_with_the_first_ones_name(shards: list[Path]) -> None:
    for shard in shards[1:]:
        with pytest.raises(InvalidModelFileError) as exc:
            read_model_header(shard)
        msg = one_line(exc)
        assert "give the first shard, SmolLM2-00001-of-00003.gguf" in msg


def test_a_renamed_first_shard_is_refused(shards: list[Path], tmp_path: Path) -> None:
    folder = linked(tmp_path / "m", {"model.gguf": shards[0]})
    with pytest.raises(InvalidModelFileError) as exc:
        read_model_header(folder / "model.gguf")
    assert "-00001-of-00003.gguf" in one_line(exc)


def test_shards_of_different_splits_are_refused(shards: list[Path], tmp_path: Path) -> None:
    # shard 3 under shard 2's name: its split.no says otherwise
    folder = linked(tmp_path / "m", {SHARD_NAMES[0]: shards[0], SHARD_NAMES[1]: shards[2],
                                     SHARD_NAMES[2]: shards[2]})
    with pytest.raises(InvalidModelFileError) as exc:
        read_model_header(folder / SHARD_NAMES[0])
    msg = one_line(exc)
    assert SHARD_NAMES[1] in msg and "shard 3 of 3" in msg and "different splits" in msg


def test_a_truncated_shard_is_refused(shards: list[Path], tmp_path: Path) -> None:
    folder = linked(tmp_path / "m", {SHARD_NAMES[0]: shards[0], SHARD_NAMES[1]: shards[1]})
    data = shards[2].read_bytes()
    (folder / SHARD_NAMES[2]).write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidModelFileError) as exc:
        read_model_header(folder / SHARD_NAMES[0])
    msg = one_line(exc)
    assert SHARD_NAMES[2] in msg and "truncated" in msg


def test_llama_cpp_loads_the_split_model(shards: list[Path], smollm2_path: Path) -> None:
    question = [{"role": "user", "content": "Name three colours."}]
    opts = GenerateOptions(temperature=0.0, max_tokens=12, seed=1)
    answers = []
    for path in (shards[0], smollm2_path):
        spec = LlamaCppSpec(backend="llamacpp", source=Source(path=str(path)), n_ctx=512)
        model = LlamaCppBackend().load("m", spec, path, n_threads=2)
        try:
            answers.append(model.chat(question, opts).text())
        finally:
            model.unload()
    assert answers[0].strip()
    assert answers[0] == answers[1]  # the same weights: the same greedy answer


def test_a_split_model_from_the_hugging_face_cache(shards: list[Path], tmp_path: Path) -> None:
    cache_names = [n.replace("SmolLM2-", "SmolLM2-Q4_1-") for n in SHARD_NAMES]
    snap = fake_hf_repo(tmp_path / "hf-cache", "org/SmolLM2-GGUF", {})
    blobs = snap.parent.parent / "blobs"
    for name, shard in zip(cache_names, shards, strict=True):
        (blobs / name.upper()).symlink_to(shard)  # a blob, named by its hash in real life
        (snap / name).symlink_to(blobs / name.upper())
    cfg = Config(models={"m": LlamaCppSpec(backend="llamacpp",
                                        source=Source(repo="org/SmolLM2-GGUF:Q4_1"))},
                 profiles={}, default_profile="x")
    path = resolve_model_path(cfg, "m")
    assert path == snap / cache_names[0]
    assert len(read_model_header(path, model="m").tensors) == 272


def write_config(tmp_path: Path, path: Path) -> Path:
    config = tmp_path / "user.yaml"
    config.write_text(f"""\
models:
  big:
    backend: llamacpp
    source: {{path: {path}}}
    n_ctx: 512
profiles:
  solo:
    layers: [[{{model: big}}]]
    aggregator: {{model: big}}
""", encoding="utf-8")
    return config


def test_plan_counts_every_shards_weights(shards: list[Path], tmp_path: Path) -> None:
    proc = cli("plan", "--config", str(write_config(tmp_path, shards[0])), "--profile", "solo",
               "--json")
    assert proc.returncode == 0, proc.stderr
    big = json.loads(proc.stdout)["footprints"]["big"]
    assert big["weights_bytes"] == 96_576_768 and big["parameters"] == 134_515_008
    assert big["path"] == str(shards[0])


def test_plan_names_a_missing_shard(shards: list[Path], tmp_path: Path) -> None:
    folder = linked(tmp_path / "m", {SHARD_NAMES[0]: shards[0], SHARD_NAMES[2]: shards[2]})
    proc = cli("plan", "--config", str(write_config(tmp_path, folder / SHARD_NAMES[0])),
               "--profile", "solo", "--json")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and SHARD_NAMES[1] in lines[0] and "model 'big'" in lines[0]


def test_models_add_and_show_a_split_model(shards: list[Path], tmp_path: Path) -> None:
    # added through links, as in a Hugging Face cache: the shard names must be kept
    blobs = linked(tmp_path / "blobs", {f"blob{i}": s for i, s in enumerate(shards)})
    snap = linked(tmp_path / "snap", {n: blobs / f"blob{i}" for i, n in enumerate(SHARD_NAMES)})
    config = tmp_path / "user.yaml"
    added = cli("models", "add", str(snap / SHARD_NAMES[0]), "--name", "big",
                "--config", str(config))
    assert added.returncode == 0, added.stderr
    shown = cli("models", "show", "big", "--config", str(config), "--json")
    assert shown.returncode == 0, shown.stderr
    row = json.loads(shown.stdout)
    assert row["path"] == str(snap.resolve() / SHARD_NAMES[0])
    assert row["file_bytes"] == sum(s.stat().st_size for s in shards)
    assert row["footprint"]["weights_bytes"] == 96_576_768
    refused = cli("models", "add", str(snap / SHARD_NAMES[1]), "--name", "half",
                  "--config", str(config))
    assert refused.returncode == 2 and "give the first shard" in refused.stderr
