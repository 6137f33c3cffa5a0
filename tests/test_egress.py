"""Zero egress: the guard refuses non-loopback sockets and DNS in real processes, and a job that phones home fails."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import RunningServer, start_server, wait_for_state
from tests.tiny_model import triage_subset
from tunevault.v1 import tunevault_pb2 as pb

POLICY = "network access blocked by the zero-egress policy"
TELEMETRY_HOST = "203.0.113.7"  # TEST-NET-3: for documentation, never routed
TINY_JOB = {"max_steps": 2, "batch_size": 2, "eval_every": 2, "eval_accuracy_max_examples": 2}

# What a chatty or compromised dependency does: report home once it is imported, and swallow any
# failure so that the host program never notices. Loaded from PYTHONPATH at interpreter start (so
# before the guard), it fires later, when `transformers` is first imported.
PHONE_HOME = f"""
import importlib.machinery, socket, sys

class _PhoneHome:
    def find_spec(self, name, path=None, target=None):
        if name != "transformers":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            try:
                socket.create_connection(("{TELEMETRY_HOST}", 443), timeout=1).close()
            except Exception:
                pass

        spec.loader.exec_module = exec_module
        return spec

sys.meta_path.insert(0, _PhoneHome())
"""

# Prepended to every guarded program: `attempt(name, call)` records what `call` did in out[name].
PRELUDE = """
import json, socket, threading, time
from tunevault.server.privacy import egress_guard
egress_guard.install()
out = {}

def attempt(name, call):
    try:
        call()
        out[name] = "allowed"
    except Exception as exc:
        out[name] = [type(exc).__name__, isinstance(exc, PermissionError), str(exc)]
"""


def guarded(code: str, timeout: float = 60) -> dict:
    """Runs `code` in a fresh interpreter with the guard installed; returns its `out` plus the blocked attempts."""
    program = PRELUDE + textwrap.dedent(code) + "\nout['blocked'] = egress_guard.blocked_attempts()\nprint(json.dumps(out))\n"
    done = subprocess.run([sys.executable, "-c", program], check=False, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def refused(what: str) -> list:
    return ["EgressBlocked", True, f"{POLICY}: {what}"]


@pytest.fixture
def phone_home_path(tmp_path: Path) -> str:
    """A PYTHONPATH whose sitecustomize makes `import transformers` phone home."""
    site = tmp_path / "phone_home"
    site.mkdir()
    (site / "sitecustomize.py").write_text(PHONE_HOME)
    return os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p)


# The guard in one process -----------------------------------------------------------------


def test_a_connect_to_a_non_loopback_address_is_refused_before_the_system_call() -> None:
    out = guarded(f"""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(5)
        started = time.monotonic()
        attempt("connect", lambda: sock.connect(("{TELEMETRY_HOST}", 9)))
        out["seconds"] = time.monotonic() - started
        attempt("peer", sock.getpeername)
        attempt("create_connection", lambda: socket.create_connection(("{TELEMETRY_HOST}", 443), timeout=5))
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        attempt("sendto", lambda: udp.sendto(b"x", ("{TELEMETRY_HOST}", 53)))
    """)
    assert out["connect"] == refused(f"connect to {TELEMETRY_HOST}:9")
    assert out["seconds"] < 1  # nothing was tried: a real connect to TEST-NET waits out its timeout
    assert out["peer"][0] == "OSError" and f"[Errno {errno.ENOTCONN}]" in out["peer"][2]  # never connected
    assert out["create_connection"] == refused(f"connect to {TELEMETRY_HOST}:443")
    assert out["sendto"] == refused(f"send to {TELEMETRY_HOST}:53")
    assert out["blocked"] == {f"connect to {TELEMETRY_HOST}:9": 1, f"connect to {TELEMETRY_HOST}:443": 1,
                              f"send to {TELEMETRY_HOST}:53": 1}


def test_no_packet_reaches_a_listener_behind_a_refused_address() -> None:
    """0.0.0.0 is not loopback to the guard, yet Linux delivers it to 127.0.0.1: a real packet would arrive."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(2)
        port = listener.getsockname()[1]
        out = guarded(f"""
            attempt("connect", lambda: socket.create_connection(("0.0.0.0", {port}), timeout=2))
        """)
        assert out["connect"] == refused(f"connect to 0.0.0.0:{port}")
        with pytest.raises(TimeoutError):
            listener.accept()
        # The same connect without the guard does arrive: the check above could have failed.
        subprocess.run([sys.executable, "-c", f"import socket; socket.create_connection(('0.0.0.0', {port}), timeout=2)"],
                       check=True, timeout=60)
        listener.accept()[0].close()


def test_name_resolution_of_other_hosts_is_refused() -> None:
    out = guarded(f"""
        attempt("getaddrinfo", lambda: socket.getaddrinfo("example.com", 443))
        attempt("gethostbyname", lambda: socket.gethostbyname("example.com"))
        attempt("gethostbyaddr", lambda: socket.gethostbyaddr("{TELEMETRY_HOST}"))
        attempt("create_connection", lambda: socket.create_connection(("example.com", 443), timeout=5))
        attempt("localhost", lambda: socket.getaddrinfo("localhost", 443))
        attempt("ip literal", lambda: socket.getaddrinfo("{TELEMETRY_HOST}", 443))  # no query leaves for a literal
    """)
    assert out["getaddrinfo"] == refused("resolve example.com")
    assert out["gethostbyname"] == refused("resolve example.com")
    assert out["gethostbyaddr"] == refused(f"reverse-resolve {TELEMETRY_HOST}")
    assert out["create_connection"] == refused("resolve example.com")
    assert out["localhost"] == out["ip literal"] == "allowed"
    assert out["blocked"] == {"resolve example.com": 3, f"reverse-resolve {TELEMETRY_HOST}": 1}


def test_loopback_and_unix_sockets_still_work(tmp_path: Path) -> None:
    out = guarded(f"""
        def echo_once(family, address):
            server = socket.socket(family, socket.SOCK_STREAM)
            server.bind(address)
            server.listen()
            def serve():
                conn, _ = server.accept()
                conn.sendall(conn.recv(16))
                conn.close()
            threading.Thread(target=serve, daemon=True).start()
            client = socket.socket(family, socket.SOCK_STREAM)
            client.settimeout(5)
            client.connect(address if family == socket.AF_UNIX else server.getsockname())
            client.sendall(b"ping")
            return client.recv(16).decode()

        out["ipv4"] = echo_once(socket.AF_INET, ("127.0.0.1", 0))
        named = socket.create_server(("127.0.0.1", 0))
        out["localhost"] = socket.create_connection(("localhost", named.getsockname()[1]), timeout=5).getpeername()[0]
        out["unix"] = echo_once(socket.AF_UNIX, {str(tmp_path / "echo.sock")!r})
        left, right = socket.socketpair()
        left.sendall(b"pair")
        out["socketpair"] = right.recv(16).decode()
        if socket.has_ipv6:
            out["ipv6"] = echo_once(socket.AF_INET6, ("::1", 0))
    """)
    assert out["ipv4"] == out["unix"] == "ping" and out["socketpair"] == "pair"
    assert out["localhost"] == "127.0.0.1"
    assert out.get("ipv6", "ping") == "ping"
    assert out["blocked"] == {}


def test_a_swallowed_attempt_is_still_counted_and_the_guard_installs_once() -> None:
    out = guarded(f"""
        egress_guard.install()  # a second install must not count everything twice
        for _ in range(2):
            try:
                socket.create_connection(("{TELEMETRY_HOST}", 443), timeout=1)
            except OSError:
                pass  # what telemetry code does
        attempt("raise_if_blocked", egress_guard.raise_if_blocked)
    """)
    assert out["blocked"] == {f"connect to {TELEMETRY_HOST}:443": 2}
    assert out["raise_if_blocked"] == refused(f"connect to {TELEMETRY_HOST}:443 (2 times)")


# Real jobs through the real server ---------------------------------------------------------


def test_a_job_whose_dependency_phones_home_fails_with_the_policy_error(
        tmp_path: Path, tiny_models_dir: Path, phone_home_path: str) -> None:
    running = start_server(tmp_path / "data", tiny_models_dir, extra_env={"PYTHONPATH": phone_home_path})
    try:
        with running.client() as client:
            dataset = client.upload_dataset(triage_subset(tmp_path / "train.jsonl", 16))
            job = client.create_job(dataset.id, "tiny-llama", TINY_JOB)
            failed = wait_for_state(client, job.id, {"FAILED", "SUCCEEDED"}, timeout=300)
            events = list(client.stream_events(job.id))
    finally:
        running.stop()
    assert failed.state == pb.JOB_STATE_FAILED, failed
    assert failed.error.code == "FAILED_PRECONDITION"  # not retried: a retry would phone home again
    assert failed.error.message == f"{POLICY}: connect to {TELEMETRY_HOST}:443"
    # The validation process imports the same libraries, so the job fails there, before a worker
    # ever starts: nothing was trained for a refused result.
    assert failed.attempt == 0
    assert not [e for e in events if e.type in {"job.started", "step", "result"}]


def test_a_normal_job_never_tries_the_network(server: RunningServer, tmp_path: Path) -> None:
    with server.client() as client:
        dataset = client.upload_dataset(triage_subset(tmp_path / "train.jsonl", 16))
        job = client.create_job(dataset.id, "tiny-llama", TINY_JOB)
        finished = wait_for_state(client, job.id, {"FAILED", "SUCCEEDED"}, timeout=300)
        events = list(client.stream_events(job.id))
    assert finished.state == pb.JOB_STATE_SUCCEEDED, (finished, server.log())
    types = [e.type for e in events]
    checked = events[types.index("egress.checked")]
    assert checked.metrics["network_attempts_blocked"] == 0
    assert types[types.index("egress.checked") + 1] == "result"  # checked with the whole job behind it
    log = (server.data_dir / "jobs" / job.id / "worker.log").read_text()
    assert POLICY not in log


def test_the_inference_process_refuses_to_answer_once_something_phoned_home(
        tiny_models_dir: Path, phone_home_path: str) -> None:
    request = {"id": "r1", "base_model_dir": str(tiny_models_dir / "tiny-llama"), "adapter_dir": None,
               "prompt": "Route: itchy rash", "max_tokens": 2}
    done = subprocess.run([sys.executable, "-m", "tunevault.server.inference.process"], input=json.dumps(request) + "\n",
                          check=False, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": phone_home_path})
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout.splitlines()[-1])
    assert answer == {"id": "r1", "error": f"{POLICY}: connect to {TELEMETRY_HOST}:443"}
