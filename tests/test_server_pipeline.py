"""The host service on a real diffusers folder (a tiny SD 1.x pipeline saved to disk), and its deadline."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from safeguard.server.app import create_app
from safeguard.server.keys import KeyStore
from safeguard.server.settings import server_settings_from_mapping
from safeguard.testing import tiny


def _client(tmp_path: Path, factory: Any = None, **mapping: Any) -> tuple[TestClient, dict[str, str]]:
    _, token = KeyStore(tmp_path / "keys.json").add("host", "balanced", rate_per_minute=1000)
    settings = server_settings_from_mapping(
        {"keys": str(tmp_path / "keys.json"), "audit": {"path": str(tmp_path / "audit.jsonl")}, **mapping}
    )
    return TestClient(create_app(settings, factory)), {"Authorization": f"Bearer {token}"}


def test_a_local_diffusers_folder_is_served_behind_the_default_policy(tmp_path):
    folder = tmp_path / "sd"
    tiny.sd_pipeline().save_pretrained(folder)
    client, auth = _client(tmp_path, pipeline=str(folder))
    with client:
        body = {"prompt": "a watercolor painting of a lighthouse", "steps": 2, "width": 64, "height": 64}
        response = client.post("/v1/images/generations", json=body, headers=auth)
        assert response.status_code == 200, response.text
        assert response.json()["data"][0]["finish_reason"] == "SUCCESS"
        response = client.post("/v1/images/generations", json={**body, "prompt": "a pipe bomb"}, headers=auth)
        item = response.json()["data"][0]
        assert item["finish_reason"] == "CONTENT_FILTERED" and item["b64_json"] is None
        assert any(f["category"] == "weapons" for f in item["verdict"]["findings"])


def test_a_generation_past_the_deadline_gets_504_and_no_image(tmp_path):
    release = threading.Event()

    def slow_toy_world() -> tuple[Any, Any]:
        from safeguard.toy import toy_world

        world = toy_world()
        pipe = world.pipeline
        original = type(pipe).__call__

        class Slow(type(pipe)):  # a subclass, so protect() still recognises the pipeline class
            def __call__(self, *args: Any, **kwargs: Any) -> Any:
                release.wait(timeout=20)
                return original(self, *args, **kwargs)

        pipe.__class__ = Slow
        return pipe, world.policy_path

    client, auth = _client(tmp_path, slow_toy_world, limits={"deadline_s": 1})
    with client:
        try:
            response = client.post("/v1/images/generations", json={"prompt": "a blue square", "steps": 2}, headers=auth)
        finally:
            release.set()
        assert response.status_code == 504, response.text
        assert "longer than 1" in response.json()["error"]["message"]
        assert "b64_json" not in response.text
