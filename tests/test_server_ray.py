"""The host service as a Ray Serve application, on the CPU: loopback only, no dashboard, usage stats off.

The same requests as tests/test_server.py (moderation of text and an image, an allowed and a blocked generation
on the toy world, a key) must get the same answers from the ingress, pipeline and batched moderation deployments.
"""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import ray
from PIL import Image
from ray import serve

from safeguard.server.audit import verify_audit
from safeguard.server.keys import KeyStore
from safeguard.server.loadgen import wait_ready
from safeguard.server.ray_app import start_ray
from safeguard.server.settings import server_settings_from_mapping


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _png_uri(colour: tuple[int, int, int]) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), colour).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def ray_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    d = tmp_path_factory.mktemp("ray")
    _, token = KeyStore(d / "keys.json").add("balanced", "balanced", rate_per_minute=1000)
    port = _free_port()
    settings = server_settings_from_mapping(
        {"port": port, "keys": str(d / "keys.json"), "audit": {"path": str(d / "audit.jsonl")}}
    )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # inherited by the Ray workers
    try:
        start_ray(settings, num_cpus=2)
        base = f"http://127.0.0.1:{port}"
        if not wait_ready(port, 60):
            pytest.fail("Ray Serve app did not answer /readyz in 60 s")
        yield {"base": base, "token": token, "audit": d / "audit.jsonl"}
    finally:
        serve.shutdown()
        ray.shutdown()


def call(server: dict[str, Any], path: str, body: Any) -> tuple[int, Any]:
    request = urllib.request.Request(server["base"] + path, data=json.dumps(body).encode(), method="POST")
    request.add_header("Content-Type", "application/json")
    request.add_header("Authorization", f"Bearer {server['token']}")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_ray_bound_to_loopback_without_dashboard(ray_server: dict[str, Any]) -> None:
    assert os.environ["RAY_USAGE_STATS_ENABLED"] == "0"
    assert ray.cluster_resources().get("CPU") == 2
    assert "127.0.0.1" in ray_server["base"]
    deployments = serve.status().applications["safeguard"].deployments
    assert set(deployments) == {"ingress", "pipeline", "moderation"}


def test_ray_moderation_matches_fastapi(ray_server: dict[str, Any]) -> None:
    parts = [
        {"type": "text", "text": "a red circle"},
        {"type": "image_url", "image_url": {"url": _png_uri((0, 0, 255))}},
    ]
    status, body = call(ray_server, "/v1/moderations", {"input": parts})
    assert status == 200 and body["id"].startswith("modr-") and body["model"] == "safeguard", body
    text, image = body["results"]
    assert text["flagged"] is True and text["categories"]["red"] is True
    assert text["category_applied_input_types"]["red"] == ["text"]
    finding = text["safeguard"]["findings"][0]
    assert {finding["stage"], finding["category"], finding["source"]} == {"prompt", "red", "keyword"}
    assert text["safeguard"]["policy_id"] == "toy-colours" and text["safeguard"]["action"] == "block"
    assert image["category_applied_input_types"]["red"] == ["image"]
    assert image["flagged"] is False and "red" in image["category_scores"]


def test_ray_batched_moderation_keeps_each_answer(ray_server: dict[str, Any]) -> None:
    # Concurrent requests land in shared @serve.batch calls; each must still get its own verdict.
    prompts = ["a red circle", "a green triangle"] * 4
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda p: call(ray_server, "/v1/moderations", {"input": p}), prompts))
    assert [s for s, _ in replies] == [200] * len(prompts)
    assert [b["results"][0]["flagged"] for _, b in replies] == [p == "a red circle" for p in prompts]


def test_ray_generation_allowed_and_blocked(ray_server: dict[str, Any]) -> None:
    status, body = call(ray_server, "/v1/images/generations", {"prompt": "a blue square", "steps": 5})
    assert status == 200, body
    item = body["data"][0]
    assert item["finish_reason"] == "SUCCESS" and item["filter_stage"] is None
    assert Image.open(io.BytesIO(base64.b64decode(item["b64_json"]))).size == (32, 32)
    status, body = call(ray_server, "/v1/images/generations", {"prompt": "a red circle", "steps": 5})
    assert status == 200, body
    item = body["data"][0]
    assert item["finish_reason"] == "CONTENT_FILTERED" and item["b64_json"] is None
    assert item["filter_stage"] == "prompt"
    assert any(f["category"] == "red" and f["stage"] == "prompt" for f in item["verdict"]["findings"])


def test_ray_errors_and_audit(ray_server: dict[str, Any]) -> None:
    status, body = call(ray_server, "/v1/images/generations", {"prompt": "a blue square", "steps": 0})
    assert status == 400 and body["error"]["param"] == "steps"
    report = verify_audit(ray_server["audit"])
    assert report.ok, str(report)
