"""The Lambda deployment as documented, on PostgreSQL: schema and token made with the
CLI, then chat, documents (Chroma server) and an image job (scheduled worker, PNG
base64) through the handler, everything stored in the one database."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.chat_support import LlamaServer, StandIn
from tests.deploy.lambda_events import Invoker, bearer, mami
from tests.forge_standin import ForgeStandIn
from tests.plugins.chroma_rag.conftest import ChromaServer


def rows(postgres_url: str, table: str) -> int:
    dsn = postgres_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn) as conn:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # type: ignore[index]


@pytest.mark.postgres
def test_deployment_flow_on_postgres(
    invoke: Invoker, lambda_env: Any, postgres_url: str, tmp_path: Path,
    llama_server: LlamaServer, chroma: ChromaServer, forge: ForgeStandIn,
) -> None:
    mami("db", "upgrade", database_url=postgres_url, cwd=tmp_path)
    token = mami("token", "create", "--owner", "alice", database_url=postgres_url,
                 cwd=tmp_path).strip().splitlines()[-1]
    lambda_env(MAMI_DATABASE_URL=postgres_url, MAMI__CORE__AUTH="true",
               MAMI_LLM_BASE_URL=llama_server.url, MAMI_LLM_MODEL="smollm2",
               MAMI__PLUGINS__OPENAI_LLM__CONTEXT_WINDOW="2048",
               MAMI_CHROMA_URL=chroma.url, MAMI__PLUGINS__CHROMA_RAG__COLLECTION_PREFIX="pg-rag",
               MAMI__PLUGINS__MEMORY__COLLECTION_PREFIX="pg-mem",
               MAMI_FORGE_URL=forge.url, MAMI__CORE__IMAGE_DIR=str(tmp_path / "efs"))
    json_headers = {**bearer(token), "content-type": "application/json"}

    chat = invoke("http-api-v2", "POST", "/v1/chat/completions", headers={
        **json_headers, "x-mami-conversation": "new"}, body=json.dumps({
            "messages": [{"role": "user", "content": "Name a fruit."}], "max_tokens": 8,
            "temperature": 0}))
    assert chat.status == 200, chat.body
    assert rows(postgres_url, "messages") == 2

    upload = invoke("rest-api-v1", "POST", "/api/documents", headers=json_headers,
                    body=json.dumps({"source": "pg.txt", "text": "The vault opens at dawn."}))
    assert upload.status == 201, upload.body
    found = invoke("alb", "POST", "/api/search", headers=json_headers,
                   body=json.dumps({"query": "when does the vault open?"})).json()
    assert "dawn" in found[0]["text"]

    job = invoke("function-url", "POST", "/api/images", headers=json_headers,
                 body=json.dumps({"prompt": "a vault at dawn", "width": 64, "height": 64}))
    assert job.status == 202, job.body
    assert invoke.worker()["completed"] == [job.json()["id"]]
    png = invoke("http-api-v2", "GET", f"/api/images/{job.json()['id']}.png",
                 headers=bearer(token))
    assert png.status == 200 and png.base64
    assert png.body.startswith(b"\x89PNG")
    assert rows(postgres_url, "image_jobs") == 1


@pytest.mark.postgres
def test_deadline_on_postgres_closes_the_reply_row(
    invoke: Invoker, lambda_env: Any, postgres_url: str, tmp_path: Path, aws: Any,
) -> None:
    """A stalled model past the deadline on PostgreSQL (password from Secrets Manager,
    as the template passes it): a 504, and no row left ``streaming``."""
    mami("db", "upgrade", database_url=postgres_url, cwd=tmp_path)
    token = mami("token", "create", "--owner", "alice", database_url=postgres_url,
                 cwd=tmp_path).strip().splitlines()[-1]
    secret = aws.client("secretsmanager").create_secret(
        Name="rds!db-mami", SecretString=json.dumps({"username": "postgres", "password": "pw"}))
    model = StandIn("stall_mid").start()
    try:
        lambda_env(MAMI_DATABASE_URL=postgres_url, MAMI__CORE__AUTH="true",
                   MAMI_DATABASE_PASSWORD_SECRET_ARN=secret["ARN"] + "#password",
                   MAMI_LLM_BASE_URL=model.url, MAMI_LLM_MODEL="standin")
        invoke.remaining_ms = int((invoke.module.DEADLINE_MARGIN_SECONDS + 1.5) * 1000)
        chat = invoke("rest-api-v1", "POST", "/v1/chat/completions", headers={
            **bearer(token), "content-type": "application/json", "x-mami-conversation": "new"},
            body=json.dumps({"messages": [{"role": "user", "content": "Hi"}]}))
    finally:
        model.stop()
    assert chat.status == 504, chat.body
    assert invoke.runtime.db.url.startswith("postgresql+psycopg://postgres:pw@")
    dsn = postgres_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn) as conn:
        stored = conn.execute("SELECT role, status, content FROM messages ORDER BY seq").fetchall()
    assert stored == [("user", "complete", "Hi"), ("assistant", "interrupted", "Hello")]
