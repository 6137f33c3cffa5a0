"""Time-sortable ids: a prefix, 10 characters of milliseconds and 10 of randomness (ULID layout).

Monotonic within the process, as ULID's monotonic mode: an id made in the same millisecond as
the previous one (or after the clock stepped back) keeps that millisecond and takes the previous
random part plus one. ORDER BY id is then creation order, which the queue's FIFO relies on; with
fresh randomness two jobs queued in one millisecond could start in either order.
"""

import secrets
import threading
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case
_RANDOM_BITS = 50


def _base32(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        value, digit = divmod(value, 32)
        chars.append(_ALPHABET[digit])
    return "".join(reversed(chars))


class _MonotonicSource:
    """(milliseconds, random) pairs that only ever increase."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = (0, 0)

    def next(self) -> tuple[int, int]:
        now = time.time_ns() // 1_000_000
        with self._lock:
            last_ms, last_random = self._last
            if now > last_ms:
                self._last = (now, secrets.randbits(_RANDOM_BITS - 1))  # headroom for increments
            else:
                self._last = (last_ms, last_random + 1)
            return self._last


_source = _MonotonicSource()  # process-wide by nature: ids from every thread share one order


def new_id(prefix: str) -> str:
    """Returns e.g. "job_01jd8x...": ids made later (in this process) sort after ids made earlier."""
    millis, random_part = _source.next()
    return f"{prefix}_{_base32(millis, 10)}{_base32(random_part, 10)}"
