"""Opaque page tokens: the last id of the previous page, base64-encoded."""

from __future__ import annotations

import base64
import binascii
import re

from tunevault.server.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
_ID = re.compile(r"[a-z]{2,4}_[0-9a-z]{20}")


def page_size(requested: int) -> int:
    if requested < 0:
        raise InvalidArgument("page_size", "must not be negative")
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def encode(last_id: str) -> str:
    return base64.urlsafe_b64encode(last_id.encode()).decode()


def decode(token: str) -> str | None:
    if not token:
        return None
    try:
        value = base64.b64decode(token.encode("ascii"), altchars=b"-_", validate=True).decode("ascii")
    except (binascii.Error, UnicodeError, ValueError) as error:
        raise InvalidArgument("page_token", "not a token from a previous response") from error
    if not _ID.fullmatch(value):
        raise InvalidArgument("page_token", "not a token from a previous response")
    return value
