"""Overlap the release's reading, deciding and writing on a multi-core machine, memory bounded.

The release pass is three steps per chunk of rows: read (Parquet decode of the raw shard and its
annotation files), decide (Polars), write (zstd Parquet shards). Reading and writing run in
PyArrow's C++ code with the GIL released, so a reader thread that stays one chunk ahead and a
writer thread that takes the kept rows one chunk behind let the three steps use separate cores.

Memory: at most ``depth`` chunks wait in each hand-off queue (default 1), so the pass holds about
three chunks at once instead of one (a chunk is ``fates.CHUNK_ROWS`` rows). Order is kept (one
producer, one consumer per queue), so the shards are byte-identical to a serial pass. An error in
a thread is raised in the caller at its next hand-off; a thread stops when the caller stops.
"""
from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Generator, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")
_END = object()


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


def read_ahead(items: Iterator[T], depth: int = 1) -> Generator[T, None, None]:
    """``items``, produced by a thread that stays up to ``depth`` items ahead of the consumer."""
    q: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(_END)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised there
            q.put(_Failed(e))

    thread = threading.Thread(target=produce, name="release-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue, then let it finish
            try:
                q.get_nowait()
            except queue.Empty:
                pass
            thread.join(timeout=0.05)
        close = getattr(items, "close", None)
        if close is not None:
            close()  # the generator's files (ExitStack) close in this thread, after the producer stopped


class Behind(Generic[T]):
    """Calls ``fn(item)`` for each ``put`` item in a thread, in order, up to ``depth`` items behind.
    ``finish()`` waits for the rest; an error in ``fn`` is raised by the next ``put`` or ``finish``.
    As a context manager it finishes on exit; leaving with an error, it skips what is still queued,
    waits for the item in hand and lets the caller's error through."""

    def __init__(self, fn: Callable[[T], None], depth: int = 1):
        self._q: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._fn = fn
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="release-write-behind", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is _END:
                return
            if self._error is None:
                try:
                    self._fn(item)
                except BaseException as e:  # noqa: BLE001 - raised in the caller
                    self._error = e

    def _check(self) -> None:
        if self._error is not None:
            error = self._error
            self._stop()
            raise error

    def _stop(self) -> None:
        """End the thread (what is still queued is skipped once an error is set)."""
        if self._thread.is_alive():
            self._q.put(_END)
            self._thread.join()

    def put(self, item: T) -> None:
        self._check()
        self._q.put(item)

    def __enter__(self) -> Behind[T]:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.finish()
        else:
            self._error = self._error or exc  # skip what is still queued
            self._stop()

    def finish(self) -> None:
        """Wait until every item is handled; raise the first error."""
        self._stop()
        self._check()
