"""The sim answers like SGLang 0.5.23: status codes, body shapes and message prefixes."""

import json

import httpx
import pytest

from pytest_ppd.servers.topology import TopologyConfig, start_topology

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    with start_topology(TopologyConfig(kind="colocated"), tmp_path_factory.mktemp("api")) as topo:
        yield topo.colocated


def post(url, body, stream):
    payload = {**body, "stream": True} if stream else body
    with httpx.Client(trust_env=False, timeout=30) as client:
        resp = client.post(url + "/generate", content=json.dumps(payload))
        return resp.status_code, resp.text


OK = {"input_ids": [1001, 1002, 1003], "sampling_params": {"max_new_tokens": 2}}
VALUE_ERRORS = [
    ({"input_ids": [5] * 131072},
     "The input (131072 tokens) is longer than the model's context length (131072 tokens)."),
    ({"input_ids": [1, 2, 200000]}, "input_ids contains out-of-vocabulary token id 200000"),
    ({"input_ids": []}, "input_ids cannot be empty."),
    ({"input_ids": [1, 2], "sampling_params": {"max_new_tokens": -1}}, "max_new_tokens must be at least 0, got -1."),
    ({"input_ids": [1, 2], "sampling_params": {"top_p": 1.5}}, "top_p must be in (0, 1], got 1.5."),
    ({"sampling_params": {"max_new_tokens": 1}}, "Either text, input_ids or input_embeds should be provided."),
]
CONTRACT_ERRORS = [
    ({"input_ids": [1, 2], "sampling_params": {"max_tokens": 3}},
     "unknown field `max_tokens`, expected one of `max_new_tokens`"),
    ({"input_ids": "1 2 3"}, 'invalid type: string "1 2 3", expected a value or an array of values for TokenIdsOrList'),
    ({"input_ids": [1, 2], "sampling_params": {"max_new_tokens": "4"}}, 'invalid type: string "4", expected i64'),
    ({"input_ids": [1, 2], "stream": "yes"}, 'invalid type: string "yes", expected a boolean'),
]


@pytest.mark.parametrize("body,prefix", VALUE_ERRORS)
def test_value_errors_are_400_unary(url, body, prefix):
    status, text = post(url, body, stream=False)
    assert status == 400
    assert json.loads(text)["error"]["message"].startswith(prefix)


@pytest.mark.parametrize("body,prefix", VALUE_ERRORS)
def test_value_errors_stream_as_error_event_then_done(url, body, prefix):
    """Streaming: HTTP 200, one data: {"error": ...} event, then data: [DONE]."""
    status, text = post(url, body, stream=True)
    events = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
    assert status == 200 and events[-1] == "[DONE]" and len(events) == 2
    err = json.loads(events[0])["error"]
    assert err["message"].startswith(prefix) and err["code"] == 400 and err["type"] == "invalid_request_error"


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("body,prefix", CONTRACT_ERRORS)
def test_contract_errors_are_400_with_string_error(url, body, prefix, stream):
    status, text = post(url, body, stream=stream and body.get("stream") is None)
    assert status == 400
    assert json.loads(text)["error"].startswith(prefix)


def test_unknown_top_level_keys_pass(url):
    status, text = post(url, {**OK, "log_metrics": True, "whatever": 1}, stream=False)
    assert status == 200 and json.loads(text)["meta_info"]["completion_tokens"] == 2


def test_invalid_json_is_422(url):
    resp = httpx.post(url + "/generate", content=b"{nope", trust_env=False)
    assert resp.status_code == 422


def test_decode_mode_without_room_is_400(tmp_path):
    with start_topology(TopologyConfig(kind="pd"), tmp_path) as topo:
        status, text = post(topo.decode[0], OK, stream=False)
    assert status == 400 and "bootstrap" in json.loads(text)["error"]["message"]


def test_info_endpoints(url):
    with httpx.Client(base_url=url, trust_env=False) as c:
        info = c.get("/get_server_info").json()
        assert info["max_total_num_tokens"] == info["internal_states"][0]["max_total_num_tokens"]
        assert info["disaggregation_mode"] == "null" and "api_key" not in info
        model = c.get("/get_model_info").json()
        assert model["model_path"] == model["tokenizer_path"] and model["is_generation"] is True
        assert c.get("/v1/models").json()["data"][0]["object"] == "model"
        assert c.get("/health_generate").status_code == 200
        assert c.post("/flush_cache").status_code == 200


def test_api_key_is_required_except_health(tmp_path):
    with start_topology(TopologyConfig(kind="colocated", api_key="s3cret-sentinel"), tmp_path) as topo:
        u = topo.colocated
        assert httpx.get(u + "/health", trust_env=False).status_code == 200
        assert httpx.post(u + "/generate", json=OK, trust_env=False).status_code == 401
        ok = httpx.post(u + "/generate", json=OK, trust_env=False,
                        headers={"Authorization": "Bearer s3cret-sentinel"})
        assert ok.status_code == 200
        info = httpx.get(u + "/server_info", trust_env=False, headers={"Authorization": "Bearer s3cret-sentinel"})
        assert "s3cret-sentinel" not in info.text
