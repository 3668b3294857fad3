"""Select: what of a quarantine record is replayed (blocked events, restored attributes)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from .model import (
    BLOCKED_EVENT,
    NOTHING_TO_REPLAY,
    RESTORED_ATTRIBUTES,
    QuarantineRecord,
    Replay,
    SelectedEvent,
)
from .values import api_event, id_string

_MISSING = object()


@dataclass(frozen=True, slots=True)
class SelectionSettings:
    """What to replay.

    :param replay_blocked_events: events that were blocked whole (default on).
    :param replay_blocked_event_attributes: events that were delivered without some blocked attributes,
        sent again whole with them; off by default, as it duplicates those events downstream.
    :param replay_blocked_user_attributes: blocked user attributes, sent in ``user_attributes``.
    """

    replay_blocked_events: bool = True
    replay_blocked_event_attributes: bool = False
    replay_blocked_user_attributes: bool = True


def value_at(event: dict[str, Any], path: str) -> Any:
    """The value at a block-metadata path relative to an event (``./data/custom_attributes/x``)."""
    node: Any = event
    for part in path.removeprefix("./").strip("/").split("/"):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def select(record: QuarantineRecord, settings: SelectionSettings, counts: Counter[str]) -> Replay:
    """Keep what of ``record`` is to be replayed; count what was seen.

    Selected events are copies with their 64-bit fields as exact ints (:func:`.values.api_event`).
    A record with nothing to replay comes back empty, its trail saying why.
    """
    block = record.block
    batch = record.batch
    blocked_ids = block.blocked_event_ids
    restorable = block.blocked_event_attributes
    events: list[SelectedEvent] = []
    blocked = with_blocked_attributes = 0
    seen: set[str] = set()
    for event in batch.get("events") or ():
        data = event.get("data")
        event_id = id_string(data.get("event_id")) if type(data) is dict else None
        if event_id is None:
            continue
        seen.add(event_id)
        if event_id in blocked_ids:
            blocked += 1
            if settings.replay_blocked_events:
                events.append(SelectedEvent(api_event(event), event_id, BLOCKED_EVENT))
        elif event_id in restorable:
            with_blocked_attributes += 1
            if not settings.replay_blocked_event_attributes:
                continue
            paths = restorable[event_id]
            present = tuple(path for path in paths if value_at(event, path) is not _MISSING)
            counts["event_attributes_missing"] += len(paths) - len(present)
            if present:
                counts["event_attributes_restored"] += len(present)
                events.append(SelectedEvent(api_event(event), event_id, RESTORED_ATTRIBUTES, present))
    if blocked:
        counts["events_blocked"] += blocked
    # Block metadata naming events the record does not hold: counted, never silently dropped.
    missing_ids = len(blocked_ids - seen) if blocked_ids else 0
    if missing_ids:
        counts["blocked_event_ids_not_in_record"] += missing_ids
    missing_attribute_events = len(restorable.keys() - seen) if restorable else 0
    if missing_attribute_events:
        counts["blocked_attribute_events_not_in_record"] += missing_attribute_events
    if with_blocked_attributes:
        counts["events_with_blocked_attributes"] += with_blocked_attributes

    user_attributes: dict[str, Any] = {}
    original_attributes = batch.get("user_attributes")
    if block.blocked_user_attributes:
        counts["user_attributes_blocked"] += len(block.blocked_user_attributes)
        if settings.replay_blocked_user_attributes and isinstance(original_attributes, dict):
            for name in block.blocked_user_attributes:
                if name in original_attributes:
                    user_attributes[name] = original_attributes[name]
                else:
                    counts["user_attributes_missing"] += 1
    # Which categories the input blocks, as this record shows (the plan check infers them per partition).
    if block.blocked_event_ids:
        counts["records_blocking:events"] += 1
    if restorable:
        counts["records_blocking:event_attributes"] += 1
    if block.blocked_user_attributes:
        counts["records_blocking:user_attributes"] += 1
    if block.blocked_user_identities or block.blocked_device_identities:
        counts["records_blocking:user_identities"] += 1
    for name in block.blocked_user_identities:
        counts[f"blocked_user_identity:{name}"] += 1
    for name in block.blocked_device_identities:
        counts[f"blocked_device_identity:{name}"] += 1

    # The batch travels on without its events (the selected ones are in ``events``): stage files
    # between the Airflow tasks would otherwise carry every event of every record, twice.
    carried = dict(batch)
    carried.pop("events", None)
    replay = Replay(
        ref=record.ref,
        identity=record.identity,
        batch=carried,
        events=events,
        user_attributes=user_attributes,
    )
    if replay.empty:
        replay.trail.append((NOTHING_TO_REPLAY, _why_nothing(record, settings)))
    return replay


def _why_nothing(record: QuarantineRecord, settings: SelectionSettings) -> str:
    block = record.block
    if block.blocked_event_ids and not settings.replay_blocked_events:
        return "blocked_events_not_selected"
    if block.blocked_event_ids and settings.replay_blocked_events:
        return "blocked_events_not_in_record"  # every blocked id names an event the record lacks
    if block.blocked_event_attributes and not settings.replay_blocked_event_attributes:
        return "event_attributes_not_selected"
    if block.blocked_user_attributes and not settings.replay_blocked_user_attributes:
        return "user_attributes_not_selected"
    if block.blocked_user_identities or block.blocked_device_identities:
        return "only_identities_blocked"
    return "nothing_blocked"
