"""Ids sort in creation order, even many in one millisecond (the queue's FIFO relies on it)."""

from __future__ import annotations

import threading

from tunevault.server.ids import new_id


def test_ids_made_in_a_burst_sort_in_the_order_they_were_made() -> None:
    ids = [new_id("job") for _ in range(5000)]  # thousands per millisecond: many share one
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(len(i) == len("job_") + 20 for i in ids)


def test_ids_from_several_threads_are_unique() -> None:
    made: list[list[str]] = [[] for _ in range(4)]
    threads = [threading.Thread(target=lambda out=out: out.extend(new_id("ds") for _ in range(2000))) for out in made]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    everything = [i for out in made for i in out]
    assert len(set(everything)) == len(everything)
    assert all(out == sorted(out) for out in made)
