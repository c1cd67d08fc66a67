"""The signing key from AWS Secrets Manager, against a stand-in that speaks its JSON
1.1 protocol on loopback (boto3 reaches it through ``AWS_ENDPOINT_URL_SECRETS_MANAGER``)."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect
from websockets.typing import Origin, Subprotocol

from core.app import create_app
from core.errors import ConfigError
from core.plugins import builtin_candidates
from tests.deploy.lambda_events import Invoker, bearer, load_handler_module

ARN = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:mami/signing-key-AbCdEf"
KEY = "shared-signing-key-of-lambda-and-server-0123456789"
ORIGIN = "https://chat.example.com"


class SecretsManager(BaseHTTPRequestHandler):
    """``GetSecretValue`` for the secrets in ``server.secrets``; records each call."""

    server: Any

    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.calls.append((self.headers["X-Amz-Target"], request,
                                  self.headers.get("Authorization", "")))
        value = self.server.secrets.get(request.get("SecretId"))
        if self.headers["X-Amz-Target"] != "secretsmanager.GetSecretValue" or value is None:
            self._send(400, {"__type": "ResourceNotFoundException",
                             "Message": "Secrets Manager can't find the specified secret."})
            return
        self._send(200, {"ARN": request["SecretId"], "Name": "mami/signing-key",
                         "VersionId": "7c8ea4b0-a1b2-4c3d-8e9f-0a1b2c3d4e5f",
                         "SecretString": value, "VersionStages": ["AWSCURRENT"],
                         "CreatedDate": 1795892638.39})

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/x-amz-json-1.1")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def secrets_manager(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    server: Any = ThreadingHTTPServer(("127.0.0.1", 0), SecretsManager)
    server.secrets, server.calls = {}, []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def test_signing_key_is_read_from_secrets_manager(secrets_manager: Any) -> None:
    secrets_manager.secrets[ARN] = "s3cret-signing-key-0123456789abcdef"
    key = load_handler_module().signing_key({"MAMI_SIGNING_KEY_SECRET_ARN": ARN})
    assert key == "s3cret-signing-key-0123456789abcdef"
    target, request, authorization = secrets_manager.calls[-1]
    assert target == "secretsmanager.GetSecretValue"
    assert request == {"SecretId": ARN}
    assert authorization.startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")


def test_missing_secret_is_a_config_error_naming_the_variable(secrets_manager: Any) -> None:
    with pytest.raises(ConfigError) as caught:
        load_handler_module().signing_key({"MAMI_SIGNING_KEY_SECRET_ARN": ARN})
    assert "MAMI_SIGNING_KEY_SECRET_ARN" in caught.value.message
    assert "ResourceNotFoundException" in caught.value.message


def test_no_arn_no_secrets_manager_call(secrets_manager: Any) -> None:
    assert load_handler_module().signing_key({"MAMI_SIGNING_KEY": "plain"}) is None
    assert secrets_manager.calls == []


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
    invoke: Invoker, token: str, lambda_env: Any, secrets_manager: Any, tmp_path: Path,
    make_config: Any, live_server: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Lambda reads the key from Secrets Manager; a server given the same key and
    database accepts the tickets Lambda issues, and a server with another key does not."""
    secrets_manager.secrets[ARN] = KEY
    lambda_env(MAMI_SIGNING_KEY_SECRET_ARN=ARN)
    issued = invoke("http-api-v2", "POST", "/api/ws-ticket", headers=bearer(token))
    assert issued.status == 201, issued.body
    assert os.environ["MAMI_SIGNING_KEY"] == KEY
    assert [call[0] for call in secrets_manager.calls] == ["secretsmanager.GetSecretValue"]

    database = tmp_path / "auth.db"
    server = serve_sockets(make_config, live_server, database)
    assert open_chat_socket(server, issued.json()["ticket"]) == {"type": "pong"}

    second = invoke("rest-api-v1", "POST", "/api/ws-ticket", headers=bearer(token)).json()
    assert len(secrets_manager.calls) == 1  # read once per execution environment
    monkeypatch.setenv("MAMI_SIGNING_KEY", "another-servers-own-signing-key-0123456789")
    other = serve_sockets(make_config, live_server, database)
    assert open_chat_socket(other, second["ticket"]) == {"closed": 4401}

