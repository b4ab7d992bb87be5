"""The host service against a real uvicorn server on 127.0.0.1 (toy world; bounded timeouts)."""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")

from PIL import Image  # noqa: E402

from safeguard.server.app import create_app  # noqa: E402
from safeguard.server.audit import verify_audit  # noqa: E402
from safeguard.server.keys import KeyStore  # noqa: E402
from safeguard.server.loadgen import wait_ready  # noqa: E402
from safeguard.server.settings import server_settings_from_mapping  # noqa: E402

GATE = threading.Event()  # set: the pipeline runs; cleared: a call on "a slow blue square" waits (queue test)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _factory() -> tuple[Any, Any]:
    from safeguard.toy import toy_world

    world = toy_world()
    pipe = world.pipeline
    original = type(pipe).__call__

    class Gated(type(pipe)):  # a subclass, so protect() still recognises the pipeline class
        def __call__(self, prompt: Any = None, *args: Any, **kwargs: Any) -> Any:
            if isinstance(prompt, str) and "slow" in prompt:
                GATE.wait(timeout=20)
            return original(self, prompt, *args, **kwargs)

    pipe.__class__ = Gated
    return pipe, world.policy_path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("server")
    store = KeyStore(d / "keys.json")
    _, balanced = store.add("balanced", "balanced", rate_per_minute=1000)
    _, strict = store.add("strict", "strict", rate_per_minute=1000)
    _, limited = store.add("limited", "balanced", rate_per_minute=2)
    revoked_key, revoked = store.add("gone", "balanced")
    store.revoke(revoked_key.key_id)
    port = _free_port()
    settings = server_settings_from_mapping(
        {
            "port": port,
            "keys": str(d / "keys.json"),
            "audit": {"path": str(d / "audit.jsonl")},
            "limits": {"queue_size": 1, "max_body_bytes": 200_000, "max_prompt_chars": 500, "deadline_s": 30},
        }
    )
    GATE.set()
    config = uvicorn.Config(create_app(settings, _factory), host="127.0.0.1", port=port, log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    if not wait_ready(port, 60):
        pytest.fail("server did not become ready in 60 s")
    ok_ids: list[str] = []
    yield {
        "base": base,
        "balanced": balanced,
        "strict": strict,
        "limited": limited,
        "revoked": revoked,
        "audit": d / "audit.jsonl",
        "ok_ids": ok_ids,
    }
    GATE.set()
    srv.should_exit = True
    thread.join(timeout=10)


def call(
    server: dict[str, Any], path: str, body: Any = None, token: str | None = "balanced", raw: bytes | None = None
) -> tuple[int, dict[str, Any], Any]:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(server["base"] + path, data=data, method="POST" if data is not None else "GET")
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {server.get(token, token)}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, headers, text = response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        status, headers, text = err.code, dict(err.headers), err.read()
    payload = json.loads(text) if headers.get("content-type", "").startswith("application/json") else text.decode()
    if status == 200 and isinstance(payload, dict) and "id" in payload:
        server["ok_ids"].append(payload["id"])
    return status, headers, payload


def _png_uri(colour: tuple[int, int, int]) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), colour).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def test_auth_required(server: dict[str, Any]) -> None:
    status, _, body = call(server, "/v1/moderations", {"input": "a blue square"}, token=None)
    assert status == 401 and "Authorization" in body["error"]["message"]
    status, _, body = call(server, "/v1/moderations", {"input": "a blue square"}, token="revoked")
    assert status == 401 and "revoked" in body["error"]["message"]


def test_moderation_shape_text_and_image(server: dict[str, Any]) -> None:
    parts = [
        {"type": "text", "text": "a red circle"},
        {"type": "image_url", "image_url": {"url": _png_uri((0, 0, 255))}},
    ]
    status, _, body = call(server, "/v1/moderations", {"input": parts})
    assert status == 200 and body["id"].startswith("modr-") and body["model"] == "safeguard"
    text, image = body["results"]
    assert text["flagged"] is True and text["categories"]["red"] is True
    assert text["category_applied_input_types"]["red"] == ["text"]
    finding = text["safeguard"]["findings"][0]
    assert {finding["stage"], finding["category"], finding["source"]} == {"prompt", "red", "keyword"}
    assert finding["score"] >= finding["threshold"]
    assert text["safeguard"]["policy_id"] == "toy-colours" and text["safeguard"]["action"] == "block"
    assert image["category_applied_input_types"]["red"] == ["image"]
    assert image["flagged"] is False and "red" in image["category_scores"]


def test_generation_allowed_and_blocked(server: dict[str, Any]) -> None:
    status, _, body = call(server, "/v1/images/generations", {"prompt": "a blue square", "steps": 5})
    assert status == 200, body
    item = body["data"][0]
    assert item["finish_reason"] == "SUCCESS" and item["filter_stage"] is None
    assert Image.open(io.BytesIO(base64.b64decode(item["b64_json"]))).size == (32, 32)
    status, _, body = call(server, "/v1/images/generations", {"prompt": "a red circle", "steps": 5})
    assert status == 200
    item = body["data"][0]
    assert item["finish_reason"] == "CONTENT_FILTERED" and item["b64_json"] is None
    assert item["filter_stage"] == "prompt"
    assert any(f["category"] == "red" and f["stage"] == "prompt" for f in item["verdict"]["findings"])


def test_strict_key_cannot_toggle(server: dict[str, Any]) -> None:
    body = {"prompt": "a blue square", "safeguard": {"prompt": False}}
    status, _, reply = call(server, "/v1/images/generations", body, token="strict")
    assert status == 403 and reply["error"]["param"] == "safeguard.prompt"
    assert "safeguard.prompt" in reply["error"]["message"]


def test_rate_limit_429(server: dict[str, Any]) -> None:
    statuses = [call(server, "/v1/moderations", {"input": "a blue square"}, token="limited")[:2] for _ in range(3)]
    assert [s for s, _ in statuses] == [200, 200, 429]
    assert int(statuses[2][1]["retry-after"]) >= 1


def test_queue_full_503(server: dict[str, Any]) -> None:
    GATE.clear()
    results: list[int] = []
    slow = threading.Thread(
        target=lambda: results.append(
            call(server, "/v1/images/generations", {"prompt": "a slow blue square", "steps": 2})[0]
        )
    )
    slow.start()
    try:
        deadline = time.monotonic() + 10
        while "safeguard_queue_depth 1.0" not in call(server, "/metrics", token=None)[2]:
            assert time.monotonic() < deadline, "slow call never reached the queue"
            time.sleep(0.05)
        status, _, body = call(server, "/v1/images/generations", {"prompt": "a blue square", "steps": 2})
        assert status == 503 and "queue is full" in body["error"]["message"]
    finally:
        GATE.set()
        slow.join(timeout=30)
    assert results == [200]


@pytest.mark.parametrize(
    ("raw", "status", "needle"),
    [
        (b"{not json", 400, "not valid JSON"),
        (json.dumps({"input": ""}).encode(), 400, "input must be a non-empty string"),
        (json.dumps({"input": "a" * 501}).encode(), 400, "the limit is 500"),
        (
            json.dumps({"input": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@"}}]}).encode(),
            400,
            "input[0].image_url.url",
        ),
        (json.dumps({"input": "a" * 300_000}).encode(), 413, "exceeds 200000"),
        (json.dumps({"input": 5}).encode(), 400, "input must be a string"),
    ],
)
def test_bad_input(server: dict[str, Any], raw: bytes, status: int, needle: str) -> None:
    got, _, body = call(server, "/v1/moderations", raw=raw)
    assert got == status and needle in body["error"]["message"]


def test_generation_bad_fields(server: dict[str, Any]) -> None:
    for body, param in [
        ({"prompt": ""}, "prompt"),
        ({"prompt": "a", "n": 9}, "n"),
        ({"prompt": "a", "size": "big"}, "size"),
        ({"prompt": "a", "colour": 1}, "colour"),
    ]:
        status, _, reply = call(server, "/v1/images/generations", body)
        assert status == 400 and reply["error"]["param"] == param


def test_metrics_and_audit(server: dict[str, Any]) -> None:
    before = call(server, "/metrics", token=None)[2]
    for _ in range(3):
        assert call(server, "/v1/moderations", {"input": "a green triangle"})[0] == 200
    after = call(server, "/metrics", token=None)[2]

    def count(text: str) -> float:
        line = 'safeguard_requests_total{endpoint="/v1/moderations",status="200"}'
        return next((float(x.split()[-1]) for x in text.splitlines() if x.startswith(line)), 0.0)

    assert count(after) - count(before) == 3
    assert 'safeguard_decisions_total{action="block",category="red",stage="prompt"}' in after
    report = verify_audit(server["audit"])
    assert report.ok, str(report)
    ids = {
        json.loads(line)["request_id"]
        for line in Path(server["audit"]).read_text().splitlines()
        if "request_id" in line
    }
    assert set(server["ok_ids"]) <= ids and len(server["ok_ids"]) >= 5
    assert "a green triangle" not in Path(server["audit"]).read_text()  # only hashes by default


def test_the_example_settings_file_is_the_defaults_and_unknown_keys_are_errors(tmp_path: Path) -> None:
    from safeguard.errors import ConfigError
    from safeguard.server.settings import load_server_settings

    example = Path(__file__).resolve().parents[1] / "configs" / "server" / "example.yaml"
    loaded, defaults = load_server_settings(example), load_server_settings(None)
    # The documented file names every option with its default value (the keys file aside, which has none).
    assert (loaded.host, loaded.port, loaded.audit.max_bytes, loaded.limits) == (
        defaults.host,
        defaults.port,
        defaults.audit.max_bytes,
        defaults.limits,
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text("limits:\n  queue_sise: 3\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="queue_sise"):
        load_server_settings(bad)
