"""Plugin discovery, enabling, settings checks and failure isolation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from core.app import create_app, runtime_of
from core.config import config_from_dict
from core.errors import ConfigError
from core.plugins import PluginHost, entrypoint_candidates

pytestmark = pytest.mark.usefixtures("sample_plugins")


def third_party_app(make_config: Any, **plugins: Any) -> Any:
    return create_app(make_config(plugins=plugins), candidates=entrypoint_candidates())


async def test_entry_point_plugins_are_discovered_and_broken_ones_degrade(make_config: Any) -> None:
    app = third_party_app(make_config, sample={"greeting": "merhaba", "times": 2})
    async with AsyncTestClient(app, base_url="http://127.0.0.1") as client:
        health = (await client.get("/health")).json()
        hello = await client.get("/sample/hello")
    assert health["status"] == "degraded"
    plugins = health["plugins"]
    assert plugins["sample"]["status"] == "ok"
    assert plugins["sample"]["source"] == "entrypoint"
    assert "llm" in plugins["sample"]["provides"]
    assert plugins["broken-import"]["status"] == "failed"
    assert "exploded on import" in plugins["broken-import"]["error"]
    assert plugins["broken-startup"]["status"] == "failed"
    assert "failed to start" in plugins["broken-startup"]["error"]
    assert hello.json() == {"message": "merhaba merhaba"}


async def test_disabled_plugins_are_not_loaded(make_config: Any) -> None:
    app = third_party_app(
        make_config,
        **{"broken-import": {"enabled": False}, "broken-startup": {"enabled": False},
           "sample": {"enabled": False}},
    )
    async with AsyncTestClient(app, base_url="http://127.0.0.1") as client:
        health = (await client.get("/health")).json()
        missing = await client.get("/sample/hello")
    assert health["status"] == "ok"
    assert {p["status"] for p in health["plugins"].values()} == {"disabled"}
    assert missing.status_code == 404
    assert runtime_of(app).llm is None


def test_a_failed_startup_drops_the_plugins_providers(make_config: Any) -> None:
    host = PluginHost(make_config(), entrypoint_candidates())
    assert host.records["broken-import"].status == "failed"
    assert host.records["sample"].status == "ok"
    assert host.status() == "degraded"


@pytest.mark.parametrize(
    ("plugins", "message"),
    [
        ({"nope": {}}, "[plugins.nope]: unknown plugin"),
        ({"sample": {"times": "two"}}, "[plugins.sample] times: expected an integer, got a string"),
        ({"sample": {"greting": "hi"}}, "[plugins.sample] greting: unknown setting"),
        ({"broken-startup": {"x": 1}}, "[plugins.broken-startup] x: this plugin takes no settings"),
    ],
)
def test_bad_plugin_settings_stop_startup_naming_the_key(
    make_config: Any, plugins: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        third_party_app(make_config, **plugins)
    assert message in str(info.value)


def test_each_app_has_its_own_plugin_manager(make_config: Any) -> None:
    one = runtime_of(third_party_app(make_config))
    two = runtime_of(third_party_app(make_config, sample={"enabled": False}))
    assert one.plugins.pm is not two.plugins.pm
    assert one.plugins.pm.get_plugin("sample") is not None
    assert two.plugins.pm.get_plugin("sample") is None


def _mami(args: list[str], cwd: Path, site: Path) -> subprocess.CompletedProcess[str]:
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{site}",
           "MAMI_DATA_DIR": str(cwd / "data")}
    env.pop("MAMI_CONFIG", None)
    return subprocess.run(
        [sys.executable, "-m", "core.cli", *args], cwd=cwd, env=env, text=True,
        capture_output=True, timeout=120,
    )


def test_mami_plugins_cli_reports_failures_and_redacts_secrets(
    tmp_path: Path, sample_plugins: Path
) -> None:
    (tmp_path / "plugins.toml").write_text(
        '[plugins.sample]\ngreeting = { env = "SAMPLE_SECRET_GREETING" }\n', encoding="utf-8"
    )
    os.environ["SAMPLE_SECRET_GREETING"] = "s3cr3t-value"
    try:
        result = _mami(["plugins", "--json"], tmp_path, sample_plugins)
    finally:
        del os.environ["SAMPLE_SECRET_GREETING"]
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    by_name = {p["name"]: p for p in report["plugins"]}
    assert report["status"] == "degraded"
    assert by_name["broken-import"]["status"] == "failed"
    # Registration and startup run, as under `mami serve`.
    assert by_name["broken-startup"]["status"] == "failed"
    assert "sample plugin failed to start" in by_name["broken-startup"]["error"]
    assert by_name["sample"]["provides"] == ["llm", "images"]
    assert report["config"]["sample"]["greeting"] == "***"
    assert "s3cr3t-value" not in result.stdout + result.stderr


def test_cli_config_errors_are_one_line_naming_file_table_and_key(
    tmp_path: Path, sample_plugins: Path
) -> None:
    (tmp_path / "plugins.toml").write_text("[plugins.sample]\ntimes = 'x'\n", encoding="utf-8")
    result = _mami(["plugins"], tmp_path, sample_plugins)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("mami: error:")]
    assert errors == [
        "mami: error: plugins.toml: [plugins.sample] times: expected an integer, got a string"
    ]


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[plugins.memory]\nenabled = "false"\n',
         "plugins.toml: [plugins.memory] enabled: expected true or false, got a string"),
        ("[plugins.memory]\nenabled = 0\n",
         "plugins.toml: [plugins.memory] enabled: expected true or false, got an integer"),
        ("[core]\nevent_timeout = 0\n",
         "plugins.toml: [core] event_timeout: must be greater than 0"),
        ('[core]\nlog_level = "verbose"\n',
         "plugins.toml: [core] log_level: 'verbose' is not one of critical, error, warning"),
        ("[server]\nport = 99999\n", "plugins.toml: [server] port: 99999 is not a port"),
        ("[plugins.token-ws-auth]\nticket_ttl = 100\n",
         "plugins.toml: [plugins.token-ws-auth] ticket_ttl: must be between 0 and 60"),
        ("[plugins.local-llm]\nn_ctx = -5\n",
         "plugins.toml: [plugins.local-llm] n_ctx: must be 0 (the model's own window) or "
         "more, got -5"),
        ("[plugins.local-llm]\nn_threads = -1\n",
         "plugins.toml: [plugins.local-llm] n_threads: must be 0 (half the CPUs) or more"),
        ("[plugins.local-llm]\nmax_waiting = 0\n",
         "plugins.toml: [plugins.local-llm] max_waiting: must be at least 1, got 0"),
        ("[plugins.local-llm]\nseed = -2\n",
         "plugins.toml: [plugins.local-llm] seed: must be -1 (random) or from 0"),
        ("[plugins.local-llm]\nload_timeout = 0\n",
         "plugins.toml: [plugins.local-llm] load_timeout: must be greater than 0"),
        ("[plugins.local-llm]\ncancel_timeout = -1\n",
         "plugins.toml: [plugins.local-llm] cancel_timeout: must be greater than 0"),
        ("[plugins.openai-llm]\nenabled = true\ncontext_window = 0\n",
         "plugins.toml: [plugins.openai-llm] context_window: must be at least 1, got 0"),
        ("[plugins.openai-llm]\nenabled = true\nattempts = 0\n",
         "plugins.toml: [plugins.openai-llm] attempts: must be at least 1"),
        ("[plugins.openai-llm]\nenabled = true\nread_timeout = -1.0\n",
         "plugins.toml: [plugins.openai-llm] read_timeout: must be greater than 0"),
        ("[plugins.openai-llm]\nenabled = true\nretry_budget = 0\n",
         "plugins.toml: [plugins.openai-llm] retry_budget: must be greater than 0"),
    ],
)
def test_every_config_mistake_names_the_file_table_and_key(
    tmp_path: Path, sample_plugins: Path, toml: str, message: str
) -> None:
    """A value of the wrong kind is never guessed at (``enabled = "false"`` used to
    switch the plugin on), and a range check names the file like a type check does."""
    (tmp_path / "plugins.toml").write_text(toml, encoding="utf-8")
    result = _mami(["plugins"], tmp_path, sample_plugins)
    assert result.returncode == 1, result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("mami: error:")]
    assert len(errors) == 1 and errors[0].startswith(f"mami: error: {message}"), result.stderr


@pytest.mark.parametrize("command", [["plugins"], ["chat", "hi"], ["db", "current"]])
def test_the_cli_logs_a_plugin_failure_once(tmp_path: Path, sample_plugins: Path,
                                            command: list[str]) -> None:
    """The CLI loaded the plugins to find their commands, then the command's runtime
    loaded them again: each load failure was logged twice."""
    result = _mami(command, tmp_path, sample_plugins)
    assert result.returncode == 0, result.stderr
    logged = [line for line in result.stderr.splitlines()
              if "plugin broken-import failed: import failed" in line]
    assert len(logged) == 1, result.stderr


def test_plugin_commands_appear_in_help(tmp_path: Path, sample_plugins: Path) -> None:
    help_text = _mami(["--help"], tmp_path, sample_plugins).stdout
    for command in ("serve", "db", "plugins", "sample-hello"):
        assert command in help_text
    ran = _mami(["sample-hello"], tmp_path, sample_plugins)
    assert ran.stdout.strip() == "hello from sample"


def test_mami_chat_answers_slash_commands_of_core_and_plugins(
    tmp_path: Path, sample_plugins: Path
) -> None:
    image = _mami(["chat", "/image a cat"], tmp_path, sample_plugins)
    assert image.returncode == 0, image.stderr
    reply = image.stdout.strip().splitlines()[-1]
    assert reply.startswith('Creating an image of "a cat" (job ')
    shout = _mami(["chat", "/shout hi there"], tmp_path, sample_plugins)
    assert shout.stdout.strip().splitlines()[-1] == "HI THERE"
    plain = _mami(["chat", "hi there"], tmp_path, sample_plugins)
    assert plain.stdout.strip().splitlines()[-1] == "hi there"  # the sample model echoes


def test_secrets_from_env_are_resolved_but_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_KEY", "abc123")
    config = config_from_dict({"plugins": {"sample": {"greeting": {"env": "MY_KEY"}}}})
    assert config.plugins["sample"]["greeting"] == "abc123"
    assert config.redacted()["plugins"]["sample"]["greeting"] == "***"
    monkeypatch.delenv("MY_KEY")
    with pytest.raises(ConfigError, match=r"\[plugins.sample\] greeting: environment variable"):
        config_from_dict({"plugins": {"sample": {"greeting": {"env": "MY_KEY"}}}})


async def test_a_plugin_whose_routes_litestar_rejects_degrades(make_config: Any) -> None:
    from functools import partial

    from litestar import get

    from core import hookimpl
    from core.plugins import Candidate

    @get("/bad")
    async def bad(state: Any) -> None:  # Litestar refuses an untyped `state`
        return None

    class BadRoutes:
        @hookimpl
        def register_routes(self, runtime: Any) -> list[Any]:
            return [bad]

    broken = Candidate("bad-routes", "tests", "entrypoint", True, partial(BadRoutes))
    sample = next(c for c in entrypoint_candidates() if c.name == "sample")
    app = create_app(make_config(), candidates=[broken, sample])
    async with AsyncTestClient(app, base_url="http://127.0.0.1") as client:
        health = (await client.get("/health")).json()
        hello = await client.get("/sample/hello")
    assert health["status"] == "degraded"
    assert "routes rejected" in health["plugins"]["bad-routes"]["error"]
    assert health["plugins"]["sample"]["status"] == "ok"
    assert hello.status_code == 200


def test_an_error_in_a_plugin_route_is_logged_naming_the_plugin(
    make_config: Any, live_server: Any
) -> None:
    """A plugin's route that raised was logged as "unhandled error", which named no
    plugin: the operator could not tell whose route broke."""
    import logging
    from functools import partial

    import httpx
    from litestar import Controller, get

    from core import hookimpl
    from core.plugins import Candidate

    @get("/flaky/plain")
    async def plain() -> None:
        raise RuntimeError("plain route exploded")

    class Flaky(Controller):
        path = "/flaky/controller"

        @get("/")
        async def nested(self) -> None:
            raise RuntimeError("controller route exploded")

    class FlakyRoutes:
        @hookimpl
        def register_routes(self, runtime: Any) -> list[Any]:
            return [plain, Flaky]

    flaky = Candidate("flaky-routes", "tests", "entrypoint", True, partial(FlakyRoutes))
    sample = next(c for c in entrypoint_candidates() if c.name == "sample")
    server = live_server(create_app(make_config(), candidates=[flaky, sample]))
    seen: list[logging.LogRecord] = []
    catcher = logging.Handler(logging.ERROR)
    catcher.emit = seen.append  # type: ignore[method-assign,assignment]
    logging.getLogger("mami").addHandler(catcher)
    try:
        for path in ("/flaky/plain", "/flaky/controller"):
            seen.clear()
            answer = httpx.get(server.url + path)
            assert answer.status_code == 500
            assert "exploded" not in answer.text  # the details are for the log only
            (record,) = [r for r in seen if r.name == "mami"]
            assert record.getMessage() == (f"unhandled error in a route of plugin "
                                           f"flaky-routes (GET {path})"), record.getMessage()
            assert record.exc_info and "exploded" in str(record.exc_info[1])
    finally:
        logging.getLogger("mami").removeHandler(catcher)
    assert httpx.get(server.url + "/sample/hello").status_code == 200
