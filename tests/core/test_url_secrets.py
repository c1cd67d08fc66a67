"""URLs are shown without userinfo and query wherever configuration or health is shown."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from litestar.testing import AsyncTestClient

from core.app import create_app
from core.config import config_from_dict, hide_url_secrets
from tests.conftest import free_port
from tests.core.test_cli import mami


def test_redacted_config_drops_userinfo_and_query() -> None:
    config = config_from_dict({"plugins": {
        "forge-image": {"url": "http://user:pass@gpu:7860"},
        "openai-llm": {"base_url": "https://llm.example/v1?key=s3cret#frag"},
        "chroma-rag": {"chroma_url": "http://chroma:8000/", "note": "see http://a:b@c/d"},
    }})
    shown = config.redacted()["plugins"]
    assert shown["forge-image"]["url"] == "http://gpu:7860"
    assert shown["openai-llm"]["base_url"] == "https://llm.example/v1"
    assert shown["chroma-rag"] == {"chroma_url": "http://chroma:8000/", "note": "see http://c/d"}
    assert hide_url_secrets(["ftp://u@h/x", 3]) == ["ftp://h/x", 3]


def test_mami_plugins_json_shows_no_credentials(tmp_path: Path) -> None:
    (tmp_path / "plugins.toml").write_text(
        '[plugins.forge-image]\nurl = "http://user:pass@gpu:7860"\n'
        '[plugins.openai-llm]\nbase_url = "https://llm.example/v1?api-key=qwerty"\n')
    result = mami(["plugins", "--json"], tmp_path)
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)["config"]
    assert shown["forge-image"]["url"] == "http://gpu:7860"
    assert shown["openai-llm"]["base_url"] == "https://llm.example/v1"
    assert "pass" not in result.stdout and "qwerty" not in result.stdout


async def test_health_shows_no_credentials(make_config: Any) -> None:
    url = f"http://user:pass@127.0.0.1:{free_port()}/?key=qwerty"
    app = create_app(make_config(core={"images": "forge-image"},
                                 plugins={"forge-image": {"url": url}}))
    async with AsyncTestClient(app, base_url="http://127.0.0.1") as client:
        report = (await client.get("/health")).text
    assert "forge-image" in report
    assert "pass" not in report and "qwerty" not in report
