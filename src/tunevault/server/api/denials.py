"""Refused calls leave a trace: an audit entry and a log line naming token id, method and peer.

Never the secret, never a request value: the token id (or "anonymous" for a token the
appliance does not know), the method, the peer address and our own refusal reason.
"""

from __future__ import annotations

import logging
from typing import Protocol

from tunevault.server.store import Store

log = logging.getLogger("tunevault.server.denials")

ANONYMOUS = "anonymous"


class Caller(Protocol):
    token_id: str
    tenant: str


def record_denial(store: Store, method: str, peer: str, error: Exception, caller: Caller | None, *,
                  action: str = "denied", **details: object) -> None:
    """Appends a `denied` audit entry and logs a warning for one refused call."""
    token_id = caller.token_id if caller else ANONYMOUS
    reason = str(error)
    log.warning("%s %s: %s (token %s, peer %s)", action, method, reason, token_id, peer)
    store.append_audit(principal=token_id, tenant=caller.tenant if caller else "", action=action,
                       details={"method": method, "peer": peer, "reason": reason, **details})
