"""One writer per lake: the lake lock.

Every command that writes a lake (``curate run``, ``repair``, ``catalog rebuild``, ``gc``)
holds this lock for its whole duration::

    from warehouse.lock import lake_lock
    with lake_lock(lake_root, "gc") as lock:   # raises LakeBusy if another writer holds it
        ...                                     # lock.check() raises LockLost if it was taken over

How it works (local disk and object stores alike; no rename, no delete needed):

- The lock is a series of records ``<lake>/_lock/gen-<generation>.json``, each created with an
  *exclusive create* (hard link / ``O_EXCL`` locally, a conditional PUT with ``If-None-Match``
  on S3: see ``engines.storage.create_exclusive``). The record with the highest generation
  decides: it is *held* unless it says it was released, or it is *stale*.
- To acquire, a writer creates generation ``max + 1``. Exactly one of several writers racing
  for the same generation succeeds; the others see ``FileExistsError`` and look again. After a
  successful create the writer lists once more: if a higher generation exists (possible only
  when its own number had been created and pruned meanwhile), it withdraws. So two runs that
  take over the same stale lock at once cannot both win, on S3 as on local disk.
- The holder rewrites its own record every ``heartbeat_s`` seconds (default 10) and, before
  each rewrite, checks it is still the newest generation; if not, ``check()`` raises
  ``LockLost`` at the next step boundary and the run stops.
- A record is *stale* when its holder is gone: on the same host, its process no longer exists
  (or the pid now belongs to a process started later); on another host (or in another pid
  namespace: containers may share a host name), its heartbeat is older
  than ``stale_after_s`` (default 300 s; ``CURATE_LOCK_STALE_S``). Hosts' clocks are assumed to
  agree within a fraction of that (NTP). A stale record is never modified: taking over is just
  creating the next generation, so the race above covers it.
- Releasing rewrites the holder's record with ``released_at``. The newest record always stays;
  older generations are pruned by the next holder.

Within one process the lock is re-entrant: ``curate run`` takes it before Prefect starts (to
fail fast) and the flow takes it again (a no-op), which also covers flows started by
``curate serve``.

Cost: a listing and one small object per acquire, one small write per heartbeat.
"""
from __future__ import annotations

import getpass
import json
import logging
import os
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Callable, Iterator

from engines import storage
from engines.faults import fault_point
from warehouse.errors import LakeError

LOCK_DIR = "_lock"
DEFAULT_STALE_S = 300.0
DEFAULT_HEARTBEAT_S = 10.0
log = logging.getLogger("curate.lock")


class LakeBusy(LakeError):
    """Another writer holds the lake lock (the message names it)."""

    exit_code = 75  # EX_TEMPFAIL: try again later

    def __init__(self, lake_root: str, holder: LockRecord | None, waited_s: float = 0.0):
        self.holder = holder
        who = holder.describe() if holder else "another writer (its lock record is being written)"
        waited = f" after waiting {waited_s:.0f} s" if waited_s else ""
        super().__init__(f"lake {lake_root} is locked by {who}{waited}. Wait for it to finish, pass --wait SECONDS, "
                         f"or, if that process is gone, the lock is taken over automatically once its heartbeat is "
                         f"{_stale_after():.0f} s old.")


class LockLost(LakeError):
    """This process held the lake lock, but another writer took it over (its heartbeat stopped)."""


@dataclass
class LockRecord:
    """What a lock record says about its holder."""

    generation: int
    token: str
    owner: str
    host: str
    pid: int
    pid_started: str | None
    run_id: str | None
    purpose: str
    started_at: str
    heartbeat_at: str
    released_at: str | None = None
    pid_ns: str | None = None  # the pid namespace: two containers may share a host name, not pids

    def describe(self) -> str:
        run = f", run {self.run_id}" if self.run_id else ""
        return (f"{self.purpose} by {self.owner}@{self.host} (pid {self.pid}{run}) since {self.started_at}, "
                f"last heartbeat {self.heartbeat_at}")

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), indent=1).encode()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _age_s(iso: str) -> float:
    try:
        return (datetime.now(UTC) - datetime.fromisoformat(iso)).total_seconds()
    except ValueError:
        return float("inf")


def _stale_after() -> float:
    return float(os.environ.get("CURATE_LOCK_STALE_S", DEFAULT_STALE_S))


def _heartbeat_every() -> float:
    return float(os.environ.get("CURATE_LOCK_HEARTBEAT_S", DEFAULT_HEARTBEAT_S))


def process_started(pid: int) -> str | None:
    """When ``pid`` started (clock ticks since boot, from /proc), to tell a reused pid apart; None off Linux."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return fields[19] if len(fields) > 19 else None


def pid_namespace() -> str | None:
    """This process's pid namespace (Linux), so a record from another container is not judged by pid."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _process_alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":  # a zombie has exited
                return False
    except OSError:
        pass
    now_started = process_started(pid)
    return started is None or now_started is None or now_started == started


def is_stale(rec: LockRecord, stale_after_s: float | None = None) -> bool:
    """True when the holder of ``rec`` is gone (see the module docstring)."""
    if rec.host == socket.gethostname() and rec.pid_ns == pid_namespace():
        return not _process_alive(rec.pid, rec.pid_started)
    return _age_s(rec.heartbeat_at) > (stale_after_s if stale_after_s is not None else _stale_after())


class LakeLock:
    """The lake lock of ``lake_root`` for one holder; use ``lake_lock()`` rather than this class."""

    def __init__(self, lake_root: str, purpose: str, run_id: str | None = None,
                 stale_after_s: float | None = None, heartbeat_s: float | None = None):
        self.root = lake_root.rstrip("/")
        self.dir = f"{self.root}/{LOCK_DIR}"
        self.purpose, self.run_id = purpose, run_id
        self.stale_after_s = stale_after_s if stale_after_s is not None else _stale_after()
        self.heartbeat_s = heartbeat_s if heartbeat_s is not None else _heartbeat_every()
        self.record: LockRecord | None = None
        self.blocker: LockRecord | None = None  # the live holder seen by the last failed attempt
        self.lost: str | None = None
        self._stop = threading.Event()
        self._io = threading.Lock()  # heartbeat and release never write at once
        self._thread: threading.Thread | None = None

    # --- reading the lock folder ---------------------------------------------------------------
    def _path(self, generation: int) -> str:
        return f"{self.dir}/gen-{generation:012d}.json"

    def generations(self) -> list[int]:
        fs, p = storage.fs_and_path(self.dir)
        fs.invalidate_cache(p)  # s3fs caches listings; the race logic needs a fresh one
        try:
            names = [n.rsplit("/", 1)[-1] for n in fs.ls(p, detail=False)]
        except FileNotFoundError:
            return []
        return sorted(int(n[4:16]) for n in names if n.startswith("gen-") and n.endswith(".json") and n[4:16].isdigit())

    def read(self, generation: int) -> LockRecord | None:
        """The record of a generation, or None if it is gone or unreadable."""
        try:
            return LockRecord(**json.loads(storage.read_bytes(self._path(generation))))
        except (FileNotFoundError, ValueError, TypeError):
            return None

    def current(self) -> tuple[int, LockRecord | None] | None:
        """(newest generation, its record) or None when the lake was never locked."""
        gens = self.generations()
        return (gens[-1], self.read(gens[-1])) if gens else None

    # --- acquiring -----------------------------------------------------------------------------
    def try_acquire(self) -> LockRecord | None:
        """One attempt: the record now held, or None with the live holder left in ``self.blocker``."""
        self.blocker = None
        cur = self.current()
        gen = 0
        if cur is not None:
            gen, rec = cur
            if rec is None:  # unreadable newest record: treat as held until it is old enough to be stale
                if self._record_age(gen) < self.stale_after_s:
                    return None
            elif rec.released_at is None:
                if not is_stale(rec, self.stale_after_s):
                    self.blocker = rec
                    return None
                log.warning("taking over the stale lake lock of %s", rec.describe())
            gen += 1
        mine = LockRecord(generation=gen, token=uuid.uuid4().hex, owner=_user(), host=socket.gethostname(),
                          pid=os.getpid(), pid_started=process_started(os.getpid()), run_id=self.run_id,
                          purpose=self.purpose, started_at=_now(), heartbeat_at=_now(), pid_ns=pid_namespace())
        if not storage.create_exclusive(self._path(gen), mine.to_bytes()):
            return None  # someone else created this generation first
        if self.generations()[-1] != gen:  # our number had been used and pruned: a newer holder exists
            self._remove(gen)
            return None
        self.record = mine
        fault_point("lock:acquired")  # crash tests: a holder killed before its first heartbeat
        self._prune(gen)
        return mine

    def _record_age(self, generation: int) -> float:
        fs, p = storage.fs_and_path(self._path(generation))
        fs.invalidate_cache(p)
        try:
            info = fs.info(p)
        except FileNotFoundError:
            return 0.0
        stamp = info.get("mtime") or info.get("LastModified") or info.get("created")
        if isinstance(stamp, datetime):
            return (datetime.now(UTC) - stamp.astimezone(UTC)).total_seconds()
        return time.time() - float(stamp) if stamp is not None else float("inf")

    def _prune(self, below: int) -> None:
        for g in self.generations():
            if g < below:
                self._remove(g)

    def _remove(self, generation: int) -> None:
        fs, p = storage.fs_and_path(self._path(generation))
        try:
            fs.rm(p)
        except FileNotFoundError:
            pass

    def acquire(self, wait_s: float = 0.0, on_wait: Callable[[LockRecord | None], None] | None = None) -> LockRecord:
        """Acquire, waiting up to ``wait_s`` seconds for a live holder; raises ``LakeBusy``."""
        t0 = time.monotonic()
        delay, told = 0.2, False
        while True:
            rec = self.try_acquire()
            if rec is not None:
                self._start_heartbeat()
                return rec
            waited = time.monotonic() - t0
            if waited >= wait_s:
                raise LakeBusy(self.root, self.blocker or self._holder_once_written(), waited)
            if not told and on_wait is not None:
                on_wait(self.blocker)
                told = True
            time.sleep(min(delay, max(0.05, wait_s - waited)))
            delay = min(delay * 1.5, 2.0)

    def _holder_once_written(self, grace_s: float = 3.0) -> LockRecord | None:
        """The holder's record, waiting briefly when we lost the race to a writer still writing it.

        Two writers that start together: the loser's ``create_exclusive`` fails while the winner's
        record may still be empty, and the error should name the winner, not "another writer"."""
        deadline = time.monotonic() + grace_s
        while True:
            cur = self.current()
            if cur is not None and cur[1] is not None and cur[1].released_at is None:
                return cur[1]
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.1)

    # --- holding -------------------------------------------------------------------------------
    def _start_heartbeat(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="curate-lake-lock", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                self.refresh()
            except Exception as e:  # noqa: BLE001 - a storage hiccup: try again next beat
                log.warning("lake lock heartbeat failed (will retry): %s", e)
            if self.lost:
                log.error("%s", self.lost)
                return

    def still_held(self) -> bool:
        """True while our record is the newest generation and still ours."""
        if self.record is None:
            return False
        gens = self.generations()
        if not gens or gens[-1] != self.record.generation:
            return False
        rec = self.read(self.record.generation)
        return rec is not None and rec.token == self.record.token

    def refresh(self, **changes: Any) -> None:
        """Rewrite our record with a new heartbeat (and ``changes``) if we still hold the lock."""
        with self._io:
            if self.record is None or self.lost:
                return
            if not self.still_held():
                cur = self.current()
                who = cur[1].describe() if cur and cur[1] else "another writer"
                self.lost = (f"lost the lake lock of {self.root}: {who} took it over (this process's heartbeat "
                             f"stopped for more than {self.stale_after_s:.0f} s?)")
                return
            for k, v in changes.items():
                setattr(self.record, k, v)
            self.record.heartbeat_at = _now()
            storage.write_bytes_atomic(self._path(self.record.generation), self.record.to_bytes())

    def check(self) -> None:
        """Raise ``LockLost`` if another writer took the lock over; call it between steps."""
        if self.lost:
            raise LockLost(self.lost)

    def set_run_id(self, run_id: str) -> None:
        self.run_id = run_id
        self.refresh(run_id=run_id)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        with self._io:
            if self.record is not None and not self.lost and self.still_held():
                self.record.released_at = _now()
                storage.write_bytes_atomic(self._path(self.record.generation), self.record.to_bytes())
            self.record = None


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in some containers
        return f"uid{os.getuid()}"


_HELD: dict[str, tuple[LakeLock, int]] = {}
_HELD_GUARD = threading.Lock()


@contextmanager
def lake_lock(lake_root: str, purpose: str, run_id: str | None = None, wait_s: float = 0.0,
              on_wait: Callable[[LockRecord | None], None] | None = None) -> Iterator[LakeLock]:
    """Hold the lake lock of ``lake_root`` for the ``with`` block: one writer per lake.

    ``purpose`` (``run``, ``repair``, ``gc``, ...) and ``run_id`` are shown to anyone who finds
    the lake busy. Waits up to ``wait_s`` seconds for a live holder (default: not at all), then
    raises ``LakeBusy`` naming it (host, pid, run id, since when). A stale lock (its process is
    gone, or its heartbeat is older than ``CURATE_LOCK_STALE_S``) is taken over. Re-entrant
    within a process. Call ``lock.check()`` between steps of long work: it raises ``LockLost``
    if the lock was taken over meanwhile.
    """
    key = lake_root.rstrip("/")
    with _HELD_GUARD:
        held = _HELD.get(key)
        if held is not None:
            _HELD[key] = (held[0], held[1] + 1)
    if held is not None:
        lock = held[0]
        if run_id:
            lock.set_run_id(run_id)
        try:
            yield lock
        finally:
            with _HELD_GUARD:
                _HELD[key] = (lock, _HELD[key][1] - 1)
        return
    lock = LakeLock(key, purpose, run_id)
    lock.acquire(wait_s, on_wait)
    with _HELD_GUARD:
        _HELD[key] = (lock, 1)
    try:
        yield lock
    finally:
        with _HELD_GUARD:
            _HELD.pop(key, None)
        lock.release()


def held_lock(lake_root: str) -> LakeLock | None:
    """The lock this process holds on ``lake_root``, if any."""
    held = _HELD.get(lake_root.rstrip("/"))
    return held[0] if held else None


def lock_holder(lake_root: str) -> LockRecord | None:
    """The live holder of a lake's lock, or None when it is free (released, stale or never taken)."""
    cur = LakeLock(lake_root, "inspect").current()
    if cur is None or cur[1] is None:
        return None
    rec = cur[1]
    return None if rec.released_at or is_stale(rec) else rec
