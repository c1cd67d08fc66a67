"""Driving the Lambda handler: a fresh handler module (one execution environment),
event payloads as AWS sends them, and a reader for the responses.

Shapes follow the AWS documentation examples: API Gateway HTTP API (payload 2.0), API
Gateway REST API (payload 1.0), Application Load Balancer, and Lambda function URL
(payload 2.0 with a ``lambda-url`` domain).
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import parse_qsl, quote_plus

HANDLER_PATH = Path(__file__).resolve().parents[2] / "deploy" / "lambda" / "handler.py"


def load_handler_module() -> ModuleType:
    """Import ``deploy/lambda/handler.py`` afresh, as a new execution environment would."""
    return load_by_path(HANDLER_PATH, "mami_lambda_handler")


def load_by_path(path: Path, name: str) -> ModuleType:
    """A fresh module from a file that no package path reaches (``lambda`` is a keyword)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def mami(*args: str, database_url: str, cwd: Path) -> str:
    """Run the ``mami`` CLI against ``database_url``, as an operator does; its output."""
    env = {**os.environ, "MAMI_DATABASE_URL": database_url}
    done = subprocess.run([sys.executable, "-m", "core.cli", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


SHAPES = ("http-api-v2", "rest-api-v1", "alb", "function-url")
SOURCE_IP = "198.51.100.7"


SCHEDULED_EVENT = {
    "version": "0",
    "id": "53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa",
    "detail-type": "Scheduled Event",
    "source": "aws.events",
    "account": "123456789012",
    "time": "2026-11-28T19:03:58Z",
    "region": "eu-west-1",
    "resources": ["arn:aws:events:eu-west-1:123456789012:rule/mami-image-worker"],
    "detail": {},
}


@dataclass
class LambdaContext:
    """The parts of the Lambda context object the handlers read."""

    remaining_ms: int = 900_000
    aws_request_id: str = "c6af9ac6-7b61-11e6-9a41-93e8deadbeef"
    function_name: str = "mami-image-worker"

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


@dataclass
class LambdaResponse:
    status: int
    headers: dict[str, str]
    body: bytes
    base64: bool

    def json(self) -> Any:
        return json.loads(self.body)


def make_event(
    shape: str,
    method: str,
    path: str,
    *,
    query: str = "",
    headers: dict[str, str] | None = None,
    body: bytes | str | None = None,
    base64_body: bool = False,
) -> dict[str, Any]:
    """An event of ``shape`` for one HTTP request. ``base64_body`` sends the body the way
    API Gateway does for binary media types."""
    hdrs = {"host": "api.example.com", "user-agent": "lambda-test", **(headers or {})}
    raw = body.encode() if isinstance(body, str) else body
    encoded: str | None = None
    if raw is not None:
        encoded = base64.b64encode(raw).decode() if base64_body else raw.decode()
    if shape in ("http-api-v2", "function-url"):
        return _v2_event(shape, method, path, query, hdrs, encoded, base64_body)
    if shape == "rest-api-v1":
        return _v1_event(method, path, query, hdrs, encoded, base64_body)
    if shape == "alb":
        return _alb_event(method, path, query, hdrs, encoded, base64_body)
    raise ValueError(shape)


def forwarded_for(headers: dict[str, str], seen: str = SOURCE_IP) -> str:
    """``X-Forwarded-For`` as AWS passes it on: what the caller sent, plus the address
    API Gateway, the function URL or the ALB saw (``seen``)."""
    sent = headers.get("x-forwarded-for")
    return f"{sent}, {seen}" if sent else seen


def _v2_event(
    shape: str, method: str, path: str, query: str, headers: dict[str, str],
    body: str | None, is_b64: bool,
) -> dict[str, Any]:
    domain = (
        "abcdefghijklmnopqrstuvwxyz123456.lambda-url.eu-west-1.on.aws"
        if shape == "function-url" else "r3pmxmplak.execute-api.eu-west-1.amazonaws.com"
    )
    headers = {**headers, "host": domain, "x-forwarded-for": forwarded_for(headers),
               "x-forwarded-proto": "https", "x-forwarded-port": "443"}
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": query,
        "headers": headers,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": domain.split(".")[0],
            "domainName": domain,
            "domainPrefix": domain.split(".")[0],
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": SOURCE_IP,
                "userAgent": headers["user-agent"],
            },
            "requestId": "JKJaXmPLvHcESHA=",
            "routeKey": "$default",
            "stage": "$default",
            "time": "28/Nov/2026:19:03:58 +0000",
            "timeEpoch": 1795892638390,
        },
        "isBase64Encoded": is_b64,
    }
    if query:
        event["queryStringParameters"] = dict(parse_qsl(query))
    if body is not None:
        event["body"] = body
    return event


def _v1_event(
    method: str, path: str, query: str, headers: dict[str, str], body: str | None,
    is_b64: bool,
) -> dict[str, Any]:
    params = parse_qsl(query)
    sent = forwarded_for(headers)
    headers = {k: v for k, v in headers.items() if k != "x-forwarded-for"}
    headers = {**headers, "X-Forwarded-For": sent, "X-Forwarded-Proto": "https"}
    return {
        "resource": "/{proxy+}",
        "path": path,
        "httpMethod": method,
        "headers": headers,
        "multiValueHeaders": {k: [v] for k, v in headers.items()},
        "queryStringParameters": dict(params) or None,
        "multiValueQueryStringParameters": {k: [v] for k, v in params} or None,
        "pathParameters": {"proxy": path.lstrip("/")},
        "stageVariables": None,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "1234567890",
            "resourceId": "123456",
            "resourcePath": "/{proxy+}",
            "httpMethod": method,
            "path": f"/prod{path}",
            "stage": "prod",
            "protocol": "HTTP/1.1",
            "requestId": "c6af9ac6-7b61-11e6-9a41-93e8deadbeef",
            "requestTimeEpoch": 1795892638390,
            "identity": {"sourceIp": SOURCE_IP, "userAgent": headers["user-agent"]},
        },
        "body": body,
        "isBase64Encoded": is_b64,
    }


def _alb_event(
    method: str, path: str, query: str, headers: dict[str, str], body: str | None,
    is_b64: bool,
) -> dict[str, Any]:
    return {
        "requestContext": {
            "elb": {
                "targetGroupArn": "arn:aws:elasticloadbalancing:eu-west-1:123456789012:"
                "targetgroup/mami/6d0ecf831eec9f09"
            }
        },
        "httpMethod": method,
        "path": path,
        # ALB passes the query string still URL-encoded
        "queryStringParameters": {quote_plus(k): quote_plus(v) for k, v in parse_qsl(query)},
        "headers": {**headers, "x-forwarded-for": forwarded_for(headers),
                    "x-forwarded-proto": "https", "x-forwarded-port": "443"},
        "body": body or "",
        "isBase64Encoded": is_b64,
    }


def read_response(response: dict[str, Any]) -> LambdaResponse:
    """Status, headers (lower-cased, multi-value joined) and the decoded body."""
    headers = {k.lower(): v for k, v in (response.get("headers") or {}).items()}
    for key, values in (response.get("multiValueHeaders") or {}).items():
        headers[key.lower()] = ", ".join(values)
    is_b64 = bool(response.get("isBase64Encoded"))
    text = response.get("body") or ""
    body = base64.b64decode(text) if is_b64 else text.encode()
    return LambdaResponse(int(response["statusCode"]), headers, body, is_b64)


API_TIMEOUT_MS = 29_000  # the API function's timeout in template.yaml


class Invoker:
    """Calls the handler the way the Lambda runtime does: ``handler(event, context)``,
    with a context that has ``remaining_ms`` left (the function's whole timeout)."""

    def __init__(self, module: ModuleType) -> None:
        self.module = module
        self.remaining_ms = API_TIMEOUT_MS

    def __call__(self, shape: str, method: str, path: str, **kwargs: Any) -> LambdaResponse:
        context = LambdaContext(self.remaining_ms, function_name="mami-api")
        raw = self.module.handler(make_event(shape, method, path, **kwargs), context)
        return read_response(raw)

    @property
    def runtime(self) -> Any:
        return self.module._app.state.runtime

    def worker(self, context: LambdaContext | None = None) -> dict[str, Any]:
        """The scheduled worker function, in the same execution environment."""
        return self.module.worker(dict(SCHEDULED_EVENT), context or LambdaContext())  # type: ignore[no-any-return]
