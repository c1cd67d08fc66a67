"""Secrets from AWS Secrets Manager and SSM Parameter Store, read by the handler with
boto3 from moto's server on loopback (``AWS_ENDPOINT_URL``), and from a socket that
never answers (a VPC without a route to the secrets API)."""

from __future__ import annotations

import json
import os
import socket
import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect
from websockets.typing import Origin, Subprotocol

from core.app import create_app
from core.errors import ConfigError
from core.plugins import builtin_candidates
from tests.deploy.lambda_events import Invoker, bearer, load_handler_module

REGION = "eu-west-1"
KEY = "shared-signing-key-of-lambda-and-server-0123456789"
ORIGIN = "https://chat.example.com"
MISSING = f"arn:aws:secretsmanager:{REGION}:123456789012:secret:mami/nothing-AbCdEf"


def put_secret(aws: Any, name: str, value: str) -> str:
    return str(aws.client("secretsmanager").create_secret(Name=name, SecretString=value)["ARN"])


def put_parameter(aws: Any, name: str, value: str) -> str:
    ssm = aws.client("ssm")
    ssm.put_parameter(Name=name, Value=value, Type="SecureString")
    return str(ssm.get_parameter(Name=name)["Parameter"]["ARN"])


def test_every_secret_setting_comes_from_secrets_manager_or_ssm(aws: Any) -> None:
    rds = put_secret(aws, "rds!db-mami", json.dumps({"username": "mami", "password": "p@ss:/w rd"}))
    llm = put_parameter(aws, "/mami/llm-api-key", "sk-test-0123")
    chroma = put_secret(aws, "mami/chroma-token", "chroma-token-xyz")
    forge = put_secret(aws, "mami/forge", json.dumps({"username": "forge", "password": "gpu"}))
    signing = put_secret(aws, "mami/signing-key", KEY)
    environ = {
        "MAMI_DATABASE_URL": "postgresql+psycopg://mami@db.internal:5432/mami",
        "MAMI_DATABASE_PASSWORD_SECRET_ARN": rds + "#password",
        "MAMI_LLM_BASE_URL": "http://llm.internal:8080/v1",
        "MAMI_LLM_API_KEY_SECRET_ARN": llm,
        "MAMI_CHROMA_URL": "http://chroma.internal:8000",
        "MAMI_CHROMA_TOKEN_SECRET_ARN": chroma,
        "MAMI_FORGE_URL": "http://forge.internal:7860",
        "MAMI_FORGE_USERNAME_SECRET_ARN": forge + "#username",
        "MAMI_FORGE_PASSWORD_SECRET_ARN": forge + "#password",
        "MAMI_SIGNING_KEY_SECRET_ARN": signing,
    }
    config = load_handler_module().lambda_config(environ)
    url = make_url(environ["MAMI_DATABASE_URL"])  # quoted: "@", ":" and "/" survive
    assert (url.username, url.password, url.host, url.database) == (
        "mami", "p@ss:/w rd", "db.internal", "mami")
    assert config.plugins["openai-llm"]["api_key"] == "sk-test-0123"
    assert config.plugins["chroma-rag"]["chroma_token"] == "chroma-token-xyz"
    assert (config.plugins["forge-image"]["username"],
            config.plugins["forge-image"]["password"]) == ("forge", "gpu")
    assert environ["MAMI_SIGNING_KEY"] == KEY


def test_a_missing_secret_names_the_variable_and_the_arn(aws: Any) -> None:
    with pytest.raises(ConfigError) as caught:
        load_handler_module().read_secrets({"MAMI_LLM_API_KEY_SECRET_ARN": MISSING})
    message = caught.value.message
    assert "MAMI_LLM_API_KEY_SECRET_ARN" in message and MISSING in message
    assert "ResourceNotFoundException" in message


def test_a_json_key_that_is_not_there_is_named(aws: Any) -> None:
    arn = put_secret(aws, "mami/plain", "not json")
    with pytest.raises(ConfigError) as caught:
        load_handler_module().read_secrets({"MAMI_DATABASE_PASSWORD_SECRET_ARN": arn + "#password"})
    assert "MAMI_DATABASE_PASSWORD_SECRET_ARN" in caught.value.message
    assert "'password'" in caught.value.message


def test_not_an_arn_is_refused_before_any_call(aws: Any) -> None:
    with pytest.raises(ConfigError) as caught:
        load_handler_module().read_secrets({"MAMI_CHROMA_TOKEN_SECRET_ARN": "mami/chroma"})
    assert "MAMI_CHROMA_TOKEN_SECRET_ARN=mami/chroma" in caught.value.message
    assert "arn:aws:secretsmanager" in caught.value.message


def test_no_arn_no_call(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens
    assert load_handler_module().read_secrets({"MAMI_SIGNING_KEY": "plain"}) == {}


class SilentEndpoint:
    """Accepts connections, reads the request and never answers; counts connections."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.connections: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.connections:
            conn.close()


def test_a_secrets_api_that_never_answers_fails_fast_naming_the_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Bounded by the handler's read timeout and attempts, not by the function timeout."""
    endpoint = SilentEndpoint()
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint.url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "10")  # the handler's own limit wins
    handler = load_handler_module()
    handler.SECRET_READ_TIMEOUT = 0.5
    arn = f"arn:aws:secretsmanager:{REGION}:123456789012:secret:mami/signing-key-AbCdEf"
    try:
        with pytest.raises(ConfigError) as caught:
            handler.lambda_config({"MAMI_SIGNING_KEY_SECRET_ARN": arn})
    finally:
        endpoint.close()
    message = caught.value.message
    assert f"MAMI_SIGNING_KEY_SECRET_ARN={arn}" in message
    assert "ReadTimeoutError" in message
    assert len(endpoint.connections) == handler.SECRET_ATTEMPTS


def serve_sockets(make_config: Any, live_server: Any, database: Path) -> Any:
    """A server deployment (uvicorn) of token-ws-auth on the Lambda's database."""
    config = make_config(core={"auth": True, "database_url": f"sqlite:///{database}"},
                         plugins={"token-ws-auth": {"allowed_origins": [ORIGIN]}})
    candidates = [c for c in builtin_candidates() if c.name == "token-ws-auth"]
    return live_server(create_app(config, candidates=candidates))


def open_chat_socket(server: Any, ticket: str) -> dict[str, Any]:
    """Open /ws/chat with the ticket; the answer to a ping, or the close code."""
    with connect(server.ws_url + "/ws/chat", origin=Origin(ORIGIN),
                 subprotocols=[Subprotocol("mami.v1"), Subprotocol(f"mami.ticket.{ticket}")],
                 open_timeout=15) as socket_:
        try:
            socket_.send(json.dumps({"type": "ping"}))
            return json.loads(socket_.recv(timeout=15))  # type: ignore[no-any-return]
        except ConnectionClosed as closed:
            return {"closed": closed.rcvd.code if closed.rcvd else None}


def test_ticket_from_lambda_opens_a_socket_on_the_server_deployment(
    invoke: Invoker, token: str, lambda_env: Any, aws: Any, tmp_path: Path,
    make_config: Any, live_server: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Lambda reads the key from Secrets Manager once per execution environment; a
    server given the same key and database accepts the tickets Lambda issues, and a
    server with another key does not."""
    arn = put_secret(aws, "mami/signing-key", KEY)
    lambda_env(MAMI_SIGNING_KEY_SECRET_ARN=arn)
    issued = invoke("http-api-v2", "POST", "/api/ws-ticket", headers=bearer(token))
    assert issued.status == 201, issued.body
    assert os.environ["MAMI_SIGNING_KEY"] == KEY

    database = tmp_path / "auth.db"
    server = serve_sockets(make_config, live_server, database)
    assert open_chat_socket(server, issued.json()["ticket"]) == {"type": "pong"}

    aws.client("secretsmanager").delete_secret(SecretId=arn, ForceDeleteWithoutRecovery=True)
    second = invoke("rest-api-v1", "POST", "/api/ws-ticket", headers=bearer(token))
    assert second.status == 201  # not read again: the deleted secret is not missed
    monkeypatch.setenv("MAMI_SIGNING_KEY", "another-servers-own-signing-key-0123456789")
    other = serve_sockets(make_config, live_server, database)
    assert open_chat_socket(other, second.json()["ticket"]) == {"closed": 4401}
