"""API tokens in the ``api_tokens`` table.

A token reads ``mami_<id>_<secret>``: the id finds the row, the SHA-256 of the whole
token is compared in constant time with the stored hash. The token itself is never
stored and is shown only once, when it is created.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy.exc import IntegrityError
from sqlmodel import col, func, select

from core.db import Database
from core.errors import BadRequest
from core.models import Owner
from plugins.token_ws_auth.models import ApiToken

TOKEN_RE = re.compile(r"^mami_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")
DURATION_RE = re.compile(r"^\s*(\d+)\s*([smhdw]?)\s*$")
UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """A token's public facts (never its secret)."""

    id: str
    owner: str
    name: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None

    def as_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "owner": self.owner,
            "name": self.name,
            "created_at": _iso(self.created_at),
            "expires_at": _iso(self.expires_at),
            "revoked_at": _iso(self.revoked_at),
            "last_used_at": _iso(self.last_used_at),
        }


def _iso(value: datetime | None) -> str | None:
    return aware(value).isoformat() if value else None


def aware(value: datetime) -> datetime:
    """SQLite hands datetimes back naive; they were stored as UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def now() -> datetime:
    return datetime.now(UTC)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def parse_duration(text: str) -> timedelta:
    """``30d``, ``12h``, ``15m``, ``90s``, ``2w`` or plain seconds; raises BadRequest."""
    match = DURATION_RE.match(text)
    shown = text if len(text) <= 40 else text[:37] + "..."
    if match and len(match.group(1)) > 12:  # over ten years in any unit; int() would choke
        raise BadRequest(f"invalid duration {shown!r}: at most ten years", param="expires_in")
    if not match or int(match.group(1)) <= 0:
        raise BadRequest(f"invalid duration {shown!r}: use a positive number with s, m, h, "
                         "d or w", param="expires_in")
    seconds = int(match.group(1)) * UNITS[match.group(2)]
    if seconds > 10 * 365 * 86400:
        raise BadRequest(f"invalid duration {shown!r}: at most ten years", param="expires_in")
    return timedelta(seconds=seconds)


def _info(row: ApiToken) -> TokenInfo:
    return TokenInfo(row.id, row.owner_id, row.name, aware(row.created_at),
                     aware(row.expires_at) if row.expires_at else None,
                     aware(row.revoked_at) if row.revoked_at else None,
                     aware(row.last_used_at) if row.last_used_at else None)


def is_active(row: ApiToken, at: datetime | None = None) -> bool:
    """Not revoked and not expired."""
    moment = at or now()
    if row.revoked_at is not None:
        return False
    return row.expires_at is None or aware(row.expires_at) > moment


def validate_owner(owner: str) -> str:
    owner = owner.strip()
    if not owner or len(owner) > 128 or any(c.isspace() or not c.isprintable() for c in owner):
        raise BadRequest("owner must be 1-128 printable characters without spaces")
    return owner


async def _ensure_owner(db: Database, owner: str) -> None:
    async with db.session() as session:
        if await session.get(Owner, owner) is not None:
            return
        session.add(Owner(id=owner))
        try:
            await session.commit()
        except IntegrityError:  # created concurrently: fine
            await session.rollback()


async def create_token(
    db: Database, owner: str, name: str = "", expires_in: timedelta | None = None
) -> tuple[str, TokenInfo]:
    """Create a token for ``owner``; returns the token (shown once) and its facts."""
    owner = validate_owner(owner)
    if len(name) > 200:
        raise BadRequest("name must be at most 200 characters")
    await _ensure_owner(db, owner)
    token_id = secrets.token_hex(8)
    token = f"mami_{token_id}_{secrets.token_urlsafe(32)}"
    row = ApiToken(id=token_id, owner_id=owner, token_hash=hash_token(token), name=name,
                   expires_at=now() + expires_in if expires_in else None)
    async with db.session() as session:
        session.add(row)
        await session.commit()
    return token, _info(row)


async def verify_token(db: Database, token: str) -> TokenInfo | None:
    """The facts of an active token matching ``token`` exactly, else ``None``."""
    match = TOKEN_RE.match(token)
    if not match:
        return None
    async with db.session() as session:
        row = await session.get(ApiToken, match.group(1))
    if row is None or not hmac.compare_digest(row.token_hash, hash_token(token)):
        return None
    return _info(row) if is_active(row) else None


async def active_token(db: Database, token_id: str, owner: str) -> TokenInfo | None:
    """The token ``token_id`` if it is still active and belongs to ``owner``."""
    async with db.session() as session:
        row = await session.get(ApiToken, token_id)
    if row is None or row.owner_id != owner or not is_active(row):
        return None
    return _info(row)


async def touch(db: Database, token_id: str, every: timedelta = timedelta(minutes=5)) -> None:
    """Record use, at most once per ``every`` so requests do not each write."""
    async with db.session() as session:
        row = await session.get(ApiToken, token_id)
        moment = now()
        if row is None or (row.last_used_at and aware(row.last_used_at) > moment - every):
            return
        row.last_used_at = moment
        await session.commit()


async def list_tokens(db: Database, owner: str | None = None) -> list[TokenInfo]:
    """Tokens of ``owner`` (all owners when ``None``), oldest first."""
    query = select(ApiToken).order_by(col(ApiToken.created_at), col(ApiToken.id))
    if owner is not None:
        query = query.where(ApiToken.owner_id == owner)
    async with db.session() as session:
        rows = (await session.exec(query)).all()
    return [_info(row) for row in rows]


async def revoke_token(db: Database, token_id: str, owner: str | None = None) -> TokenInfo | None:
    """Revoke a token (of ``owner`` only, when given). ``None`` if there is no such token."""
    async with db.session() as session:
        row = await session.get(ApiToken, token_id)
        if row is None or (owner is not None and row.owner_id != owner):
            return None
        if row.revoked_at is None:
            row.revoked_at = now()
            session.add(row)
            await session.commit()
        return _info(row)


async def count_tokens(db: Database) -> int:
    async with db.session() as session:
        return int((await session.exec(select(func.count()).select_from(ApiToken))).one())
