"""Where finished images live: a local directory, or an S3 bucket (AWS or any
S3-compatible API) that the API, ``mami worker`` hosts and the scheduled Lambda worker
share.

``[core] image_store`` picks the backend: empty for the directory (``image_dir``, else
``<data_dir>/images``), or ``s3://bucket/prefix``; ``s3_endpoint_url`` points boto3 at
another S3-compatible API. With S3 the image route answers with a short-lived presigned
URL (``image_url_ttl`` seconds) instead of the bytes, so an image's size never meets a
response limit (Lambda's 6 MB).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from core.config import Config
from core.db import private_dir
from core.errors import ConfigError

__all__ = ["DirectoryStore", "ImageStore", "S3Store", "open_image_store"]


class ImageStore(Protocol):
    """PNG files by name. ``read`` raises :class:`FileNotFoundError` for a missing one."""

    async def put(self, name: str, data: bytes) -> None: ...

    async def exists(self, name: str) -> bool: ...

    async def read(self, name: str) -> bytes: ...

    async def delete(self, name: str) -> None: ...

    def link(self, name: str) -> str | None:
        """A URL the client may fetch the file from directly for a short while, or
        ``None`` when the app must serve the bytes itself."""
        ...


class DirectoryStore:
    """Files in one directory, written atomically (a reader never sees half a file)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    async def put(self, name: str, data: bytes) -> None:
        await asyncio.to_thread(_write_atomically, self.folder / name, data)

    async def exists(self, name: str) -> bool:
        return (self.folder / name).exists()

    async def read(self, name: str) -> bytes:
        return await asyncio.to_thread((self.folder / name).read_bytes)

    async def delete(self, name: str) -> None:
        (self.folder / name).unlink(missing_ok=True)

    def link(self, name: str) -> str | None:
        return None


class S3Store:
    """Objects ``<prefix><name>`` in ``bucket``; links are presigned GET URLs valid for
    ``ttl`` seconds. boto3 is imported on first use."""

    def __init__(self, bucket: str, prefix: str, endpoint_url: str = "", ttl: float = 300.0
                 ) -> None:
        self.bucket, self.prefix, self.endpoint_url, self.ttl = bucket, prefix, endpoint_url, ttl
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3
            from botocore.config import Config as BotoConfig

            config = BotoConfig(signature_version="s3v4", connect_timeout=5, read_timeout=30,
                                retries={"total_max_attempts": 3, "mode": "standard"},
                                s3={"addressing_style": "path" if self.endpoint_url else "auto"})
            self._client = boto3.client("s3", endpoint_url=self.endpoint_url or None,
                                        config=config)
        return self._client

    def key(self, name: str) -> str:
        return self.prefix + name

    async def put(self, name: str, data: bytes) -> None:
        await asyncio.to_thread(self.client.put_object, Bucket=self.bucket, Key=self.key(name),
                                Body=data, ContentType="image/png")

    async def exists(self, name: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            await asyncio.to_thread(self.client.head_object, Bucket=self.bucket,
                                    Key=self.key(name))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    async def read(self, name: str) -> bytes:
        from botocore.exceptions import ClientError

        try:
            answer = await asyncio.to_thread(self.client.get_object, Bucket=self.bucket,
                                             Key=self.key(name))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):
                raise FileNotFoundError(f"s3://{self.bucket}/{self.key(name)}") from exc
            raise
        return await asyncio.to_thread(answer["Body"].read)  # type: ignore[no-any-return]

    async def delete(self, name: str) -> None:
        await asyncio.to_thread(self.client.delete_object, Bucket=self.bucket,
                                Key=self.key(name))

    def link(self, name: str) -> str:
        return str(self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self.key(name)},
            ExpiresIn=max(1, int(self.ttl))))


def open_image_store(config: Config) -> ImageStore:
    """The store ``[core] image_store`` names; :class:`ConfigError` naming the key for a
    value that is neither empty nor ``s3://bucket[/prefix]``."""
    core = config.core
    where = core.image_store.strip()
    if not where:
        folder = Path(core.image_dir).expanduser() if core.image_dir else config.data_dir / "images"
        return DirectoryStore(folder)
    parts = urlsplit(where)
    if parts.scheme != "s3" or not parts.netloc:
        raise ConfigError(f"[core] image_store: expected empty (a local directory) or "
                          f"s3://bucket/prefix, got {where!r}")
    prefix = parts.path.lstrip("/")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    return S3Store(parts.netloc, prefix, core.s3_endpoint_url.strip(), core.image_url_ttl)


def _write_atomically(path: Path, data: bytes) -> None:
    private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.replace(tmp, path)
