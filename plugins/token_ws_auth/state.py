"""Auth state every process shares, in the database: spent WebSocket tickets and failed
attempts per client address. Two ``mami serve`` processes, or Lambda environments, on
one database see the same state: a ticket spent on one is refused on the others, and
the failure limit counts the attempts made on all of them.

Spending a ticket is one insert of its id (the primary key): the insert that finds the
id already there learns the ticket was spent. A failed attempt is a row (address,
moment); the address is over the limit once its window holds ``limit`` rows. Rows past
their use are pruned at most once a minute per process.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from sqlalchemy import Table, delete, func, select

from plugins.token_ws_auth.models import failed_attempts, spent_tickets

if TYPE_CHECKING:
    from core.db import Database

PRUNE_EVERY = 60.0
TICKET_ID_MAX = 64


class SharedAuthState:
    """Spent tickets and failure counts in ``db`` (see the module's docstring)."""

    def __init__(self, db: Database, limit: int, window: float) -> None:
        self.db = db
        self.limit, self.window = limit, window
        self._pruned = 0.0

    def _insert(self, table: Table) -> Any:
        from sqlalchemy.dialects import postgresql, sqlite

        return (sqlite if self.db.is_sqlite else postgresql).insert(table)

    async def spend(self, ticket_id: str, expires_at: float) -> bool:
        """Mark a ticket used. True when this call spent it; False when it had been spent
        before (here or in any other process), or its id is not one mami issues."""
        if not ticket_id or len(ticket_id) > TICKET_ID_MAX:
            return False
        await self._prune()
        statement = (self._insert(spent_tickets)
                     .values(ticket_id=ticket_id, expires_at=expires_at)
                     .on_conflict_do_nothing()
                     .returning(spent_tickets.c.ticket_id))  # rowcount: -1 with psycopg
        async with self.db.engine.begin() as connection:
            return (await connection.execute(statement)).first() is not None

    async def fail(self, address: str | None) -> bool:
        """Record a failed attempt from ``address``; True when the address had already
        reached the limit within the window before this one (it is then refused). An
        unknown address (``None``) is not counted."""
        if address is None:
            return False
        address = address[:128]
        moment = time.time()
        await self._prune()
        recent = (select(func.count()).select_from(
            select(failed_attempts.c.id)
            .where(failed_attempts.c.address == address,
                   failed_attempts.c.at > moment - self.window)
            .limit(self.limit).subquery()))
        async with self.db.engine.begin() as connection:
            seen = (await connection.execute(recent)).scalar_one()
            await connection.execute(failed_attempts.insert().values(address=address, at=moment))
        return int(seen) >= self.limit

    async def _prune(self) -> None:
        """Delete spent tickets past their expiry and failures past the window (at most
        once per :data:`PRUNE_EVERY` seconds in this process)."""
        moment = time.time()
        if moment - self._pruned < PRUNE_EVERY:
            return
        self._pruned = moment
        async with self.db.engine.begin() as connection:
            await connection.execute(delete(spent_tickets).where(
                spent_tickets.c.expires_at <= moment))
            await connection.execute(delete(failed_attempts).where(
                failed_attempts.c.at <= moment - self.window))
