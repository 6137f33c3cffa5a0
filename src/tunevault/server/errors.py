"""Domain errors of the appliance; api/errors.py maps each class to one gRPC status code."""

from __future__ import annotations


class TuneVaultError(Exception):
    """Base of every error a client is meant to read."""


class InvalidArgument(TuneVaultError):
    """A request field is malformed; the message names the field (or the dataset line)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class NotFound(TuneVaultError):
    """The named dataset, job or model does not exist (or is not the caller's to see)."""


class FailedPrecondition(TuneVaultError):
    """The request is well formed but the object is in the wrong state for it."""


class ResourceExhausted(TuneVaultError):
    """A size, count or rate limit was exceeded; the message names the limit."""


class Unavailable(TuneVaultError):
    """The appliance cannot serve this right now (e.g. shutting down); retrying may help."""


class Unauthenticated(TuneVaultError):
    """No token, or one the appliance does not know (or has revoked)."""


class PermissionDenied(TuneVaultError):
    """The token is valid but its role may not do this."""
