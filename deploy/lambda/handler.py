"""AWS Lambda entry point: the mami app behind Mangum.

Lambda handler settings: ``deploy/lambda/handler.handler`` (the HTTP API) and
``deploy/lambda/handler.worker`` (image jobs, on a schedule). The app is built on the first
invocation and kept for the life of the execution environment; Mangum runs with
``lifespan="off"`` because it would otherwise enter the app's lifespan on every
invocation. The runtime starts lazily on the first request (``serverless=True``).

Configuration comes only from environment variables:

- ``MAMI_DATABASE_URL``: the database (PostgreSQL for anything beyond a demo).
- ``MAMI__<TABLE>__<KEY>`` for ``[core]``, ``[server]`` and ``[budget]`` settings, and
  ``MAMI__PLUGINS__<PLUGIN>__<KEY>`` for plugin settings (``OPENAI_LLM`` names the
  plugin ``openai-llm``; ``ENABLED`` switches it). Values are converted to the
  setting's type (``true``/``false``, numbers, JSON lists).
- The shortcuts in :data:`ALIASES` (``MAMI_LLM_BASE_URL``, ``MAMI_CHROMA_URL``, ...);
  setting one also enables its plugin unless ``MAMI__PLUGINS__<PLUGIN>__ENABLED`` says no.
- Secrets: each variable in :data:`SECRET_VARIABLES` may instead be given as
  ``<VARIABLE>_SECRET_ARN``, the ARN of a Secrets Manager secret or of an SSM Parameter
  Store parameter (``SecureString`` is decrypted), optionally ending ``#<key>`` to take one
  key of a JSON secret (``#password`` of an RDS secret). It is read once per execution
  environment, with short connect and read timeouts, and put where the app reads the
  variable; a failure names the variable and the ARN. ``MAMI_DATABASE_PASSWORD`` goes
  into ``MAMI_DATABASE_URL``. boto3 (part of the Lambda runtime) is imported only then.

Every HTTP request gets a deadline: the time the Lambda context has left, less
:data:`DEADLINE_MARGIN_SECONDS`. A request still running then is cancelled (a chat reply
in progress is stored ``interrupted``, never left ``streaming``) and answered with mami's
JSON error, 504, before Lambda or API Gateway cut it off.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import types
import typing
from collections.abc import Mapping, MutableMapping
from dataclasses import fields
from typing import Any

# httpx imports its command-line tool (and with it rich, click and pygments) when they
# are installed (the image leaves them out; a full environment has them): 100-350 ms of a
# cold start for a tool a function never runs. A None entry makes that import fail, and
# httpx falls back.
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]

from mangum import Mangum  # noqa: E402
from mangum.types import Message, Receive, Scope, Send  # noqa: E402

from core.app import create_app  # noqa: E402
from core.config import BudgetSettings, Config, CoreSettings, ServerSettings, config_from_dict  # noqa: E402
from core.errors import ConfigError, error_body  # noqa: E402
from core.plugins import Candidate, builtin_candidates, entrypoint_candidates  # noqa: E402
from core.runtime import Runtime  # noqa: E402

log = logging.getLogger("mami")

PREFIX = "MAMI__"
SECRET_SUFFIX = "_SECRET_ARN"
DATABASE_PASSWORD = "MAMI_DATABASE_PASSWORD"
# Variables that may hold a secret, and so may come from <VARIABLE>_SECRET_ARN instead.
SECRET_VARIABLES = ("MAMI_DATABASE_URL", DATABASE_PASSWORD, "MAMI_LLM_API_KEY",
                    "MAMI_CHROMA_TOKEN", "MAMI_FORGE_USERNAME", "MAMI_FORGE_PASSWORD",
                    "MAMI_SIGNING_KEY")
# A VPC without a route to the secrets API must fail the cold start in seconds, naming the
# secret, not hang until the function times out.
SECRET_CONNECT_TIMEOUT = 2.0
SECRET_READ_TIMEOUT = 3.0
SECRET_ATTEMPTS = 2

# Proxies in front of the event source (CloudFront, ...) whose X-Forwarded-For entries
# are trusted: 0 trusts only what AWS itself saw.
FORWARDED_HOPS = "MAMI_FORWARDED_HOPS"

# Time kept back from the Lambda deadline to store an interrupted reply and answer.
DEADLINE_MARGIN_SECONDS = 2.5

# A synchronous invocation's response may be at most 6 MB; a larger one reaches the
# caller as a bare gateway error. Headroom for the headers and the JSON around the body.
RESPONSE_LIMIT_BYTES = 6 * 1024 * 1024
RESPONSE_HEADROOM_BYTES = 64 * 1024

# environment variable: (plugin, setting)
ALIASES: dict[str, tuple[str, str]] = {
    "MAMI_LLM_BASE_URL": ("openai-llm", "base_url"),
    "MAMI_LLM_API_KEY": ("openai-llm", "api_key"),
    "MAMI_LLM_MODEL": ("openai-llm", "model"),
    "MAMI_CHROMA_URL": ("chroma-rag", "chroma_url"),
    "MAMI_CHROMA_TOKEN": ("chroma-rag", "chroma_token"),
    "MAMI_FORGE_URL": ("forge-image", "url"),
    "MAMI_FORGE_USERNAME": ("forge-image", "username"),
    "MAMI_FORGE_PASSWORD": ("forge-image", "password"),
}
AUTH_PLUGIN = "token-ws-auth"
DEFAULT_SIGNING_KEY_ENV = "MAMI_SIGNING_KEY"

CORE_TABLES: dict[str, type] = {
    "core": CoreSettings,
    "server": ServerSettings,
    "budget": BudgetSettings,
}

# What a Lambda execution environment cannot do: keep files (only /tmp, per instance),
# run work after the response, serve WebSockets, or load a local model in time. Plugins
# that need these are off unless MAMI__PLUGINS__<PLUGIN>__ENABLED says otherwise, or
# until the variable named here (their server) is set.
LAMBDA_CORE_DEFAULTS: dict[str, Any] = {"data_dir": "/tmp/mami", "image_worker": False}
LAMBDA_OFF_UNLESS: dict[str, str | None] = {
    "local-llm": None,
    "web-ui": None,
    "chroma-rag": "MAMI_CHROMA_URL",
    "memory": "MAMI_CHROMA_URL",  # uses chroma-rag's server unless given its own
}
# Plugins that cannot work without their server: off without it, and switching one on
# anyway is an error (forge-image would make every image job a placeholder).
LAMBDA_NEEDS: dict[str, str] = {"forge-image": "MAMI_FORGE_URL"}

# The worker claims no job it could not finish before Lambda stops it (a job cut off
# would wait for its lease to expire): one job may take the image generator's
# ``deadline`` setting, plus this margin for storing it and running callbacks.
WORKER_MARGIN_SECONDS = 20.0
DEFAULT_JOB_SECONDS = 180.0

_mangum: Mangum | None = None
_app: Any = None
_worker_runtime: Runtime | None = None


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """The Lambda handler: build the app on first use, then let Mangum serve ``event``."""
    global _mangum, _app
    if _mangum is None:
        candidates = builtin_candidates() + entrypoint_candidates()  # found once
        hops = forwarded_hops(os.environ)
        _app = create_app(lambda_config(os.environ, candidates), candidates=candidates,
                          serverless=True)
        _mangum = Mangum(RequestDeadline(TrustedClient(_app, hops)), lifespan="off")
    return fit_response(_mangum(event, context))


def fit_response(response: dict[str, Any]) -> dict[str, Any]:
    """``response``, or when its body would break Lambda's 6 MB response limit, a 502 in
    mami's error shape that says so and how to avoid it (images in S3)."""
    size = len(response.get("body") or "")
    if size <= RESPONSE_LIMIT_BYTES - RESPONSE_HEADROOM_BYTES:
        return response
    message = (f"the response ({size / 1e6:.1f} MB as sent) is larger than the 6 MB an AWS "
               "Lambda function may return; for images set [core] image_store to an S3 "
               "bucket (answers are then redirects to presigned URLs)")
    log.warning("%s", message)
    body = json.dumps(error_body(502, message, code="response_too_large"))
    fitted = {key: value for key, value in response.items()
              if key not in ("headers", "multiValueHeaders", "body")}
    headers_key = "multiValueHeaders" if "multiValueHeaders" in response else "headers"
    content_type = "application/json"
    fitted.update({"statusCode": 502, "body": body, "isBase64Encoded": False,
                   headers_key: {"content-type": [content_type] if headers_key ==
                                 "multiValueHeaders" else content_type}})
    return fitted


def forwarded_hops(environ: Mapping[str, str]) -> int:
    """``MAMI_FORWARDED_HOPS`` (default 0); ConfigError naming it when it is not a count."""
    value = environ.get(FORWARDED_HOPS, "").strip() or "0"
    if not value.isdigit():
        raise ConfigError(f"{FORWARDED_HOPS}: expected a number of proxies (0 or more), "
                          f"got {value!r}")
    return int(value)


def client_address(event: Mapping[str, Any], hops: int) -> str | None:
    """The caller's address for rate limits: the address AWS saw (API Gateway's and
    function URLs' ``sourceIp``; for an ALB the last ``X-Forwarded-For`` entry, which the
    ALB appends), or with ``hops`` trusted proxies in front, the entry that many places
    to its left. Entries further left are the client's own claims and never used."""
    headers = {k.lower(): v for k, v in (event.get("headers") or {}).items()}
    for key, values in (event.get("multiValueHeaders") or {}).items():
        headers.setdefault(key.lower(), ", ".join(values))
    chain = [hop.strip() for hop in headers.get("x-forwarded-for", "").split(",") if hop.strip()]
    context = event.get("requestContext") or {}
    seen = (context.get("http") or {}).get("sourceIp") or (
        context.get("identity") or {}).get("sourceIp")
    if seen and (not chain or chain[-1] != seen):
        chain.append(seen)
    if not chain:
        return None
    return chain[max(0, len(chain) - 1 - hops)]


class TrustedClient:
    """ASGI wrapper: the scope's client is :func:`client_address` of the Lambda event
    (Mangum passes an ALB's whole ``X-Forwarded-For`` header through, first hop
    included, which any caller can write)."""

    def __init__(self, app: Any, hops: int) -> None:
        self.app = app
        self.hops = hops

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        event = scope.get("aws.event")
        if scope["type"] == "http" and event is not None:
            address = client_address(event, self.hops)
            scope = {**scope, "client": (address, 0) if address else None}  # type: ignore[typeddict-item]
        await self.app(scope, receive, send)


class RequestDeadline:
    """ASGI wrapper that ends every HTTP request before its Lambda invocation does.

    The budget is ``context.get_remaining_time_in_millis()`` (Mangum puts the context in
    the scope as ``aws.context``) less ``margin`` seconds. When it runs out the request is
    cancelled, which lets the app store what it was doing as interrupted, and the client
    gets a 504 in mami's error shape instead of API Gateway's bare 503/504. Without a
    context (not on Lambda) requests run unbounded, as before."""

    def __init__(self, app: Any, margin: float = DEADLINE_MARGIN_SECONDS) -> None:
        self.app = app
        self.margin = margin

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        context = scope.get("aws.context")
        if scope["type"] != "http" or context is None:
            await self.app(scope, receive, send)
            return
        budget = max(0.0, context.get_remaining_time_in_millis() / 1000 - self.margin)
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        timeout = asyncio.timeout(budget)
        try:
            async with timeout:
                await self.app(scope, receive, tracked)
        except TimeoutError:
            if not timeout.expired():
                raise
            log.warning("%s %s ran out of time after %.1f s", scope["method"], scope["path"],
                        budget)
            if started:  # headers are out: end the body so Mangum returns what it has
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            message = (f"the request did not finish within the {budget:.1f} s this "
                       "deployment allows; retry, ask for a shorter answer (max_tokens), "
                       "or use the server deployment")
            body = json.dumps(error_body(504, message, code="deadline_exceeded")).encode()
            await send({"type": "http.response.start", "status": 504,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body, "more_body": False})


def worker(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """The scheduled image worker: run queued image jobs until the queue is empty or
    the time left could not fit another job. Returns what it did (for the logs)."""
    global _worker_runtime
    if _worker_runtime is None:
        _worker_runtime = Runtime(lambda_config(os.environ), serverless=True)
    return _event_loop().run_until_complete(run_image_jobs(_worker_runtime, context))


async def run_image_jobs(runtime: Runtime, context: Any) -> dict[str, Any]:
    from core.jobs import ImageWorker

    await runtime.ensure_started()
    runtime.require("images")
    image_worker = ImageWorker(runtime)
    job_seconds = job_time_limit(runtime)
    while context.get_remaining_time_in_millis() / 1000 > job_seconds:
        if await image_worker.run_once() is None:
            break
    await image_worker.drain()
    return {"processed": image_worker.processed, "completed": image_worker.completed}


def job_time_limit(runtime: Runtime) -> float:
    """Seconds one image job may need: the active generator's plugin ``deadline``."""
    plugin = runtime.provider_plugin.get(id(runtime.images), "")
    deadline = getattr(runtime.settings(plugin), "deadline", DEFAULT_JOB_SECONDS)
    return float(deadline) + WORKER_MARGIN_SECONDS


def _event_loop() -> asyncio.AbstractEventLoop:
    """The loop Mangum uses too: the current one, made once per execution environment."""
    try:
        loop = asyncio.get_event_loop()
    except RuntimeError:
        loop = None
    if loop is None or loop.is_closed():
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
    return loop


def lambda_config(
    environ: MutableMapping[str, str], candidates: list[Candidate] | None = None
) -> Config:
    """:func:`config_from_env`, after the secrets named by ``*_SECRET_ARN`` variables are
    read (once) and stored in ``environ`` where the app reads them: the signing key under
    the name token-ws-auth reads, a database password inside ``MAMI_DATABASE_URL``."""
    secrets = read_secrets(environ)
    key = secrets.pop("MAMI_SIGNING_KEY", None)
    password = secrets.pop(DATABASE_PASSWORD, None)
    environ.update(secrets)
    if password is not None:
        environ["MAMI_DATABASE_URL"] = with_password(environ.get("MAMI_DATABASE_URL", ""),
                                                     password)
    config = config_from_env(environ, candidates)
    if key:
        auth_table = config.plugins.get(AUTH_PLUGIN, {})
        environ[auth_table.get("signing_key_env", DEFAULT_SIGNING_KEY_ENV)] = key
    return config


def with_password(url: str, password: str) -> str:
    """``url`` with its password replaced (quoted as URLs need)."""
    from sqlalchemy.engine import make_url

    if not url:
        raise ConfigError(f"{DATABASE_PASSWORD}{SECRET_SUFFIX} needs MAMI_DATABASE_URL "
                          "(without the password)")
    return make_url(url).set(password=password).render_as_string(hide_password=False)


def config_from_env(
    environ: Mapping[str, str], installed: list[Candidate] | None = None
) -> Config:
    """A :class:`Config` built from environment variables only (see the module doc), for
    the ``installed`` plugins (default: the built-in and entry-point ones).

    Raises :class:`ConfigError` naming the variable when a value cannot be used.
    """
    if installed is None:
        installed = builtin_candidates() + entrypoint_candidates()
    candidates = {c.name: c for c in installed}
    raw: dict[str, Any] = {"core": dict(LAMBDA_CORE_DEFAULTS), "plugins": {}}
    for variable, value in sorted(environ.items()):
        target = _target_of(variable, candidates)
        if target is None or (variable in ALIASES and not value):
            continue  # empty shortcuts are template parameters left blank
        table, key = target
        hint = _hint(table, key, candidates)
        section = raw["plugins"] if table.startswith("plugins.") else raw
        name = table.removeprefix("plugins.")
        section.setdefault(name, {})[key] = _convert(value, hint, variable)
    for variable, (plugin, _key) in ALIASES.items():
        if environ.get(variable) and plugin in candidates:
            raw["plugins"][plugin].setdefault("enabled", True)
    for name, switch in LAMBDA_OFF_UNLESS.items():
        if name in candidates:
            wanted = bool(switch and environ.get(switch))
            raw["plugins"].setdefault(name, {}).setdefault("enabled", wanted)
    for name, variable in LAMBDA_NEEDS.items():
        if name in candidates and not environ.get(variable):
            table = raw["plugins"].setdefault(name, {})
            if table.get("enabled"):
                switch = f"{PREFIX}PLUGINS__{name.upper().replace('-', '_')}__ENABLED"
                raise ConfigError(f"{switch}=true needs {variable}: without its server "
                                  f"{name} cannot work")
            table["enabled"] = False
    return config_from_dict(raw)


def _target_of(variable: str, candidates: Mapping[str, Candidate]) -> tuple[str, str] | None:
    """``(table, key)`` that an environment variable sets, or ``None`` if it is not ours."""
    if variable in ALIASES:
        plugin, key = ALIASES[variable]
        return (f"plugins.{plugin}", key) if plugin in candidates else None
    if not variable.startswith(PREFIX):
        return None
    parts = variable[len(PREFIX):].split("__")
    if len(parts) == 2 and parts[0].lower() in CORE_TABLES:
        return parts[0].lower(), parts[1].lower()
    if len(parts) == 3 and parts[0] == "PLUGINS":
        return f"plugins.{parts[1].lower().replace('_', '-')}", parts[2].lower()
    raise ConfigError(
        f"{variable}: expected MAMI__<CORE|SERVER|BUDGET>__<KEY> or "
        "MAMI__PLUGINS__<PLUGIN>__<KEY>"
    )


def _hint(table: str, key: str, candidates: Mapping[str, Candidate]) -> Any:
    """The declared type of a setting, or ``str`` when it is unknown (config_from_dict
    then reports unknown tables and keys by name)."""
    if key == "enabled":
        return bool
    if table in CORE_TABLES:
        schema: Any = CORE_TABLES[table]
    else:
        candidate = candidates.get(table.removeprefix("plugins."))
        try:
            schema = getattr(candidate.load(), "Settings", None) if candidate else None
        except Exception:  # the plugin host reports import failures by name
            schema = None
    if schema is None or key not in {f.name for f in fields(schema)}:
        return str
    return typing.get_type_hints(schema)[key]


def _convert(value: str, hint: Any, variable: str) -> Any:
    """Turn an environment string into a value of type ``hint``."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        options = [h for h in typing.get_args(hint) if h is not type(None)]
        hint = options[0] if len(options) == 1 else str
    if hint is bool:
        lowered = value.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{variable}: expected true or false, got {value!r}")
    if hint in (int, float):
        try:
            return hint(value)
        except ValueError:
            raise ConfigError(f"{variable}: expected a number, got {value!r}") from None
    if typing.get_origin(hint) in (list, dict) or hint in (list, dict):
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{variable}: expected JSON: {exc}") from None
    return value


def read_secrets(environ: Mapping[str, str]) -> dict[str, str]:
    """``{variable: value}`` for each variable of :data:`SECRET_VARIABLES` given as
    ``<variable>_SECRET_ARN``; each ARN is read once. Raises :class:`ConfigError` naming
    the variable and the ARN when a secret cannot be read or is empty."""
    values: dict[str, str] = {}
    read: dict[str, Any] = {}
    for variable in SECRET_VARIABLES:
        reference = environ.get(variable + SECRET_SUFFIX, "").strip()
        if not reference:
            continue
        arn, _, key = reference.partition("#")
        where = f"{variable}{SECRET_SUFFIX}={reference}"
        if arn not in read:
            read[arn] = fetch_secret(arn, where)
        value = read[arn]
        if key:
            try:
                value = json.loads(value)[key]
            except (ValueError, TypeError, KeyError):
                raise ConfigError(f"{where}: the secret is not a JSON object with the key "
                                  f"{key!r}") from None
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{where}: the secret is empty")
        values[variable] = value
    return values


def fetch_secret(arn: str, where: str) -> str:
    """The text of a Secrets Manager secret or SSM parameter (decrypted) named by ARN,
    read with :data:`SECRET_CONNECT_TIMEOUT`, :data:`SECRET_READ_TIMEOUT` and at most
    :data:`SECRET_ATTEMPTS` attempts."""
    parts = arn.split(":")
    service = parts[2] if len(parts) > 5 and parts[0] == "arn" else ""
    if service not in ("secretsmanager", "ssm"):
        raise ConfigError(f"{where}: expected the ARN of a Secrets Manager secret "
                          "(arn:aws:secretsmanager:...) or an SSM parameter (arn:aws:ssm:...)")
    import boto3  # only deployments that keep secrets in AWS pay for boto3
    from botocore.config import Config as BotoConfig

    config = BotoConfig(connect_timeout=SECRET_CONNECT_TIMEOUT,
                        read_timeout=SECRET_READ_TIMEOUT,
                        retries={"total_max_attempts": SECRET_ATTEMPTS, "mode": "standard"})
    try:
        client = boto3.client(service, region_name=parts[3] or None, config=config)
        if service == "ssm":
            return str(client.get_parameter(Name=arn, WithDecryption=True)["Parameter"]["Value"])
        answer = client.get_secret_value(SecretId=arn)
    except Exception as exc:
        raise ConfigError(f"{where}: cannot read the secret: {type(exc).__name__}: {exc}"
                          ) from exc
    if "SecretString" not in answer:
        raise ConfigError(f"{where}: the secret has no SecretString (binary secrets are "
                          "not supported)")
    return str(answer["SecretString"])
