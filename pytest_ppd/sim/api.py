"""SGLang 0.5.23's /generate contract: request validation and response bodies.

Kept apart from the server so the shapes can be read (and tested) in one
place: which sampling keys exist, which errors are 400, what meta_info holds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

# SamplingParams.__init__ keywords in SGLang 0.5.23 (srt/sampling/sampling_params.py).
SAMPLING_KEYS: dict[str, tuple[type, ...]] = {
    "max_new_tokens": (int,), "stop": (str, list), "stop_token_ids": (list,),
    "stop_regex": (str, list), "temperature": (int, float), "top_p": (int, float),
    "top_k": (int,), "min_p": (int, float), "frequency_penalty": (int, float),
    "presence_penalty": (int, float), "repetition_penalty": (int, float),
    "min_new_tokens": (int,), "n": (int,), "json_schema": (str,), "regex": (str,),
    "ebnf": (str,), "structural_tag": (str,), "ignore_eos": (bool,),
    "skip_special_tokens": (bool,), "spaces_between_special_tokens": (bool,),
    "no_stop_trim": (bool,), "custom_params": (dict,), "stream_interval": (int,),
    "logit_bias": (dict,), "sampling_seed": (int,),
}

# Top-level GenerateReqInput fields whose types the contract checks.
TOP_LEVEL_TYPES: dict[str, tuple[type, ...]] = {
    "text": (str, list), "input_ids": (list,), "sampling_params": (dict, list),
    "rid": (str, list), "stream": (bool,), "return_logprob": (bool, list),
    "bootstrap_host": (str, list), "bootstrap_port": (int, list), "bootstrap_room": (int, list),
}


class ApiError(Exception):
    """A request SGLang answers with an error status."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message, self.status = message, status


def error_body(message: str, status: int = 400) -> dict[str, Any]:
    """SGLang's error JSON: {"error": {"message", "type", "param", "code"}}."""
    kind = "BadRequestError" if status == 400 else "InternalServerError"
    return {"error": {"message": message, "type": kind, "param": None, "code": status}}


@dataclass(frozen=True)
class GenerateRequest:
    """A validated single /generate request."""

    input_ids: list[int]
    max_new_tokens: int
    ignore_eos: bool
    stream: bool
    rid: str | None
    bootstrap_host: str | None
    bootstrap_port: int | None
    bootstrap_room: int | None


def _type_ok(value: Any, types: tuple[type, ...]) -> bool:
    if value is None:
        return True
    if bool in types and isinstance(value, bool):
        return True
    if isinstance(value, bool):  # bool is an int in Python; SGLang's contract rejects it
        return False
    return isinstance(value, types)


def parse_generate(body: Any, *, vocab_size: int, context_length: int, pool_tokens: int) -> GenerateRequest:
    """Validate a /generate body the way SGLang 0.5.23 does; raises ApiError with its message."""
    if not isinstance(body, dict):
        raise ApiError("Invalid request body: expected a JSON object")
    for key, types in TOP_LEVEL_TYPES.items():
        if key in body and not _type_ok(body[key], types):
            raise ApiError(f"Invalid request body: field '{key}' has the wrong type "
                           f"({type(body[key]).__name__})")
    sp = body.get("sampling_params") or {}
    if isinstance(sp, list):
        if len(sp) != 1:
            raise ApiError("The simulated engine serves single requests; send one sampling_params object")
        sp = sp[0]
    for key, value in sp.items():
        if key not in SAMPLING_KEYS:
            raise ApiError(f"Invalid request body: unknown sampling_params key '{key}'")
        if not _type_ok(value, SAMPLING_KEYS[key]):
            raise ApiError(f"Invalid request body: sampling_params '{key}' has the wrong type "
                           f"({type(value).__name__})")
    ids = body.get("input_ids")
    if ids is None and body.get("text") is None:
        raise ApiError("Either text, input_ids or input_embeds should be provided.")
    if ids is None:
        raise ApiError("text input needs a tokenizer; this simulated engine runs with "
                       "--skip-tokenizer-init semantics: send input_ids")
    if ids and isinstance(ids[0], list):
        if len(ids) != 1:
            raise ApiError("The simulated engine serves single requests; send one input_ids list")
        ids = ids[0]
    if len(ids) == 0:
        raise ApiError("input_ids cannot be empty.")
    if not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
        raise ApiError("Invalid request body: input_ids must be a list of integers")
    bad = next((t for t in ids if t < 0 or t >= vocab_size), None)
    if bad is not None:
        raise ApiError(f"The input_ids {bad} contains values greater than the vocab size ({vocab_size}).")
    max_new = sp.get("max_new_tokens", 128)
    if max_new is not None and max_new < 0:
        raise ApiError(f"max_new_tokens must be at least 0, got {max_new}.")
    top_p = sp.get("top_p", 1.0)
    if not 0.0 < top_p <= 1.0:
        raise ApiError(f"top_p must be in (0, 1], got {top_p}.")
    temperature = sp.get("temperature", 1.0)
    if temperature < 0.0:
        raise ApiError(f"temperature must be non-negative, got {temperature}.")
    max_req_input_len = min(context_length - 1, pool_tokens - 1)
    if len(ids) >= max_req_input_len:
        raise ApiError(f"The input ({len(ids)} tokens) is longer than the model's context length "
                       f"({context_length} tokens).")
    max_new = max_new if max_new is not None else 128
    if len(ids) + max_new > context_length:
        raise ApiError(f"Requested token count exceeds the model's maximum context length of "
                       f"{context_length} tokens. You requested a total of {len(ids) + max_new} tokens: "
                       f"{len(ids)} tokens from the input messages and {max_new} tokens for the completion. "
                       "Please reduce the number of tokens in the input messages or the completion to fit "
                       "within the limit.")
    room = body.get("bootstrap_room")
    if isinstance(room, list):
        room = room[0] if room else None
    host, port = body.get("bootstrap_host"), body.get("bootstrap_port")
    return GenerateRequest(
        input_ids=list(ids), max_new_tokens=max_new, ignore_eos=bool(sp.get("ignore_eos", False)),
        stream=bool(body.get("stream", False)), rid=body.get("rid") if isinstance(body.get("rid"), str) else None,
        bootstrap_host=host[0] if isinstance(host, list) else host,
        bootstrap_port=port[0] if isinstance(port, list) else port, bootstrap_room=room,
    )


def realtime(perf_s: float) -> float:
    """A time.perf_counter() value as a Unix time stamp (SGLang's convert_time_to_realtime)."""
    return time.time() - (time.perf_counter() - perf_s)
