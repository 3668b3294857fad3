"""One run per partition at a time: the lock object's content and who may take it.

Two runs of the same partition at once (a manual run during a backfill of that date, say) would both
read the same ledger and send the same batches; mParticle drops the second copy by
``source_request_id``, but the work is done twice and both reports count the records as replayed.
So a run takes ``<state>/<date>/lock.json`` before it reads anything (created only if absent: an S3
conditional write) and a teardown task removes it, whatever became of the run. A lock left by a run
that died without its teardown is taken over once older than ``lock_ttl_hours``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from . import jsonio

FREE = "free"  # no lock: create it
OURS = "ours"  # this run holds it (a retry of the planning task): keep it
STALE = "stale"  # held by a run that did not release it in time: take it over
HELD = "held"  # another run holds it: do not start


@dataclass(frozen=True, slots=True)
class LockHolder:
    """Who holds a partition, since when (timezone-aware)."""

    run_key: str
    run_id: str
    acquired_at: datetime

    def to_bytes(self) -> bytes:
        return jsonio.dumps(
            {"run_key": self.run_key, "run_id": self.run_id, "acquired_at": self.acquired_at.isoformat()}
        )

    @classmethod
    def from_bytes(cls, body: bytes) -> LockHolder | None:
        """The holder written in a lock object; None if the object is not one (it is then stale)."""
        try:
            value: Any = jsonio.loads(body)
            acquired = datetime.fromisoformat(value["acquired_at"])
            if acquired.tzinfo is None:
                return None
            return cls(str(value["run_key"]), str(value["run_id"]), acquired)
        except (jsonio.DecodeError, KeyError, TypeError, ValueError):
            return None


def decide(existing: LockHolder | None, found: bool, run_key: str, now: datetime, ttl: timedelta) -> str:
    """What a run with ``run_key`` may do with the partition's lock.

    :param existing: the holder read from the lock object (None if absent or unreadable).
    :param found: whether a lock object exists at all.
    """
    if not found:
        return FREE
    if existing is None:
        return STALE  # not written by this tool, or damaged: nobody can be holding it
    if existing.run_key == run_key:
        return OURS
    if now - existing.acquired_at >= ttl:
        return STALE
    return HELD


def held_message(holder: LockHolder, location: str, day: str, ttl: timedelta) -> str:
    """Why a run does not start, and what the person reading the log can do."""
    hours = ttl.total_seconds() / 3600
    return (
        f"Partition {day} is being backfilled by run {holder.run_id!r} since {holder.acquired_at.isoformat()} "
        f"(lock {location}). This run stops before reading anything, so nothing is sent twice. Trigger it "
        f"again when that run has finished; if that run is no longer running, delete the lock object, or "
        f"wait: a lock older than {hours:g} h is taken over."
    )
