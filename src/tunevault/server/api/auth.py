"""Who is calling: bearer tokens checked by an interceptor, roles per method, a rate limit.

Tokens are stored only as SHA-256 hashes; the secret is 256 random bits, so a plain hash is
as good as a slow one. Health and reflection stay open; everything else needs a token,
also on localhost.
"""

from __future__ import annotations

import contextvars
import hashlib
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc

from tunevault.server import logs
from tunevault.server.api.denials import record_denial
from tunevault.server.api.handlers import wrap
from tunevault.server.errors import InvalidArgument, PermissionDenied, ResourceExhausted, Unauthenticated
from tunevault.server.store import Store

ROLES = ("viewer", "submitter", "admin")
TENANT_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
OPEN_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")
# The HTTP caller's address, set by the OpenAI gateway (openai_gateway/gateway.py); believed only on
# calls that come over the gateway's private unix socket, where nothing else can connect.
FORWARDED_PEER_METADATA = "tunevault-http-peer"

# The least role each method needs; a method missing here is refused (admin only).
METHOD_ROLE = {
    "UploadDataset": "submitter", "GetDataset": "viewer", "ListDatasets": "viewer",
    "DeleteDataset": "submitter",
    "CreateJob": "submitter", "GetJob": "viewer", "ListJobs": "viewer", "CancelJob": "submitter",
    "PauseJob": "submitter", "ResumeJob": "submitter", "DeleteJob": "submitter",
    "ListCheckpoints": "viewer", "GetStatus": "viewer", "StreamJobEvents": "viewer",
    "ListModels": "viewer", "DownloadArtifact": "viewer", "Generate": "submitter", "GenerateStream": "submitter",
    "RecordFeedback": "submitter", "ListFeedback": "viewer", "ExportFeedback": "submitter",
    "CreateToken": "admin", "ListTokens": "admin", "RevokeToken": "admin",
}


@dataclass(frozen=True)
class Principal:
    """The caller, as its token says."""

    token_id: str
    tenant: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def scope(self) -> str | None:
        """The tenant whose rows it may see; None (all) for an admin."""
        return None if self.is_admin else self.tenant


_principal: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("principal", default=None)
# (method, peer) of the call being served, for audit entries written further in.
_call_site: contextvars.ContextVar[tuple[str, str]] = contextvars.ContextVar("call_site", default=("", "unknown"))


def current_principal() -> Principal:
    principal = _principal.get()
    if principal is None:  # the interceptor always sets it; this is a wiring bug
        raise RuntimeError("no authenticated principal for this call")
    return principal


def current_call_site() -> tuple[str, str]:
    """The method name and peer address of the call being served."""
    return _call_site.get()


def hash_token(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret() -> str:
    return "tv_" + secrets.token_urlsafe(32)


def check_tenant_name(value: str) -> str:
    if not TENANT_NAME.fullmatch(value or ""):
        raise InvalidArgument("tenant", "lower-case letters, digits, - and _, at most 64 characters")
    return value


def bootstrap_admin_token(store: Store, preset_secret: str | None) -> str | None:
    """On a store with no tokens, makes the first admin token. Returns its secret if generated here.

    A preset secret (from a Kubernetes Secret file) is stored as given and not echoed.
    """
    if store.count_tokens() > 0:
        return None
    secret = preset_secret or new_secret()
    store.insert_token(token_sha256=hash_token(secret), tenant="default", role="admin", name="bootstrap admin")
    return None if preset_secret else secret


DENIALS_AUDITED_BURST = 100.0
DENIALS_AUDITED_PER_SECOND = 1.0


def peer_host(peer: str) -> str:
    """ "ipv4:10.0.0.7:51234" -> "ipv4:10.0.0.7": a caller's host, whichever port it dials from."""
    return peer.rsplit(":", 1)[0] if peer.count(":") >= 2 else peer


class TokenBuckets:
    """A request rate limit per token: `rate` per second on average, bursts up to `burst`."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key: str) -> bool:
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            allowed = tokens >= 1.0
            self._buckets[key] = (tokens - 1.0 if allowed else tokens, now)
        return allowed


def _caller(context: grpc.ServicerContext) -> str:
    """The peer to audit: the gRPC one, or for the OpenAI gateway's calls the HTTP client it serves."""
    peer = context.peer() or "unknown"
    if peer.startswith("unix:"):
        forwarded = [v for k, v in (context.invocation_metadata() or ()) if k == FORWARDED_PEER_METADATA]
        if forwarded:
            return f"http:{forwarded[0]}"
    return peer


class AuthInterceptor(grpc.ServerInterceptor):
    """Authenticates, authorizes and rate-limits each call before the servicer sees it."""

    def __init__(self, store: Store, buckets: TokenBuckets) -> None:
        self.store = store
        self.buckets = buckets
        # Refusals are audited per calling host, up to DENIALS_AUDITED_BURST at once and then
        # DENIALS_AUDITED_PER_SECOND: the rate limit only starts once a token is known, so without
        # this an unauthenticated flood would grow the audit chain and hold its write lock.
        self.denials = TokenBuckets(DENIALS_AUDITED_PER_SECOND, DENIALS_AUDITED_BURST)

    def _identify(self, context: grpc.ServicerContext) -> Principal:
        """The principal whose token the call carries; Unauthenticated without exactly one good one."""
        headers = [value for key, value in (context.invocation_metadata() or ()) if key == "authorization"]
        if len(headers) > 1:
            # Two proxies or a header injection: which one wins must not be our silent choice.
            raise Unauthenticated(f"metadata 'authorization' appears {len(headers)} times; send exactly one")
        scheme, _, secret = (headers[0] if headers else "").partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise Unauthenticated("missing bearer token (metadata 'authorization: Bearer <token>')")
        token = self.store.find_token(hash_token(secret.strip()))
        if token is None:
            raise Unauthenticated("unknown or revoked token")
        return Principal(token_id=token.id, tenant=token.tenant, role=token.role)

    @staticmethod
    def _authorize(method: str, principal: Principal) -> None:
        needed = METHOD_ROLE.get(method, "admin")
        if ROLES.index(principal.role) < ROLES.index(needed):
            raise PermissionDenied(f"{method} needs the {needed} role; this token is {principal.role}")

    def _authenticate(self, method: str, context: grpc.ServicerContext) -> Principal:
        principal = None
        try:
            principal = self._identify(context)
            self._authorize(method, principal)
        except (Unauthenticated, PermissionDenied) as error:
            method, peer = current_call_site()
            if self.denials.take(peer_host(peer)):
                record_denial(self.store, method, peer, error, principal)
            raise
        if not self.buckets.take(principal.token_id):
            raise ResourceExhausted(f"rate limit exceeded: rate_limit_per_second={self.buckets.rate:g}")
        return principal

    def intercept_service(self, continuation: Callable, handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(OPEN_PREFIXES):
            return handler
        method = handler_call_details.method.rpartition("/")[2]

        def enter(context: grpc.ServicerContext) -> None:
            # A refusal is a domain error: the ErrorInterceptor outside maps it to its code.
            _call_site.set((method, _caller(context)))
            principal = self._authenticate(method, context)
            _principal.set(principal)
            logs.tenant.set(principal.tenant)

        def unary(behaviour: Callable, request: Any, context: grpc.ServicerContext) -> Any:
            enter(context)
            return behaviour(request, context)

        def stream(behaviour: Callable, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            enter(context)
            yield from behaviour(request, context)

        return wrap(handler, unary, stream)
