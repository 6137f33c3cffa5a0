"""API tokens' rows: only their SHA-256 is stored; insert, find by hash, list, revoke, count."""

from __future__ import annotations

import time

from tunevault.server.errors import NotFound
from tunevault.server.ids import new_id
from tunevault.server.store.db import Connection
from tunevault.server.store.records import TokenRecord


class TokenRepository:
    """The tokens table; making and hashing the secret is api/auth.py's."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    def insert_token(self, *, token_sha256: str, tenant: str, role: str, name: str = "") -> TokenRecord:
        record = TokenRecord(id=new_id("tok"), tenant=tenant, role=role, name=name, created_at=time.time(),
                             revoked_at=None)
        with self._connection.transaction() as db:
            db["tokens"].insert({**record.__dict__, "token_sha256": token_sha256})
        return record

    def find_token(self, token_sha256: str) -> TokenRecord | None:
        row = self._connection.one("SELECT * FROM tokens WHERE token_sha256 = ? AND revoked_at IS NULL", [token_sha256])
        return TokenRecord.from_row(row) if row else None

    def list_tokens(self, tenant: str | None = None) -> list[TokenRecord]:
        rows = self._connection.rows("SELECT * FROM tokens WHERE (? IS NULL OR tenant = ?) ORDER BY id", [tenant, tenant])
        return [TokenRecord.from_row(r) for r in rows]

    def revoke_token(self, token_id: str) -> TokenRecord:
        with self._connection.transaction() as db:
            db.execute("UPDATE tokens SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ?", [time.time(), token_id])
        row = self._connection.one("SELECT * FROM tokens WHERE id = ?", [token_id])
        if row is None:
            raise NotFound(f"token {token_id!r} not found")
        return TokenRecord.from_row(row)

    def count_tokens(self) -> int:
        return self._connection.rows("SELECT COUNT(*) AS n FROM tokens")[0]["n"]
