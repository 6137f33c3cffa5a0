"""`make demo`: the main job end to end, through the real CLI against a real server.

Starts `tunevault serve` on a free local port with a temporary data directory, submits the
triage example, watches it with the progress bar, then shows eval loss and task accuracy
before vs after and one generation from the base model vs the adapter; then a DPO job on the
synthetic preference set (examples/preference.jsonl) shows the preferred answers becoming the
likelier ones on held-out questions; the OpenAI SDK streams an answer from the adapter through
the OpenAI-compatible endpoint; and stops the server.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODEL = "smollm2-135m-instruct"
TUNEVAULT = [sys.executable, "-m", "tunevault.client.cli"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def banner(text: str) -> None:
    print(f"\n=== {text} ===", file=sys.stderr, flush=True)


def cli(*args: str, env: dict[str, str], capture: bool = True) -> str:
    """Runs one `tunevault` command; its stderr (progress, messages) goes straight to ours."""
    result = subprocess.run([*TUNEVAULT, *args], env=env, check=False, text=True,
                            stdout=subprocess.PIPE if capture else None)
    if result.returncode != 0:
        raise SystemExit(f"`tunevault {' '.join(args)}` exited with {result.returncode}")
    return result.stdout or ""


def wait_serving(env: dict[str, str], server: subprocess.Popen, timeout: float = 60) -> None:
    from tunevault.client import Client

    deadline = time.monotonic() + timeout
    with Client(env["TUNEVAULT_ADDRESS"]) as client:
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise SystemExit("the server exited during start-up")
            try:
                if client.health(timeout=1) == "SERVING":
                    return
            except Exception:  # noqa: BLE001 - not up yet
                pass
            time.sleep(0.3)
    raise SystemExit("the server did not become SERVING")


def first_validation_row(path: Path) -> tuple[str, str, str]:
    messages = json.loads(path.read_text().splitlines()[0])["messages"]
    by_role = {m["role"]: m["content"] for m in messages}
    return by_role.get("system", ""), by_role["user"], by_role["assistant"]


def before_after(metrics: dict, rows: list[tuple[str, str, str, str]], width: int) -> None:
    """A before/after table of (label, base key, adapter key, format) rows the result has."""
    print(f"\n{'':{width}}{'before':>10}{'after':>10}")
    for label, before, after, fmt in rows:
        if before in metrics and after in metrics:
            print(f"{label:{width}}{fmt.format(metrics[before]):>10}{fmt.format(metrics[after]):>10}")


def report(job: dict) -> None:
    metrics = job.get("result", {}).get("metrics", {})
    before_after(metrics, [("eval loss", "base_eval_loss", "eval_loss", "{:.4f}"),
                           ("task accuracy (exact match)", "base_accuracy", "accuracy", "{:.1%}")], 30)
    extra = {k: v for k, v in metrics.items() if k in ("train_loss", "trained_tokens", "steps", "train_seconds")}
    print("  " + ", ".join(f"{k} {v:.4g}" for k, v in sorted(extra.items())))


# DPO on the preference example: few enough steps for a CPU, enough to move held-out accuracy.
DPO_SETTINGS = ("max_steps=10", "batch_size=4", "learning_rate=0.0005", "preference_beta=0.1", "eval_every=0")


def preference_report(job: dict) -> None:
    """Held-out pairs, base vs adapter: how often the preferred answer is the likelier one, and by how much."""
    metrics = job.get("result", {}).get("metrics", {})
    before_after(metrics, [
        ("preferred answer likelier", "base_preference_accuracy", "preference_accuracy", "{:.1%}"),
        ("log p(preferred) - log p(other)", "base_preference_margin", "preference_margin", "{:+.2f}")], 34)
    if "reward_margin" in metrics:
        print(f"  DPO reward margin {metrics['reward_margin']:+.3f}, reward accuracy {metrics['reward_accuracy']:.1%}")


def run_preference_step(env: dict[str, str]) -> None:
    banner("preference tuning: DPO on examples/preference.jsonl (held-out medicines)")
    job_id = cli("submit", str(HERE / "preference.jsonl"), "--model", MODEL, "--method", "dpo",
                 "--validation-file", str(HERE / "preference_validation.jsonl"), "--name", "demo-dpo",
                 *[arg for setting in DPO_SETTINGS for arg in ("--set", setting)], env=env).strip()
    subprocess.run([*TUNEVAULT, "watch", job_id], env=env, check=True)
    preference_report(json.loads(cli("status", job_id, "--json", env=env)))


def run_openai_step(http_port: int, token: str, job_id: str, system: str, prompt: str) -> None:
    """The adapter through the OpenAI-compatible API, as an existing OpenAI app would call it."""
    from openai import OpenAI

    banner(f"the same note through the OpenAI SDK (base_url http://127.0.0.1:{http_port}/v1, model {job_id})")
    client = OpenAI(base_url=f"http://127.0.0.1:{http_port}/v1", api_key=token)
    stream = client.chat.completions.create(model=job_id, max_tokens=16, temperature=0, stream=True, messages=[
        {"role": "system", "content": system}, {"role": "user", "content": prompt}])
    print("streamed: ", end="")
    for chunk in stream:
        print(chunk.choices[0].delta.content or "", end="", flush=True)
    print()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models-dir", type=Path, required=True)
    parser.add_argument("--train", type=Path, default=HERE / "triage.jsonl")
    parser.add_argument("--validation", type=Path, default=HERE / "triage_validation.jsonl")
    parser.add_argument("--keep", action="store_true", help="keep the temporary data directory")
    parser.add_argument("--skip-preference", action="store_true", help="leave out the DPO step")
    parser.add_argument("--out", type=Path, default=Path("out") / "demo",
                        help="where the adapter archive and the job's report are saved")
    args = parser.parse_args()

    data_dir = Path(tempfile.mkdtemp(prefix="tunevault-demo-"))
    port, http_port = free_port(), free_port()
    # The first admin token comes from a file, as a Kubernetes Secret would give it.
    token = "tv_" + secrets.token_urlsafe(32)
    token_file = data_dir / "admin-token"
    token_file.write_text(token)
    token_file.chmod(0o600)
    env = {**os.environ, "TUNEVAULT_ADDRESS": f"127.0.0.1:{port}", "TUNEVAULT_TOKEN": token}
    banner(f"starting the server on 127.0.0.1:{port} (data in {data_dir})")
    server = subprocess.Popen([*TUNEVAULT, "serve", "--data-dir", str(data_dir), "--models-dir",
                               str(args.models_dir.resolve()), "--listen", f"127.0.0.1:{port}",
                               "--metrics-listen", f"127.0.0.1:{free_port()}", "--admin-token-file", str(token_file),
                               "--openai-listen", f"127.0.0.1:{http_port}"],
                              env=env)
    try:
        wait_serving(env, server)
        banner("models in the store")
        print(cli("models", env=env), end="")

        banner("submitting the triage example and watching it")
        job_id = cli("submit", str(args.train), "--model", MODEL, "--validation-file", str(args.validation),
                     "--name", "demo-triage", env=env).strip()
        subprocess.run([*TUNEVAULT, "watch", job_id], env=env, check=True)

        banner("before vs after")
        report(json.loads(cli("status", job_id, "--json", env=env)))

        system, prompt, expected = first_validation_row(args.validation)
        banner("one validation note, base model vs adapter")
        print(f"note: {prompt}\nexpected: {expected}")
        common = ["--system", system, "--max-tokens", "16"]
        print("base:    " + cli("generate", "--base", MODEL, prompt, *common, env=env).strip())
        print("adapter: " + cli("generate", job_id, prompt, *common, env=env).strip())
        run_openai_step(http_port, token, job_id, system, prompt)
        banner("the job's report (report.md, loss_curve.png, metrics.json)")
        args.out.mkdir(parents=True, exist_ok=True)
        print(cli("report", job_id, "--out", str(args.out), env=env), end="")
        cli("download", job_id, "-o", str(args.out), env=env)
        print(f"\nadapter archive and report saved in {args.out}", file=sys.stderr)
        if not args.skip_preference:
            run_preference_step(env)
        return 0
    finally:
        banner("stopping the server")
        server.send_signal(signal.SIGTERM)
        server.wait(120)
        if not args.keep:
            shutil.rmtree(data_dir, ignore_errors=True)
            # The master key the server generated beside its data directory (server/privacy/keys.py).
            data_dir.with_name(f"{data_dir.name}.master-key").unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main())
