"""Text mode and the OpenAI-compatible endpoints of the sim, as SGLang 0.5.23 serves them."""

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import uuid

import httpx
import pytest

from pytest_ppd.servers.topology import TopologyConfig, plan, start_topology
from pytest_ppd.sim.openai import OpenAIError, parse_chat, parse_completion
from pytest_ppd.sim.tokenizer import SimTokenizer, standin_chat_template
from tests.test_serve_e2e import _free_port, _ppd

VOCAB = 128256  # Llama-3.1-8B, the default model


# -- no server -----------------------------------------------------------------------------------
def test_standin_tokenizer_round_trips_and_grows_per_token():
    """Text encodes to ids that decode back to it; every generated id adds text, and text only grows."""
    tok = SimTokenizer(None, VOCAB)
    for text in ("hello world", "<|user|>\nhi\n", "naive <42> end", " <999999999>"):
        assert tok.decode(tok.encode(text)) == text
    assert tok.encode(tok.decode(tok.encode("naïve"))) == tok.encode("naïve")  # non-ASCII bytes show as " <id>"
    out = [5, 70000, 1065, 1200, 128255]
    texts = [tok.decode(out[:k]) for k in range(len(out) + 1)]
    assert all(texts[k + 1].startswith(texts[k]) and len(texts[k + 1]) > len(texts[k]) for k in range(len(out)))
    assert tok.encode(tok.decode(out)) == out  # an assistant turn re-sent as a prompt is the same tokens
    assert max(tok.encode("any text é")) < VOCAB and tok.decode_more(out, 2, texts[2]) == texts[-1]


def test_named_tokenizer_that_cannot_load_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no such directory"):
        SimTokenizer(str(tmp_path / "absent"), VOCAB)
    if importlib.util.find_spec("tokenizers") is None and importlib.util.find_spec("transformers") is None:
        with pytest.raises(ValueError, match="pip install tokenizers"):
            SimTokenizer(str(tmp_path), VOCAB)


@pytest.mark.parametrize("body,kind,needle", [
    ({"max_tokens": 3}, "Bad Request", "'type': 'missing', 'loc': ('body', 'prompt')"),
    ({"prompt": "x", "max_tokens": 0}, "Bad Request", "Value error, max_tokens must be positive"),
    ({"prompt": "x", "max_tokens": "lots"}, "Bad Request", "'type': 'int_parsing'"),
    ({"prompt": "x", "stream": "maybe"}, "Bad Request", "Input should be a valid boolean"),
    ({"prompt": ""}, "BadRequestError", "Prompt cannot be empty"),
    ({"prompt": ["a", "b"]}, "BadRequestError", "serves single requests"),
    ({"prompt": "x", "n": 2}, "BadRequestError", "serves single requests"),
])
def test_completion_request_errors(body, kind, needle):
    with pytest.raises(OpenAIError) as info:
        parse_completion(body)
    assert info.value.status == 400 and info.value.body["type"] == kind and info.value.body["code"] == 400
    assert needle in info.value.body["message"] and info.value.body["object"] == "error"


def test_completion_request_becomes_a_generate_body():
    req = parse_completion({"model": "m", "prompt": [[1, 2, 3]], "max_tokens": "4", "temperature": 0,
                            "stream": True, "bootstrap_room": 7, "stream_options": {"include_usage": True}})
    body = req.generate_body()
    assert body["input_ids"] == [1, 2, 3] and body["bootstrap_room"] == 7 and req.include_usage
    assert body["sampling_params"] == {"max_new_tokens": 4, "temperature": 0.0}
    assert parse_completion({"prompt": "x"}).max_new_tokens == 16  # OpenAI's default


def test_chat_request_checks_and_renders_role_tags():
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    req = parse_chat({"messages": msgs, "max_completion_tokens": 5}, standin_chat_template, 8192)
    assert req.prompt == "<|system|>\nbe brief\n<|user|>\nhi\n<|assistant|>\n" and req.max_new_tokens == 5
    for body, needle in [({"messages": []}, "Messages cannot be empty."),
                         ({"messages": [{"role": "robot", "content": "x"}]}, "'role' must be one of 'system'"),
                         ({"messages": [{"content": "x"}]}, "'type': 'missing'"),
                         ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 9000},
                          "max_completion_tokens is too large: 9000.This model supports at most 8192")]:
        with pytest.raises(OpenAIError) as info:
            parse_chat(body, standin_chat_template, 8192)
        assert needle in info.value.body["message"]


def test_text_mode_is_ppd_serve_only(tmp_path):
    """The grid's engines keep --skip-tokenizer-init; text mode drops it and reports cached tokens."""
    def _argv(cfg, tmp_path):
        return [a for argv in plan(cfg, tmp_path).argvs() for a in argv]
    grid = _argv(TopologyConfig(kind="pd"), tmp_path)
    assert grid.count("--skip-tokenizer-init") == 2 and "--enable-cache-report" not in grid
    text = _argv(TopologyConfig(kind="pd", text=True), tmp_path)
    assert "--skip-tokenizer-init" not in text and text.count("--enable-cache-report") == 2
    # SGLang cannot tokenize with a built-in model's config.json alone: it stays on input_ids ...
    assert "--skip-tokenizer-init" in _argv(TopologyConfig(backend="sglang", kind="colocated", text=True), tmp_path)
    # ... unless a tokenizer is named.
    tok = tmp_path / "tok"
    tok.mkdir()
    named = _argv(TopologyConfig(backend="sglang", kind="colocated", text=True, tokenizer=str(tok)), tmp_path)
    assert "--skip-tokenizer-init" not in named and named[named.index("--tokenizer-path") + 1] == str(tok.resolve())


def test_missing_tokenizer_dir_is_one_line(tmp_path):
    proc = _ppd("serve", "--dry-run", "--workdir", str(tmp_path), "--tokenizer", str(tmp_path / "nope"))
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and "--tokenizer" in err and len(err.strip().splitlines()) == 1


# -- against a served engine --------------------------------------------------------------------
def events(text):
    """The data: payloads of an SSE body, JSON-decoded ([DONE] kept as the string)."""
    out = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
    return [e if e == "[DONE]" else json.loads(e) for e in out]


def post(url, path, body):
    return httpx.post(url + path, json=body, timeout=60, trust_env=False)


def unique(words=40):
    return f"{uuid.uuid4().hex} " + "lorem ipsum " * words


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    with start_topology(TopologyConfig(kind="colocated", text=True), tmp_path_factory.mktemp("oai")) as topo:
        yield topo.colocated


@pytest.mark.slow
def test_generate_streams_cumulative_text(url):
    """/generate with text: every chunk's text extends the previous one, one token at a time."""
    chunks = events(post(url, "/generate", {"text": unique(), "sampling_params": {"max_new_tokens": 6},
                                            "stream": True}).text)
    assert chunks[-1] == "[DONE]" and len(chunks) == 7
    texts = [c["text"] for c in chunks[:-1]]
    assert texts[0] and all(b.startswith(a) and len(b) > len(a) for a, b in zip(texts, texts[1:]))
    assert [len(c["output_ids"]) for c in chunks[:-1]] == [1, 2, 3, 4, 5, 6]
    assert list(chunks[0]) == ["text", "output_ids", "meta_info"]


@pytest.mark.slow
def test_completion_stream_chunks_then_usage_then_done(url):
    body = {"model": "m", "prompt": unique(), "max_tokens": 5, "stream": True,
            "stream_options": {"include_usage": True}}
    resp = post(url, "/v1/completions", body)
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
    chunks = events(resp.text)
    assert chunks[-1] == "[DONE]" and len(chunks) == 7
    tokens, use = chunks[:5], chunks[5]
    assert all(c["object"] == "text_completion" and c["model"] == "m" and c["usage"] is None for c in tokens)
    assert all(c["choices"][0]["text"] for c in tokens)
    assert [c["choices"][0]["finish_reason"] for c in tokens] == [None] * 4 + ["length"]
    assert len({c["id"] for c in chunks[:-1]}) == 1
    assert use["choices"] == [] and use["usage"]["completion_tokens"] == 5
    assert use["usage"]["total_tokens"] == use["usage"]["prompt_tokens"] + 5
    assert "completion_tokens_details" not in use["usage"]  # the final chunk is dumped with exclude_none
    plain = events(post(url, "/v1/completions", {**body, "stream_options": None}).text)
    assert len(plain) == 6 and all(c == "[DONE]" or c["choices"] for c in plain)


@pytest.mark.slow
def test_repeated_prompt_shows_cached_tokens(url):
    """--enable-cache-report: usage.prompt_tokens_details.cached_tokens is 0, then the cached prefix."""
    # Byte-level ids: any earlier prompt of this server shares a first byte with a new one 1 time in 16 (its
    # first hex digit), and one cached token is a cached token: start from an empty cache.
    assert httpx.post(url + "/flush_cache", timeout=60, trust_env=False).status_code == 200
    body = {"model": "m", "prompt": unique(200), "max_tokens": 2}
    first, second = post(url, "/v1/completions", body).json(), post(url, "/v1/completions", body).json()
    assert first["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}
    prompt = second["usage"]["prompt_tokens"]
    assert prompt > 200 and prompt - 16 <= second["usage"]["prompt_tokens_details"]["cached_tokens"] < prompt
    assert second["object"] == "text_completion" and second["metadata"] == {"weight_version": "default"}
    assert second["choices"][0]["finish_reason"] == "length" and second["choices"][0]["text"]


@pytest.mark.slow
def test_chat_stream_role_content_finish_usage_done(url):
    body = {"model": "m", "messages": [{"role": "user", "content": unique()}], "max_completion_tokens": 3,
            "stream": True, "stream_options": {"include_usage": True}}
    chunks = events(post(url, "/v1/chat/completions", body).text)
    assert chunks[-1] == "[DONE]" and len(chunks) == 7
    deltas = [c["choices"][0]["delta"] for c in chunks[:5]]
    assert deltas[0] == {"reasoning_content": None, "role": "assistant", "content": ""}
    assert all(set(d) == {"reasoning_content", "content"} and d["content"] for d in deltas[1:4])
    assert deltas[4] == {"reasoning_content": None} and chunks[4]["choices"][0]["finish_reason"] == "length"
    assert all("usage" not in c for c in chunks[:5]) and chunks[5]["choices"] == []
    assert chunks[5]["usage"]["completion_tokens"] == 3
    assert "cached_tokens" in chunks[5]["usage"]["prompt_tokens_details"]
    whole = post(url, "/v1/chat/completions", {**body, "stream": False}).json()
    assert whole["object"] == "chat.completion" and whole["choices"][0]["message"]["role"] == "assistant"
    assert whole["choices"][0]["message"]["content"] == "".join(d.get("content", "") for d in deltas)


@pytest.mark.slow
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("path,body,kind,needle", [
    ("/v1/completions", {"max_tokens": 3}, "Bad Request", "Field required"),
    ("/v1/completions", {"prompt": "x", "max_tokens": -1}, "Bad Request", "max_tokens must be positive"),
    ("/v1/completions", {"prompt": ""}, "BadRequestError", "Prompt cannot be empty"),
    ("/v1/completions", {"prompt": [5] * 131072}, "BadRequestError",
     "The input (131072 tokens) is longer than the model's context length (131072 tokens)."),
    ("/v1/completions", {"prompt": [1, 2, 200000]}, "BadRequestError", "out-of-vocabulary token id 200000"),
    ("/v1/chat/completions", {"messages": []}, "BadRequestError", "Messages cannot be empty."),
])
def test_errors_are_400_json_before_any_stream(url, path, body, kind, needle, stream):
    """Refused requests get SGLang's ErrorResponse with HTTP 400, streaming or not (no SSE is started)."""
    resp = post(url, path, {**body, "stream": stream})
    assert resp.status_code == 400 and resp.headers["content-type"].startswith("application/json")
    err = resp.json()
    assert set(err) == {"object", "message", "type", "param", "code"}
    assert err["object"] == "error" and err["type"] == kind and err["code"] == 400 and needle in err["message"]


@pytest.mark.slow
def test_content_type_and_json_errors(url):
    bad = httpx.post(url + "/v1/completions", content=b'{"prompt": "x"}', trust_env=False)
    assert bad.status_code == 400 and "Only 'application/json' is allowed" in bad.json()["message"]
    bad = httpx.post(url + "/v1/chat/completions", content=b"{nope", trust_env=False,
                     headers={"Content-Type": "application/json"})
    assert bad.status_code == 400 and "JSON decode error" in bad.json()["message"]


@pytest.mark.slow
def test_models(url):
    listed = httpx.get(url + "/v1/models", trust_env=False).json()
    card = listed["data"][0]
    assert listed["object"] == "list" and card["object"] == "model" and card["owned_by"] == "sglang"
    assert card["parent"] is None and card["max_model_len"] == 131072
    one = httpx.get(url + "/v1/models/" + card["id"], trust_env=False)
    assert one.status_code == 200 and one.json()["id"] == card["id"]
    missing = httpx.get(url + "/v1/models/gpt-5", trust_env=False)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


# -- `ppd serve` (P/D, through the real router) ------------------------------------------------------
@contextlib.contextmanager
def ppd_serve(workdir, *flags):
    """`ppd serve` (P/D behind the router) as a user starts it; yields its URLs, SIGTERM on exit."""
    with _ppd("serve", "--port", str(_free_port()), "--workdir", str(workdir), *flags) as proc:
        try:
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            yield json.loads(line)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    with ppd_serve(tmp_path_factory.mktemp("serve")) as urls:
        yield urls


@pytest.mark.slow
def test_streamed_completion_through_the_pd_router(served):
    """An OpenAI streamed completion via sglang-router P/D: tokens, usage, [DONE]; a repeat hits the cache."""
    body = {"model": "m", "prompt": unique(100), "max_tokens": 4, "stream": True,
            "stream_options": {"include_usage": True}}
    for attempt in range(2):
        resp = post(served["router"], "/v1/completions", body)
        chunks = events(resp.text)
        assert resp.status_code == 200 and chunks[-1] == "[DONE]" and len(chunks) == 6
        assert all(c["choices"][0]["text"] for c in chunks[:4])
        cached = chunks[4]["usage"]["prompt_tokens_details"]["cached_tokens"]
        assert (cached == 0) if attempt == 0 else (cached > 100)
    chat = events(post(served["router"], "/v1/chat/completions", {
        "model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "stream": True}).text)
    assert chat[-1] == "[DONE]" and chat[1]["choices"][0]["delta"]["content"]
    gen = post(served["router"], "/generate", {"text": unique(), "sampling_params": {"max_new_tokens": 2}})
    assert gen.json()["text"] and len(gen.json()["output_ids"]) == 2


# -- SGLang's own client -----------------------------------------------------------------------------
def _word_tokenizer(directory):
    """A Hugging Face tokenizer covering the model's whole vocabulary ("t<id>" words), so both sides agree."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"[UNK]": 0, **{f"t{i}": i for i in range(1, VOCAB)}}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    directory.mkdir()
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "[UNK]", "model_max_length": 131072}))
    return directory


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("sglang") is None,
                    reason="SGLang's bench_serving is not installed (pip install 'pytest-ppd[sglang]')")
@pytest.mark.parametrize("backend", ["sglang", "sglang-oai"])
def test_bench_serving_measures_ttft_against_ppd_serve(backend, tmp_path):
    """SGLang 0.5.23's bench_serving through the P/D router: every request completes with TTFT and ITL > 0."""
    tok, out = _word_tokenizer(tmp_path / "tok"), tmp_path / "bench.jsonl"
    with ppd_serve(tmp_path / "w", "--tokenizer", str(tok)) as urls:
        run = subprocess.run(
            [sys.executable, "-m", "sglang.benchmark.serving", "--backend", backend, "--base-url", urls["router"],
             "--dataset-name", "random-ids", "--random-input-len", "64", "--random-output-len", "8",
             "--random-range-ratio", "1.0", "--num-prompts", "8", "--model", str(tok), "--tokenizer", str(tok),
             "--output-file", str(out), "--disable-tqdm"],
            capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(out.read_text().splitlines()[-1])
    assert result["completed"] == 8 and result["mean_ttft_ms"] > 0 and result["mean_itl_ms"] > 0
