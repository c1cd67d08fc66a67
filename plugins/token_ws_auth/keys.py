"""The ticket signing key: from the environment, or a 0600 file made on first start."""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from core.errors import ConfigError

MIN_KEY_BYTES = 32


def load_signing_key(env_name: str, path: Path) -> bytes:
    """The key from ``$env_name`` if set, else from ``path`` (created with mode 0600
    when missing). A short key, or a key file others may read, is refused."""
    value = os.environ.get(env_name, "")
    if value:
        key = value.encode("utf-8")
        if len(key) < MIN_KEY_BYTES:
            raise ConfigError(f"${env_name}: signing key must be at least {MIN_KEY_BYTES} bytes")
        return key
    try:
        return _read_or_create(path)
    except OSError as exc:
        raise ConfigError(
            f"{path}: cannot read or create the signing key ({exc.strerror}); "
            f"set ${env_name} instead"
        ) from exc


def _read_or_create(path: Path) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_existing(path)
    key = secrets.token_urlsafe(48).encode("ascii")
    with os.fdopen(fd, "wb") as handle:
        handle.write(key)
    return key


def _read_existing(path: Path) -> bytes:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"{path}: signing key file is readable by others (mode {mode:o}); run chmod 600 on it"
        )
    key = path.read_bytes().strip()
    if len(key) < MIN_KEY_BYTES:
        raise ConfigError(f"{path}: signing key must be at least {MIN_KEY_BYTES} bytes")
    return key
