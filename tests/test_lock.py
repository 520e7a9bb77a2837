"""The lake lock: one holder, a clear message naming it, waiting, stale takeover (dead pid, old
heartbeat on another host, a reused pid), the takeover race between several processes, lost-lock
detection; on local disk and on a real S3 server (moto, conditional PUT)."""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from engines import storage
from tests.conftest import REPO
from warehouse.lock import (
    LakeBusy,
    LakeLock,
    LockLost,
    LockRecord,
    is_stale,
    lake_lock,
    lock_holder,
    pid_namespace,
    process_started,
)


@pytest.fixture(params=["local", "s3"])
def lake_root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "lake")
    return request.getfixturevalue("s3_server").bucket() + "/lake"


def _record(gen: int, host: str, heartbeat_age_s: float, pid: int = 4242, started: str | None = None,
            pid_ns: str | None = None) -> LockRecord:
    beat = (datetime.now(UTC) - timedelta(seconds=heartbeat_age_s)).isoformat()
    return LockRecord(generation=gen, token=f"tok{gen}", owner="someone", host=host, pid=pid, pid_started=started,
                      run_id=f"run-{gen}", purpose="run", started_at=beat, heartbeat_at=beat,
                      pid_ns=pid_ns if pid_ns is not None else pid_namespace())


def _plant(root: str, rec: LockRecord) -> None:
    assert storage.create_exclusive(f"{root}/_lock/gen-{rec.generation:012d}.json", rec.to_bytes())


def test_one_holder_and_the_message_names_it(lake_root):
    with lake_lock(lake_root, "run", run_id="run-A") as lock:
        assert lock.record is not None and lock.record.generation == 0
        other = LakeLock(lake_root, "run")
        with pytest.raises(LakeBusy) as e:
            other.acquire(wait_s=0)
        msg = str(e.value)
        assert socket.gethostname() in msg and f"pid {os.getpid()}" in msg and "run run-A" in msg
        assert lock.record.started_at in msg
        assert lock_holder(lake_root).token == lock.record.token
    assert lock_holder(lake_root) is None
    # Released: the next holder takes the next generation and prunes the older record.
    with lake_lock(lake_root, "repair") as again:
        assert again.record.generation == 1
        assert LakeLock(lake_root, "x").generations() == [1]


def test_reentrant_within_a_process(lake_root):
    with lake_lock(lake_root, "run") as outer:
        with lake_lock(lake_root, "run", run_id="run-inner") as inner:
            assert inner is outer
        assert outer.read(outer.record.generation).run_id == "run-inner"
        assert lock_holder(lake_root) is not None  # the inner exit did not release
    assert lock_holder(lake_root) is None


def test_a_waiting_writer_gets_the_lock_when_it_is_released(lake_root):
    first = LakeLock(lake_root, "run")
    token = first.acquire().token
    threading.Timer(1.0, first.release).start()
    seen = []
    second = LakeLock(lake_root, "run")
    rec = second.acquire(wait_s=60, on_wait=seen.append)
    assert rec.generation == 1
    assert [s.token for s in seen] == [token]  # told once who it was waiting for
    second.release()


def test_wait_gives_up_with_the_holder_named(lake_root):
    with lake_lock(lake_root, "run", run_id="run-long"):
        t0 = time.monotonic()
        with pytest.raises(LakeBusy, match="run-long.*after waiting"):
            LakeLock(lake_root, "run").acquire(wait_s=1.0)
        assert time.monotonic() - t0 >= 1.0


def test_heartbeat_refreshes_the_record(lake_root):
    lock = LakeLock(lake_root, "run", heartbeat_s=0.2)
    lock.acquire()
    first = lock.read(0).heartbeat_at
    time.sleep(1.5)
    assert lock.read(0).heartbeat_at > first
    lock.release()
    assert lock.read(0).released_at is not None


def test_stale_lock_of_a_dead_process_on_this_host_is_taken_over(lake_root):
    # A real process takes the lock and is killed with SIGKILL: no release, no cleanup.
    code = ("import sys, time; from warehouse.lock import LakeLock; "
            f"LakeLock({lake_root!r}, 'run', run_id='run-killed').acquire(); print('held', flush=True); time.sleep(600)")
    p = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "held"
        with pytest.raises(LakeBusy, match="run-killed"):
            LakeLock(lake_root, "run").acquire()
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    with lake_lock(lake_root, "run") as lock:
        assert lock.record.generation == 1


def test_a_holder_killed_right_after_acquiring_is_taken_over(lake_root):
    code = f"from warehouse.lock import LakeLock; LakeLock({lake_root!r}, 'run').acquire(); print('survived')"
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "CURATE_FAULT": "lock:acquired"})
    assert p.returncode == -signal.SIGKILL and "survived" not in p.stdout
    holder = LakeLock(lake_root, "x").current()
    assert holder is not None and holder[1] is not None and holder[1].released_at is None
    with lake_lock(lake_root, "run") as lock:
        assert lock.record.generation == holder[0] + 1


def test_other_host_is_stale_only_after_the_heartbeat_timeout(lake_root):
    _plant(lake_root, _record(3, "another-host", heartbeat_age_s=5))
    with pytest.raises(LakeBusy, match="another-host"):
        LakeLock(lake_root, "run", stale_after_s=60).acquire()
    lock = LakeLock(lake_root, "run", stale_after_s=2)  # now 5 s is older than the timeout
    assert lock.acquire().generation == 4
    lock.release()


def test_a_reused_pid_is_not_mistaken_for_the_holder():
    me, started = os.getpid(), process_started(os.getpid())
    host = socket.gethostname()
    assert not is_stale(_record(0, host, 0, pid=me, started=started))
    if started is not None:  # Linux: the same pid started at another time is another process
        assert is_stale(_record(0, host, 0, pid=me, started=str(int(started) - 1)))
    # Another container with the same host name: its pids mean nothing here; the heartbeat decides.
    dead_pid_elsewhere = _record(0, host, 0, pid=2**22 + 7, pid_ns="pid:[1]")
    assert not is_stale(dead_pid_elsewhere, stale_after_s=60)
    assert is_stale(_record(0, host, 120, pid=2**22 + 7, pid_ns="pid:[1]"), stale_after_s=60)


def _race(root: str, barrier, results) -> None:
    lock = LakeLock(root, "race")
    barrier.wait()
    rec = lock.try_acquire()
    results.put((os.getpid(), rec.generation if rec else None))


@pytest.mark.slow
def test_racing_takeover_of_a_stale_lock_has_exactly_one_winner(lake_root):
    ctx = mp.get_context("spawn")
    for round_ in range(3):
        gens = LakeLock(lake_root, "x").generations()
        top = gens[-1] + 1 if gens else 0
        _plant(lake_root, _record(top, "gone-host", heartbeat_age_s=10_000))
        n = 4
        barrier, results = ctx.Barrier(n), ctx.Queue()
        procs = [ctx.Process(target=_race, args=(lake_root, barrier, results)) for _ in range(n)]
        for p in procs:
            p.start()
        got = [results.get(timeout=120) for _ in procs]
        for p in procs:
            p.join(60)
        winners = [g for _, g in got if g is not None]
        assert winners == [top + 1], (round_, got)
        assert LakeLock(lake_root, "x").generations()[-1] == top + 1
        # The winner's process is gone now (same host, dead pid): the next round takes it over again.


def test_a_writer_whose_number_was_pruned_withdraws(lake_root, monkeypatch):
    """Seen gen 5 as the newest and stale, but 6 and 7 were created (and 6 pruned) meanwhile:
    creating 6 succeeds, yet the writer must notice 7 and back off."""
    _plant(lake_root, _record(7, "another-host", heartbeat_age_s=0))
    lock = LakeLock(lake_root, "run")
    monkeypatch.setattr(lock, "current", lambda: (5, _record(5, "another-host", heartbeat_age_s=10_000)))
    assert lock.try_acquire() is None
    assert lock.generations() == [7]


def test_losing_the_create_race_still_names_the_winner(lake_root, monkeypatch):
    """Two writers start together: both see an empty lock folder, the winner creates gen 0 first.
    The loser's create fails before it ever read a record; its error must still name the winner
    (CI saw "locked by another writer" here when two `curate run` started at once)."""
    with lake_lock(lake_root, "run", run_id="run-W") as winner:
        loser = LakeLock(lake_root, "run")
        real_current = loser.current
        calls = {"n": 0}

        def stale_view():
            calls["n"] += 1
            return None if calls["n"] == 1 else real_current()  # first look: the folder was still empty

        monkeypatch.setattr(loser, "current", stale_view)
        with pytest.raises(LakeBusy) as e:
            loser.acquire(wait_s=0)
        msg = str(e.value)
        assert "run run-W" in msg and f"pid {os.getpid()}" in msg and winner.record.started_at in msg


def test_a_lost_lock_is_detected_and_never_overwritten(lake_root):
    lock = LakeLock(lake_root, "run", heartbeat_s=3600)
    lock.acquire()
    # Another writer took over (as after a long pause of this process).
    _plant(lake_root, _record(1, "another-host", heartbeat_age_s=0))
    lock.refresh()
    with pytest.raises(LockLost, match="another-host"):
        lock.check()
    lock.release()
    assert lock.read(1).token == "tok1" and lock.read(1).released_at is None


def test_unreadable_newest_record_counts_as_held_until_old(tmp_path):
    root = str(tmp_path / "lake")
    assert storage.create_exclusive(f"{root}/_lock/gen-000000000000.json", b'{"generation": 0, "tok')
    with pytest.raises(LakeBusy, match="being written"):
        LakeLock(root, "run").acquire()
    old = time.time() - 3600
    os.utime(f"{root}/_lock/gen-000000000000.json", (old, old))
    with lake_lock(root, "run") as lock:
        assert lock.record.generation == 1


def test_exclusive_create_is_exclusive(lake_root):
    path = f"{lake_root}/x/once.json"
    assert storage.create_exclusive(path, b"first")
    assert not storage.create_exclusive(path, b"second")
    fs, p = storage.fs_and_path(path)
    assert fs.cat_file(p) == b"first"
    assert json.loads(LockRecord(**json.loads(_record(0, "h", 0).to_bytes())).to_bytes())["host"] == "h"
