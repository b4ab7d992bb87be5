"""A client nobody here wrote: the official ``openai`` package reads the service's moderation results."""

from __future__ import annotations

from typing import Any

import pytest

openai = pytest.importorskip("openai")

from tests.test_server import _png_uri, server  # noqa: E402, F401  (the module-scoped real uvicorn server)


def test_openai_client_parses_text_and_image(server: dict[str, Any]) -> None:  # noqa: F811
    client = openai.OpenAI(base_url=server["base"] + "/v1", api_key=server["balanced"], max_retries=0, timeout=30)
    text = client.moderations.create(input="a red circle", model="safeguard")
    assert text.model == "safeguard" and text.results[0].flagged is True
    assert text.results[0].categories.model_extra["red"] is True
    assert text.results[0].category_scores.model_extra["red"] >= 0.5
    parts = [
        {"type": "text", "text": "a blue square"},
        {"type": "image_url", "image_url": {"url": _png_uri((0, 0, 255))}},
    ]
    mixed = client.moderations.create(input=parts, model="safeguard")
    assert [r.flagged for r in mixed.results] == [False, False]
    assert mixed.results[1].category_applied_input_types.model_extra["red"] == ["image"]
    assert mixed.results[0].model_extra["safeguard"]["policy_id"] == "toy-colours"


def test_openai_client_sees_401(server: dict[str, Any]) -> None:  # noqa: F811
    client = openai.OpenAI(base_url=server["base"] + "/v1", api_key="sgk_wrong", max_retries=0, timeout=30)
    with pytest.raises(openai.AuthenticationError):
        client.moderations.create(input="a blue square")
