"""Issue 26 at the command line: a newcomer's mistakes cost nothing and each error says what to do.

The real `tunevault` CLI in a subprocess against a real server on the tiny model. Each test
works in its own tenant, so "nothing was uploaded" is that tenant's ListDatasets being empty.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import grpc
import pytest

from tests.conftest import REPO, RunningServer, start_server
from tunevault.v1 import tunevault_pb2 as pb

ROW = {"messages": [{"role": "user", "content": "Itchy rash."}, {"role": "assistant", "content": "dermatology"}]}
# Jobs wait until then instead of training (these tests are about submitting); the server takes a year at most.
HOLD = (datetime.now() + timedelta(days=300)).isoformat(timespec="minutes")


@pytest.fixture(scope="module")
def appliance(tmp_path_factory: pytest.TempPathFactory, tiny_models_dir: Path) -> Iterator[RunningServer]:
    running = start_server(tmp_path_factory.mktemp("first-hour") / "data", tiny_models_dir)
    yield running
    running.stop()


@pytest.fixture
def tenant_token(appliance: RunningServer) -> str:
    """A submitter token of a tenant of its own."""
    with appliance.client() as admin:
        return admin.create_token(f"t-{uuid.uuid4().hex[:12]}", "submitter").secret


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    path = tmp_path / "notes.jsonl"
    path.write_text("\n".join(json.dumps(ROW) for _ in range(8)) + "\n")
    return path


def tunevault(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TUNEVAULT_")}
    return subprocess.run([sys.executable, "-m", "tunevault.client.cli", *args], capture_output=True, text=True,
                          timeout=300, env={**environment, **(env or {})})


def submit(appliance: RunningServer, token: str, *args: str) -> subprocess.CompletedProcess:
    # Jobs are held so no test here trains; a case that tries its own --not-before keeps it
    # (argparse lets the last repeat win, so appending ours would hide the mistake).
    hold = [] if "--not-before" in args else ["--not-before", HOLD]
    return tunevault("submit", *args, *hold, "--address", appliance.address, "--token", token)


def datasets_of(appliance: RunningServer, token: str) -> list[pb.Dataset]:
    with appliance.client(token) as client:
        return list(client.list_datasets().datasets)


# The model store ---------------------------------------------------------------------

def test_a_bare_serve_names_its_empty_model_store_and_the_exact_import_command(
        tmp_path: Path, tiny_models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`tunevault serve --data-dir D` (as after `make demo`): the start-up notice and CreateJob's error give
    the folder and a command that, run as written, makes the model available without a restart."""
    monkeypatch.delenv("TUNEVAULT_MODELS_DIR", raising=False)
    running = start_server(tmp_path / "data", None, "--max-concurrent-jobs", "0")
    store = (tmp_path / "data" / "models").absolute()
    try:
        assert f"tunevault models import --models-dir {store}" in running.log()
        data = tmp_path / "d.jsonl"
        data.write_text(json.dumps(ROW) + "\n")
        with running.client() as client:
            dataset = client.upload_dataset(data)
            with pytest.raises(grpc.RpcError) as refused:
                client.create_job(dataset.id, "tiny-llama", {"max_steps": 1})
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            command = re.search(r"`(tunevault models import [^`]*)`", refused.value.details())
            assert command and str(store) in command.group(1), refused.value.details()

            # The command as the message gives it, with PATH filled in.
            argv = command.group(1).split()[1:]
            argv[argv.index("PATH")] = str(tiny_models_dir / "tiny-llama")
            imported = tunevault(*argv)
            assert imported.returncode == 0, imported.stderr
            assert [m.name for m in client.list_models()] == ["tiny-llama"]
            assert client.create_job(dataset.id, "tiny-llama", {"max_steps": 1}).base_model == "tiny-llama"
    finally:
        running.stop()


def test_the_start_up_notice_points_at_a_store_make_model_prepared(tmp_path: Path, tiny_models_dir: Path) -> None:
    from tunevault.server.admin.serve import empty_store_notice

    empty = (tmp_path / "data" / "models").absolute()
    assert "make model" not in empty_store_notice(empty, tmp_path)  # no store in this folder to point at
    checkout = tmp_path / ".cache" / "models" / "tiny-llama"
    checkout.mkdir(parents=True)
    for item in (tiny_models_dir / "tiny-llama").iterdir():
        os.link(item, checkout / item.name)
    notice = empty_store_notice(empty, tmp_path)
    assert f"tunevault models import --models-dir {empty}" in notice
    assert f"--models-dir {checkout.parent.absolute()}" in notice and "tiny-llama" in notice


# submit --------------------------------------------------------------------------------

@pytest.mark.parametrize("flag", ["--base-model", "--model"])
def test_submit_takes_base_model_and_model_as_its_alias(appliance: RunningServer, tenant_token: str,
                                                        data_file: Path, flag: str) -> None:
    run = submit(appliance, tenant_token, str(data_file), flag, "tiny-llama")
    assert run.returncode == 0, run.stderr
    with appliance.client(tenant_token) as client:
        assert client.get_job(run.stdout.strip()).base_model == "tiny-llama"


def test_every_doc_writes_submit_with_base_model() -> None:
    docs = ["README.md", "helm/tunevault/README.md", "helm/tunevault/templates/NOTES.txt", "docs/deploy.md"]
    for doc in docs:
        submits = [line for line in (REPO / doc).read_text().splitlines() if "tunevault submit" in line]
        for line in submits:
            assert "--model " not in line, f"{doc}: {line}"
    assert any("submit" in line and "--base-model" in line for line in (REPO / "README.md").read_text().splitlines())


@pytest.mark.parametrize("mistake, said", [
    (["--set", "learning_rate=abc"], "--set learning_rate=abc: not a number"),
    (["--set", "lora_r=8.5"], "--set lora_r=8.5: not a whole number"),
    (["--set", "export_merged=maybe"], "--set export_merged=maybe: must be true or false"),
    (["--set", "canary_repetitions=1,x"], "--set canary_repetitions=1,x: not a whole number"),
    (["--set", "lerning_rate=1e-4"], "--set lerning_rate=1e-4: unknown hyperparameter (did you mean learning_rate?)"),
    (["--set", "learning_rate"], "--set learning_rate: expected KEY=VALUE"),
    (["--not-before", "tomorrow"], "--not-before tomorrow"),
    (["--validation-file", "missing.jsonl"], "missing.jsonl: no such file"),
])
def test_a_typo_is_named_and_uploads_nothing(appliance: RunningServer, tenant_token: str, data_file: Path,
                                             mistake: list[str], said: str) -> None:
    run = submit(appliance, tenant_token, str(data_file), "--base-model", "tiny-llama", *mistake)
    assert run.returncode == 2 and said in run.stderr, run.stderr
    assert datasets_of(appliance, tenant_token) == []


def test_an_unknown_base_model_is_refused_before_the_upload(appliance: RunningServer, tenant_token: str,
                                                            data_file: Path) -> None:
    run = submit(appliance, tenant_token, str(data_file), "--base-model", "tiny-lama")
    assert run.returncode == 2, run.stderr
    assert "tiny-lama" in run.stderr and "tiny-llama" in run.stderr and "nothing was uploaded" in run.stderr
    assert datasets_of(appliance, tenant_token) == []


def test_a_job_the_server_refuses_leaves_no_uploaded_data_behind(appliance: RunningServer, tenant_token: str,
                                                                 data_file: Path) -> None:
    # A well-formed number the server's rules refuse: only CreateJob, after both uploads, can say so.
    run = submit(appliance, tenant_token, str(data_file), "--base-model", "tiny-llama",
                 "--validation-file", str(data_file), "--set", "learning_rate=-1")
    assert run.returncode == 2 and "INVALID_ARGUMENT" in run.stderr and "learning_rate" in run.stderr, run.stderr
    assert run.stderr.count("deleted the dataset just uploaded") == 2, run.stderr
    assert datasets_of(appliance, tenant_token) == []


def test_a_retried_submit_with_the_same_idempotency_key_keeps_one_copy(appliance: RunningServer, tenant_token: str,
                                                                       data_file: Path) -> None:
    key = ["--base-model", "tiny-llama", "--idempotency-key", uuid.uuid4().hex]
    first, second = (submit(appliance, tenant_token, str(data_file), *key) for _ in range(2))
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert first.stdout == second.stdout
    with appliance.client(tenant_token) as client:
        job = client.get_job(first.stdout.strip())
    assert [d.id for d in datasets_of(appliance, tenant_token)] == [job.dataset_id]


# Files and tokens ----------------------------------------------------------------------

@pytest.mark.parametrize("command", ["submit", "upload"])
def test_a_missing_file_is_named_before_a_stream_opens(appliance: RunningServer, tenant_token: str,
                                                       tmp_path: Path, command: str) -> None:
    missing = tmp_path / "nope.jsonl"
    extra = ["--base-model", "tiny-llama"] if command == "submit" else []
    run = tunevault(command, str(missing), *extra, "--address", appliance.address, "--token", tenant_token)
    assert run.returncode == 2
    assert run.stderr.strip() == f"error: {missing}: no such file"


def test_a_missing_token_names_the_flag_and_the_variable(appliance: RunningServer, data_file: Path) -> None:
    for args in (["jobs"], ["submit", str(data_file), "--base-model", "tiny-llama"]):
        run = tunevault(*args, "--address", appliance.address)
        assert run.returncode == 2 and "UNAUTHENTICATED" in run.stderr
        assert "--token" in run.stderr and "TUNEVAULT_TOKEN" in run.stderr, run.stderr


@pytest.mark.parametrize("given", ["flag", "environment"])
def test_a_refused_token_says_where_it_came_from(appliance: RunningServer, given: str) -> None:
    wrong = "tv_not-a-token"
    if given == "flag":
        run = tunevault("jobs", "--address", appliance.address, "--token", wrong)
    else:
        run = tunevault("jobs", "--address", appliance.address, env={"TUNEVAULT_TOKEN": wrong})
    assert run.returncode == 2 and "UNAUTHENTICATED" in run.stderr
    assert "refused" in run.stderr and ("--token" if given == "flag" else "TUNEVAULT_TOKEN") in run.stderr
    assert "--token" in run.stderr and "TUNEVAULT_TOKEN" in run.stderr


# Deleting -------------------------------------------------------------------------

def _ok(appliance: RunningServer, token: str, *args: str) -> str:
    done = tunevault(*args, "--address", appliance.address, "--token", token)
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


def test_delete_dataset_and_delete_job_say_what_they_freed(appliance: RunningServer, tenant_token: str,
                                                           data_file: Path) -> None:
    dataset = _ok(appliance, tenant_token, "upload", str(data_file)).split()[0]
    job = _ok(appliance, tenant_token, "submit", str(data_file), "--base-model", "tiny-llama",
               "--not-before", HOLD).split()[0]
    _ok(appliance, tenant_token, "cancel", job)
    assert re.search(rf"job {job}: deleted \d+ bytes of artifacts and checkpoints", _ok(appliance, tenant_token,
                                                                                        "delete", job))
    said = _ok(appliance, tenant_token, "delete-dataset", dataset)
    assert re.search(rf"dataset {dataset}: deleted [1-9]\d* bytes", said), said
