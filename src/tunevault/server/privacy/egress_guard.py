"""Zero egress inside a process: an audit hook that refuses every non-loopback connection and DNS lookup.

    from tunevault.server.privacy import egress_guard
    egress_guard.install()            # once, before torch/transformers are imported
    ...
    egress_guard.raise_if_blocked()   # after the work: fail it if anything tried, even if it swallowed the error

Training and inference processes need no network at all: models are local directories and the
server talks to them over pipes. The hook sees Python's own socket calls (connect, sendto,
sendmsg, getaddrinfo, gethostbyname, gethostbyaddr, getnameinfo, and raw packet sockets) and
raises EgressBlocked before the system call, so no packet and no DNS query leaves the box.
Loopback (127.0.0.0/8, ::1, "localhost") and non-IP sockets (AF_UNIX, netlink) stay allowed.

Audit hooks cannot be removed, which is the point: no library can switch the guard off. Each
blocked attempt is also counted, because library code often swallows the exception (retry loops,
telemetry's `except Exception: pass`), and the caller must still be able to fail the work.

Not seen by the hook: native code that opens its own sockets (C/Rust libraries), child processes,
and the name resolution CPython does inside `sock.connect((hostname, port))` before it raises the
audit event (the connection itself is still refused). The NetworkPolicy and offline variables
are the other layers.
"""

from __future__ import annotations

import ipaddress
import socket
import sys
import threading
from collections import Counter
from typing import Any

POLICY = "network access blocked by the zero-egress policy"
LOCAL_NAMES = {"localhost", "localhost."}
IP_FAMILIES = {socket.AF_INET, socket.AF_INET6}
SUMMARY_LIMIT = 5  # destinations named in a failure message; the rest are counted

_lock = threading.Lock()
_attempts: Counter[str] = Counter()
_installed = False


class EgressBlocked(PermissionError):
    """A network connection or DNS lookup that the zero-egress policy refused."""


def install() -> None:
    """Refuse non-loopback network access in this process from now on; calling it again is a no-op."""
    global _installed
    with _lock:
        if _installed:
            return
        _installed = True
    sys.addaudithook(_hook)


def blocked_attempts() -> dict[str, int]:
    """Each refused destination ("connect to 203.0.113.7:443", "resolve example.com") and how often."""
    with _lock:
        return dict(_attempts)


def raise_if_blocked() -> None:
    """Raise EgressBlocked summarising every refused attempt so far, if there was any."""
    attempts = blocked_attempts()
    if attempts:
        raise EgressBlocked(f"{POLICY}: {summarise(attempts)}")


def summarise(attempts: dict[str, int]) -> str:
    named = [f"{what} ({count} times)" if count > 1 else what
             for what, count in sorted(attempts.items(), key=lambda item: -item[1])[:SUMMARY_LIMIT]]
    hidden = len(attempts) - len(named)
    return ", ".join(named) + (f" and {hidden} more destinations" if hidden else "")


def _block(what: str) -> None:
    with _lock:
        _attempts[what] += 1
    raise EgressBlocked(f"{POLICY}: {what}")


def _hook(event: str, args: tuple[Any, ...]) -> None:
    # Called for every audited event in the process (imports, opens...): leave the rest fast.
    if not event.startswith("socket."):
        return
    check = _CHECKS.get(event)
    if check is not None:
        check(args)


def _host_text(host: Any) -> str:
    return host.decode("ascii", "replace") if isinstance(host, (bytes, bytearray)) else str(host)


def _ip(host: Any) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(_host_text(host))
    except ValueError:
        return None


def _is_loopback(host: Any) -> bool:
    if _host_text(host).lower() in LOCAL_NAMES:
        return True
    ip = _ip(host)
    if ip is None:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)  # ::ffff:127.0.0.1 is loopback too
    return ip.is_loopback or bool(mapped and mapped.is_loopback)


def _check_destination(verb: str, sock: Any, address: Any) -> None:
    # Unix, netlink and other non-IP sockets never leave the machine.
    if getattr(sock, "family", None) not in IP_FAMILIES or not isinstance(address, tuple) or not address:
        return
    if not _is_loopback(address[0]):
        port = address[1] if len(address) > 1 else "?"
        _block(f"{verb} {_host_text(address[0])}:{port}")


def _check_connect(args: tuple[Any, ...]) -> None:
    _check_destination("connect to", args[0], args[1])


def _check_send(args: tuple[Any, ...]) -> None:
    _check_destination("send to", args[0], args[1])


def _check_resolve(args: tuple[Any, ...]) -> None:
    # An IP literal resolves locally without a query; the connect that follows is checked itself.
    host = args[0]
    if host is None or _ip(host) is not None or _host_text(host).lower() in LOCAL_NAMES:
        return
    _block(f"resolve {_host_text(host)}")


def _check_reverse(args: tuple[Any, ...]) -> None:
    # A reverse lookup of a non-loopback address is a DNS query (PTR) that would leave the box.
    address = args[0]
    host = address[0] if isinstance(address, tuple) and address else address
    if not _is_loopback(host):
        _block(f"reverse-resolve {_host_text(host)}")


def _check_new(args: tuple[Any, ...]) -> None:
    # A raw packet socket writes frames under the IP layer, where no address could be checked.
    if getattr(socket, "AF_PACKET", None) is not None and args[1] == socket.AF_PACKET:
        _block("open a raw packet socket")


_CHECKS = {
    "socket.connect": _check_connect,
    "socket.sendto": _check_send,
    "socket.sendmsg": _check_send,
    "socket.getaddrinfo": _check_resolve,
    "socket.gethostbyname": _check_resolve,
    "socket.gethostbyaddr": _check_reverse,
    "socket.getnameinfo": _check_reverse,
    "socket.__new__": _check_new,
}
