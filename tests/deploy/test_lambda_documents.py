"""Document upload (chroma-rag) through the Lambda handler against a real Chroma server
(``chroma run`` on loopback), as a Lambda deployment uses it: JSON bodies, and multipart
uploads arriving base64-encoded as API Gateway sends binary bodies."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from tests.deploy.lambda_events import SHAPES, Invoker, bearer
from tests.plugins.chroma_rag.conftest import ChromaServer

BOUNDARY = "----mamiLambdaBoundary7MA4YWxkTrZu0gW"


@pytest.fixture
def rag_env(lambda_env: Any, token: str, chroma: ChromaServer) -> str:
    """The function pointed at the Chroma server; collections unique to the test."""
    prefix = f"lambda-{uuid.uuid4().hex[:8]}"
    lambda_env(MAMI_CHROMA_URL=chroma.url,
               MAMI__PLUGINS__CHROMA_RAG__COLLECTION_PREFIX=f"{prefix}-rag",
               MAMI__PLUGINS__MEMORY__COLLECTION_PREFIX=f"{prefix}-mem")
    return token


def multipart(files: list[tuple[str, bytes]], scope: str = "default") -> bytes:
    parts = [f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="scope"\r\n\r\n'
             f"{scope}\r\n".encode()]
    for name, data in files:
        parts.append(
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="{name}"\r\nContent-Type: text/plain\r\n\r\n'.encode() + data + b"\r\n"
        )
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def search(invoke: Invoker, shape: str, token: str, query: str) -> list[dict[str, Any]]:
    response = invoke(shape, "POST", "/api/search", body=json.dumps({"query": query, "k": 3}),
                      headers={**bearer(token), "content-type": "application/json"})
    assert response.status == 200, response.body
    return response.json()  # type: ignore[no-any-return]


@pytest.mark.parametrize("shape", SHAPES)
def test_json_upload_then_search_through_each_event_shape(
    invoke: Invoker, rag_env: str, shape: str
) -> None:
    word = f"PELICAN{shape.replace('-', '').upper()}"
    body = {"source": "notes.txt", "scope": "work",
            "text": f"The launch code word for the spring release is {word}."}
    created = invoke(shape, "POST", "/api/documents", body=json.dumps(body),
                     headers={**bearer(rag_env), "content-type": "application/json"})
    assert created.status == 201, created.body
    (document,) = created.json()
    assert (document["source"], document["scope"]) == ("notes.txt", "work")
    assert document["chunks"] >= 1

    hits = search(invoke, shape, rag_env, "what is the launch code word?")
    assert word in hits[0]["text"]
    assert hits[0]["document_id"] == document["id"]


@pytest.mark.parametrize("shape", SHAPES)
def test_multipart_upload_arrives_base64_encoded(
    invoke: Invoker, rag_env: str, shape: str
) -> None:
    body = multipart([("ferry.txt", "The ferry to Büyükada leaves at 07:40.".encode()),
                      ("tea.md", b"# Tea\nBrew rize tea for four minutes.")])
    created = invoke(shape, "POST", "/api/documents", body=body, base64_body=True,
                     headers={**bearer(rag_env),
                              "content-type": f"multipart/form-data; boundary={BOUNDARY}"})
    assert created.status == 201, created.body
    assert sorted(d["source"] for d in created.json()) == ["ferry.txt", "tea.md"]
    assert "Büyükada" in search(invoke, shape, rag_env, "when does the ferry leave?")[0]["text"]


def test_bad_upload_is_a_400_and_stores_nothing(invoke: Invoker, rag_env: str) -> None:
    body = multipart([("good.txt", b"A perfectly fine document."),
                      ("photo.txt", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe")])
    rejected = invoke("rest-api-v1", "POST", "/api/documents", body=body, base64_body=True,
                      headers={**bearer(rag_env),
                               "content-type": f"multipart/form-data; boundary={BOUNDARY}"})
    assert rejected.status == 400
    assert "photo.txt" in rejected.json()["error"]["message"]

    unknown_scope = invoke("http-api-v2", "POST", "/api/documents",
                           body=json.dumps({"source": "a.txt", "text": "x", "scope": "nope"}),
                           headers={**bearer(rag_env), "content-type": "application/json"})
    assert unknown_scope.status == 400

    listed = invoke("alb", "GET", "/api/documents", headers=bearer(rag_env))
    assert listed.status == 200
    assert listed.json() == []


def test_documents_need_a_token(invoke: Invoker, rag_env: str) -> None:
    response = invoke("function-url", "POST", "/api/documents",
                      body=json.dumps({"source": "a.txt", "text": "hello"}),
                      headers={"content-type": "application/json"})
    assert response.status == 401
