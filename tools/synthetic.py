"""Realistic synthetic quarantine data (shaped like mParticle's own records) for tests, seeding and benchmarks.

Identities are made-up example values (``@example.com``, 555 numbers): never real personal data.
"""

from __future__ import annotations

import gzip
import random
import uuid
from collections.abc import Iterator
from datetime import date, datetime, timezone
from typing import Any

import msgspec

APP_NAME = "mPTravel"
_EVENT_NAMES = ("search flights", "view hotel", "add to trip", "checkout", "sign up", "rate trip")
_SCREENS = ("Home", "Search", "Hotel", "Checkout")


def object_key(prefix: str, day: date, sequence: int, *, layout: str = "date_folders", second: int = 0) -> str:
    """A key as the output names it: ``[prefix/][YYYY-MM-DD/]App_<20 digits>_<5 digits>.txt`` for
    mParticle's S3 output (``date_folders`` or ``flat``), ``[prefix/]YYYY/MM/DD/12/<stream>-...`` for
    Kinesis Data Firehose (``firehose_hourly``)."""
    stamp = datetime(day.year, day.month, day.day, 12, second // 60 % 60, second % 60, tzinfo=timezone.utc)
    name = f"{APP_NAME}_{stamp.strftime('%Y%m%d%H%M%S')}{sequence % 1_000_000:06d}_{sequence % 100_000:05d}.txt"
    folder = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
    if layout == "firehose_hourly":
        return f"{folder}{stamp:%Y/%m/%d/%H}/mparticle-quarantine-1-{stamp:%Y-%m-%d-%H-%M-%S}-{sequence:08d}"
    return f"{folder}{day.isoformat()}/{name}" if layout == "date_folders" else f"{folder}{name}"


def _event(rng: random.Random, event_id: int, timestamp_ms: int, attributes: int) -> dict[str, Any]:
    if rng.random() < 0.15:
        return {
            "event_type": "screen_view",
            "data": {
                "screen_name": rng.choice(_SCREENS),
                "timestamp_unixtime_ms": str(timestamp_ms),
                "event_id": str(event_id),
                "custom_attributes": {f"attr_{i}": f"value {rng.randrange(1000)}" for i in range(attributes)},
            },
        }
    return {
        "event_type": "custom_event",
        "data": {
            "event_name": rng.choice(_EVENT_NAMES),
            "custom_event_type": rng.choice(("navigation", "transaction", "other")),
            "custom_flags": {},
            "timestamp_unixtime_ms": str(timestamp_ms),
            "event_id": str(event_id),
            "source_message_id": str(uuid.UUID(int=rng.getrandbits(128))),
            "custom_attributes": {f"attr_{i}": f"value {rng.randrange(1000)}" for i in range(attributes)},
        },
    }


def quarantine_record(rng: random.Random, timestamp_ms: int, *, events: int = 3, attributes: int = 3) -> dict[str, Any]:
    """One quarantine record: a whole batch, some events blocked, some attributes blocked."""
    event_ids = [rng.getrandbits(64) - 2**63 for _ in range(events)]
    batch_events = [_event(rng, event_id, timestamp_ms - rng.randrange(60_000), attributes) for event_id in event_ids]
    blocked = [str(e) for e in event_ids if rng.random() < 0.6] or [str(event_ids[0])]
    allowed = [str(e) for e in event_ids if str(e) not in blocked]
    user = rng.randrange(1, 10**6)
    metadata: dict[str, Any] = {
        "dto_version": 1,
        "blocked_event_ids": blocked,
        "blocked_event_attributes": [
            {"event_id": event_id, "event_attributes": ["./data/custom_attributes/attr_0"]} for event_id in allowed[:1]
        ]
        if attributes
        else [],
        "blocked_user_attributes": ["$gender"] if rng.random() < 0.5 else [],
        "blocked_user_identities": ["other_id_2"] if rng.random() < 0.3 else [],
    }
    return {
        "events": batch_events,
        "device_info": {"platform": "iOS", "ios_advertising_id": str(uuid.UUID(int=rng.getrandbits(128)))},
        "application_info": {"os": "OutOfBand"},
        "user_attributes": {"$gender": rng.choice("MF"), "$age": str(rng.randrange(18, 80)), "tier": "gold"},
        "deleted_user_attributes": [],
        "user_identities": {
            "customer_id": f"cust-{user}",
            "email": f"user{user}@example.com",
            "other_id_2": f"loyalty-{user}",
        },
        "mpid": str(rng.getrandbits(63)),
        "environment": "production",
        "ip": "",
        "source_info": {"channel": "partner", "partner": "Generic S2S"},
        "timestamp_unixtime_ms": str(timestamp_ms),
        "batch_id": str(rng.getrandbits(64) - 2**63),
        "context": {"data_plan": {"plan_id": "main_plan", "plan_version": 2, "block_metadata": metadata}},
    }


def partition_lines(
    rng: random.Random, day_ms: int, count: int, *, bad_every: int = 0, max_events: int = 6
) -> Iterator[bytes]:
    """NDJSON lines of ``count`` records of mixed sizes; every ``bad_every``-th line is not JSON."""
    for index in range(count):
        if bad_every and index % bad_every == bad_every - 1:
            yield b'{"events": [truncated'
            continue
        record = quarantine_record(
            rng, day_ms + rng.randrange(86_400_000), events=rng.randint(1, max_events), attributes=rng.randint(0, 8)
        )
        yield msgspec.json.encode(record)


def object_body(lines: list[bytes], *, compress: bool) -> bytes:
    """An object's content: NDJSON, gzip-compressed when the output's "Use Compression" is on."""
    body = b"\n".join(lines) + b"\n"
    return gzip.compress(body, compresslevel=5) if compress else body


def data_plan(*, held_event: str | None = "rate trip", extra_points: int = 0) -> dict[str, Any]:
    """A whole data plan for the synthetic records' plan ``main_plan``, in the Data Planning API's format.

    Version 2 (what the records name, no longer active) blocked them; version 3, active in production,
    allows every synthetic event except ``held_event`` (so a plan check holds those), with open
    attributes. ``extra_points`` adds custom events nobody sends, for a plan of realistic size.
    """

    def point(match_type: str, criteria: dict[str, str]) -> dict[str, Any]:
        return {
            "match": {"type": match_type, "criteria": criteria},
            "validator": {
                "type": "json_schema",
                "definition": {
                    "properties": {
                        "data": {
                            "additionalProperties": True,
                            "properties": {"custom_attributes": {"additionalProperties": True}},
                        }
                    }
                },
            },
        }

    points = [
        point("custom_event", {"event_name": name, "custom_event_type": kind})
        for name in _EVENT_NAMES
        if name != held_event
        for kind in ("navigation", "transaction", "other")
    ]
    points += [point("screen_view", {"screen_name": screen}) for screen in _SCREENS]
    points += [
        point("custom_event", {"event_name": f"planned event {n}", "custom_event_type": "other"})
        for n in range(extra_points)
    ]
    return {
        "data_plan_id": "main_plan",
        "data_plan_name": "Main plan (synthetic)",
        "data_plan_versions": [
            {"version": 2, "data_plan_id": "main_plan", "activated_environment": "none",
             "version_document": {"data_points": []}},
            {"version": 3, "data_plan_id": "main_plan", "activated_environment": "production",
             "version_document": {"data_points": points}},
        ],
    }  # fmt: skip
