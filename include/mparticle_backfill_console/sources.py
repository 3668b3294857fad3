"""Where the console's data comes from: S3 (listings and reports, cached briefly) and Airflow's database.

S3 is read through :class:`~.s3.ConsoleS3Hook` (the DAG's connection) into a :class:`Snapshot`. A page is
drawn from the last snapshot; once it is older than the TTL, the next request still gets it at once and
a background thread reads S3 again (stale-while-revalidate), so only the very first page waits for S3.
Reports are read once per ETag: a refresh lists, and reads only the reports that are new or changed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import Any

from mparticle_backfill import jsonio
from mparticle_backfill.partition_lock import LockHolder
from mparticle_backfill.settings import BackfillSettings

from .overview import RunReport, quarantine_dates
from .s3 import ConsoleS3Hook, StoredObject

log = logging.getLogger(__name__)

DEFAULT_TTL_SECONDS = 45.0
READERS = 8  # concurrent S3 requests while a snapshot is read (botocore's pool holds 10)


@dataclass(frozen=True)
class Snapshot:
    """What S3 said, at ``loaded_at``: quarantine dates, every report (counts only), the locks."""

    quarantine: frozenset[date]
    reports: tuple[RunReport, ...]
    locks: Mapping[date, Mapping[str, Any] | None]
    loaded_at: datetime
    seconds: float
    endpoint_url: str | None
    reports_read: int = 0  # report objects fetched by this load (the others came from the cache)


@dataclass
class _Entry:
    snapshot: Snapshot | None = None
    refreshing: bool = False
    error: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)


def source_key(settings: BackfillSettings, conn_id: str) -> tuple[str, ...]:
    """What a snapshot depends on: the connection and where the settings say the data and state are."""
    return (conn_id, settings.bucket, settings.prefix, settings.layout, settings.state_bucket, settings.state_prefix)


class S3Snapshots:
    """Snapshots of the quarantine bucket and the backfill's state, per settings, refreshed after ``ttl``.

    :param ttl: seconds a snapshot is served before a background refresh starts.
    :param hook_factory: makes the S3 hook from a connection id (tests may count its calls).
    """

    def __init__(
        self,
        ttl: float = DEFAULT_TTL_SECONDS,
        hook_factory: Callable[[str], ConsoleS3Hook] = ConsoleS3Hook,
        readers: int = READERS,
    ) -> None:
        self.ttl = ttl
        self.hook_factory = hook_factory
        self.readers = readers
        self._entries: dict[tuple[str, ...], _Entry] = {}
        self._reports: dict[tuple[str, str], tuple[str, RunReport | None]] = {}  # (bucket, key) -> (etag, report)
        self._guard = threading.Lock()
        self._threads: list[threading.Thread] = []

    def get(self, settings: BackfillSettings, conn_id: str, *, refresh: bool = False) -> tuple[Snapshot, str]:
        """The snapshot for these settings, and the last background refresh's error ("" if none).

        Reads S3 now if there is none yet or ``refresh`` is asked; else returns the cached one and, if it
        is older than the TTL, starts a background refresh.
        """
        with self._guard:
            entry = self._entries.setdefault(source_key(settings, conn_id), _Entry())
        if entry.snapshot is None or refresh:
            with entry.lock:  # one reader at a time; a request that waited finds the snapshot made
                if entry.snapshot is None or refresh:
                    entry.snapshot, entry.error = self.load(settings, conn_id), ""
            return entry.snapshot, ""
        age = (datetime.now(timezone.utc) - entry.snapshot.loaded_at).total_seconds()
        if age > self.ttl:
            with self._guard:
                start, entry.refreshing = not entry.refreshing, True
            if start:
                thread = threading.Thread(
                    target=self._refresh, args=(entry, settings, conn_id), name="backfill-console-refresh", daemon=True
                )
                self._threads = [t for t in self._threads if t.is_alive()] + [thread]
                thread.start()
        return entry.snapshot, entry.error

    def join(self, timeout: float) -> bool:
        """Wait for background refreshes to end; False if one is still running after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        for thread in list(self._threads):
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in self._threads)

    def _refresh(self, entry: _Entry, settings: BackfillSettings, conn_id: str) -> None:
        try:
            with entry.lock:
                entry.snapshot, entry.error = self.load(settings, conn_id), ""
        except Exception as error:  # keep serving the last snapshot; say why it is old
            log.warning("Backfill console: S3 refresh failed: %s", type(error).__name__)
            entry.error = f"S3 could not be read again ({type(error).__name__}); the figures are from the last read."
        finally:
            entry.refreshing = False

    def load(self, settings: BackfillSettings, conn_id: str) -> Snapshot:
        """Read S3: quarantine dates, the state folder of every date, new or changed reports, locks."""
        started = time.perf_counter()
        hook = self.hook_factory(conn_id)
        layout = settings.partition_layout
        with ThreadPoolExecutor(max_workers=self.readers, thread_name_prefix="backfill-console-s3") as pool:
            listed = pool.submit(lambda: list(hook.quarantine_entries(settings.bucket, layout)))
            state_dates = sorted(
                quarantine_dates(
                    hook.state_dates(settings.state_bucket, settings.state_prefix),
                    "date_folders",
                    settings.state_prefix,
                )
            )
            partitions = [f"{settings.state_prefix}/{day.isoformat()}" for day in state_dates]
            states = list(pool.map(lambda p: hook.partition_state(settings.state_bucket, p), partitions))
            bucket = settings.state_bucket
            objects = [obj for state in states for obj in state.reports]
            cached = self._reports
            stale = [obj for obj in objects if not obj.etag or cached.get((bucket, obj.key), ("",))[0] != obj.etag]
            for obj, report in zip(stale, pool.map(lambda o: self._read_report(hook, bucket, o), stale), strict=True):
                cached[(bucket, obj.key)] = (obj.etag, report)
            locked = [day for day, state in zip(state_dates, states, strict=True) if state.locked]
            lock_bodies = pool.map(
                lambda day: hook.read_object(bucket, f"{settings.state_prefix}/{day.isoformat()}/lock.json"), locked
            )
            # A lock deleted since the listing is gone; one that is not a lock object is shown as unreadable.
            locks = {
                day: _lock_json(found[0]) for day, found in zip(locked, lock_bodies, strict=True) if found is not None
            }
            quarantine = quarantine_dates(listed.result(), settings.layout, settings.prefix)
        live = {(bucket, obj.key) for obj in objects}
        state_folder = f"{settings.state_prefix}/"
        for gone in [k for k in cached if k[0] == bucket and k[1].startswith(state_folder) and k not in live]:
            del cached[gone]  # a report deleted from S3
        reports = tuple(report for obj in objects if (report := cached[(bucket, obj.key)][1]) is not None)
        seconds = time.perf_counter() - started
        log.info(
            "Backfill console: %d quarantine dates, %d state dates, %d reports (%d read), %d locks in %.2f s",
            len(quarantine), len(state_dates), len(reports), len(stale), len(locks), seconds,
        )  # fmt: skip
        return Snapshot(
            quarantine=frozenset(quarantine),
            reports=reports,
            locks=locks,
            loaded_at=datetime.now(timezone.utc),
            seconds=seconds,
            endpoint_url=hook.endpoint_url,
            reports_read=len(stale),
        )

    @staticmethod
    def _read_report(hook: ConsoleS3Hook, bucket: str, obj: StoredObject) -> RunReport | None:
        found = hook.read_object(bucket, obj.key)
        if found is None:
            return None
        try:
            return RunReport.from_json(jsonio.loads(found[0]), written_at=obj.last_modified)
        except (jsonio.DecodeError, AttributeError, TypeError):
            log.warning("Backfill console: %s is not a report; skipped", obj.key)
            return None


def _lock_json(body: bytes) -> Mapping[str, Any] | None:
    """A lock's holder as plain JSON (run id, since when), or None if it is unreadable."""
    holder = LockHolder.from_bytes(body)
    if holder is None:
        return None
    return {"run_id": holder.run_id, "run_key": holder.run_key, "acquired_at": holder.acquired_at.isoformat()}


def dag_run_rows(session: Any, dag_id: str) -> list[dict[str, Any]]:
    """The DAG's runs from Airflow's database: the columns that say which date a run works on, and its state."""
    from airflow.models.dagrun import DagRun
    from sqlalchemy import select

    columns = (
        DagRun.run_id, DagRun.state, DagRun.run_type, DagRun.conf, DagRun.data_interval_start, DagRun.run_after
    )  # fmt: skip
    return [dict(row._mapping) for row in session.execute(select(*columns).where(DagRun.dag_id == dag_id))]
