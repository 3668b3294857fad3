"""Filter by age: keep only what falls inside the replay window (default 14 days)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from . import stage_codec
from .accounting import Step, Summary, advance
from .errors import InvalidSettings
from .model import TOO_OLD, Replay
from .values import exact_int

MIN_AGE_DAYS = 1
MAX_AGE_DAYS = 30
DEFAULT_MAX_AGE_DAYS = 14


@dataclass(frozen=True, slots=True)
class AgeWindow:
    """Replay only what happened in the ``max_age_days`` before ``reference_time``.

    Events without a timestamp of their own take their batch's timestamp (mParticle stamps such
    events with the time it received the batch), and are sent with it, so they keep their original
    time instead of taking the replay's. An event with neither is not replayed: nothing proves it is
    inside the window. Both cases are counted. Blocked user attributes age with their batch.

    :param max_age_days: the window, 1 to 30 days (default 14, as mParticle advises).
    :param reference_time: the end of the window, timezone-aware (default: now).
    """

    max_age_days: int = DEFAULT_MAX_AGE_DAYS
    reference_time: datetime | None = None

    def __post_init__(self) -> None:
        if isinstance(self.max_age_days, bool) or not isinstance(self.max_age_days, int):
            raise InvalidSettings("max_age_days", f"must be a whole number, got {self.max_age_days!r}")
        if not MIN_AGE_DAYS <= self.max_age_days <= MAX_AGE_DAYS:
            raise InvalidSettings("max_age_days", f"must be {MIN_AGE_DAYS} to {MAX_AGE_DAYS}, got {self.max_age_days}")
        if self.reference_time is not None and self.reference_time.tzinfo is None:
            raise InvalidSettings("reference_time", "must carry a timezone, e.g. 2026-11-20T06:00:00Z")

    @property
    def end(self) -> datetime:
        return self.reference_time or datetime.now(timezone.utc)

    @property
    def cutoff_ms(self) -> int:
        """Events stamped before this instant (ms since the epoch) are too old."""
        start = self.end - timedelta(days=self.max_age_days)
        return int(start.timestamp() * 1000)


def filter_by_age(replay: Replay, cutoff_ms: int, counts: Counter[str]) -> Replay:
    """Drop the parts of ``replay`` older than ``cutoff_ms``.

    Events come from :func:`.select.select` with their timestamps as ints; an event without one takes
    the batch's, written into the event so it is sent with it.
    """
    batch_ts = exact_int(replay.batch.get("timestamp_unixtime_ms"))
    kept = []
    newest: int | None = None
    for selected in replay.events:
        data = selected.event.get("data")
        ts = data.get("timestamp_unixtime_ms") if type(data) is dict else None
        if type(ts) is not int:
            counts["events_without_timestamp"] += 1
            if batch_ts is None:
                counts["events_too_old"] += 1
                replay.trail.append((TOO_OLD, "no_timestamp"))
                continue
            ts = batch_ts
            if type(data) is dict:
                selected.event = {**selected.event, "data": {**data, "timestamp_unixtime_ms": ts}}
        if ts < cutoff_ms:
            counts["events_too_old"] += 1
            replay.trail.append((TOO_OLD, "older_than_window"))
            continue
        if newest is None or ts > newest:
            newest = ts
        kept.append(selected)
    replay.events = kept

    if replay.user_attributes:
        attributes_ts = batch_ts if batch_ts is not None else newest
        if attributes_ts is None or attributes_ts < cutoff_ms:
            counts["user_attributes_too_old"] += len(replay.user_attributes)
            replay.trail.append((TOO_OLD, "older_than_window"))
            replay.user_attributes = {}
    return replay


def age_step(cutoff_ms: int, summary: Summary) -> Step:
    """The filter as one step of a record's way through the stages."""
    return lambda replay: filter_by_age(replay, cutoff_ms, summary.counts)


def filter_replays(replays: Iterable[Replay], cutoff_ms: int, summary: Summary) -> Iterator[Replay]:
    """The filter_by_age stage: drop what is older than the window; records with nothing left end here."""
    return advance(replays, (age_step(cutoff_ms, summary),), summary)


def keeps_whole(batch_ts: object, event_times: list[object], has_attributes: bool, cutoff_ms: int) -> bool:
    """Whether :func:`filter_by_age` would keep a record exactly as it is: every event stamped (an int)
    inside the window, and its user attributes (if any) too. Nothing to count, nothing to rewrite."""
    if not event_times and not has_attributes:
        return False  # nothing to replay: the record ends here, counted by the stage
    for ts in event_times:
        if type(ts) is not int or ts < cutoff_ms:
            return False
    if has_attributes:
        attributes_ts = exact_int(batch_ts)
        if attributes_ts is None:
            attributes_ts = max(event_times) if event_times else None  # type: ignore[type-var]
        if attributes_ts is None or attributes_ts < cutoff_ms:
            return False
    return True


def filter_frames(frames: Iterable[bytes], cutoff_ms: int, summary: Summary) -> Iterator[bytes]:
    """:func:`filter_replays` on stage-file frames (:mod:`.stage_codec`), with the same outcome and counts:
    a record kept whole (in a backfill within the window, nearly all) passes on as its frame, undecoded but
    for its times; the others are decoded, filtered and encoded again."""
    for frame in frames:
        ages = stage_codec.frame_ages(frame)
        if ages is not None and keeps_whole(*ages, cutoff_ms):
            yield frame
            continue
        for replay in filter_replays((stage_codec.decode_frame(frame),), cutoff_ms, summary):
            yield stage_codec.encode_replay(replay)
