"""Coalesce: records shard by user context, and one user's replay batches merge within the limits."""

from __future__ import annotations

import copy
import io
import math
import random
from collections import Counter
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from mparticle_backfill import jsonio, limits
from mparticle_backfill.accounting import Summary
from mparticle_backfill.coalesce import (
    SLICE_REPLAYS,
    CoalescedBatch,
    CoalescedGroup,
    CoalesceSettings,
    batches_per_record,
    coalesce,
    ledger_part_may_hold,
    member_payload,
    replay_context_hash,
    replay_shard,
    shard_count_for,
    shard_of,
    slice_count_for,
    slice_of,
    user_context_hash,
)
from mparticle_backfill.dedupe_check import DedupeCheck, dedupe_replays
from mparticle_backfill.extract import extract_records
from mparticle_backfill.filter_by_age import filter_replays
from mparticle_backfill.model import RecordRef, Replay, ReplayBatch
from mparticle_backfill.routes import compile_routes
from mparticle_backfill.select import SelectionSettings
from mparticle_backfill.stage_codec import encode_replay, iter_replays_for_send
from mparticle_backfill.transform import OMIT, TransformSettings, transform_replays
from tools.synthetic_users import ANDROID, IOS, WEB, Device, device_record, make_device

DAY = 1_763_596_800_000  # 2025-11-20T00:00:00Z
OBJECT_KEY = "q/2025-11-20/part-00000.txt"
CONTENT = ("events", "user_attributes", "source_request_id")  # a payload's content; the rest is its envelope
PARTNER_ROUTE = compile_routes(
    [{"name": "partner", "when": [{"field": "source_info.channel", "equals": "partner"}], "connection": "mp_partner"}]
)


# --- Building replays through the real stages -------------------------------------------------------------


def device(user: int = 1, kind: str = WEB, **traits: Any) -> Device:
    """A synthetic user's device; the same arguments give the same device, with nothing blocked at batch
    level and no consent unless asked for."""
    traits.setdefault("blocked_user_attributes", ())
    traits.setdefault("blocked_user_identities", ())
    traits.setdefault("consent", False)
    return make_device(random.Random(f"device-{user}-{kind}"), user, kind, **traits)


def upload(
    dev: Device,
    minute: int,
    events: int = 2,
    *,
    number: int = 0,
    attributes: int = 2,
    blocked: list[bool] | None = None,
    received_ms: int | None = None,
    event_ms: list[int] | None = None,
    **batch_fields: Any,
) -> dict[str, Any]:
    """The quarantine record of one upload of ``dev`` at ``minute`` of the day: its events a second apart
    (or at ``event_ms``), every one blocked unless ``blocked`` says; ``batch_fields`` replace fields."""
    times = event_ms if event_ms is not None else [DAY + minute * 60_000 + i * 1000 for i in range(events)]
    rng = random.Random(f"upload-{dev.user}-{dev.kind}-{dev.mp_deviceid}-{minute}-{number}-{len(times)}")
    record = device_record(
        rng,
        dev,
        received_ms if received_ms is not None else DAY + minute * 60_000 + len(times) * 1000 + 500,
        times,
        blocked=blocked if blocked is not None else [True] * len(times),
        upload_number=number,
        attributes=attributes,
    )
    assert record is not None, "an upload with nothing blocked is never quarantined"
    record.update(batch_fields)
    return record


def replays_of(
    *records: dict[str, Any] | bytes,
    transform: TransformSettings | None = None,
    dedupe: bool = True,
    object_key: str = OBJECT_KEY,
) -> list[Replay]:
    """The replays the send stage gets: extract -> filter_by_age -> transform -> dedupe_check."""
    summary, dead = Summary(), []
    lines = b"\n".join(r if isinstance(r, bytes) else jsonio.dumps(r) for r in records)
    replays = extract_records([(object_key, io.BytesIO(lines))], SelectionSettings(), summary, dead.append)
    replays = transform_replays(
        filter_replays(replays, DAY, summary), transform or TransformSettings(), summary, dead.append
    )
    if dedupe:
        replays = dedupe_replays(replays, DedupeCheck(), summary)
    result = list(replays)
    assert dead == [], [letter.reason for letter in dead]
    return result


def as_sent(replays: list[Replay]) -> list[Replay]:
    """The replays as the send stage reads them from a stage file: batches as bodies, never decoded."""
    data = b"".join(encode_replay(replay) for replay in replays)
    staged = list(iter_replays_for_send(io.BytesIO(data)))
    assert all(batch.payload is None for replay in staged for batch in replay.batches)
    return staged


def as_sent_from_an_older_version(replays: list[Replay]) -> list[Replay]:
    """The replays as the send stage reads a stage file written before batches were kept as bodies
    (f3e6103: msgpack of the payload, no body), e.g. by a transform that ran before an upgrade."""
    data = b""
    for replay in replays:
        older = msgspec.structs.replace(
            replay, batches=[msgspec.structs.replace(batch, body=None) for batch in replay.batches]
        )
        body = msgspec.msgpack.encode(older)
        data += b"M" + len(body).to_bytes(4, "big") + body
    staged = list(iter_replays_for_send(io.BytesIO(data)))
    assert all(batch.body is None and batch.payload for replay in staged for batch in replay.batches)
    return staged


def run(replays: list[Replay], salt: str = "", *, on: bool = True) -> tuple[list[CoalescedGroup], Counter[str]]:
    """Coalesce ``replays`` in memory (payloads decoded) and as the send stage does (from the stage file:
    events merged as their JSON, never decoded): both must build exactly the same batches."""
    read = [as_sent(replays), as_sent_from_an_older_version(replays)]
    counts: Counter[str] = Counter()
    groups = list(coalesce(replays, CoalesceSettings(on, salt), counts))
    for staged in read:
        staged_counts: Counter[str] = Counter()
        staged_groups = list(coalesce(staged, CoalesceSettings(on, salt), staged_counts))
        assert staged_counts == counts
        assert [(g.route, [r.ref for r in g.replays], g.batches) for g in staged_groups] == [
            (g.route, [r.ref for r in g.replays], g.batches) for g in groups
        ]
    return groups, counts


def envelope(payload: dict[str, Any]) -> bytes:
    return msgspec.json.encode({k: v for k, v in payload.items() if k not in CONTENT}, order="sorted")


def sent_batches(groups: list[CoalescedGroup]) -> list[CoalescedBatch]:
    return [batch for group in groups for batch in group.batches]


def event_ids(payload: dict[str, Any]) -> list[int]:
    return [item["data"]["event_id"] for item in payload.get("events") or ()]


def reversed_keys(value: Any) -> Any:
    """The same JSON value with every object's keys in reverse order."""
    if isinstance(value, dict):
        return {k: reversed_keys(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [reversed_keys(item) for item in value]
    return value


# --- Shards ---------------------------------------------------------------------------------------------


def test_shard_depends_only_on_the_user_context():
    dev = device(1, IOS, blocked_user_attributes=("loyalty_tier", "last_search"), consent=True)
    first, later = upload(dev, 10, 3, number=1), upload(dev, 600, 1, number=7, attributes=5)
    # Events, attributes, batch id, receipt time, source, block metadata: none is the user context.
    assert first["batch_id"] != later["batch_id"] and first["events"] != later["events"]
    assert first["user_attributes"] != later["user_attributes"]
    later["source_info"] = {"channel": "partner"}
    later["context"]["data_plan"]["block_metadata"]["blocked_user_identities"] = ["other_id_2"]
    assert user_context_hash(first) == user_context_hash(later) == user_context_hash(reversed_keys(later))
    # Run settings change the replay's envelope, never the record's shard.
    runs = [
        TransformSettings(),
        TransformSettings(environment="development", plan_version=OMIT),
        TransformSettings(plan_version=9, include_blocked_identities=False, routing=PARTNER_ROUTE),
    ]
    per_run = [replays_of(first, later, transform=settings) for settings in runs]
    envelopes = {envelope(replays[0].batches[0].payload) for replays in per_run}
    assert len(envelopes) == 3
    for shards in (1, 2, 7, 64, 1024):
        assert {replay_shard(replay, shards) for replays in per_run for replay in replays} == {
            shard_of(user_context_hash(first), shards)
        }


WITHOUT_MPID = {"user_identities": {"customer_id": "cust-1"}, "environment": "production"}


@pytest.mark.parametrize(
    ("one", "other"),
    [
        pytest.param({**WITHOUT_MPID, "mpid": "123"}, {**WITHOUT_MPID, "mpid": 123}, id="mpid-string-or-int"),
        pytest.param({**WITHOUT_MPID, "mpid": 0}, WITHOUT_MPID, id="mpid-0-is-none"),
        pytest.param({**WITHOUT_MPID, "mpid": "0"}, {**WITHOUT_MPID, "mpid": None}, id="mpid-string-0-is-none"),
        pytest.param({**WITHOUT_MPID, "ip": ""}, WITHOUT_MPID, id="empty-ip"),
        pytest.param({**WITHOUT_MPID, "consent_state": {}, "integration_attributes": None}, WITHOUT_MPID, id="empty-objects"),
        pytest.param({**WITHOUT_MPID, "device_info": {"a": 1, "b": [2, {"c": 3, "d": 4}]}},
                     {**WITHOUT_MPID, "device_info": {"b": [2, {"d": 4, "c": 3}], "a": 1}}, id="key-order"),
        pytest.param({**WITHOUT_MPID, "context": {"data_plan": {"plan_id": "p", "plan_version": "2"}}},
                     {**WITHOUT_MPID, "context": {"data_plan": {"plan_id": "p", "plan_version": 2, "block_metadata": {}}}},
                     id="plan-version-string-or-int-and-block-metadata"),
        pytest.param({**WITHOUT_MPID, "context": {"data_plan": {"plan_id": "", "plan_version": None}}},
                     {**WITHOUT_MPID, "context": {"other": 1}}, id="no-plan"),
    ],
)  # fmt: skip
def test_the_same_user_written_differently_is_the_same_hash(one, other):
    assert user_context_hash(one) == user_context_hash(other)


def test_the_hash_is_pinned_across_versions():
    """Ledger parts are found by the gcd rule from the shard a key was written by: if the hash changed
    between two versions, a re-run could look for a key in the wrong parts and send it twice."""
    batch = {
        "mpid": "8141580316404113440",
        "user_identities": {"customer_id": "cust-1", "email": "user1@example.com"},
        "mp_deviceid": "3b0f8e3c-0000-4000-8000-000000000001",
        "device_info": {"platform": "web"},
        "application_info": {"application_name": "mPTravel Web", "os": "Desktop"},
        "environment": "production",
        "ip": "192.0.2.7",
        "timestamp_unixtime_ms": "1763596800000",
        "batch_id": "123",
        "context": {"data_plan": {"plan_id": "main_plan", "plan_version": 2, "block_metadata": {"dto_version": 1}}},
    }
    assert user_context_hash(batch) == 18355362584448481734
    assert 0 <= user_context_hash(batch) < 2**64


@pytest.mark.parametrize(
    ("field", "value"),
    [
        pytest.param("mpid", "1", id="mpid"),
        pytest.param("user_identities", {"customer_id": "cust-2"}, id="identities"),
        pytest.param("mp_deviceid", "another-device", id="mp_deviceid"),
        pytest.param("device_info", {"platform": "web", "http_header_user_agent": "Other/1.0"}, id="device_info"),
        pytest.param("application_info", {"application_name": "Other", "os": "Desktop"}, id="application_info"),
        pytest.param("environment", "development", id="environment"),
        pytest.param("ip", "203.0.113.99", id="ip"),
        pytest.param("consent_state", {"gdpr": {"analytics": {"consented": False}}}, id="consent"),
        pytest.param("integration_attributes", {"1111": {"id": "x"}}, id="integration_attributes"),
        pytest.param("context", {"data_plan": {"plan_id": "other_plan", "plan_version": 2}}, id="plan_id"),
        pytest.param("context", {"data_plan": {"plan_id": "main_plan", "plan_version": 3}}, id="plan_version"),
    ],
)
def test_another_user_context_is_another_hash(field, value):
    record = upload(device(3), 5)
    assert user_context_hash({**record, field: value}) != user_context_hash(record)


def test_copies_of_a_batch_land_in_the_same_shard():
    record = upload(device(4, ANDROID), 30, 4)
    line = jsonio.dumps(record)
    copies = replays_of(line, jsonio.dumps(reversed_keys(record)), line, dedupe=False)
    copies += replays_of(line, dedupe=False, object_key="q/2025-11-20/part-00009.txt")
    assert len(copies) == 4
    for shards in (3, 16, 1000):
        assert len({replay_shard(replay, shards) for replay in copies}) == 1


def test_shards_are_in_range_and_a_count_below_one_is_refused():
    hashes = [user_context_hash(upload(device(user, kind), 1)) for user in range(40) for kind in (WEB, IOS)]
    assert len(set(hashes)) == len(hashes)
    for shards in (1, 5, 1024):
        assert {shard_of(h, shards) for h in hashes} <= set(range(shards))
    assert len({shard_of(h, 5) for h in hashes}) == 5  # 80 devices spread over every shard
    with pytest.raises(ValueError, match="at least 1"):
        shard_of(hashes[0], 0)


@pytest.mark.parametrize(
    ("part_shards", "reader_shards"),
    [(1, 1), (1, 6), (6, 1), (4, 4), (4, 6), (6, 4), (3, 5), (8, 12), (12, 8), (7, 7), (10, 15), (16, 64)],
)
def test_ledger_part_may_hold_is_exactly_where_a_key_can_be(part_shards, reader_shards):
    span = math.lcm(part_shards, reader_shards)  # h mod P and h mod R repeat with this period
    possible = {(h % part_shards, h % reader_shards) for h in range(span)}
    for part in range(part_shards):
        for reader in range(reader_shards):
            assert ledger_part_may_hold(part_shards, part, reader_shards, reader) == ((part, reader) in possible)
    # Every key is found: real 64-bit context hashes, written under one count, read under the other.
    rng = random.Random(part_shards * 100 + reader_shards)
    for h in [rng.getrandbits(64) for _ in range(300)] + [0, 2**64 - 1]:
        assert ledger_part_may_hold(part_shards, h % part_shards, reader_shards, h % reader_shards)
    if part_shards == reader_shards:  # the same count: each shard reads its own parts only
        for part in range(part_shards):
            readers = [r for r in range(reader_shards) if ledger_part_may_hold(part_shards, part, reader_shards, r)]
            assert readers == [part]


@pytest.mark.parametrize(
    "arguments",
    [
        pytest.param((4, 4, 4, 0), id="part-index-too-high"),
        pytest.param((4, 0, 4, -1), id="reader-index-negative"),
        pytest.param((0, 0, 4, 0), id="no-part-shards"),
    ],
)
def test_ledger_part_may_hold_refuses_indexes_out_of_range(arguments):
    with pytest.raises(ValueError, match="out of range"):
        ledger_part_may_hold(*arguments)


def test_one_shard_per_chunk_within_airflows_map_limit():
    assert [shard_count_for(chunks) for chunks in (0, 1, 37, 1024, 5000)] == [1, 1, 37, 1024, 1024]


def test_slices_hold_about_slice_replays_and_a_count_below_one_is_refused():
    assert [slice_count_for(n) for n in (0, 1, SLICE_REPLAYS, SLICE_REPLAYS + 1, 10 * SLICE_REPLAYS)] == [
        1,
        1,
        1,
        2,
        10,
    ]
    assert slice_count_for(7, per_slice=3) == 3
    with pytest.raises(ValueError, match="at least 1"):
        slice_of(12345, 4, 0)


def test_the_records_of_one_shard_spread_over_every_slice():
    """Slices use the hash bits above the shard's: within one shard they are still evenly filled."""
    rng = random.Random(7)
    hashes = [rng.getrandbits(64) for _ in range(20_000)]
    for shards in (1, 4, 16):
        in_shard = [h for h in hashes if shard_of(h, shards) == 0]
        filled = Counter(slice_of(h, shards, 8) for h in in_shard)
        assert set(filled) == set(range(8))
        assert max(filled.values()) < 1.3 * len(in_shard) / 8


def test_coalescing_slice_by_slice_builds_exactly_the_batches_of_the_whole_shard():
    """A user's records are all in one slice: slicing changes memory, never the batches sent."""
    records = [
        upload(device(user, kind), minute, 2, number=n)
        for user in range(12)
        for kind in (WEB, IOS)
        for n, minute in enumerate((5, 30, 31, 400))
    ]
    whole, whole_counts = run(replays_of(*records))
    sliced_counts: Counter[str] = Counter()
    sliced: list[CoalescedGroup] = []
    slices = 3
    replays = replays_of(*records)
    for index in range(slices):
        part = [r for r in replays if slice_of(replay_context_hash(r), 1, slices) == index]
        assert part  # 24 devices over 3 slices
        sliced += coalesce(part, CoalesceSettings(), sliced_counts)

    def batches(groups: list[CoalescedGroup]) -> set[tuple[str, bytes]]:
        return {(batch.payload["source_request_id"], batch.body) for batch in sent_batches(groups)}

    assert batches(sliced) == batches(whole)
    assert len(sent_batches(whole)) == 24  # one per device: every upload of a device merged
    assert sliced_counts == whole_counts


# --- Merging --------------------------------------------------------------------------------------------


def test_one_users_batches_become_one_batch_in_time_order():
    dev = device(5, WEB)
    records = [upload(dev, minute, 2, number=n) for n, minute in enumerate((300, 10, 120, 11))]
    replays = replays_of(*records)
    sent = {replay.ref: [b.payload for b in replay.batches] for replay in replays}
    groups, counts = run(replays)
    (group,) = groups
    (batch,) = group.batches
    assert [r.ref for r in group.replays] == [RecordRef(OBJECT_KEY, n) for n in (1, 2, 3, 4)]
    assert all(r.batches == [] for r in group.replays)  # released: the group's batches deliver them
    times = [e["data"]["timestamp_unixtime_ms"] for e in batch.payload["events"]]
    assert len(times) == 8 and times == sorted(times)
    assert sorted(event_ids(batch.payload)) == sorted(i for p in sent.values() for i in event_ids(p[0]))
    assert envelope(batch.payload) == envelope(next(iter(sent.values()))[0])
    assert list(batch.payload)[-1] == "source_request_id" and batch.body == jsonio.dumps(batch.payload)
    assert batch.size == len(batch.body) <= limits.MAX_BATCH_BYTES
    assert limits.batch_problem(batch.payload) is None
    assert counts == Counter(batches_before_coalescing=4, batches_after_coalescing=1, records_coalesced=4)
    assert batches_per_record(group.batches) == {ref: 1 for ref in sent}


def test_an_envelope_written_with_its_keys_in_another_order_is_the_same_envelope():
    """Equal as JSON is equal: the second record's device_info, identities and plan context carry their
    keys in reverse order (another SDK version, a copy through another pipeline); the three records still
    make one batch, whose envelope is written as the first record's."""
    dev = device(8, IOS, consent=True)
    first, second, third = (upload(dev, minute, 2, number=n) for n, minute in ((1, 30), (2, 10), (3, 50)))
    second = reversed_keys(second)
    replays = replays_of(first, second, third)
    raw = [r.batches[0].body.split(b'"events":[')[0] for r in replays]
    assert raw[0] == raw[2] != raw[1] and envelope(replays[0].batches[0].payload) == envelope(
        replays[1].batches[0].payload
    )
    groups, counts = run(replays)
    (group,) = groups
    (batch,) = group.batches
    assert [r.ref.line for r in group.replays] == [1, 2, 3]
    assert batch.body.startswith(raw[0])
    assert len(batch.payload["events"]) == 6 and counts["batches_after_coalescing"] == 1


def test_the_envelope_of_a_body_the_transform_wrote_is_a_slice_of_it():
    """The fast path: for every body this package writes, the envelope is cut off the body without
    encoding anything (the fallback, encoding it field by field, would give the same bytes: this checks
    the slice is taken, against the envelope encoded independently)."""
    from mparticle_backfill.coalesce import _body_prefix, _decode_fields

    records = [
        upload(device(20 + n, kind, consent=True), 5 + n, 2, number=n) for n, kind in enumerate((WEB, IOS, ANDROID))
    ]
    records.append(upload(device(30, WEB), 9, 1, integration_attributes={"1111": {"events": ["nested"]}}))
    bodies = [batch.body for replay in replays_of(*records) for batch in replay.batches]
    assert len(bodies) == 4
    for body in bodies:
        payload = jsonio.loads(body)
        expected = b"{" + b"".join(
            jsonio.dumps(k) + b":" + jsonio.dumps(v) + b"," for k, v in payload.items() if k not in CONTENT
        )
        assert _body_prefix(body, _decode_fields(body)) == expected


def laid_out(payload: dict[str, Any], layout: str) -> bytes:
    """The same payload encoded otherwise: its fields in another order, a nested key that spells
    ``"events":``, spaces between its fields, a name with escapes, or ``events`` twice."""
    content = {name: payload[name] for name in ("events", "user_attributes", "source_request_id")}
    envelope = {name: value for name, value in payload.items() if name not in content}
    if layout == "nested_events_key":
        return jsonio.dumps({**envelope, "integration_attributes": {"1111": {"events": [1, 2]}}, **content})
    if layout == "envelope_after_events":
        environment = envelope.pop("environment")
        return jsonio.dumps({**envelope, **content, "environment": environment})
    if layout == "attributes_first":
        return jsonio.dumps({"user_attributes": content["user_attributes"], **envelope, **content})
    fields = [jsonio.dumps(name) + b":" + jsonio.dumps(value) for name, value in payload.items()]
    if layout == "spaced":
        return b"{" + b", ".join(fields) + b" }"
    if layout == "escaped_name":
        return jsonio.dumps({**envelope, 'x-"quoted"-\u00e9': 1, **content})
    if layout == "spaced_onto_a_nested_events_key":  # the spaces move where "events": would be found
        events = [{"events": [0], **content["events"][0]}, *content["events"][1:]]
        head = b"".join(jsonio.dumps(name) + b":" + jsonio.dumps(value) + b"," for name, value in envelope.items())
        tail = b',"user_attributes":%s,"source_request_id":%s}' % (
            jsonio.dumps(content["user_attributes"]),
            jsonio.dumps(content["source_request_id"]),
        )
        return b"{" + head + b'"events":' + jsonio.dumps(events) + b" " * len(b'"events":[{') + tail
    if layout == "events_twice":
        return b"{" + b",".join([b'"events":[{"data":{"event_id":"gone"}}]', *fields]) + b"}"
    raise AssertionError(layout)


@pytest.mark.parametrize(
    "layout",
    [
        "nested_events_key",
        "envelope_after_events",
        "attributes_first",
        "spaced",
        "spaced_onto_a_nested_events_key",
        "escaped_name",
        "events_twice",
    ],
)
def test_a_body_of_another_layout_merges_as_its_payload(layout):
    """Bodies this package writes put the envelope first, then the content, and merging slices the
    envelope off them; a body laid out otherwise, or whose envelope holds a key named "events", must
    still merge exactly as its decoded payload does (``run`` compares the two)."""
    dev = device(9, WEB, blocked_user_attributes=("loyalty_tier", "last_search"))
    replays = replays_of(upload(dev, 10, 2, number=1), upload(dev, 20, 1, number=2))
    for replay in replays:
        (batch,) = replay.batches
        assert batch.payload.get("user_attributes")
        body = laid_out(batch.payload, layout)
        replay.batches = [ReplayBatch(batch.replay_keys, jsonio.loads(body), len(body), body)]
    expected = {k: v for k, v in replays[0].batches[0].payload.items() if k not in CONTENT}
    groups, counts = run(replays)
    (group,) = groups
    (batch,) = group.batches
    assert {k: v for k, v in batch.payload.items() if k not in CONTENT} == expected
    assert len(batch.payload["events"]) == 3 and counts["records_coalesced"] == 2


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"mpid": "77"}, id="mpid"),
        pytest.param({"user_identities": {"customer_id": "cust-6", "email": "other@example.com"}}, id="identities"),
        pytest.param({"mp_deviceid": "another-device"}, id="mp_deviceid"),
        pytest.param({"device_info": {"platform": "web", "http_header_user_agent": "Other/2"}}, id="device_info"),
        pytest.param({"application_info": {"application_name": "Kiosk", "os": "Desktop"}}, id="application_info"),
        pytest.param({"environment": "development"}, id="environment"),
        pytest.param({"ip": "203.0.113.200"}, id="ip"),
        pytest.param(
            {"consent_state": {"gdpr": {"ads": {"consented": False, "timestamp_unixtime_ms": 1}}}}, id="consent"
        ),
        pytest.param({"integration_attributes": {"1111": {"loyalty_id": "x"}}}, id="integration_attributes"),
        pytest.param({"context": {"data_plan": {"plan_id": "main_plan", "plan_version": 3}}}, id="plan_version"),
        pytest.param({"context": {"data_plan": {"plan_id": "web_plan", "plan_version": 2}}}, id="plan_id"),
    ],
)
def test_never_merges_across_differing_envelopes(change):
    dev = device(6, WEB)
    other = upload(dev, 21, number=2)
    metadata = other["context"]["data_plan"]["block_metadata"]
    if "context" in change:  # a new plan, the same blocked data
        change = {"context": {"data_plan": {**change["context"]["data_plan"], "block_metadata": metadata}}}
    replays = replays_of(upload(dev, 20, number=1), {**other, **change}, upload(dev, 22, number=3))
    built = {replay.ref: [b.body for b in replay.batches] for replay in replays}
    groups, counts = run(replays)
    assert [[r.ref.line for r in g.replays] for g in groups] == [[1, 3], [2]]
    assert [b.body for b in groups[1].batches] == built[RecordRef(OBJECT_KEY, 2)]  # alone: unchanged
    assert envelope(groups[0].batches[0].payload) != envelope(groups[1].batches[0].payload)
    assert counts["batches_before_coalescing"] == 3 and counts["batches_after_coalescing"] == 2


def test_never_merges_across_routes():
    """Same envelope, but one record's source_info routes it to another input: two groups."""
    dev = device(7, WEB)
    partner = upload(dev, 41, number=2, source_info={"channel": "partner"})
    replays = replays_of(
        upload(dev, 40, number=1), partner, upload(dev, 42), transform=TransformSettings(routing=PARTNER_ROUTE)
    )
    assert [r.route for r in replays] == ["", "mp_partner", ""]
    assert len({envelope(r.batches[0].payload) for r in replays}) == 1
    groups, _ = run(replays)
    assert [(g.route, [r.ref.line for r in g.replays]) for g in groups] == [("", [1, 3]), ("mp_partner", [2])]


def test_latest_original_batch_wins_the_user_attributes():
    """last_search changes with every upload: the value sent is the one of the batch mParticle received
    last, even when its events are older (a phone that was offline), and each name goes out once."""
    dev = device(8, IOS, blocked_user_attributes=("loyalty_tier", "last_search"))
    at = DAY + 3_600_000
    morning = upload(dev, 60, 2, number=1, received_ms=at + 600_000)
    offline = upload(dev, 0, 2, number=2, received_ms=at + 7_200_000, event_ms=[at - 3_000_000, at - 2_999_000])
    noon = upload(dev, 120, 2, number=3, received_ms=at + 3_700_000)
    assert len({r["user_attributes"]["last_search"] for r in (morning, offline, noon)}) == 3
    for order in ([morning, offline, noon], [offline, noon, morning]):
        replays = replays_of(*order)
        offline_ref = next(r.ref for r in replays if r.identity == offline["batch_id"])
        groups, counts = run(replays)
        (batch,) = sent_batches(groups)
        assert batch.payload["user_attributes"] == {
            "loyalty_tier": offline["user_attributes"]["loyalty_tier"],
            "last_search": offline["user_attributes"]["last_search"],
        }
        assert counts["user_attributes_superseded"] == 4  # two names in each of the two older batches
        attribute_keys = [f"{r['batch_id']}:user_attributes" for r in (morning, offline, noon)]
        assert sorted(k for k in batch.replay_keys if k.endswith(":user_attributes")) == sorted(attribute_keys)
        assert member_payload(batch, offline_ref)["user_attributes"] == batch.payload["user_attributes"]
        for replay in replays:  # a record whose values were all superseded delivers its key, sends none
            if replay.ref != offline_ref:
                assert "user_attributes" not in member_payload(batch, replay.ref)


def test_without_a_receipt_time_the_newest_event_decides():
    dev = device(9, ANDROID, blocked_user_attributes=("loyalty_tier", "last_search"))
    early, late = upload(dev, 30, 1, number=1), upload(dev, 500, 1, number=2)
    del early["timestamp_unixtime_ms"], late["timestamp_unixtime_ms"]
    groups, _ = run(replays_of(late, early))
    (batch,) = sent_batches(groups)
    assert batch.payload["user_attributes"]["last_search"] == late["user_attributes"]["last_search"]


def test_source_request_id_follows_membership_and_salt_not_order():
    dev = device(10, WEB)
    records = [upload(dev, minute, 3, number=minute) for minute in (5, 6, 7, 8)]

    def ids(selected: list[dict], salt: str = "", shuffle: int | None = None) -> list[str]:
        replays = replays_of(*selected)
        if shuffle is not None:
            random.Random(shuffle).shuffle(replays)
        return [batch.payload["source_request_id"] for batch in sent_batches(run(replays, salt)[0])]

    same = ids(records)
    assert len(same) == 1
    assert ids(records, shuffle=1) == ids(records, shuffle=2) == same  # a retry or re-run: the same id
    assert ids(records[:3]) != same and ids(records[1:]) != same  # another membership, another id
    assert ids(records, "forced-1") != same and ids(records, "forced-1") == ids(records, "forced-1", shuffle=3)
    transform_ids = {b.payload["source_request_id"] for r in replays_of(*records) for b in r.batches}
    assert not transform_ids & set(same)


def test_a_group_of_one_record_is_exactly_the_transforms_batches():
    dev = device(11, WEB)
    big = upload(dev, 50, 80, attributes=100)  # the transform splits it over several batches
    replays = replays_of(big)
    built = [(b.replay_keys, b.body, b.payload["source_request_id"]) for b in replays[0].batches]
    assert len(built) > 1
    groups, counts = run(replays)
    (group,) = groups
    assert [(b.replay_keys, b.body, b.payload["source_request_id"]) for b in group.batches] == built
    assert all(b.members == ((group.replays[0].ref, b.replay_keys),) for b in group.batches)
    assert counts["batches_before_coalescing"] == counts["batches_after_coalescing"] == len(built)
    assert counts["records_coalesced"] == 0


def test_coalesce_off_keeps_one_group_per_record_unchanged():
    dev = device(12, WEB)
    records = [upload(dev, minute, 2, number=minute) for minute in (3, 1, 2)]
    replays = replays_of(*records)
    built = [[b.body for b in r.batches] for r in replays]
    groups, counts = run(replays, "salt", on=False)
    assert [[r.ref for r in g.replays] for g in groups] == [[r.ref] for r in replays]  # input order
    assert [[b.body for b in g.batches] for g in groups] == built
    assert counts["batches_before_coalescing"] == counts["batches_after_coalescing"] == 3
    assert counts["records_coalesced"] == 0


def test_a_record_without_batches_is_never_lost():
    dev = device(13, WEB)
    replays = replays_of(upload(dev, 1, number=1), upload(dev, 2, number=2), upload(dev, 3, number=3))
    replays[1].batches = []
    for on in (True, False):
        groups, _ = run(copy.deepcopy(replays), on=on)
        assert sorted(r.ref.line for g in groups for r in g.replays) == [1, 2, 3]
        assert [g.batches for g in groups if g.replays[0].ref.line == 2] == [[]]


def test_a_group_over_128_kb_is_split_in_time_order():
    dev = device(14, WEB, blocked_user_attributes=("loyalty_tier", "last_search"))
    records = [upload(dev, minute, 12, number=minute, attributes=100) for minute in range(30, 40)]
    replays = replays_of(*records)
    assert sum(len(b.body) for r in replays for b in r.batches) > 2 * limits.MAX_BATCH_BYTES
    groups, counts = run(replays)
    (group,) = groups
    assert len(group.batches) >= 3
    times = [e["data"]["timestamp_unixtime_ms"] for b in group.batches for e in b.payload["events"]]
    assert len(times) == 120 and times == sorted(times)
    for batch in group.batches:
        assert len(batch.body) <= limits.MAX_BATCH_BYTES and batch.body == jsonio.dumps(batch.payload)
        assert limits.batch_problem(batch.payload) is None
    keys = [k for b in group.batches for k in b.replay_keys]
    assert sorted(keys) == sorted(k for r in records for k in keys_of(r))
    assert sum("user_attributes" in b.payload for b in group.batches) == 1  # the latest values, once
    assert counts["batches_before_coalescing"] == 10 and counts["batches_after_coalescing"] == len(group.batches)
    # Most batches are nearly full: no half-empty batch is wasted.
    assert sum(b.size for b in group.batches) > (len(group.batches) - 1) * 0.9 * limits.MAX_BATCH_BYTES


def test_user_attributes_fill_a_batch_up_to_128_kb_and_no_further():
    """Events fill a first batch and part of a second; the restored attributes ride in the second up to
    the limit, and one byte more sends them in a batch of their own."""
    dev = device(20, ANDROID)

    def batches(extra: int) -> list[CoalescedBatch]:
        records = [upload(dev, minute, 20, number=minute, attributes=100) for minute in range(1, 6)]
        latest = with_user_attributes(records[-1], [f"note_{i}" for i in range(30)])
        for i in range(30):  # values are at most 4096 characters
            latest["user_attributes"][f"note_{i}"] = "n" * (100 + min(3900, max(0, extra - i * 3900)))
        return sent_batches(run(replays_of(*records))[0])

    first, second = batches(0)
    assert "user_attributes" not in first.payload and len(second.payload["user_attributes"]) == 30
    room = limits.MAX_BATCH_BYTES - second.size
    assert 3900 < room < 30 * 3900
    beside = batches(room - 1)  # the size bound may count one comma too many: 1 byte short of full
    assert len(beside) == 2 and beside[1].size == limits.MAX_BATCH_BYTES - 1
    split = batches(room + 1)
    assert len(split) == 3 and all(b.size <= limits.MAX_BATCH_BYTES for b in split)
    assert split[2].payload["events"] == [] and len(split[2].payload["user_attributes"]) == 30


def keys_of(record: dict[str, Any]) -> list[str]:
    ids = [e["data"]["event_id"] for e in record["events"]]
    return [f"{record['batch_id']}:{i}" for i in ids] + [f"{record['batch_id']}:user_attributes"] * bool(
        record["context"]["data_plan"]["block_metadata"]["blocked_user_attributes"]
    )


def with_user_attributes(record: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """The record with more blocked user attributes (each its own name and value)."""
    record["user_attributes"].update({name: f"{name}@{record['batch_id']}" for name in names})
    metadata = record["context"]["data_plan"]["block_metadata"]
    metadata["blocked_user_attributes"] = [*metadata["blocked_user_attributes"], *names]
    return record


def test_more_than_100_user_attributes_split_and_a_records_attributes_stay_whole():
    dev = device(15, IOS)
    records = [
        with_user_attributes(upload(dev, m, 1, number=m), [f"pref_{m}_{i}" for i in range(40)]) for m in (1, 2, 3)
    ]
    replays = replays_of(*records)
    groups, _ = run(replays)
    batches = sent_batches(groups)
    assert len(batches) == 2
    assert [len(b.payload.get("user_attributes", {})) for b in batches] == [80, 40]
    for replay, record in zip(replays, records, strict=True):
        carrying = [b for b in batches if f"{record['batch_id']}:user_attributes" in b.replay_keys]
        assert len(carrying) == 1  # whole, in one batch
        assert member_payload(carrying[0], replay.ref)["user_attributes"] == {
            name: record["user_attributes"][name] for name in record["user_attributes"] if name.startswith("pref_")
        }
    assert sorted(k for b in batches for k in b.replay_keys) == sorted(k for r in records for k in keys_of(r))


def test_a_record_whose_values_were_all_superseded_rides_with_the_newer_values():
    """Split by names: the oldest record's names are all re-sent by the newest, in the second batch; its
    key rides there, not in the first batch that carries none of those names."""
    dev = device(19, IOS)
    names = {tag: [f"{tag}_{i}" for i in range(40)] for tag in "abc"}
    plan = ((1, "a"), (2, "b"), (3, "c"), (4, "a"))
    records = [with_user_attributes(upload(dev, m, 1, number=m), names[tag]) for m, tag in plan]
    replays = replays_of(*records)
    oldest, newest = replays[0].ref, replays[3].ref
    first, second = sent_batches(run(replays)[0])
    assert set(first.payload["user_attributes"]) == {*names["b"], *names["c"]}
    assert second.payload["user_attributes"] == {n: records[3]["user_attributes"][n] for n in names["a"]}
    assert f"{records[0]['batch_id']}:user_attributes" in second.replay_keys
    assert "user_attributes" not in member_payload(second, oldest)
    assert member_payload(second, newest)["user_attributes"] == second.payload["user_attributes"]
    assert batches_per_record([first, second])[oldest] == 2  # its event in the first, its key in the second


def test_a_merged_batch_may_fill_exactly_128_kb_source_request_id_included():
    dev = device(18, WEB)

    def merged(padding: int) -> list[CoalescedBatch]:
        first, second = upload(dev, 70, 20, number=1, attributes=100), upload(dev, 71, 10, number=2, attributes=100)
        attributes = second["events"][0]["data"]["custom_attributes"]
        for index in range(0, padding, 4000):  # values are at most 4096 characters
            attributes[f"attr_{index // 4000}"] += "x" * min(4000, padding - index)
        return sent_batches(run(replays_of(first, second))[0])

    (unpadded,) = merged(0)
    room = limits.MAX_BATCH_BYTES - unpadded.size
    assert 0 < room < 80 * 4000
    (full,) = merged(room)
    assert full.size == len(full.body) == limits.MAX_BATCH_BYTES
    over = merged(room + 1)
    assert len(over) == 2 and all(b.size <= limits.MAX_BATCH_BYTES for b in over)
    times = [e["data"]["timestamp_unixtime_ms"] for b in over for e in b.payload["events"]]
    assert len(times) == 30 and times == sorted(times)


def test_member_payload_is_exactly_what_the_member_contributes():
    dev = device(16, ANDROID, blocked_user_attributes=("loyalty_tier", "last_search"))
    records = [upload(dev, minute, 2, number=minute) for minute in (100, 101, 130)]
    replays = replays_of(*records)
    built = {r.ref: r.batches[0].payload for r in replays}
    latest = replays[-1].ref  # received last
    groups, _ = run(replays)
    (batch,) = sent_batches(groups)
    restored = jsonio.loads(jsonio.dumps(batch.to_json()))
    assert CoalescedBatch.from_json(restored) == batch  # what the send stage reads back from a stage file
    for ref, payload in built.items():
        part = member_payload(batch, ref)
        assert event_ids(part) == event_ids(payload)
        assert envelope(part) == envelope(payload)
        if ref == latest:
            assert part["user_attributes"] == payload["user_attributes"]
        else:
            assert "user_attributes" not in part
        assert member_payload(CoalescedBatch.from_json(restored), ref) == part
    with pytest.raises(KeyError):
        member_payload(batch, RecordRef("elsewhere.txt", 1))


def test_member_payload_of_an_unchanged_batch_is_that_batch():
    replays = replays_of(upload(device(17, IOS, blocked_user_attributes=("loyalty_tier",)), 9, 2))
    payload = replays[0].batches[0].payload
    (batch,) = sent_batches(run(replays)[0])
    part = member_payload(batch, replays[0].ref)
    assert part == {k: v for k, v in payload.items() if k != "source_request_id"}


# --- Properties over generated partitions -----------------------------------------------------------------

uploads = st.fixed_dictionaries(
    {
        "minute": st.integers(0, 1439),
        "events": st.integers(0, 5),
        "blocked": st.integers(1, 31),  # which of the events are blocked (bits)
        "new_ip": st.integers(0, 4),  # 0: another address for this upload
        "partner": st.integers(0, 5),  # 0: routed to the partner input
    }
)
devices = st.fixed_dictionaries(
    {
        "kind": st.sampled_from([WEB, IOS, ANDROID]),
        "attributes": st.sampled_from([(), ("loyalty_tier",), ("loyalty_tier", "last_search")]),
        "many_attributes": st.integers(0, 3),  # 0: 45 more blocked names per upload, 4 sets in turn
        "consent": st.booleans(),
        "second_device": st.booleans(),  # the same user (mpid, identities) on another device
        "uploads": st.lists(uploads, min_size=1, max_size=6),
    }
)


def partition(draw_devices: list[dict[str, Any]], big: bool) -> list[dict[str, Any]]:
    records = []
    for user, drawn in enumerate(draw_devices, start=1):
        first = device(user, drawn["kind"], blocked_user_attributes=drawn["attributes"], consent=drawn["consent"])
        devs = [first]
        if drawn["second_device"]:
            devs.append(device(user, WEB if drawn["kind"] != WEB else IOS, mpid=first.mpid, blocked_user_attributes=()))
        for dev in devs:
            for number, up in enumerate(drawn["uploads"]):
                events = up["events"] * (4 if big else 1)
                if not events and not dev.blocked_user_attributes:
                    continue  # nothing blocked: never quarantined
                blocked = [bool(up["blocked"] >> (i % 5) & 1) for i in range(events)]
                if events and not any(blocked):
                    blocked[0] = True
                record = upload(dev, up["minute"], events, number=number, blocked=blocked, attributes=90 if big else 3)
                if up["new_ip"] == 0:
                    record["ip"] = "198.51.100.250"
                if up["partner"] == 0:
                    record["source_info"] = {"channel": "partner"}
                if drawn["many_attributes"] == 0:
                    with_user_attributes(record, [f"pref_{number % 4}_{i}" for i in range(45)])
                records.append(record)
    return records


def recency(replay: Replay) -> tuple:
    events = [e["data"]["timestamp_unixtime_ms"] for b in replay.batches for e in b.payload["events"]]
    received = int(replay.batch["timestamp_unixtime_ms"])
    return (received, max(events, default=-1), replay.ref.object_key, replay.ref.line, replay.ref.part)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(
    drawn=st.lists(devices, min_size=1, max_size=4),
    big=st.booleans(),
    order=st.randoms(use_true_random=False),
    salt=st.sampled_from(["", "forced-run-1"]),
)
def test_coalesced_partitions_deliver_everything_once_within_the_limits(drawn, big, order, salt):
    records = partition(drawn, big)
    assume(records)
    transform = TransformSettings(routing=PARTNER_ROUTE)
    replays = replays_of(*records, transform=transform)
    assert replays
    built = {r.ref: [(b.replay_keys, b.payload, b.body) for b in r.batches] for r in replays}
    route = {r.ref: r.route for r in replays}
    latest = {r.ref: recency(r) for r in replays}
    order.shuffle(replays)
    groups, counts = run(replays, salt)

    # Every record in exactly one group; every key of the input delivered exactly once.
    assert Counter(r.ref for g in groups for r in g.replays) == Counter(list(built))
    batches = sent_batches(groups)
    delivered = Counter(k for b in batches for k in b.replay_keys)
    assert delivered == Counter(k for parts in built.values() for keys, _, _ in parts for k in keys)
    assert all(n == 1 for n in delivered.values())

    # One group per (route, envelope), and nothing crosses either.
    kinds = {(route[ref], envelope(payload)) for ref, parts in built.items() for _, payload, _ in parts}
    assert len(groups) == len(kinds)
    for group in groups:
        for batch in group.batches:
            assert limits.batch_problem(batch.payload) is None
            assert len(batch.body) == batch.size <= limits.MAX_BATCH_BYTES
            assert len(batch.payload.get("user_attributes", {})) <= limits.MAX_USER_ATTRIBUTES
            assert batch.body == jsonio.dumps(batch.payload) and list(batch.payload)[-1] == "source_request_id"
            for ref, keys in batch.members:
                assert route[ref] == group.route
                assert all(envelope(payload) == envelope(batch.payload) for _, payload, _ in built[ref])
                assert set(keys) <= {k for ks, _, _ in built[ref] for k in ks}
            assert sorted(k for _, keys in batch.members for k in keys) == sorted(batch.replay_keys)
        times = [e["data"]["timestamp_unixtime_ms"] for b in group.batches for e in b.payload["events"]]
        assert times == sorted(times)
        refs = [r.ref for r in group.replays]
        if len(refs) == 1:  # alone: exactly the transform's batches
            assert [(b.replay_keys, b.body) for b in group.batches] == [(k, body) for k, _, body in built[refs[0]]]
            continue
        # Latest wins: each restored name goes out once, with the value of the member received last.
        sent_values = [(n, v) for b in group.batches for n, v in (b.payload.get("user_attributes") or {}).items()]
        assert len(sent_values) == len(dict(sent_values))
        expected: dict[str, tuple[tuple, Any]] = {}
        for ref in refs:
            for _, payload, _ in built[ref]:
                for name, value in (payload.get("user_attributes") or {}).items():
                    if name not in expected or latest[ref] > expected[name][0]:
                        expected[name] = (latest[ref], value)
        assert dict(sent_values) == {name: value for name, (_, value) in expected.items()}
        # Fewer batches: everything in one when all of it fits.
        names = {name for ref in refs for _, payload, _ in built[ref] for name in payload.get("user_attributes") or ()}
        if sum(len(body) for ref in refs for _, _, body in built[ref]) <= limits.MAX_BATCH_BYTES and len(names) <= 100:
            assert len(group.batches) == 1
        for batch in group.batches:  # the member parts add up to the batch
            parts = [member_payload(batch, ref) for ref, _ in batch.members]
            assert sorted(i for p in parts for i in event_ids(p)) == sorted(event_ids(batch.payload))
            assert {n: v for p in parts for n, v in (p.get("user_attributes") or {}).items()} == (
                batch.payload.get("user_attributes") or {}
            )

    event("a group split over several batches" if any(len(g.batches) > 1 for g in groups) else "no group split")
    event("values superseded" if counts["user_attributes_superseded"] else "nothing superseded")
    assert counts["batches_before_coalescing"] == sum(len(parts) for parts in built.values())
    assert counts["batches_after_coalescing"] == len(batches)
    shared = {ref for b in batches if len(b.members) > 1 for ref, _ in b.members}
    assert counts["records_coalesced"] == len(shared)
    waiting = batches_per_record(batches)
    assert set(waiting) == set(built) and all(n >= 1 for n in waiting.values())

    # Deterministic: the same records in another order give the same batches, ids included.
    again = replays_of(*records, transform=transform)
    random.Random(7).shuffle(again)
    assert [b.body for b in sent_batches(run(again, salt)[0])] == [b.body for b in batches]


@pytest.mark.parametrize(
    "event",
    [
        {"data": {"timestamp_unixtime_ms": 1_763_600_000_000}},
        {"data": {"timestamp_unixtime_ms": True}},
        {"data": {"timestamp_unixtime_ms": "1763600000000"}},
        {"data": {"timestamp_unixtime_ms": 1.5}},
        {"data": {"timestamp_unixtime_ms": 2**70}},
        {"data": {}},
        {"data": None},
        {"data": [1, 2]},
        {"event_type": "custom_event"},
        [1],
        3,
    ],
)
def test_an_encoded_events_time_is_read_as_its_decoded_events(event):
    """The send stage orders events by the time it decodes from their JSON alone: the same as the time
    of the decoded event, for any shape an event may have."""
    from mparticle_backfill.coalesce import _encoded_event_time, event_time

    (encoded,) = msgspec.json.Decoder(list[msgspec.Raw]).decode(jsonio.dumps([event]))
    assert _encoded_event_time(encoded) == event_time(event)
    data = event.get("data") if isinstance(event, dict) else None
    ts = data.get("timestamp_unixtime_ms") if isinstance(data, dict) else None
    assert event_time(event) == (ts if type(ts) is int else None)  # an int, never a bool, string or float
