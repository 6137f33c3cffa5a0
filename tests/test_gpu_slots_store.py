"""The GPU claim on real SQLite: distinct devices, all-or-nothing, strict order, release on every exit."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from tunevault.server.store import JobState, Store

BOX = (0, 1)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "tunevault.db")


def _queued(store: Store, gpus: int | None = None, priority: int = 0) -> str:
    dataset = store.insert_dataset(name="d", sha256="0" * 64, row_count=3, size_bytes=10, format="chat_jsonl",
                                   path="datasets/d.jsonl").id
    job, _ = store.create_job(dataset_id=dataset, validation_dataset_id=None, base_model="m", hyperparameters={},
                              idempotency_key=None, priority=priority, gpus=gpus, queue=True)
    return job.id


def test_two_one_gpu_jobs_get_distinct_devices_and_a_third_waits(store: Store) -> None:
    first, second, third = _queued(store), _queued(store), _queued(store)
    claimed = [store.claim_next_job(60, BOX), store.claim_next_job(60, BOX)]
    assert [j.id for j in claimed] == [first, second]
    assert [j.devices for j in claimed] == [(0,), (1,)]
    assert store.claim_next_job(60, BOX) is None  # both devices held
    assert store.get_job(third).state is JobState.QUEUED
    assert {d: j.id for d, j in store.held_devices().items()} == {0: first, 1: second}


def test_a_two_gpu_job_waits_until_both_are_free_and_blocks_the_queue_behind_it(store: Store) -> None:
    one = _queued(store)
    store.claim_next_job(60, BOX)
    both, small = _queued(store, gpus=2), _queued(store, gpus=1)
    # Device 1 is free, but the head needs two: neither it nor the 1-GPU job behind it starts (no starvation).
    assert store.claim_next_job(60, BOX) is None
    assert store.get_job(small).state is JobState.QUEUED
    store.transition(one, JobState.SUCCEEDED, event_type="job.succeeded")
    claimed = store.claim_next_job(60, BOX)
    assert (claimed.id, claimed.devices, claimed.gpus) == (both, (0, 1), 2)
    started = [e for e in store.events_after(both, 0) if e.type == "job.started"]
    assert started[-1].message.endswith("on GPU 0,1")


@pytest.mark.parametrize("exit_state", [JobState.FAILED, JobState.CANCELLED, JobState.QUEUED])
def test_devices_are_released_when_the_job_leaves_the_worker_states(store: Store, exit_state: JobState) -> None:
    job = _queued(store, gpus=2)
    store.claim_next_job(60, BOX)
    store.transition(job, exit_state, event_type="x")
    assert store.get_job(job).devices == () and store.held_devices() == {}


def test_pause_keeps_the_devices_until_the_worker_stopped(store: Store) -> None:
    job = _queued(store)
    store.claim_next_job(60, BOX)
    assert store.request_pause(job).devices == (0,)  # PAUSING: the worker is still checkpointing
    store.transition(job, JobState.PAUSED, event_type="job.paused")
    assert store.held_devices() == {}


def test_restart_recovery_releases_the_devices(store: Store) -> None:
    _queued(store)  # running when claimed; restart recovery must release its device too
    cancelling = _queued(store)
    store.claim_next_job(60, BOX), store.claim_next_job(60, BOX)
    store.request_cancel(cancelling)
    store.requeue_orphans()
    assert store.held_devices() == {}
    assert store.claim_next_job(60, BOX).devices == (0,)


def test_cpu_jobs_take_no_device_and_a_cpu_box_claims_as_before(store: Store) -> None:
    cpu, default = _queued(store, gpus=0), _queued(store)
    assert store.claim_next_job(60, BOX).devices == ()
    assert store.claim_next_job(60, BOX).devices == (0,)  # unset on a GPU box: one GPU
    on_cpu_box = _queued(store)
    claimed = store.claim_next_job(60, ())
    assert (claimed.id, claimed.gpus, claimed.devices) == (on_cpu_box, 0, ())
    assert {cpu, default} <= {j.id for j in store.list_jobs(10, states=[JobState.RUNNING])}


def test_a_job_bigger_than_the_box_is_skipped_and_listed(store: Store) -> None:
    big, small = _queued(store, gpus=4), _queued(store)
    assert [j.id for j in store.too_big_for(BOX)] == [big]
    assert store.claim_next_job(60, BOX).id == small


def test_racing_claims_never_share_a_device(tmp_path: Path) -> None:
    store = Store(tmp_path / "tunevault.db")
    for _ in range(6):
        _queued(store)
    box = (0, 1, 2, 3)
    claimed: list = []
    threads = [threading.Thread(target=lambda: claimed.append(store.claim_next_job(60, box))) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    devices = [d for job in claimed if job is not None for d in job.devices]
    assert sorted(devices) == [0, 1, 2, 3]
    assert sum(job is None for job in claimed) == 2
