"""SGLang 0.5.23's OpenAI-compatible contract (/v1/completions, /v1/chat/completions): request
checks and the bodies it answers with, as in srt/entrypoints/openai/ (protocol.py, serving_*.py).

    req = parse_completion({"prompt": "hi", "max_tokens": 4, "stream": True})
    req.generate_body()["sampling_params"]["max_new_tokens"]      # 4

Errors keep SGLang's shapes: a body that fails its pydantic model is HTTP 400 with the pydantic
errors as the message and type "Bad Request"; a request the handler refuses is 400 "BadRequestError";
both as {"object": "error", "message", "type", "param": null, "code"}. The pydantic messages are
those of the checks the sim makes (types of the common fields, required fields), not every one.

The sim serves single requests: n > 1 or several prompts in one request are refused (400), logprobs
come back null, stop strings never match (the generated ids are arbitrary), so finish_reason is "length".
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable

from pytest_ppd.sim.tokenizer import chat_text_parts

GENERIC_ROLES = ("system", "assistant", "tool", "function", "developer", "latest_reminder", "root")  # any case
WEIGHT_VERSION = {"weight_version": "default"}


class OpenAIError(Exception):
    """A request SGLang answers with an error status before any token: (status, body)."""

    def __init__(self, message: str, err_type: str = "BadRequestError", status: int = 400) -> None:
        super().__init__(message)
        self.status, self.body = status, error_body(message, err_type, status)


def error_body(message: str, err_type: str = "BadRequestError", status: int = 400) -> dict[str, Any]:
    """serving_base.create_error_response: the ErrorResponse model, dumped."""
    return {"object": "error", "message": message, "type": err_type, "param": None, "code": status}


def validation_error(errors: list[dict[str, Any]]) -> OpenAIError:
    """http_server's RequestValidationError handler: 400, the error list as the message."""
    return OpenAIError(str(errors), "Bad Request", 400)


def dumps(obj: Any) -> str:
    """JSON as pydantic and msgspec write it: compact, UTF-8 unescaped."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def sse(obj: Any) -> bytes:
    return b"data: " + dumps(obj).encode() + b"\n\n"


# -- request checks (pydantic's lax mode, for the fields the sim reads) -----------------------------
_MESSAGES = {"int": "Input should be a valid integer", "float": "Input should be a valid number",
             "bool": "Input should be a valid boolean", "string": "Input should be a valid string"}
_PARSE_TAILS = {"int": ", unable to parse string as an integer", "float": ", unable to parse string as a number",
                "bool": ", unable to interpret input"}
_TRUE, _FALSE = ("1", "on", "t", "true", "y", "yes"), ("0", "off", "f", "false", "n", "no")


def _coerce(kind: str, v: Any) -> Any:
    """v as pydantic's lax mode reads it for a field of this kind, or ValueError."""
    if kind == "string":
        if isinstance(v, str):
            return v
    elif kind == "bool":
        if isinstance(v, bool):
            return v
        if isinstance(v, (int, float)) and v in (0, 1):
            return bool(v)
        if isinstance(v, str) and v.lower() in _TRUE + _FALSE:
            return v.lower() in _TRUE
    elif isinstance(v, str):
        return (int if kind == "int" else float)(v.strip())
    elif kind == "int" and isinstance(v, (int, float)) and float(v).is_integer():
        return int(v)
    elif kind == "float" and isinstance(v, (int, float)):
        return float(v)
    raise TypeError


def _check_fields(body: dict[str, Any], kinds: dict[str, str]) -> dict[str, Any]:
    """The typed fields of body, coerced; every failure as one pydantic error."""
    out, errors = {}, []
    for key, kind in kinds.items():
        v = body.get(key)
        if v is None:
            continue
        try:
            out[key] = _coerce(kind, v)
        except (TypeError, ValueError) as exc:
            parsing = isinstance(v, str) and isinstance(exc, ValueError)
            errors.append({"type": f"{kind}_{'parsing' if parsing else 'type'}", "loc": ("body", key),
                           "msg": _MESSAGES[kind] + (_PARSE_TAILS[kind] if parsing else ""), "input": v})
    if errors:
        raise validation_error(errors)
    return out


def _check_object(body: Any, required: str) -> None:
    if not isinstance(body, dict):
        raise validation_error([{"type": "model_attributes_type", "loc": ("body",),
                                 "msg": "Input should be a valid dictionary or object to extract fields from",
                                 "input": body}])
    if required not in body:
        raise validation_error([{"type": "missing", "loc": ("body", required), "msg": "Field required",
                                 "input": body}])


def _stream_options(body: dict[str, Any]) -> tuple[bool, bool]:
    """utils.should_include_usage: (include_usage, continuous_usage_stats)."""
    opts = body.get("stream_options")
    if opts is None:
        return False, False
    if not isinstance(opts, dict):
        raise validation_error([{"type": "model_attributes_type", "loc": ("body", "stream_options"),
                                 "msg": "Input should be a valid dictionary or object to extract fields from",
                                 "input": opts}])
    flags = _check_fields(opts, {"include_usage": "bool", "continuous_usage_stats": "bool"})
    return bool(flags.get("include_usage")), bool(flags.get("continuous_usage_stats"))


COMMON_FIELDS = {"model": "string", "n": "int", "stream": "bool", "temperature": "float", "top_p": "float",
                 "top_k": "int", "min_tokens": "int", "ignore_eos": "bool", "seed": "int", "rid": "string"}


@dataclass(frozen=True)
class OpenAIRequest:
    """One validated /v1/completions or /v1/chat/completions request."""

    kind: str  # "completion" | "chat"
    model: str
    prompt: str | list[int]  # chat: the rendered template
    max_new_tokens: int | None
    stream: bool = False
    include_usage: bool = False
    continuous_usage: bool = False
    echo: bool = False
    sampling: dict[str, Any] = field(default_factory=dict)
    routing: dict[str, Any] = field(default_factory=dict)  # bootstrap_* the P/D router adds, rid

    def generate_body(self) -> dict[str, Any]:
        """The native /generate body this request becomes (GenerateReqInput)."""
        prompt_key = "text" if isinstance(self.prompt, str) else "input_ids"
        sp = {"max_new_tokens": self.max_new_tokens, **self.sampling}
        return {prompt_key: self.prompt, "sampling_params": {k: v for k, v in sp.items() if v is not None},
                "stream": self.stream, **self.routing}


def _common(body: dict[str, Any], kinds: dict[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
    typed = _check_fields(body, {**COMMON_FIELDS, **kinds})
    if typed.get("n", 1) != 1:
        raise OpenAIError("The simulated engine serves single requests; send n=1")
    sampling = {k: typed[k] for k in ("temperature", "top_p", "ignore_eos") if k in typed}
    routing = {k: body[k] for k in ("bootstrap_host", "bootstrap_port", "bootstrap_room") if body.get(k) is not None}
    if "rid" in typed:
        routing["rid"] = typed["rid"]
    return typed, {"sampling": sampling, "routing": routing}


def parse_completion(body: Any) -> OpenAIRequest:
    """CompletionRequest, then OpenAIServingCompletion._validate_request."""
    _check_object(body, "prompt")
    typed, rest = _common(body, {"max_tokens": "int", "echo": "bool"})
    max_tokens = typed.get("max_tokens", 16)
    if max_tokens <= 0:
        raise validation_error([{"type": "value_error", "loc": ("body", "max_tokens"),
                                 "msg": "Value error, max_tokens must be positive", "input": body["max_tokens"],
                                 "ctx": {"error": ValueError("max_tokens must be positive")}}])
    prompt = body["prompt"]
    if isinstance(prompt, list) and prompt and all(isinstance(p, (str, list)) for p in prompt):
        if len(prompt) > 1:
            raise OpenAIError("The simulated engine serves single requests; send one prompt")
        prompt = prompt[0]
    if not (isinstance(prompt, str) or (isinstance(prompt, list) and all(isinstance(t, int) for t in prompt))):
        raise validation_error([{"type": "string_type", "loc": ("body", "prompt", "str"),
                                 "msg": "Input should be a valid string", "input": body["prompt"]}])
    if not prompt:
        raise OpenAIError("Prompt cannot be empty")
    include, continuous = _stream_options(body)
    return OpenAIRequest("completion", typed.get("model", "default"), prompt, max_tokens,
                         stream=typed.get("stream", False), include_usage=include, continuous_usage=continuous,
                         echo=typed.get("echo", False), **rest)


def parse_chat(body: Any, template: Callable[[list[dict[str, Any]]], str], context_length: int) -> OpenAIRequest:
    """ChatCompletionRequest, then OpenAIServingChat._validate_request; template renders the messages."""
    _check_object(body, "messages")
    typed, rest = _common(body, {"max_tokens": "int", "max_completion_tokens": "int"})
    messages = body["messages"]
    if not isinstance(messages, list):
        raise validation_error([{"type": "list_type", "loc": ("body", "messages"),
                                 "msg": "Input should be a valid list", "input": messages}])
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m:
            raise validation_error([{"type": "missing", "loc": ("body", "messages", i, "role"),
                                     "msg": "Field required", "input": m}])
        role = m["role"]
        if role != "user" and not (isinstance(role, str) and role.lower() in GENERIC_ROLES):
            allowed = ", ".join(repr(r) for r in GENERIC_ROLES)
            where = ("body", "messages", i)
            raise validation_error([  # pydantic tries both members of the message union
                {"type": "value_error", "loc": (*where, "ChatCompletionMessageGenericParam", "role"),
                 "msg": f"Value error, 'role' must be one of {allowed} (case-insensitive).", "input": role},
                {"type": "literal_error", "loc": (*where, "ChatCompletionMessageUserParam", "role"),
                 "msg": "Input should be 'user'", "input": role, "ctx": {"expected": "'user'"}}])
        content = m.get("content")
        if isinstance(content, list) and any(not isinstance(p, dict) or p.get("type") != "text" for p in content):
            raise OpenAIError("The simulated engine serves text: message content parts must be "
                              "{\"type\": \"text\", \"text\": ...}")
        if content is not None and not isinstance(content, (str, list)):
            raise validation_error([{"type": "string_type", "loc": ("body", "messages", i, "content", "str"),
                                     "msg": "Input should be a valid string", "input": content}])
    if not messages:
        raise OpenAIError("Messages cannot be empty.")
    max_out = typed.get("max_completion_tokens") or typed.get("max_tokens")
    if max_out and max_out > context_length:
        raise OpenAIError(f"max_completion_tokens is too large: {max_out}."
                          f"This model supports at most {context_length} completion tokens.")
    include, continuous = _stream_options(body)
    texts = [{**m, "role": m["role"].lower(), "content": chat_text_parts(m.get("content"))} for m in messages]
    return OpenAIRequest("chat", typed.get("model", "default"), template(texts), max_out or None,
                         stream=typed.get("stream", False), include_usage=include, continuous_usage=continuous,
                         **rest)


# -- response bodies ---------------------------------------------------------------------------
def usage(prompt: int, completion: int, cached: int | None, *, drop_none: bool = False) -> dict[str, Any]:
    """UsageInfo; cached (the prompt's tokens found in the radix cache) only with --enable-cache-report."""
    out = {"prompt_tokens": prompt, "total_tokens": prompt + completion, "completion_tokens": completion,
           "prompt_tokens_details": None if cached is None else {"cached_tokens": cached},
           "reasoning_tokens": 0, "completion_tokens_details": None}
    return {k: v for k, v in out.items() if v is not None} if drop_none else out


def completion_chunk(rid: str, created: int, model: str, text: str, finish: str | None,
                     use: dict[str, Any] | None = None) -> dict[str, Any]:
    """CompletionStreamResponse.model_dump_json(): one streamed piece of text."""
    return {"id": rid, "object": "text_completion", "created": created, "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish, "matched_stop": None}],
            "usage": use}


def completion_usage_chunk(rid: str, created: int, model: str, use: dict[str, Any]) -> dict[str, Any]:
    """The final usage chunk of a completion stream (dumped with exclude_none)."""
    return {"id": rid, "object": "text_completion", "created": created, "model": model, "choices": [],
            "usage": {k: v for k, v in use.items() if v is not None}}


def completion_body(rid: str, created: int, model: str, text: str, finish: str | None,
                    use: dict[str, Any]) -> dict[str, Any]:
    """CompletionResponse: the non-streaming answer."""
    return {**completion_chunk(rid, created, model, text, finish, use), "metadata": WEIGHT_VERSION}


def chat_chunk(rid: str, created: int, model: str, delta: dict[str, Any], finish: str | None = None,
               use: dict[str, Any] | None = None) -> dict[str, Any]:
    """sse_utils.build_sse_content (msgspec, omit_defaults): reasoning_content always, usage when set."""
    out: dict[str, Any] = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                           "choices": [{"index": 0, "delta": {"reasoning_content": None, **delta}, "logprobs": None,
                                        "finish_reason": finish, "matched_stop": None}]}
    if use is not None:
        out["usage"] = use
    return out


def chat_usage_chunk(rid: str, created: int, model: str, use: dict[str, Any]) -> dict[str, Any]:
    """ChatCompletionStreamResponse with empty choices and the usage (model_dump_json, nulls kept)."""
    return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [],
            "usage": use}


def chat_body(rid: str, created: int, model: str, text: str, finish: str | None,
              use: dict[str, Any]) -> dict[str, Any]:
    """ChatCompletionResponse: the non-streaming answer."""
    return {"id": rid, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "reasoning_content": None},
                         "logprobs": None, "finish_reason": finish, "matched_stop": None}],
            "usage": use, "metadata": WEIGHT_VERSION}
