"""One run per partition at a time: the lock object's content and who may take it.

Two runs of the same partition at once (a manual run during a backfill of that date, say) would both
read the same ledger and send the same batches; mParticle drops the second copy by
``source_request_id``, but the work is done twice and both reports count the records as replayed.
So a run takes ``<state>/<date>/lock.json`` before it reads anything (created only if absent: an S3
conditional write) and a teardown task removes it, whatever became of the run. Every task of the run
renews the lock's heartbeat. Another run takes the lock over only if Airflow says its holder is no
longer running, or, when Airflow cannot be asked, once the holder's heartbeat is older than
``lock_ttl_hours``; a task of a run whose lock was taken over stops.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from . import jsonio

FREE = "free"  # no lock: create it
OURS = "ours"  # this run holds it (a retry of the planning task): keep it
STALE = "stale"  # held by a run that is gone, or silent for longer than the TTL: take it over
HELD = "held"  # another run holds it: do not start

# Airflow DagRun states of a holder that is still working (its lock is never taken over), and of one
# that is gone (its lock is free whatever its age).
ALIVE_STATES = frozenset({"queued", "running"})
GONE_STATES = frozenset({"success", "failed", "missing"})


@dataclass(frozen=True, slots=True)
class LockHolder:
    """Who holds a partition, since when, and when it last said it was alive (timezone-aware).

    ``heartbeat_at`` is renewed by every task of the holding run (and during long sends), so a lock
    whose run waits behind the pool for hours still looks alive to a TTL-only check.
    """

    run_key: str
    run_id: str
    acquired_at: datetime
    heartbeat_at: datetime | None = None
    dag_id: str = ""

    @property
    def last_seen(self) -> datetime:
        return self.heartbeat_at or self.acquired_at

    def renewed(self, now: datetime) -> LockHolder:
        return replace(self, heartbeat_at=now)

    def to_bytes(self) -> bytes:
        content = {"run_key": self.run_key, "run_id": self.run_id, "acquired_at": self.acquired_at.isoformat()}
        if self.dag_id:
            content["dag_id"] = self.dag_id
        if self.heartbeat_at is not None:
            content["heartbeat_at"] = self.heartbeat_at.isoformat()
        return jsonio.dumps(content)

    @classmethod
    def from_bytes(cls, body: bytes) -> LockHolder | None:
        """The holder written in a lock object; None if the object is not one (it is then stale)."""
        try:
            value: Any = jsonio.loads(body)
            acquired = datetime.fromisoformat(value["acquired_at"])
            heartbeat = datetime.fromisoformat(value["heartbeat_at"]) if value.get("heartbeat_at") else None
            if acquired.tzinfo is None or (heartbeat is not None and heartbeat.tzinfo is None):
                return None
            return cls(str(value["run_key"]), str(value["run_id"]), acquired, heartbeat, str(value.get("dag_id", "")))
        except (jsonio.DecodeError, KeyError, TypeError, ValueError, AttributeError):
            return None


def decide(
    existing: LockHolder | None,
    found: bool,
    run_key: str,
    now: datetime,
    ttl: timedelta,
    holder_state: str | None = None,
) -> str:
    """What a run with ``run_key`` may do with the partition's lock.

    :param existing: the holder read from the lock object (None if absent or unreadable).
    :param found: whether a lock object exists at all.
    :param holder_state: the holder's DagRun state as Airflow reports it (``"missing"`` if Airflow
        has no such run), or None if it could not be asked. A live holder keeps its lock whatever its
        age; a finished or missing one loses it at once; only when Airflow cannot tell does the TTL on
        the last heartbeat decide.
    """
    if not found:
        return FREE
    if existing is None:
        return STALE  # not written by this tool, or damaged: nobody can be holding it
    if existing.run_key == run_key:
        return OURS
    if holder_state in ALIVE_STATES:
        return HELD
    if holder_state in GONE_STATES:
        return STALE
    if now - existing.last_seen >= ttl:
        return STALE
    return HELD


def held_message(holder: LockHolder, location: str, day: str, ttl: timedelta) -> str:
    """Why a run does not start, and what the person reading the log can do."""
    hours = ttl.total_seconds() / 3600
    return (
        f"Partition {day} is being backfilled by run {holder.run_id!r} since {holder.acquired_at.isoformat()} "
        f"(last heartbeat {holder.last_seen.isoformat()}; lock {location}). This run stops before reading "
        f"anything, so nothing is sent twice. Trigger it again when that run has finished; if that run is "
        f"no longer running, mark it failed in Airflow or delete the lock object. A lock whose run Airflow "
        f"cannot report on is taken over {hours:g} h after its last heartbeat."
    )


def lost_message(holder: LockHolder | None, location: str, day: str) -> str:
    """Why a task of a run whose lock was taken over stops."""
    who = f"run {holder.run_id!r}" if holder else "something else"
    return (
        f"This run no longer holds partition {day}: {who} holds the lock {location} now (taken over "
        f"after this run looked gone). This task stops so that the two runs do not send the same data; "
        f"trigger the partition again once that run has finished: the ledger means only what is missing is sent."
    )
