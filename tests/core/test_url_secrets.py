"""URLs are shown without userinfo and query wherever they are shown: configuration,
health, `mami plugins`, error messages and logs."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from core.app import create_app
from core.config import config_from_dict, hide_url_secrets
from core.errors import ConfigError, error_body, hide_url_secrets_in_logs
from core.plugins import entrypoint_candidates
from tests.conftest import free_port
from tests.core.test_cli import ROOT, mami


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


SHOWN = "http://gpu.internal:7860/sdapi is unreachable"  # the sample plugin's URL, hidden


def assert_hidden(text: str) -> None:
    assert "s3cret" not in text and "qwerty" not in text and "user:" not in text, text


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.mark.usefixtures("sample_plugins")
async def test_a_plugin_error_naming_a_url_is_shown_without_its_secrets(
        make_config: Any) -> None:
    logger, lines = logging.getLogger("mami"), Lines()  # Litestar reconfigures the root
    logger.addHandler(lines)
    try:
        app = create_app(make_config(), candidates=entrypoint_candidates())
        async with AsyncTestClient(app, base_url="http://127.0.0.1") as client:
            report = (await client.get("/health")).json()
    finally:
        logger.removeHandler(lines)
    error = report["plugins"]["broken-startup"]["error"]
    assert SHOWN in error
    assert_hidden(error)
    logged = "\n".join(lines.lines)
    assert SHOWN in logged
    assert_hidden(logged)


def test_mami_plugins_shows_a_plugin_error_without_the_urls_secrets(
        tmp_path: Path, sample_plugins_site: Path) -> None:
    env = {"PYTHONPATH": f"{ROOT}{os.pathsep}{sample_plugins_site}"}
    for args in (["plugins"], ["plugins", "--json"]):
        result = mami(args, tmp_path, **env)
        assert result.returncode == 0, result.stderr
        assert SHOWN in result.stdout and SHOWN in result.stderr  # listed, and logged
        assert_hidden(result.stdout + result.stderr)


def test_exceptions_and_log_records_hide_url_secrets() -> None:
    hide_url_secrets_in_logs()
    url = "postgresql://app:s3cret@db.internal:5432/mami?sslpassword=qwerty"
    error = ConfigError(f"cannot connect to {url}")
    assert error.message == str(error) == "cannot connect to postgresql://db.internal:5432/mami"
    assert error_body(502, f"upstream {url} failed")["error"]["message"] == (
        "upstream postgresql://db.internal:5432/mami failed")
    log, lines = logging.getLogger("mami.test"), Lines()
    log.addHandler(lines)
    try:
        raise OSError(f"refused by {url}")
    except OSError as exc:
        log.exception("call to %s failed: %s", url, exc)
    finally:
        log.removeHandler(lines)
    assert "call to postgresql://db.internal:5432/mami failed: refused by" in lines.lines[0]
    assert "OSError: refused by postgresql://db.internal:5432/mami" in lines.lines[0]
    assert_hidden(lines.lines[0])
    assert hide_url_secrets("see http://[::1 and http://a:b@[::1]:80/x?y") == (
        "see http://... and http://[::1]:80/x")
