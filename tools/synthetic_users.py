"""Synthetic quarantine partitions of users who upload many batches a day, as mParticle's SDKs do.

:mod:`tools.synthetic` draws every record from a new random user. Real partitions hold many batches per
user (DOMAIN.md section 9), which is what coalescing exploits, so this generator simulates a day of SDK
uploads per device and quarantines the batches that carry something blocked. The model, and why:

- **Devices.** 50% of users are on the web, 25% on iOS, 25% on Android; 15% also use a second device (web
  and a phone: same ``mpid`` and identities, another device, so their batches never merge). Everything
  batch-level is fixed per device (identities, ``mpid``, ``mp_deviceid``, ``device_info``,
  ``application_info``, environment, data plan, consent for 30%), as an SDK sends it.
- **Sessions per day** are heavy-tailed, ``min(24, floor(pareto(alpha=1.2)))``: 56% of devices have one
  session, 14% five or more, 2% the maximum. Engagement in apps is commonly reported as power-law-like
  (most users come once, a few many times); alpha 1.2 gives that shape with a finite spread.
- **Session length** is log-normal (median 150 s on the web, 240 s in apps, sigma 1, at most 2 h), events
  arrive as a Poisson process (one per 15 s on the web, one per 20 s in apps).
- **Uploads.** The web SDK uploads what is queued every 5 s ("every few seconds"), so a web session makes
  one batch per 5 s slot that has an event. The iOS and Android SDKs upload every 600 s in production and
  at backgrounding, so an app session makes one batch per started 10 minutes.
- **Quarantine.** Each event is unplanned (blocked) with probability 0.35 (a plan that misses a few common
  events). A batch lands in quarantine when it carries a blocked event, or always for the 15% of devices
  whose batches carry an unplanned user attribute (``loyalty_tier``, ``last_search``, the latter changing
  with every upload) and the 5% with an unplanned identity (``other_id_2``): those block every batch.
- **IP.** A web device keeps one address for the day; an app changes address in 30% of its sessions
  (Wi-Fi vs cellular), which splits its batches over envelopes as it would in a real partition.

Records come out in upload order (as objects are written), in the project's quarantine format (the same
shape as :func:`tools.synthetic.quarantine_record`). Identities and addresses are made up
(``@example.com``, documentation IP ranges), never real personal data.
"""

from __future__ import annotations

import math
import random
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from tools.synthetic import _event

WEB, IOS, ANDROID = "web", "ios", "android"
DAY_MS = 86_400_000


@dataclass(frozen=True)
class SdkModel:
    """The parameters of the model above (defaults as stated there)."""

    kinds: tuple[tuple[str, float], ...] = ((WEB, 0.5), (IOS, 0.25), (ANDROID, 0.25))
    second_device_share: float = 0.15
    pareto_alpha: float = 1.2
    max_sessions: int = 24
    session_median_s: tuple[tuple[str, float], ...] = ((WEB, 150.0), (IOS, 240.0), (ANDROID, 240.0))
    session_sigma: float = 1.0
    max_session_s: float = 7200.0
    event_every_s: tuple[tuple[str, float], ...] = ((WEB, 15.0), (IOS, 20.0), (ANDROID, 20.0))
    upload_every_s: tuple[tuple[str, float], ...] = ((WEB, 5.0), (IOS, 600.0), (ANDROID, 600.0))
    event_blocked: float = 0.35
    blocked_attribute_share: float = 0.15
    blocked_identity_share: float = 0.05
    consent_share: float = 0.3
    app_new_ip_per_session: float = 0.3


MODEL = SdkModel()
_SEARCHES = ("Lisbon", "Kyoto", "Denver", "Nairobi", "Oslo", "Lima", "Hanoi", "Perth")


@dataclass(frozen=True)
class Device:
    """One user on one device: what every batch it uploads carries the same."""

    user: int
    kind: str
    mpid: str
    user_identities: dict[str, str]
    device_info: dict[str, Any]
    mp_deviceid: str
    application_info: dict[str, Any]
    source_info: dict[str, str]
    home_ip: str
    consent_state: dict[str, Any] | None = None
    blocked_user_attributes: tuple[str, ...] = ()
    blocked_user_identities: tuple[str, ...] = ()
    environment: str = "production"
    plan: dict[str, Any] = field(default_factory=lambda: {"plan_id": "main_plan", "plan_version": 2})


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128)))


def _ip(rng: random.Random) -> str:
    network = rng.choice(("192.0.2", "198.51.100", "203.0.113"))  # documentation ranges (RFC 5737)
    return f"{network}.{rng.randrange(1, 255)}"


def make_device(
    rng: random.Random,
    user: int,
    kind: str,
    *,
    mpid: str | None = None,
    blocked_user_attributes: Sequence[str] | None = None,
    blocked_user_identities: Sequence[str] | None = None,
    consent: bool | None = None,
    model: SdkModel = MODEL,
) -> Device:
    """A device of ``user`` (``web``, ``ios`` or ``android``); unspecified traits are drawn as in the model."""
    if kind == WEB:
        device_info: dict[str, Any] = {"platform": "web", "http_header_user_agent": "Mozilla/5.0 (synthetic)"}
        application_info: dict[str, Any] = {"application_name": "mPTravel Web", "os": "Desktop"}
        source_info = {"channel": "javascript"}
    elif kind == IOS:
        device_info = {
            "platform": "iOS",
            "ios_advertising_id": _uuid(rng),
            "ios_idfv": _uuid(rng),
            "device_model": "iPhone15,2",
            "os_version": "17.4",
        }
        application_info = {"application_name": "mPTravel", "application_version": "4.2.0", "os": "IOS"}
        source_info = {"channel": "native"}
    elif kind == ANDROID:
        device_info = {
            "platform": "Android",
            "android_advertising_id": _uuid(rng),
            "device_model": "Pixel 8",
            "os_version": "14",
        }
        application_info = {"application_name": "mPTravel", "application_version": "4.2.0", "os": "Android"}
        source_info = {"channel": "native"}
    else:
        raise ValueError(f"unknown device kind {kind!r}")
    if blocked_user_attributes is None:
        blocked_user_attributes = (
            ("loyalty_tier", "last_search") if rng.random() < model.blocked_attribute_share else ()
        )
    if blocked_user_identities is None:
        blocked_user_identities = ("other_id_2",) if rng.random() < model.blocked_identity_share else ()
    if consent is None:
        consent = rng.random() < model.consent_share
    consent_state = (
        {
            "gdpr": {
                "analytics": {
                    "consented": True,
                    "document": "privacy_v3",
                    "timestamp_unixtime_ms": 1_760_000_000_000 + user,
                }
            }
        }
        if consent
        else None
    )
    return Device(
        user=user,
        kind=kind,
        mpid=mpid if mpid is not None else str(rng.getrandbits(63) or 1),
        user_identities={
            "customer_id": f"cust-{user}",
            "email": f"user{user}@example.com",
            "other_id_2": f"loyalty-{user}",
        },
        device_info=device_info,
        mp_deviceid=_uuid(rng),
        application_info=application_info,
        source_info=source_info,
        home_ip=_ip(rng),
        consent_state=consent_state,
        blocked_user_attributes=tuple(blocked_user_attributes),
        blocked_user_identities=tuple(blocked_user_identities),
    )


def device_record(
    rng: random.Random,
    device: Device,
    upload_ms: int,
    event_times: Sequence[int],
    *,
    ip: str | None = None,
    blocked: Sequence[bool] | None = None,
    upload_number: int = 0,
    attributes: int | None = None,
    model: SdkModel = MODEL,
) -> dict[str, Any] | None:
    """The quarantine record of one upload of ``device``, or None when nothing in it was blocked.

    :param event_times: the events' times (ms); :param blocked: which events are unplanned (drawn with
    probability ``model.event_blocked`` when not given); :param upload_number: varies ``last_search``.
    """
    event_ids = [rng.getrandbits(64) - 2**63 for _ in event_times]
    if blocked is None:
        blocked = [rng.random() < model.event_blocked for _ in event_times]
    if not any(blocked) and not device.blocked_user_attributes and not device.blocked_user_identities:
        return None
    events = [
        _event(rng, event_id, ts, rng.randint(0, 8) if attributes is None else attributes)
        for event_id, ts in zip(event_ids, event_times, strict=True)
    ]
    blocked_ids = [str(e) for e, is_blocked in zip(event_ids, blocked, strict=True) if is_blocked]
    allowed = [event for event, is_blocked in zip(events, blocked, strict=True) if not is_blocked]
    user_attributes: dict[str, Any] = {"$gender": "F" if device.user % 2 else "M", "tier": "gold"}
    if "loyalty_tier" in device.blocked_user_attributes:
        user_attributes["loyalty_tier"] = "platinum" if device.user % 3 else "silver"
    if "last_search" in device.blocked_user_attributes:
        user_attributes["last_search"] = f"{_SEARCHES[upload_number % len(_SEARCHES)]} #{upload_number}"
    metadata: dict[str, Any] = {
        "dto_version": 1,
        "blocked_event_ids": blocked_ids,
        "blocked_event_attributes": [
            {"event_id": event["data"]["event_id"], "event_attributes": ["./data/custom_attributes/attr_0"]}
            for event in allowed[:1]
            if event["data"]["custom_attributes"]
        ],
        "blocked_user_attributes": list(device.blocked_user_attributes),
        "blocked_user_identities": list(device.blocked_user_identities),
    }
    record: dict[str, Any] = {
        "events": events,
        "device_info": device.device_info,
        "application_info": device.application_info,
        "user_attributes": user_attributes,
        "deleted_user_attributes": [],
        "user_identities": device.user_identities,
        "mpid": device.mpid,
        "mp_deviceid": device.mp_deviceid,
        "environment": device.environment,
        "ip": device.home_ip if ip is None else ip,
        "source_info": device.source_info,
        "timestamp_unixtime_ms": str(upload_ms),
        "batch_id": str(rng.getrandbits(64) - 2**63),
        "context": {"data_plan": {**device.plan, "block_metadata": metadata}},
    }
    if device.consent_state is not None:
        record["consent_state"] = device.consent_state
    return record


class Upload(msgspec.Struct, frozen=True):
    """One quarantined upload, before its record is built: who, when, what."""

    upload_ms: int
    device: int
    number: int
    event_times: tuple[int, ...]
    blocked: tuple[bool, ...]
    ip: str


def _sessions(rng: random.Random, kind: str, day_ms: int, model: SdkModel) -> list[tuple[int, int]]:
    count = min(model.max_sessions, int(rng.paretovariate(model.pareto_alpha)))
    median = dict(model.session_median_s)[kind]
    sessions = []
    for _ in range(count):
        length_s = min(model.max_session_s, rng.lognormvariate(math.log(median), model.session_sigma))
        length_ms = max(1000, int(length_s * 1000))
        start = day_ms + rng.randrange(DAY_MS - length_ms)
        sessions.append((start, start + length_ms))
    return sorted(sessions)


def device_uploads(
    rng: random.Random, device: Device, index: int, day_ms: int, model: SdkModel = MODEL
) -> list[Upload]:
    """The quarantined uploads of one device over the day starting at ``day_ms`` (see the module model)."""
    uploads: list[Upload] = []
    every_ms = int(dict(model.upload_every_s)[device.kind] * 1000)
    event_rate = 1 / dict(model.event_every_s)[device.kind]
    number = 0
    for start, end in _sessions(rng, device.kind, day_ms, model):
        ip = device.home_ip
        if device.kind != WEB and rng.random() < model.app_new_ip_per_session:
            ip = _ip(rng)
        slots: dict[int, list[int]] = {}
        moment = start + int(rng.expovariate(event_rate) * 1000)
        while moment < end:
            slots.setdefault((moment - start) // every_ms, []).append(moment)
            moment += max(1, int(rng.expovariate(event_rate) * 1000))
        if not slots:  # a session has at least its start event
            slots[0] = [start]
        for slot in sorted(slots):
            times = slots[slot]
            upload_ms = min(start + (slot + 1) * every_ms, end) + rng.randrange(50, 1500)
            blocked = tuple(rng.random() < model.event_blocked for _ in times)
            number += 1
            if any(blocked) or device.blocked_user_attributes or device.blocked_user_identities:
                uploads.append(Upload(upload_ms, index, number, tuple(times), blocked, ip))
    return uploads


def population(
    rng: random.Random, day_ms: int, records: int, model: SdkModel = MODEL
) -> tuple[list[Device], list[Upload]]:
    """Users and their devices, drawn until their quarantined uploads reach ``records`` (the last device's
    are cut to the exact count); uploads in upload order."""
    devices: list[Device] = []
    uploads: list[Upload] = []
    user = 0
    while len(uploads) < records:
        user += 1
        roll, kind = rng.random(), ANDROID
        for name, share in model.kinds:
            if roll < share:
                kind = name
                break
            roll -= share
        kinds = [kind]
        if rng.random() < model.second_device_share:
            kinds.append(WEB if kind != WEB else rng.choice((IOS, ANDROID)))
        first = make_device(rng, user, kinds[0], model=model)
        for number, device_kind in enumerate(kinds):
            device = first if number == 0 else make_device(rng, user, device_kind, mpid=first.mpid, model=model)
            devices.append(device)
            uploads.extend(device_uploads(rng, device, len(devices) - 1, day_ms, model))
    del uploads[records:]
    uploads.sort(key=lambda upload: upload.upload_ms)
    return devices, uploads


def partition_lines(rng: random.Random, day_ms: int, records: int, model: SdkModel = MODEL) -> Iterator[bytes]:
    """NDJSON lines of a partition of ``records`` quarantine records, in upload order."""
    devices, uploads = population(rng, day_ms, records, model)
    for upload in uploads:
        record = device_record(
            rng,
            devices[upload.device],
            upload.upload_ms,
            upload.event_times,
            ip=upload.ip,
            blocked=upload.blocked,
            upload_number=upload.number,
            model=model,
        )
        assert record is not None  # only quarantined uploads are kept
        yield msgspec.json.encode(record)
