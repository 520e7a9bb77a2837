"""The release pass's read-ahead and write-behind threads (warehouse/releasing/overlap.py): order
kept, errors raised in the caller, nothing left running when the caller stops early."""
from __future__ import annotations

import threading

import pytest

from warehouse.releasing.overlap import Behind, read_ahead


def test_read_ahead_keeps_order_and_stays_one_ahead():
    produced: list[int] = []

    def items():
        for i in range(50):
            produced.append(i)
            yield i

    seen = []
    for i in read_ahead(items()):
        seen.append(i)
        assert len(produced) <= i + 3  # the item handed over, one in the queue, one being made
    assert seen == list(range(50))


def test_read_ahead_raises_the_producer_error_and_closes_the_source():
    closed = threading.Event()

    def items():
        try:
            yield 1
            raise ValueError("damaged shard")
        finally:
            closed.set()

    with pytest.raises(ValueError, match="damaged shard"):
        list(read_ahead(items()))
    assert closed.is_set()


def test_read_ahead_stops_its_thread_when_the_consumer_stops():
    closed = threading.Event()

    def items():
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.set()

    gen = read_ahead(items())
    assert [next(gen) for _ in range(3)] == [0, 1, 2]
    gen.close()
    assert closed.is_set()
    assert not any(t.name == "release-read-ahead" and t.is_alive() for t in threading.enumerate())


def test_behind_calls_in_order_and_raises_errors_in_the_caller():
    got: list[int] = []
    with Behind(got.append) as behind:
        for i in range(100):
            behind.put(i)
    assert got == list(range(100))

    def fail(i: int) -> None:
        if i == 3:
            raise OSError("disk full")

    behind = Behind(fail)
    with pytest.raises(OSError, match="disk full"):
        for i in range(10):
            behind.put(i)
        behind.finish()


def test_behind_leaves_with_the_callers_error():
    got: list[int] = []
    with pytest.raises(KeyError):
        with Behind(got.append) as behind:
            behind.put(1)
            raise KeyError("caller")
    assert not any(t.name == "release-write-behind" and t.is_alive() for t in threading.enumerate())
