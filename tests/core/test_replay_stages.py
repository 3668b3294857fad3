"""Select, filter by age, transform, dedupe and pack, on the real quarantine record and variants."""

from __future__ import annotations

import copy
import json
from collections import Counter
from datetime import datetime, timezone

import pytest

from mparticle_backfill import jsonio, limits
from mparticle_backfill.dedupe_check import DUPLICATE_IN_PARTITION, IN_LEDGER, DedupeCheck
from mparticle_backfill.errors import InvalidSettings
from mparticle_backfill.extract import iter_records
from mparticle_backfill.filter_by_age import AgeWindow, filter_by_age
from mparticle_backfill.model import ALREADY_REPLAYED, DEAD_LETTERED, NOTHING_TO_REPLAY, TOO_OLD, RecordRef
from mparticle_backfill.select import SelectionSettings, select
from mparticle_backfill.send import OutgoingBatch, pack
from mparticle_backfill.transform import (
    EVENT_TOO_LARGE,
    INVALID_EVENT,
    NO_RESOLVABLE_IDENTITY,
    OMIT,
    TransformSettings,
    transform,
)
from tests.conftest import REAL_RECORD_TIME_MS, ndjson, stream

BLOCKED = ["-7778608565459706417", "-387480379075294677"]
ALLOWED = "8561854144327985348"
CUTOFF_BEFORE_RECORD = REAL_RECORD_TIME_MS - 1000


def replay_of(record, selection=None, cutoff=CUTOFF_BEFORE_RECORD, settings=None):
    selection = selection or SelectionSettings()
    settings = settings or TransformSettings()
    (quarantine_record,) = iter_records("k.txt", stream(ndjson(record)))
    counts: Counter[str] = Counter()
    dead: list = []
    replay = select(quarantine_record, selection, counts)
    filter_by_age(replay, cutoff, counts)
    transform(replay, settings, counts, dead.append)
    return replay, counts, dead


def sent_event_ids(replay):
    return [e["data"]["event_id"] for b in replay.batches for e in b.payload["events"]]


def test_real_record_replays_the_two_blocked_events_only(real_record):
    replay, counts, dead = replay_of(real_record)
    assert dead == []
    assert len(replay.batches) == 1
    assert sent_event_ids(replay) == [int(i) for i in BLOCKED]
    assert counts["events_blocked"] == 2 and counts["events_with_blocked_attributes"] == 1


def test_real_record_batch_is_clean_and_exact(real_record):
    (batch,) = replay_of(real_record)[0].batches
    payload = batch.payload
    for removed in ("batch_id", "timestamp_unixtime_ms", "source_info", "deleted_user_attributes", "ip"):
        assert removed not in payload
    assert payload["context"] == {"data_plan": {"plan_id": "main_block", "plan_version": 1}}
    assert payload["user_identities"] == real_record["user_identities"]  # customer_id, phones: every one kept
    assert payload["device_info"] == real_record["device_info"]
    assert payload["environment"] == "development"
    assert payload["user_attributes"] == {"$gender": "M"}  # only the blocked one, not $age
    for event in payload["events"]:
        assert event["data"]["timestamp_unixtime_ms"] == REAL_RECORD_TIME_MS
        assert type(event["data"]["timestamp_unixtime_ms"]) is int
    encoded = jsonio.dumps(payload)
    assert b"-7778608565459706417" in encoded and b"e+" not in encoded
    assert len(encoded) == batch.size
    assert limits.batch_problem(payload) is None


def test_user_attribute_replay_can_be_turned_off(real_record):
    selection = SelectionSettings(replay_blocked_user_attributes=False)
    (batch,) = replay_of(real_record, selection)[0].batches
    assert "user_attributes" not in batch.payload


def test_allowed_event_with_blocked_attribute_only_when_asked(real_record):
    selection = SelectionSettings(replay_blocked_event_attributes=True)
    replay, counts, _ = replay_of(real_record, selection)
    assert sent_event_ids(replay) == [int(i) for i in [*BLOCKED, ALLOWED]]
    assert counts["event_attributes_restored"] == 1
    assert replay.batches[0].payload["events"][2]["data"]["custom_attributes"] == {"testAttr1": "value"}


def test_replay_keys_are_batch_plus_event_and_user_attributes_marker(real_record):
    (batch,) = replay_of(real_record)[0].batches
    assert batch.replay_keys == (
        "-5158959812941698317:-7778608565459706417",
        "-5158959812941698317:-387480379075294677",
        "-5158959812941698317:user_attributes",
    )


def test_source_request_id_is_deterministic_and_content_bound(real_record):
    first = replay_of(real_record)[0].batches[0].payload["source_request_id"]
    again = replay_of(copy.deepcopy(real_record))[0].batches[0].payload["source_request_id"]
    salted = replay_of(real_record, settings=TransformSettings(request_id_salt="force-1"))[0]
    other = replay_of(real_record, settings=TransformSettings(environment="production"))[0]
    assert first == again
    assert salted.batches[0].payload["source_request_id"] != first
    assert other.batches[0].payload["source_request_id"] != first


def test_nothing_to_replay_is_counted_not_sent(real_record):
    real_record["context"]["data_plan"]["block_metadata"].update(
        blocked_event_ids=[], blocked_event_attributes=[], blocked_user_attributes=[]
    )
    replay, _, _ = replay_of(real_record)
    assert replay.empty and replay.outcome() == (NOTHING_TO_REPLAY, "only_identities_blocked")


def test_everything_too_old(real_record):
    replay, counts, _ = replay_of(real_record, cutoff=REAL_RECORD_TIME_MS + 1)
    assert replay.empty and replay.outcome()[0] == TOO_OLD
    assert counts["events_too_old"] == 2 and counts["user_attributes_too_old"] == 1


def test_event_without_timestamp_takes_the_batch_timestamp(real_record):
    del real_record["events"][0]["data"]["timestamp_unixtime_ms"]
    replay, counts, _ = replay_of(real_record)
    assert counts["events_without_timestamp"] == 1
    assert replay.batches[0].payload["events"][0]["data"]["timestamp_unixtime_ms"] == REAL_RECORD_TIME_MS


def test_event_without_any_timestamp_is_not_replayed(real_record):
    del real_record["events"][0]["data"]["timestamp_unixtime_ms"]
    del real_record["timestamp_unixtime_ms"]
    replay, _, _ = replay_of(real_record)
    assert sent_event_ids(replay) == [int(BLOCKED[1])]
    assert ("too_old", "no_timestamp") in replay.trail
    assert "user_attributes" in replay.batches[0].payload  # aged by the newest replayed event


@pytest.mark.parametrize(
    ("days", "ok"),
    [
        pytest.param(0, False, id="0"),
        pytest.param(1, True, id="1"),
        pytest.param(30, True, id="30"),
        pytest.param(31, False, id="31"),
        pytest.param(True, False, id="bool"),
    ],
)
def test_age_window_bounds(days, ok):
    if ok:
        AgeWindow(days, datetime(2026, 11, 20, tzinfo=timezone.utc))
    else:
        with pytest.raises(InvalidSettings, match="max_age_days"):
            AgeWindow(days)


def test_age_window_cutoff():
    window = AgeWindow(14, datetime(2026, 11, 20, 6, tzinfo=timezone.utc))
    assert window.cutoff_ms == int(datetime(2026, 11, 6, 6, tzinfo=timezone.utc).timestamp() * 1000)


def test_no_mpid_and_only_blocked_identities_is_dead_lettered(real_record):
    real_record["user_identities"] = {"customer_id": "1234"}  # blocked in this record, no mpid either
    replay, _, dead = replay_of(real_record)
    assert replay.empty and replay.outcome() == (DEAD_LETTERED, NO_RESOLVABLE_IDENTITY)
    assert dead[0].reason == NO_RESOLVABLE_IDENTITY and dead[0].content["batch_id"] == "-5158959812941698317"
    # The dead letter holds the batch with the events that would have been replayed, ids exact.
    assert [e["data"]["event_id"] for e in dead[0].content["events"]] == [int(i) for i in BLOCKED]


def test_the_batch_travels_without_its_events(real_record):
    """Stage files carry each selected event once, not the whole original batch again."""
    (quarantine_record,) = iter_records("k.txt", stream(ndjson(real_record)))
    replay = select(quarantine_record, SelectionSettings(), Counter())
    assert "events" not in replay.batch and len(replay.events) == 2
    assert "events" in quarantine_record.batch  # the record as read is left whole


@pytest.mark.parametrize("mpid", ["abc", "0", 1.5e18, True, ""])
def test_an_mpid_that_cannot_be_sent_does_not_resolve_the_user(real_record, mpid):
    """Only an mpid the replay will carry counts; else the (blocked-only) identities decide."""
    real_record["user_identities"] = {"customer_id": "1234"}  # blocked in this record
    real_record["mpid"] = mpid
    replay, _, dead = replay_of(real_record)
    assert replay.outcome() == (DEAD_LETTERED, NO_RESOLVABLE_IDENTITY) and dead[0].reason == NO_RESOLVABLE_IDENTITY


def test_email_not_blocked_resolves_the_user(real_record):
    # The real record has no mpid, but email was not blocked: it names the user.
    assert "mpid" not in real_record
    assert replay_of(real_record)[0].batches


def test_blocked_identities_can_be_left_out(real_record):
    (batch,) = replay_of(real_record, settings=TransformSettings(include_blocked_identities=False))[0].batches
    assert batch.payload["user_identities"] == {"email": "helpers@mparticle.com"}
    assert "ios_advertising_id" not in batch.payload["device_info"]


def test_plan_version_omitted_or_replaced(real_record):
    omitted = replay_of(real_record, settings=TransformSettings(plan_version=OMIT))[0].batches[0]
    replaced = replay_of(real_record, settings=TransformSettings(plan_version=7))[0].batches[0]
    assert omitted.payload["context"] == {"data_plan": {"plan_id": "main_block"}}
    assert replaced.payload["context"]["data_plan"]["plan_version"] == 7
    with pytest.raises(InvalidSettings, match="plan_version"):
        TransformSettings(plan_version="latest")


def test_invalid_event_is_dead_lettered_alone(real_record):
    del real_record["events"][0]["data"]["event_name"]
    replay, counts, dead = replay_of(real_record)
    assert sent_event_ids(replay) == [int(BLOCKED[1])]
    assert dead[0].reason == INVALID_EVENT and "event_name" in dead[0].detail
    assert counts[f"events_dead_lettered:{INVALID_EVENT}"] == 1


def test_too_many_event_attributes_dead_lettered(real_record):
    real_record["events"][0]["data"]["custom_attributes"] = {f"a{i}": "v" for i in range(101)}
    _, _, dead = replay_of(real_record)
    assert dead[0].reason == INVALID_EVENT and "more than 100" in dead[0].detail


def test_large_record_splits_into_valid_batches_of_the_same_user(real_record):
    template = real_record["events"][0]
    events = []
    for i in range(120):
        event = copy.deepcopy(template)
        event["data"]["event_id"] = str(1000 + i)
        event["data"]["custom_attributes"] = {f"a{j}": "x" * 40 for j in range(25)}
        events.append(event)
    real_record["events"] = events
    real_record["context"]["data_plan"]["block_metadata"]["blocked_event_ids"] = [str(1000 + i) for i in range(120)]
    real_record["user_attributes"] = {f"u{i}": "v" for i in range(150)}
    real_record["context"]["data_plan"]["block_metadata"]["blocked_user_attributes"] = [f"u{i}" for i in range(150)]
    replay, counts, dead = replay_of(real_record)
    assert dead == []
    assert len(replay.batches) >= 3 and counts["records_split"] == 1
    assert sorted(sent_event_ids(replay)) == list(range(1000, 1120))
    restored = {}
    for batch in replay.batches:
        assert batch.size <= limits.MAX_BATCH_BYTES
        assert len(batch.payload.get("user_attributes", {})) <= limits.MAX_USER_ATTRIBUTES
        assert batch.payload["user_identities"] == real_record["user_identities"]
        assert limits.batch_problem(batch.payload) is None
        restored.update(batch.payload.get("user_attributes", {}))
    assert len(restored) == 150
    assert len({b.payload["source_request_id"] for b in replay.batches}) == len(replay.batches)


def test_event_larger_than_a_batch_is_dead_lettered(real_record):
    real_record["events"][0]["data"]["custom_attributes"] = {f"a{i}": "x" * 4000 for i in range(40)}
    replay, _, dead = replay_of(real_record)
    assert [d.reason for d in dead] == [EVENT_TOO_LARGE]
    assert sent_event_ids(replay) == [int(BLOCKED[1])]


def test_dedupe_drops_ledger_keys_and_partition_duplicates(real_record):
    first, _, _ = replay_of(real_record)
    ledger = {"-5158959812941698317:-7778608565459706417"}
    check = DedupeCheck(ledger)
    counts: Counter[str] = Counter()
    check.check(first, counts)
    (batch,) = first.batches
    assert [e["data"]["event_id"] for e in batch.payload["events"]] == [int(BLOCKED[1])]
    assert batch.replay_keys == ("-5158959812941698317:-387480379075294677", "-5158959812941698317:user_attributes")
    assert batch.payload["user_attributes"] == {"$gender": "M"}
    assert (ALREADY_REPLAYED, IN_LEDGER) in first.trail
    duplicate, _, _ = replay_of(real_record)
    check.check(duplicate, counts)
    assert duplicate.empty and duplicate.outcome() == (ALREADY_REPLAYED, DUPLICATE_IN_PARTITION)


def test_dedupe_everything_in_ledger(real_record):
    replay, _, _ = replay_of(real_record)
    DedupeCheck(replay.batches[0].replay_keys).check(replay, Counter())
    assert replay.empty and replay.outcome() == (ALREADY_REPLAYED, IN_LEDGER)


def test_force_ignores_the_ledger(real_record):
    replay, _, _ = replay_of(real_record)
    DedupeCheck(replay.batches[0].replay_keys, force=True).check(replay, Counter())
    assert len(replay.batches) == 1


def test_pack_respects_count_and_size_limits(real_record):
    replay, _, _ = replay_of(real_record)
    (batch,) = replay.batches
    ref = RecordRef("k", 1)
    requests = list(pack([OutgoingBatch.of(ref, batch)] * 250))
    assert [len(r.batches) for r in requests] == [100, 100, 50]
    for request in requests:
        assert len(json.loads(request.body)) == len(request.batches)
        assert len(request.body) == request.size <= limits.MAX_REQUEST_BYTES
    small = list(pack([OutgoingBatch.of(ref, batch)] * 10, max_bytes=batch.size * 3 + 4))
    assert [len(r.batches) for r in small] == [3, 3, 3, 1]


def test_filter_on_frames_keeps_and_counts_exactly_what_filter_on_replays_does(real_record):
    from mparticle_backfill.accounting import Summary
    from mparticle_backfill.filter_by_age import filter_frames, filter_replays
    from mparticle_backfill.stage_codec import decode_frame, encode_replay, frame_ages

    cutoff = CUTOFF_BEFORE_RECORD

    def variant(number, change=None):
        record = copy.deepcopy(real_record)
        record["batch_id"] = number
        if change:
            change(record)
        (quarantine_record,) = iter_records("k.txt", stream(ndjson(record)))
        return select(quarantine_record, SelectionSettings(), Counter())

    def set_times(*values):
        def change(record):
            for event, value in zip(record["events"], values, strict=False):
                if value == "drop":
                    event["data"].pop("timestamp_unixtime_ms", None)
                else:
                    event["data"]["timestamp_unixtime_ms"] = value

        return change

    def data_not_a_map(replay):
        replay.events[0].event = {**replay.events[0].event, "data": "not a map"}
        return replay

    def emptied(replay, events=True, attributes=True):
        if events:
            replay.events = []
        if attributes:
            replay.user_attributes = {}
        return replay

    def replays():
        old = cutoff - 10_000
        return [
            variant(1),  # inside the window: kept whole
            variant(2, set_times(old, old, old)),  # every event too old
            variant(3, set_times(REAL_RECORD_TIME_MS, old, REAL_RECORD_TIME_MS)),  # one too old
            variant(4, set_times("drop", "drop", "drop")),  # events take the batch's time
            variant(5, lambda r: (set_times("drop", "drop", "drop")(r), r.pop("timestamp_unixtime_ms"))),
            variant(6, set_times(True, True, True)),  # a bool is not a time
            data_not_a_map(variant(7)),
            variant(8, lambda r: r.__setitem__("timestamp_unixtime_ms", str(old))),  # attributes too old
            variant(9, lambda r: r.__setitem__("custom_big", 2**70)),  # a JSON frame
            emptied(variant(10)),  # nothing selected
            emptied(variant(11), attributes=False),  # user attributes alone, inside the window: kept whole
        ]

    frames = [encode_replay(replay) for replay in replays()]
    assert frame_ages(frames[8]) is None and frame_ages(frames[6]) is None  # decoded whole
    expected_summary, summary = Summary(), Summary()
    expected = [r.to_json() for r in filter_replays(replays(), cutoff, expected_summary)]
    out = list(filter_frames(frames, cutoff, summary))
    assert [decode_frame(frame).to_json() for frame in out] == expected
    assert summary.to_json() == expected_summary.to_json()
    assert summary.counts["events_too_old"] and summary.counts["events_without_timestamp"]
    assert summary.accounted >= 1  # a record ended here (every part too old, or nothing selected)
    passed_whole = [index for index, frame in enumerate(frames) if any(frame is kept for kept in out)]
    assert passed_whole == [0, 10]  # undecoded, as they were read
