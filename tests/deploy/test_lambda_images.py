"""Images on Lambda: the API function queues a job (202), the scheduled worker function
runs it against a Forge stand-in, and the PNG comes back base64-encoded through every
event shape. Both functions share the database and the images: a directory here, an S3
bucket (moto's server) for the large image, which is answered with a presigned
redirect."""

from __future__ import annotations

import base64
import io
import json
import os
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.deploy.lambda_events import SHAPES, Invoker, LambdaContext, bearer, mami
from tests.forge_standin import ForgeStandIn

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def image_env(lambda_env: Any, token: str, forge: ForgeStandIn, tmp_path: Path) -> str:
    lambda_env(MAMI_FORGE_URL=forge.url, MAMI__CORE__IMAGE_DIR=str(tmp_path / "efs" / "images"))
    return token


def queue_image(invoke: Invoker, shape: str, token: str, **fields: Any) -> dict[str, Any]:
    body = {"prompt": "a lighthouse at dusk", "width": 64, "height": 96, "steps": 4, **fields}
    response = invoke(shape, "POST", "/api/images", body=json.dumps(body),
                      headers={**bearer(token), "content-type": "application/json"})
    assert response.status == 202, response.body
    return response.json()  # type: ignore[no-any-return]


def test_png_comes_back_base64_encoded_through_each_event_shape(
    invoke: Invoker, image_env: str, tmp_path: Path, forge: ForgeStandIn
) -> None:
    job = queue_image(invoke, "http-api-v2", image_env, prompt="a lighthouse, seed 7", seed=7)
    assert job["state"] == "queued"
    assert invoke.runtime.config.core.image_worker is False

    ran = invoke.worker()
    assert ran == {"processed": 1, "completed": [job["id"]]}
    assert forge.prompts["a lighthouse, seed 7"] == 1

    stored = next((tmp_path / "efs" / "images").rglob("*.png")).read_bytes()
    for shape in SHAPES:
        response = invoke(shape, "GET", f"/api/images/{job['id']}.png", headers=bearer(image_env))
        assert response.status == 200, response.body
        assert response.base64
        assert response.headers["content-type"] == "image/png"
        assert response.body == stored
        assert response.body.startswith(PNG_SIGNATURE)
        assert Image.open(io.BytesIO(response.body)).size == (64, 96)


def test_png_before_the_worker_ran_is_a_409(invoke: Invoker, image_env: str) -> None:
    job = queue_image(invoke, "rest-api-v1", image_env)
    response = invoke("alb", "GET", f"/api/images/{job['id']}.png", headers=bearer(image_env))
    assert response.status == 409
    assert "queued" in response.json()["error"]["message"]


def test_worker_claims_nothing_it_could_not_finish_in_time(
    invoke: Invoker, image_env: str, forge: ForgeStandIn
) -> None:
    job = queue_image(invoke, "function-url", image_env, prompt="a job for later")
    ran = invoke.worker(LambdaContext(remaining_ms=150_000))  # < deadline 180 s + margin
    assert ran == {"processed": 0, "completed": []}
    status = invoke("http-api-v2", "GET", f"/api/images/{job['id']}", headers=bearer(image_env))
    assert status.json()["state"] == "queued"
    assert forge.prompts["a job for later"] == 0


def test_worker_time_budget_follows_the_forge_deadline(
    invoke: Invoker, image_env: str, lambda_env: Any, forge: ForgeStandIn
) -> None:
    lambda_env(MAMI__PLUGINS__FORGE_IMAGE__DEADLINE="30")
    queue_image(invoke, "http-api-v2", image_env, prompt="a quick one")
    assert invoke.worker(LambdaContext(remaining_ms=60_000))["processed"] == 1
    assert forge.prompts["a quick one"] == 1


def test_bad_image_request_is_a_400_and_queues_nothing(invoke: Invoker, image_env: str) -> None:
    response = invoke("http-api-v2", "POST", "/api/images",
                      body=json.dumps({"prompt": "x", "width": 65}),
                      headers={**bearer(image_env), "content-type": "application/json"})
    assert response.status == 400
    assert "width" in response.json()["error"]["message"]
    assert invoke.worker() == {"processed": 0, "completed": []}


LAMBDA_RESPONSE_LIMIT = 6 * 1024 * 1024


class NoisyForge(ForgeStandIn):
    """The Forge stand-in answering with noise: PNGs that do not compress, so a
    2048x2048 image is about 12 MB."""

    def generate(self, payload: dict[str, Any]) -> tuple[int, bytes]:
        status, body = super().generate(payload)
        answer = json.loads(body)
        size = (int(payload["width"]), int(payload["height"]))
        noise = Image.frombytes("RGB", size, os.urandom(size[0] * size[1] * 3))
        out = io.BytesIO()
        noise.save(out, format="PNG", compress_level=1)
        answer["images"] = [base64.b64encode(out.getvalue()).decode()]
        return status, json.dumps(answer).encode()


@pytest.fixture
def noisy_forge() -> Iterator[ForgeStandIn]:
    server = NoisyForge("ok").start()
    yield server
    server.stop()


def test_an_image_over_6_mb_is_a_presigned_redirect_to_s3(
    invoke: Invoker, lambda_env: Any, token: str, aws: Any, moto_url: str,
    noisy_forge: ForgeStandIn, tmp_path: Path,
) -> None:
    """The worker function writes the PNG to the bucket; the API function answers every
    event shape with a 307 to a presigned URL (a small response, whatever the image's
    size), only for the job's owner; the URL serves the image."""
    aws.client("s3").create_bucket(Bucket="mami-images",
                                   CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    lambda_env(MAMI_FORGE_URL=noisy_forge.url, MAMI__CORE__IMAGE_STORE="s3://mami-images/lambda",
               MAMI__CORE__S3_ENDPOINT_URL=moto_url, MAMI__CORE__IMAGE_URL_TTL="120")
    job = queue_image(invoke, "http-api-v2", token, width=2048, height=2048)
    assert invoke.worker() == {"processed": 1, "completed": [job["id"]]}
    (stored,) = aws.client("s3").list_objects_v2(Bucket="mami-images")["Contents"]
    assert stored["Key"] == f"lambda/{job['id']}.1.png"
    assert stored["Size"] > LAMBDA_RESPONSE_LIMIT
    assert not (tmp_path / "lambda-data" / "images").exists()  # nothing on local disk

    for shape in SHAPES:
        response = invoke(shape, "GET", f"/api/images/{job['id']}.png", headers=bearer(token))
        assert response.status == 307, response.body
        assert len(response.body) < 10_000
        location = response.headers["location"]
        assert location.startswith(f"{moto_url}/mami-images/lambda/{job['id']}.1.png?")
        assert "X-Amz-Expires=120" in location and "X-Amz-Signature=" in location
        assert response.headers["cache-control"] == "private, no-store"
    with urllib.request.urlopen(location) as fetched:
        png = fetched.read()
    assert len(png) == stored["Size"] and png.startswith(PNG_SIGNATURE)
    assert Image.open(io.BytesIO(png)).size == (2048, 2048)

    other = mami("token", "create", "--owner", "mallory",
                 database_url=f"sqlite:///{tmp_path / 'auth.db'}", cwd=tmp_path)
    other = other.strip().splitlines()[-1]
    refused = invoke("alb", "GET", f"/api/images/{job['id']}.png", headers=bearer(other))
    assert refused.status == 404 and "location" not in refused.headers


def test_an_image_over_6_mb_from_a_directory_is_a_clear_502_not_a_gateway_error(
    invoke: Invoker, lambda_env: Any, token: str, noisy_forge: ForgeStandIn, tmp_path: Path,
) -> None:
    """Without S3 the PNG would go out base64 and break Lambda's 6 MB limit (API Gateway
    then answers a bare 502): the handler answers mami's JSON error naming the fix."""
    lambda_env(MAMI_FORGE_URL=noisy_forge.url, MAMI__CORE__IMAGE_DIR=str(tmp_path / "images"))
    job = queue_image(invoke, "http-api-v2", token, width=2048, height=2048)
    assert invoke.worker()["completed"] == [job["id"]]
    assert next((tmp_path / "images").glob("*.png")).stat().st_size > 6 * 1024 * 1024 * 3 // 4
    for shape in SHAPES:
        response = invoke(shape, "GET", f"/api/images/{job['id']}.png", headers=bearer(token))
        assert response.status == 502, response.body[:200]
        assert response.headers["content-type"] == "application/json"
        error = response.json()["error"]
        assert "6 MB" in error["message"] and "image_store" in error["message"]
        assert error["code"] == "response_too_large"
    small = queue_image(invoke, "alb", token)  # small images still come back inline
    invoke.worker()
    assert invoke("alb", "GET", f"/api/images/{small['id']}.png",
                  headers=bearer(token)).status == 200
