"""The Lambda handler driven with real event shapes, configured from the environment."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from core import migrations
from core.errors import ConfigError
from tests.deploy.lambda_events import SHAPES, Invoker, load_handler_module


@pytest.mark.parametrize("shape", SHAPES)
def test_health_through_each_event_shape(invoke: Invoker, shape: str) -> None:
    response = invoke(shape, "GET", "/health")
    assert response.status == 200
    assert response.headers["content-type"].startswith("application/json")
    assert not response.base64
    body = response.json()
    assert body["status"] == "ok"
    assert isinstance(body["plugins"], dict)


@pytest.mark.parametrize("shape", SHAPES)
def test_unknown_route_gets_the_json_error_shape(invoke: Invoker, shape: str) -> None:
    response = invoke(shape, "GET", "/no/such/route", query="a=1&b=two%20words")
    assert response.status == 404
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("not_found", None)  # OpenAI's: a string code
    assert error["type"] == "not_found_error"
    assert error["message"]


def test_app_is_built_once_per_execution_environment(invoke: Invoker) -> None:
    invoke("http-api-v2", "GET", "/health")
    first_app, runtime = invoke.module._mangum, invoke.runtime
    assert runtime.serverless and runtime.started
    invoke("rest-api-v1", "GET", "/health")
    assert invoke.module._mangum is first_app
    assert invoke.runtime is runtime


def test_nothing_is_built_at_import(lambda_env: Any) -> None:
    module = load_handler_module()
    assert module._mangum is None


def test_lambda_defaults_turn_off_the_image_worker(lambda_env: Any) -> None:
    config = load_handler_module().config_from_env({})
    assert config.core.image_worker is False
    assert config.core.data_dir == "/tmp/mami"


def test_plugins_needing_local_state_are_off_until_configured(lambda_env: Any) -> None:
    module = load_handler_module()
    plugins = module.config_from_env({}).plugins
    for name in ("local-llm", "chroma-rag", "memory", "web-ui"):
        assert plugins[name]["enabled"] is False

    plugins = module.config_from_env({"MAMI_CHROMA_URL": "http://chroma.internal:8000",
                                      "MAMI_LLM_BASE_URL": "http://llm.internal/v1",
                                      "MAMI__PLUGINS__WEB_UI__ENABLED": "true"}).plugins
    assert plugins["chroma-rag"] == {"enabled": True, "chroma_url": "http://chroma.internal:8000"}
    assert plugins["memory"] == {"enabled": True}
    assert plugins["openai-llm"] == {"enabled": True, "base_url": "http://llm.internal/v1"}
    assert plugins["web-ui"]["enabled"] is True

    plugins = module.config_from_env({"MAMI_CHROMA_URL": "http://chroma.internal:8000",
                                      "MAMI__PLUGINS__CHROMA_RAG__ENABLED": "false"}).plugins
    assert plugins["chroma-rag"]["enabled"] is False


def test_blank_shortcuts_change_nothing() -> None:
    """CloudFormation passes parameters left blank as empty strings."""
    module = load_handler_module()
    blank = module.config_from_env({name: "" for name in module.ALIASES})
    assert blank.plugins == module.config_from_env({}).plugins


def test_plugin_settings_are_converted_to_their_declared_types() -> None:
    config = load_handler_module().config_from_env({
        "MAMI__PLUGINS__CHROMA_RAG__SCOPES": '["work", "home"]',
        "MAMI__PLUGINS__CHROMA_RAG__MAX_K": "5",
        "MAMI__PLUGINS__FORGE_IMAGE__DEADLINE": "60",
    })
    assert config.plugins["chroma-rag"]["scopes"] == ["work", "home"]
    assert config.plugins["chroma-rag"]["max_k"] == 5
    assert config.plugins["forge-image"]["deadline"] == 60.0


def test_settings_come_from_the_environment_with_their_types() -> None:
    module = load_handler_module()
    config = module.config_from_env({
        "MAMI__CORE__AUTH": "no",
        "MAMI__CORE__SYSTEM_PROMPT": "Be brief.",
        "MAMI__CORE__EVENT_TIMEOUT": "2.5",
        "MAMI__BUDGET__RAG_K": "7",
        "MAMI__SERVER__PUBLIC_URL": "https://chat.example.com",
        "UNRELATED": "ignored",
    })
    assert config.core.auth is False
    assert config.core.system_prompt == "Be brief."
    assert config.core.event_timeout == 2.5
    assert config.budget.rag_k == 7
    assert config.server.public_url == "https://chat.example.com"


@pytest.mark.parametrize(
    ("environ", "names"),
    [
        ({"MAMI__CORE__AUTH": "maybe"}, ["MAMI__CORE__AUTH", "true or false"]),
        ({"MAMI__BUDGET__RAG_K": "many"}, ["MAMI__BUDGET__RAG_K", "number"]),
        ({"MAMI__CORE__NO_SUCH_KEY": "1"}, ["[core]", "no_such_key", "unknown setting"]),
        ({"MAMI__CORE": "x"}, ["MAMI__CORE", "MAMI__PLUGINS__<PLUGIN>__<KEY>"]),
        ({"MAMI__PLUGINS__CHROMA_RAG__SCOPES": "work"}, ["CHROMA_RAG__SCOPES", "JSON"]),
    ],
)
def test_bad_environment_is_named_in_the_error(environ: dict[str, str], names: list[str]) -> None:
    with pytest.raises(ConfigError) as caught:
        load_handler_module().config_from_env(environ)
    for name in names:
        assert name in caught.value.message


def test_unknown_plugin_stops_the_first_invocation(invoke: Invoker, lambda_env: Any) -> None:
    lambda_env(MAMI__PLUGINS__NOT_INSTALLED__URL="http://x")
    with pytest.raises(ConfigError, match=r"\[plugins\.not-installed\]: unknown plugin"):
        invoke("http-api-v2", "GET", "/health")


@pytest.mark.postgres
def test_postgres_schema_behind_is_a_clear_error_until_upgraded(
    invoke: Invoker, lambda_env: Any, postgres_url: str
) -> None:
    lambda_env(MAMI_DATABASE_URL=postgres_url)
    response = invoke("http-api-v2", "GET", "/health")
    assert response.status == 500
    assert "mami db upgrade" in response.json()["error"]["message"]

    migrations.upgrade_all(postgres_url)
    response = invoke("http-api-v2", "GET", "/health")
    assert response.status == 200
    assert invoke.runtime.db.url.startswith("postgresql+psycopg://")


def test_schema_ahead_of_the_code_says_so_and_names_the_revision(
    invoke: Invoker, lambda_env: Any, tmp_path: Path
) -> None:
    """A database upgraded by a newer mami: not "run `mami db upgrade`" (which cannot
    help) but the revision, and what to do."""
    url = f"sqlite:///{tmp_path / 'ahead.db'}"
    migrations.upgrade_all(url)
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'f00dfacecafe'"))
    engine.dispose()
    lambda_env(MAMI_DATABASE_URL=url)
    response = invoke("http-api-v2", "GET", "/health")
    assert response.status == 500
    message = response.json()["error"]["message"]
    assert "f00dfacecafe" in message and migrations.head_revision() in message
    assert "newer mami" in message and "mami db upgrade" not in message
    assert migrations.current_revision(url) == "f00dfacecafe"  # left as it was


def test_images_without_a_forge_url_are_refused_not_placeholders() -> None:
    """Blank MAMI_FORGE_URL: forge-image is off (``/api/images`` says 503); switched on
    anyway, the first invocation stops naming both variables."""
    module = load_handler_module()
    assert module.config_from_env({"MAMI_FORGE_URL": ""}).plugins["forge-image"]["enabled"] is False
    on = module.config_from_env({"MAMI_FORGE_URL": "http://forge.internal:7860"})
    assert on.plugins["forge-image"]["enabled"] is True
    with pytest.raises(ConfigError) as caught:
        module.config_from_env({"MAMI__PLUGINS__FORGE_IMAGE__ENABLED": "true",
                                "MAMI_FORGE_URL": ""})
    assert "MAMI__PLUGINS__FORGE_IMAGE__ENABLED=true" in caught.value.message
    assert "MAMI_FORGE_URL" in caught.value.message
