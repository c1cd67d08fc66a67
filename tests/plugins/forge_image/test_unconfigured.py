"""Without a Forge URL (the default) image generation is off: ``/image`` answers in
one line that no image server is configured and queues nothing; the API says 503."""

from __future__ import annotations

from typing import Any

import httpx
import openai

from core.api.images import NO_IMAGE_SERVER
from core.app import create_app
from core.plugins import builtin_candidates
from plugins.forge_image import Settings
from tests.chat_support import LOCAL


def test_no_url_means_no_generator_and_a_one_line_answer(make_config: Any,
                                                         live_server: Any) -> None:
    assert Settings().url == ""
    forge = [c for c in builtin_candidates() if c.name == "forge-image"]
    server = live_server(create_app(make_config(core={"image_worker": True}),
                                    candidates=[LOCAL, *forge]))
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    reply = client.chat.completions.create(
        model="", messages=[{"role": "user", "content": "/image a lighthouse at dusk"}])
    assert reply.choices[0].message.content == NO_IMAGE_SERVER
    assert "\n" not in NO_IMAGE_SERVER and "job" not in NO_IMAGE_SERVER
    assert httpx.get(f"{server.url}/api/images").json() == []
    refused = httpx.post(f"{server.url}/api/images", json={"prompt": "a lighthouse"})
    assert refused.status_code == 503
    plugin = httpx.get(f"{server.url}/health").json()["plugins"]["forge-image"]
    assert plugin["status"] == "ok" and plugin["provides"] == []


def test_the_503_says_which_setting_turns_images_on(make_config: Any,
                                                     live_server: Any) -> None:
    """forge-image enabled without a url: the API said "no images plugin is enabled and
    running", as if there were none. The plugin's own reason reaches the 503 (core
    does not know the plugin: forge-image recorded why it registered no generator)."""
    forge = [c for c in builtin_candidates() if c.name == "forge-image"]
    config = make_config()
    server = live_server(create_app(config, candidates=[LOCAL, *forge]))
    refused = httpx.post(f"{server.url}/api/images", json={"prompt": "a lighthouse"})
    assert refused.status_code == 503
    message = refused.json()["error"]["message"]
    assert "plugin forge-image: image generation is off until [plugins.forge-image] url is " \
           f"set in {config.source}" in message, message
    plugin = httpx.get(f"{server.url}/health").json()["plugins"]["forge-image"]
    assert "[plugins.forge-image] url" in plugin["off"]["images"]
