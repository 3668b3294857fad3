"""Exact values: 64-bit ids and times as the API wants them, and the source_request_id layout."""

from __future__ import annotations

import copy
import uuid

from hypothesis import given
from hypothesis import strategies as st

from mparticle_backfill import jsonio, limits
from mparticle_backfill.transform import _request_id, source_request_id
from mparticle_backfill.values import api_event, exact_int, id_string


def test_exact_int_reads_ints_decimal_strings_and_exact_floats_only():
    assert exact_int(-9223372036854775808) == -9223372036854775808
    assert exact_int("18446744073709551615") == 18446744073709551615
    assert exact_int(" -12 ") == -12
    assert exact_int(1_599_790_566_900.0) == 1_599_790_566_900
    assert exact_int(2.0**60) is None  # a float this big is not an exact integer
    assert exact_int(1.5) is None
    for value in (None, True, "", "12a", "1e3", [], {}):
        assert exact_int(value) is None


def test_id_string_keeps_ids_exact():
    assert id_string(-7778608565459706417) == "-7778608565459706417"
    assert id_string(" 42 ") == "42"
    assert id_string("") is None and id_string(True) is None and id_string(1.0) is None


def test_api_event_converts_64_bit_fields_on_a_copy():
    event = {
        "event_type": "custom_event",
        "data": {
            "event_name": "checkout",
            "custom_event_type": "transaction",
            "event_id": "-7778608565459706417",
            "timestamp_unixtime_ms": "1599790566900",
            "session_id": "not a number",
            "custom_attributes": {"event_id": "123"},
        },
    }
    original = copy.deepcopy(event)
    sent = api_event(event)
    assert event == original  # the record as read is never changed
    assert sent["data"]["event_id"] == -7778608565459706417
    assert sent["data"]["timestamp_unixtime_ms"] == 1599790566900
    assert sent["data"]["session_id"] == "not a number"  # left for validation to refuse, by name
    assert sent["data"]["custom_attributes"] == {"event_id": "123"}  # customer data is not touched
    assert limits.event_problem(sent) == "data.session_id is not an integer"


@given(st.binary(min_size=0, max_size=200), st.text(max_size=20), st.text(max_size=5))
def test_request_id_is_a_version_5_uuid_of_the_sha256(content, identity, salt):
    import hashlib

    digest = bytearray(hashlib.sha256(identity.encode() + b"\0" + salt.encode() + b"\0" + content).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # RFC 4122: version 5 in the high nibble of byte 6
    digest[8] = (digest[8] & 0x3F) | 0x80  # and the variant bits 10 in byte 8
    text = digest.hex()
    expected = f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"
    request_id = _request_id(identity, salt, content)
    assert request_id == expected
    assert uuid.UUID(request_id).version == 5 and request_id[14] == "5"


def test_unhashable_or_odd_event_fields_are_refused_not_crashed():
    assert limits.event_problem({"event_type": ["custom_event"], "data": {}}).startswith("unknown event_type")
    problem = limits.event_problem(
        {"event_type": "custom_event", "data": {"event_name": "x", "custom_event_type": ["other"]}}
    )
    assert problem.startswith("custom_event_type ['other'] is not one of")
    assert limits.event_problem({"event_type": "opt_out", "data": {"is_opted_out": False}}) is None


def test_body_is_the_payload_with_its_request_id(real_record):
    from tests.core.test_replay_stages import replay_of

    (batch,) = replay_of(real_record)[0].batches
    assert jsonio.loads(batch.body) == batch.payload
    assert batch.size == len(batch.body)
    assert batch.payload["source_request_id"] == source_request_id(
        real_record["batch_id"], {k: v for k, v in batch.payload.items() if k != "source_request_id"}
    )
