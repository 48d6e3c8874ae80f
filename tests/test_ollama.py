"""The Ollama backend over its wire protocol.

A real local HTTP server (pytest-httpserver) expects the exact JSON of Ollama's
documented API (docs/api.md in ollama/ollama) in order, and answers with it, as
the official client tests itself. The `localmoa` CLI runs against it in a
subprocess; the llama.cpp agents of the same run use the real SmolLM2 model.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Response

from localmoa.memory.probe import cpu_cores

from .conftest import cli

TAG = "llama3.2:1b"
SYSTEM = "You are a careful assistant."
QUESTION = "Which is larger, 9.11 or 9.9?"
N_CTX = 2048
SIZE = 1_321_098_329  # bytes of the model, as /api/tags reports it
MODEL_INFO = {  # as /api/show reports a Llama-3.2-1B
    "general.architecture": "llama", "general.parameter_count": 1_235_814_432,
    "llama.block_count": 16, "llama.attention.head_count": 32,
    "llama.attention.head_count_kv": 8, "llama.embedding_length": 2048,
    "llama.context_length": 131072, "llama.vocab_size": 128256,
    "llama.attention.key_length": 64, "llama.attention.value_length": 64,
}
DETAILS = {"parent_model": "", "format": "gguf", "family": "llama", "families": ["llama"],
           "parameter_size": "1.2B", "quantization_level": "Q8_0"}
STREAMED = ["9.9 ", "is ", "larger."]


def ndjson(*objects: dict) -> Response:
    return Response("".join(json.dumps(o) + "\n" for o in objects),
                    content_type="application/x-ndjson")


def chat_line(content: str, done: bool = False, **final: object) -> dict:
    line = {"model": TAG, "created_at": "2024-09-12T21:17:29.110811Z",
            "message": {"role": "assistant", "content": content}, "done": done}
    line.update(final)
    return line


FINAL = {"done_reason": "stop", "total_duration": 4883583458, "load_duration": 1334875,
         "prompt_eval_count": 26, "prompt_eval_duration": 342546000, "eval_count": 3,
         "eval_duration": 60000000}


def expect_describe(server: HTTPServer) -> None:
    server.expect_ordered_request("/api/show", method="POST", json={"model": TAG}) \
        .respond_with_json({"modelfile": "", "parameters": "", "template": "{{ .Prompt }}",
                            "details": DETAILS, "model_info": MODEL_INFO})
    server.expect_ordered_request("/api/tags", method="GET").respond_with_json({"models": [{
        "name": TAG, "model": TAG, "modified_at": "2024-09-12T21:17:29.110811Z", "size": SIZE,
        "digest": "a80c4f17acd55265feec403c7aef86be0c25983ab279d83f3bcd3abbcb5b8b72",
        "details": DETAILS}]})


def expect_load(server: HTTPServer) -> None:
    # Ollama's documented preload: empty messages and a keep_alive, with our num_ctx
    server.expect_ordered_request("/api/chat", method="POST", json={
        "model": TAG, "stream": False, "options": {"num_ctx": N_CTX}, "keep_alive": "30m",
        "messages": [], "tools": []}).respond_with_json(
        chat_line("", done=True, done_reason="load"))
    server.expect_ordered_request("/api/ps", method="GET").respond_with_json({"models": [{
        "name": TAG, "model": TAG, "size": 2_000_000_000, "size_vram": 1_500_000_000,
        "digest": "a80c4f17", "details": DETAILS, "expires_at": "2024-06-04T14:38:31Z"}]})


def chat_request(seed: int = 0) -> dict:
    return {"model": TAG, "stream": True,
            "options": {"temperature": 0.0, "top_p": 0.95, "num_predict": 16, "num_ctx": N_CTX,
                        "seed": seed},
            "keep_alive": "30m",
            "messages": [{"role": "system", "content": SYSTEM},
                         {"role": "user", "content": QUESTION}], "tools": []}


def expect_unload(server: HTTPServer) -> None:
    server.expect_ordered_request("/api/chat", method="POST", json={
        "model": TAG, "stream": False, "keep_alive": 0.0, "messages": [], "tools": []}) \
        .respond_with_json(chat_line("", done=True, done_reason="unload"))


def expect_one_good_agent(server: HTTPServer) -> None:
    """The whole exchange of one Ollama agent that answers: describe, load, chat, unload."""
    expect_describe(server)
    expect_load(server)
    # --seed 0: the Ollama agent is the second agent, so its seed is 0 + 1
    server.expect_ordered_request("/api/chat", method="POST", json=chat_request(seed=1)) \
        .respond_with_response(ndjson(*(chat_line(t) for t in STREAMED),
                                      chat_line("", done=True, **FINAL)))
    expect_unload(server)


def write_config(tmp_path: Path, host: str | None, extra: str = "") -> Path:
    """The mixed profile; the Ollama model's ``host:`` key only when ``host`` is given."""
    path = tmp_path / "mixed.yaml"
    host_line = f"\n    host: {host}" if host else ""
    path.write_text(f"""\
models:
  llama-ollama:
    backend: ollama
    source: {{ollama: "{TAG}"}}{host_line}
    n_ctx: {N_CTX}
{extra}
profiles:
  mixed:
    layers:
      - - {{model: smollm2-135m, system: "Be brief."}}
        - {{model: llama-ollama, system: "{SYSTEM}"}}
        - {{model: smollm2-135m, system: "Check for traps."}}
    aggregator: {{model: smollm2-135m}}
""", encoding="utf-8")
    return path


def run_mixed(config: Path, *extra: str):
    return cli("run", QUESTION, "--config", str(config), "--profile", "mixed", "--temperature",
               "0", "--seed", "0", "--max-tokens", "16", "--json", *extra)


def test_mixed_run_ollama_and_llamacpp(httpserver: HTTPServer, tmp_path: Path) -> None:
    expect_one_good_agent(httpserver)

    config = write_config(tmp_path, httpserver.url_for("").rstrip("/"))
    proc = run_mixed(config)
    assert proc.returncode == 0, proc.stderr
    httpserver.check_assertions()  # every request arrived, in order, with the exact JSON
    report = json.loads(proc.stdout)
    agent = next(a for a in report["agents"] if a["model"] == "llama-ollama")
    assert agent["ok"] and agent["answer"] == "9.9 is larger."
    assert (agent["prompt_tokens"], agent["completion_tokens"]) == (26, 3)
    assert agent["prompt_tok_per_s"] == pytest.approx(26 / 0.342546, rel=1e-3)
    assert agent["decode_tok_per_s"] == pytest.approx(3 / 0.06, rel=1e-3)
    assert agent["threads"] == 0  # the daemon's threads are its own
    placed = report["models"]["llama-ollama"]
    assert placed["size_vram_bytes"] < placed["size_bytes"] and placed["partly_on_cpu"]
    others = [a for a in report["agents"] if a["model"] == "smollm2-135m"]
    assert all(a["ok"] for a in others) and report["answer"].strip()
    # the two local agents are one batch, which gets every core: the daemon has its own;
    # the aggregator (smollm2 too) reads their answers along, a third sequence of it
    assert [a["threads"] for a in others if a["layer"] == 1] == [report["cores"]] * 2
    assert [a["batch"] for a in others if a["layer"] == 1] == [3, 3]
    assert report["cores"] == cpu_cores()


def test_partly_on_cpu_is_flagged_in_the_terminal(httpserver: HTTPServer,
                                                  tmp_path: Path) -> None:
    expect_one_good_agent(httpserver)
    proc = cli("run", QUESTION, "--config", str(write_config(tmp_path, httpserver.url_for("")
                                                             .rstrip("/"))),
               "--profile", "mixed", "--temperature", "0", "--seed", "0", "--max-tokens", "16")
    assert proc.returncode == 0, proc.stderr
    assert "warning llama-ollama: Ollama put only 1.4 GiB of 1.86 GiB on the GPU" in proc.stderr


def test_not_pulled_is_one_line_before_anything_loads(httpserver: HTTPServer,
                                                      tmp_path: Path) -> None:
    httpserver.expect_ordered_request("/api/show", method="POST", json={"model": TAG}) \
        .respond_with_json({"error": f"model '{TAG}' not found"}, status=404)
    proc = run_mixed(write_config(tmp_path, httpserver.url_for("").rstrip("/")))
    assert proc.returncode == 2
    line = proc.stderr.strip()
    assert len(line.splitlines()) == 1
    assert f"{TAG} is not pulled in Ollama" in line
    assert "localmoa models pull llama-ollama" in line and f"ollama pull {TAG}" in line


def test_daemon_not_running(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = run_mixed(write_config(tmp_path, f"http://127.0.0.1:{port}"))
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        f"localmoa: error: model 'llama-ollama': Ollama is not running at "
        f"http://127.0.0.1:{port}; start it with `ollama serve` (or set host / OLLAMA_HOST)")


@pytest.mark.parametrize(("response", "fragment"), [
    (ndjson(chat_line("9.9 "), {"error": "an error was encountered while running the model"}),
     "reported an error while generating: an error was encountered while running the model"),
    (Response(json.dumps({"error": "llama runner process has terminated"}), status=500,
              content_type="application/json"),
     "failed while generating (HTTP 500): llama runner process has terminated"),
])
def test_failing_ollama_agent_is_dropped(httpserver: HTTPServer, tmp_path: Path,
                                         response: Response, fragment: str) -> None:
    expect_describe(httpserver)
    expect_load(httpserver)
    httpserver.expect_ordered_request("/api/chat", method="POST", json=chat_request(seed=1)) \
        .respond_with_response(response)
    expect_unload(httpserver)
    proc = run_mixed(write_config(tmp_path, httpserver.url_for("").rstrip("/")))
    assert proc.returncode == 0, proc.stderr
    httpserver.check_assertions()
    report = json.loads(proc.stdout)
    agent = next(a for a in report["agents"] if a["model"] == "llama-ollama")
    assert not agent["ok"] and fragment in agent["error"]
    assert report["layers"][0]["failed"] == 1 and report["answer"].strip()


def test_remote_host_needs_allow_remote(tmp_path: Path) -> None:
    # refused while reading the config: nothing is contacted
    proc = run_mixed(write_config(tmp_path, "http://10.11.12.13:11434"))
    assert proc.returncode == 2
    line = proc.stderr.strip()
    assert "models.llama-ollama" in line and "allow_remote: true" in line
    assert "mixed.yaml:2:" in line


def test_footprint_from_api_show(httpserver: HTTPServer, tmp_path: Path) -> None:
    expect_describe(httpserver)
    proc = cli("plan", "--config", str(write_config(tmp_path, httpserver.url_for("").rstrip("/"))),
               "--profile", "mixed", "--json")
    assert proc.returncode == 0, proc.stderr
    httpserver.check_assertions()
    fp = json.loads(proc.stdout)["footprints"]["llama-ollama"]
    assert fp["backend"] == "ollama" and list(fp["pools_bytes"]) == ["ram"]  # loopback daemon
    assert fp["weights_bytes"] == SIZE
    # KV from /api/show: 16 layers x 8 KV heads x (64 + 64) x 2048 cells x 2 bytes
    assert fp["kv_bytes"] == 16 * 8 * 128 * 2048 * 2
    assert fp["extra_instance_bytes"] == 0  # agents share the daemon's copy


def test_a_remote_daemon_is_its_own_pool() -> None:
    from localmoa.backends.ollama.backend import UNLIMITED, ollama_pool
    from localmoa.backends.ollama.spec import OllamaSource, OllamaSpec
    from localmoa.config import Config, HostSpec
    from localmoa.memory.estimate import Footprint
    from localmoa.memory.probe import probe
    from localmoa.preflight import pool_budgets

    remote = OllamaSpec(backend="ollama", source=OllamaSource(ollama=TAG), allow_remote=True,
                        host="http://gpu-box:11434")
    assert ollama_pool(remote) == "ollama@http://gpu-box:11434"
    assert ollama_pool(OllamaSpec(backend="ollama", source=OllamaSource(ollama=TAG))) == "ram"
    fp = Footprint(model="m", n_ctx=N_CTX, kv_type="f16", weights_bytes=1, kv_bytes=0,
                   compute_bytes=0, overhead_bytes=0, shared_weights_bytes=1,
                   pools={"ollama@http://gpu-box:11434": 1}, local=False)
    resources = probe("1GiB")
    config = Config(models={"m": remote}, profiles={}, default_profile="x")
    assert pool_budgets(config, resources, {"m": fp})["ollama@http://gpu-box:11434"] == UNLIMITED
    config.ollama_hosts["http://gpu-box:11434"] = HostSpec(memory_budget="20GiB")
    budgets = pool_budgets(config, resources, {"m": fp})
    assert budgets == {"ram": 2**30, "ollama@http://gpu-box:11434": 20 * 2**30}


# --- structured output and embeddings, through the backend ------------------------------

ROUTE = {"type": "object", "properties": {"specialist": {"enum": ["math", "writing", "trivia"]}},
         "required": ["specialist"], "additionalProperties": False}
ROUTED = ['{"specialist": ', '"math"}']
TEXTS = ["What is 2 + 2?", "Write a haiku."]


def loaded_model(server: HTTPServer):
    """The backend's model on the test daemon (loaded: Ollama's preload and /api/ps)."""
    from localmoa.backends.ollama.backend import OllamaBackend
    from localmoa.backends.ollama.spec import OllamaSource, OllamaSpec

    expect_load(server)
    spec = OllamaSpec(backend="ollama", source=OllamaSource(ollama=TAG), n_ctx=N_CTX,
                      host=server.url_for("").rstrip("/"))
    return OllamaBackend().load("llama-ollama", spec, None, n_threads=1)


def routed_request(**options: object) -> dict:
    request = chat_request()
    request["options"] = {"temperature": 1.5, "top_p": 0.95, "num_predict": 32,
                          "num_ctx": N_CTX, **options}
    request["format"] = ROUTE  # Ollama's structured outputs: the schema itself
    return request


def test_a_json_schema_goes_in_format(httpserver: HTTPServer) -> None:
    import jsonschema

    from localmoa.backends.base import GenerateOptions
    from localmoa.backends.ollama.backend import OllamaBackend

    assert OllamaBackend.capabilities.constrained_output
    model = loaded_model(httpserver)
    httpserver.expect_ordered_request("/api/chat", method="POST", json=routed_request(seed=3)) \
        .respond_with_response(ndjson(*(chat_line(t) for t in ROUTED),
                                      chat_line("", done=True, **FINAL)))
    # a stop string never goes with a schema: the schema says where the answer ends
    options = GenerateOptions(temperature=1.5, max_tokens=32, seed=3, json_schema=ROUTE,
                              stop=("}",))
    stream = model.chat([{"role": "system", "content": SYSTEM},
                         {"role": "user", "content": QUESTION}], options)
    jsonschema.validate(json.loads(stream.text()), ROUTE)
    httpserver.check_assertions()  # the exact request, format included


def test_a_schema_answer_cut_by_num_predict_is_an_error(httpserver: HTTPServer) -> None:
    from localmoa.backends.base import GenerateOptions
    from localmoa.errors import GenerationError

    model = loaded_model(httpserver)
    httpserver.expect_ordered_request("/api/chat", method="POST", json=routed_request()) \
        .respond_with_response(ndjson(chat_line(ROUTED[0]),
                                      chat_line("", done=True, **{**FINAL,
                                                                 "done_reason": "length"})))
    options = GenerateOptions(temperature=1.5, max_tokens=32, json_schema=ROUTE)
    with pytest.raises(GenerationError) as err:
        model.chat([{"role": "system", "content": SYSTEM},
                    {"role": "user", "content": QUESTION}], options).text()
    assert str(err.value) == ("model 'llama-ollama': the answer reached max_tokens (32) before "
                              "the JSON its schema asks for was complete; raise max_tokens")


def test_embed_is_api_embed(httpserver: HTTPServer) -> None:
    from localmoa.backends.ollama.backend import OllamaBackend

    assert OllamaBackend.capabilities.embeddings
    model = loaded_model(httpserver)
    # Ollama's documented /api/embed: input as a list, embeddings back (already normalised
    # by the daemon; localmoa normalises whatever it gets)
    httpserver.expect_ordered_request("/api/embed", method="POST", json={
        "model": TAG, "input": TEXTS, "options": {"num_ctx": N_CTX}, "keep_alive": "30m"}) \
        .respond_with_json({"model": TAG, "embeddings": [[3.0, 4.0, 0.0], [0.0, 0.0, 2.0]],
                            "total_duration": 14143917, "load_duration": 1019500,
                            "prompt_eval_count": 8})
    assert model.embed(TEXTS) == [[0.6, 0.8, 0.0], [0.0, 0.0, 1.0]]
    httpserver.check_assertions()


def test_a_model_that_does_not_embed(httpserver: HTTPServer) -> None:
    from localmoa.errors import GenerationError

    model = loaded_model(httpserver)
    httpserver.expect_ordered_request("/api/embed", method="POST").respond_with_json(
        {"error": "this model does not support embeddings"}, status=400)
    assert model.embed(TEXTS) is None  # cannot, as the protocol says it
    httpserver.expect_ordered_request("/api/embed", method="POST").respond_with_json(
        {"error": "llama runner process has terminated"}, status=500)
    with pytest.raises(GenerationError, match="^model 'llama-ollama': Ollama at .* failed "
                       "while embedding \\(HTTP 500\\): llama runner process has terminated$"):
        model.embed(TEXTS)
