"""``/health``: anyone may see whether the app and each plugin are ok; only a caller
with a valid credential (or anyone, with auth off) sees the details."""

from __future__ import annotations

from typing import Any

import httpx

from core.app import create_app
from tests.chat_support import LOCAL, AuthPlugin, HeaderAuthenticator, plugin_object


def test_details_need_a_valid_credential(make_config: Any, live_server: Any) -> None:
    auth = plugin_object("header-auth", AuthPlugin(HeaderAuthenticator(revoked={"mallory"})))
    server = live_server(create_app(make_config(core={"auth": True}), candidates=[LOCAL, auth]))
    assert httpx.post(server.url + "/v1/chat/completions", headers={"Authorization": "Bearer a"},
                      json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
                      timeout=60).status_code == 200  # the model process runs: it has a pid
    for headers in ({}, {"Authorization": "Bearer mallory"}, {"Authorization": "Basic eDp5"}):
        anonymous = httpx.get(server.url + "/health", headers=headers).json()
        assert anonymous["status"] == "ok"
        assert anonymous["plugins"] == {"local-llm": {"status": "ok"},
                                        "header-auth": {"status": "ok"}}, headers
    detailed = httpx.get(server.url + "/health", headers={"Authorization": "Bearer alice"}).json()
    assert detailed["plugins"]["local-llm"]["health"]["pid"] > 0
    assert detailed["plugins"]["local-llm"]["module"] == "plugins.local_llm"


def test_with_auth_off_everyone_sees_the_details(make_config: Any, live_server: Any) -> None:
    server = live_server(create_app(make_config(), candidates=[LOCAL]))
    report = httpx.get(server.url + "/health").json()
    assert report["plugins"]["local-llm"]["module"] == "plugins.local_llm"
