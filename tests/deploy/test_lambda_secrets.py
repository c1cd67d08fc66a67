"""The signing key from AWS Secrets Manager, against a stand-in that speaks its JSON
1.1 protocol on loopback (boto3 reaches it through ``AWS_ENDPOINT_URL_SECRETS_MANAGER``)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from core.errors import ConfigError
from tests.deploy.lambda_events import load_handler_module

ARN = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:mami/signing-key-AbCdEf"


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
