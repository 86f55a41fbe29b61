"""SGLang 0.5.23's /generate contract: request validation and response bodies.

Kept apart from the server so the shapes can be read (and tested) in one
place: which sampling keys exist, which errors are 400, what meta_info holds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

class ContractError(ValueError):
    """The body violates SGLang's JSON contract (api/v1/api_types.py): HTTP 400 {"error": "<text>"}."""


def _unexpected(v: Any) -> str:
    """serde's `Unexpected` display, as SGLang 0.5.23 prints it."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return f"boolean `{'true' if v else 'false'}`"
    if isinstance(v, int):
        return f"integer `{v}`"
    if isinstance(v, float):
        return f"floating point `{v}`"
    if isinstance(v, str):
        return f'string "{v}"'
    names: dict[type, str] = {list: "sequence", dict: "map"}
    return names.get(type(v), type(v).__name__)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _expect(ok: bool, v: Any, expected: str) -> None:
    if not ok:
        raise ContractError(f"invalid type: {_unexpected(v)}, expected {expected}")


def _check_int(v: Any) -> None:
    _expect(_is_int(v), v, "i64")


def _check_float(v: Any) -> None:
    _expect((isinstance(v, (int, float)) and not isinstance(v, bool)), v, "f64")


def _check_str(v: Any) -> None:
    _expect(isinstance(v, str), v, "a string")


def _check_bool(v: Any) -> None:
    _expect(isinstance(v, bool), v, "a boolean")


def _check_str_list(v: Any) -> None:
    if isinstance(v, list):
        for e in v:
            _check_str(e)
    else:
        _expect(isinstance(v, str), v, "a value or an array of values for StringOrList")


def _check_int_list(v: Any) -> None:
    _expect(isinstance(v, list), v, "a sequence")
    # Fast path for the common case (prompts of many thousand ids): one C-level pass over the types.
    if set(map(type, v)) <= {int}:
        return
    for e in v:
        _check_int(e)


# SamplingParams of SGLang 0.5.23's contract, in its field order, with each value's check.
SAMPLING_FIELDS: dict[str, Any] = {
    "max_new_tokens": _check_int, "stop": _check_str_list, "stop_token_ids": _check_int_list,
    "stop_regex": _check_str_list, "temperature": _check_float, "top_p": _check_float, "top_k": _check_int,
    "min_p": _check_float, "frequency_penalty": _check_float, "presence_penalty": _check_float,
    "repetition_penalty": _check_float, "min_new_tokens": _check_int, "n": _check_int,
    "json_schema": _check_str, "regex": _check_str, "ebnf": _check_str, "structural_tag": _check_str,
    "ignore_eos": _check_bool, "skip_special_tokens": _check_bool, "spaces_between_special_tokens": _check_bool,
    "no_stop_trim": _check_bool, "stream_interval": _check_int,
    "logit_bias": lambda v: _expect(isinstance(v, dict), v, "a map"), "sampling_seed": _check_int,
    "custom_params": lambda v: None, "beam_width": _check_int,
    "watermark": lambda v: _expect(isinstance(v, dict), v, "struct WatermarkRequestConfig"),
    "choice": lambda v: _expect(isinstance(v, list), v, "a sequence"),
}


def _check_sampling(sp: Any) -> None:
    _expect(isinstance(sp, dict), sp, "struct SamplingParams")
    for key, value in sp.items():
        if key not in SAMPLING_FIELDS:
            listed = ", ".join(f"`{f}`" for f in SAMPLING_FIELDS)
            raise ContractError(f"unknown field `{key}`, expected one of {listed}")
        if value is not None:
            SAMPLING_FIELDS[key](value)


def _check_sampling_params(v: Any) -> None:
    """One SamplingParams, or a list of them (a batch)."""
    for sp in v if isinstance(v, list) else [v]:
        _check_sampling(sp)


def _check_token_ids(v: Any) -> None:
    _expect(isinstance(v, list), v, "a value or an array of values for TokenIdsOrList")
    rows = v if v and isinstance(v[0], list) else [v]
    for row in rows:
        _check_int_list(row)


def _either(check: Any, name: str) -> Any:
    def run(v: Any) -> None:
        if isinstance(v, list):
            for e in v:
                if e is not None:
                    check(e)
        else:
            try:
                check(v)
            except ContractError:
                raise ContractError(f"invalid type: {_unexpected(v)}, expected a value or an array of "
                                    f"values for {name}") from None
    return run


# Top-level GenerateRequest fields the contract types (unknown top-level keys pass).
TOP_LEVEL_FIELDS: dict[str, Any] = {
    "rid": _either(_check_str, "StringOrList"), "text": _either(_check_str, "StringOrList"),
    "input_ids": _check_token_ids, "stream": _check_bool,
    "sampling_params": _check_sampling_params,
    "return_logprob": _either(_check_bool, "BoolOrList"),
    "bootstrap_host": _either(_check_str, "OptionalStringOrList"),
    "bootstrap_port": _either(_check_int, "OptionalInt64OrList"),
    "bootstrap_room": _either(_check_int, "OptionalInt64OrList"),
}


def contract_error(body: Any) -> str | None:
    """SGLang's schema check of a parsed /generate body: the error text, or None."""
    try:
        _expect(isinstance(body, dict), body, "struct GenerateRequest")
        for key, check in TOP_LEVEL_FIELDS.items():
            if body.get(key) is not None:
                check(body[key])
    except ContractError as exc:
        return str(exc)
    return None


class ApiError(Exception):
    """A request SGLang answers with an error status (a ValueError after the contract check)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message, self.status = message, status


def error_body(message: str, status: int = 400) -> dict[str, Any]:
    """SGLang's non-streaming error JSON: {"error": {"message": ...}}."""
    return {"error": {"message": message}}


def stream_error_event(message: str, status: int = 400) -> dict[str, Any]:
    """SGLang's in-stream error event (HTTP 200, then data: [DONE])."""
    return {"error": {"message": message, "type": "invalid_request_error", "code": status, "retryable": False}}


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


def parse_generate(body: Any, *, vocab_size: int, context_length: int, pool_tokens: int,
                   encode: Any = None) -> GenerateRequest:
    """Validate a contract-checked /generate body as SGLang 0.5.23's tokenizer manager does (ApiError)."""
    sp = body.get("sampling_params") or {}
    if isinstance(sp, list):
        if len(sp) != 1:
            raise ApiError("The simulated engine serves single requests; send one sampling_params object")
        sp = sp[0]
    ids = body.get("input_ids")
    if ids is None and body.get("text") is None:
        raise ApiError("Either text, input_ids or input_embeds should be provided.")
    if ids is None:
        if encode is None:
            raise ApiError("text input needs a tokenizer, and this engine runs with --skip-tokenizer-init: "
                           "send input_ids")
        text = body["text"]
        if isinstance(text, list):
            if len(text) != 1:
                raise ApiError("The simulated engine serves single requests; send one text")
            text = text[0]
        ids = encode(text)
    if ids and isinstance(ids[0], list):
        if len(ids) != 1:
            raise ApiError("The simulated engine serves single requests; send one input_ids list")
        ids = ids[0]
    if len(ids) == 0:
        raise ApiError("input_ids cannot be empty.")
    bad = None
    if min(ids) < 0 or max(ids) >= vocab_size:
        bad = next(t for t in ids if t < 0 or t >= vocab_size)
    if bad is not None:
        raise ApiError(f"input_ids contains out-of-vocabulary token id {bad}; valid range is [0, {vocab_size}).")
    max_new = sp.get("max_new_tokens", 128)
    if max_new is not None and max_new < 0:
        raise ApiError(f"max_new_tokens must be at least 0, got {max_new}.")
    top_p = sp.get("top_p", 1.0)
    if not 0.0 < top_p <= 1.0:
        raise ApiError(f"top_p must be in (0, 1], got {top_p}.")
    temperature = sp.get("temperature", 1.0)
    if temperature < 0.0:
        raise ApiError(f"temperature must be a non-negative finite number, got {temperature}.")
    if len(ids) >= context_length:
        raise ApiError(f"The input ({len(ids)} tokens) is longer than the model's context length "
                       f"({context_length} tokens).")
    max_req_input_len = min(context_length - 1, pool_tokens - 1) - 5  # SGLang 0.5.23 tp_worker.py
    if len(ids) >= max_req_input_len:
        raise ApiError(f"Input length ({len(ids)} tokens) exceeds the maximum allowed length "
                       f"({max_req_input_len} tokens). Use a shorter input or enable --allow-auto-truncate.")
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
