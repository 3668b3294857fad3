"""Extract: reading quarantine objects (gzip or not), exact numbers, bad lines located, partitions."""

from __future__ import annotations

import gzip
from datetime import date

import pytest

from mparticle_backfill import jsonio
from mparticle_backfill.extract import (
    CORRUPT_GZIP,
    INVALID_BLOCK_METADATA,
    INVALID_JSON,
    NO_BLOCK_METADATA,
    NOT_AN_OBJECT,
    UNKNOWN_DTO_VERSION,
    iter_records,
)
from mparticle_backfill.model import BadRecord, QuarantineRecord
from mparticle_backfill.partition import PartitionLayout, upload_date_from_name
from tests.conftest import ndjson, stream

KEY = "quarantine/2020-09-11/mPTravel_20200911021606900000_12345.txt"


def test_real_record_parses_with_exact_64_bit_ids(real_record):
    (record,) = iter_records(KEY, stream(ndjson(real_record)))
    assert isinstance(record, QuarantineRecord)
    assert record.identity == "-5158959812941698317"
    assert record.block.blocked_event_ids == {"-7778608565459706417", "-387480379075294677"}
    assert record.block.blocked_event_attributes == {"8561854144327985348": ("./data/custom_attributes/testAttr1",)}
    assert record.ref.object_key == KEY and record.ref.line == 1


def test_big_integers_stay_integers_not_floats():
    record = {
        "batch_id": 9223372036854775807,
        "mpid": -9223372036854775808,
        "events": [{"event_type": "custom_event", "data": {"event_id": 18446744073709551615}}],
        "context": {"data_plan": {"block_metadata": {"dto_version": 1, "blocked_event_ids": [18446744073709551615]}}},
    }
    (parsed,) = iter_records(KEY, stream(ndjson(record)))
    assert parsed.batch["mpid"] == -9223372036854775808 and type(parsed.batch["mpid"]) is int
    assert parsed.batch["events"][0]["data"]["event_id"] == 18446744073709551615
    assert parsed.block.blocked_event_ids == {"18446744073709551615"}
    assert parsed.identity == "9223372036854775807"


def test_gzip_is_detected_by_magic_bytes_not_suffix(real_record):
    records = list(iter_records(KEY, stream(gzip.compress(ndjson(real_record, real_record)))))
    assert [type(r) for r in records] == [QuarantineRecord, QuarantineRecord]
    assert [r.ref.line for r in records] == [1, 2]


def test_blank_lines_skipped_and_line_numbers_kept(real_record):
    data = b"\n" + ndjson(real_record) + b"   \n\n" + ndjson(real_record)
    assert [r.ref.line for r in iter_records(KEY, stream(data))] == [2, 5]


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        pytest.param(b'{"events": [', INVALID_JSON, id="truncated-json"),
        pytest.param(b"\xff\xfe not utf8", INVALID_JSON, id="not-utf8"),
        pytest.param(b'{"a": NaN}', INVALID_JSON, id="nan"),
        pytest.param(b"[1, 2]", NOT_AN_OBJECT, id="array"),
        pytest.param(b'"text"', NOT_AN_OBJECT, id="string"),
        pytest.param(b'{"events": []}', NO_BLOCK_METADATA, id="no-metadata"),
        pytest.param(
            b'{"context": {"data_plan": {"block_metadata": {"dto_version": 2}}}}', UNKNOWN_DTO_VERSION, id="dto-2"
        ),
        pytest.param(
            b'{"context": {"data_plan": {"block_metadata": {"dto_version": 1, "blocked_event_ids": "x"}}}}',
            INVALID_BLOCK_METADATA,
            id="ids-not-list",
        ),
    ],
)
def test_bad_lines_are_located_and_kept(real_record, line, reason):
    records = list(iter_records(KEY, stream(ndjson(real_record) + line + b"\n" + ndjson(real_record))))
    assert [type(r).__name__ for r in records] == ["QuarantineRecord", "BadRecord", "QuarantineRecord"]
    bad = records[1]
    assert bad.reason == reason
    assert str(bad.ref) == f"{KEY}:2"
    assert bad.raw == line.decode("utf-8", "replace")


def test_truncated_gzip_yields_a_located_bad_record_after_good_lines(real_record):
    data = gzip.compress(ndjson(*[real_record] * 50))
    records = list(iter_records(KEY, stream(data[: len(data) - 40])))
    assert isinstance(records[-1], BadRecord) and records[-1].reason == CORRUPT_GZIP
    assert "truncated" in records[-1].detail
    assert all(isinstance(r, QuarantineRecord) for r in records[:-1])


def test_corrupt_gzip_never_raises():
    data = b"\x1f\x8b\x08\x00" + b"garbage" * 20
    (bad,) = list(iter_records(KEY, stream(data)))
    assert bad.reason == CORRUPT_GZIP


def test_concatenated_json_without_newlines_yields_each_record(real_record):
    """Kinesis Firehose concatenates records without newlines: none may be lost."""
    line = ndjson(real_record).strip() * 3
    records = list(iter_records(KEY, stream(line)))
    assert [r.ref.part for r in records] == [1, 2, 3]
    assert all(isinstance(r, QuarantineRecord) for r in records)


def test_verification_objects_are_skipped():
    assert list(iter_records("q/mParticle_Bucket_Verification_20201010-101010.txt", stream(b"{}\n"))) == []


def test_upload_date_from_name():
    assert upload_date_from_name("x/mPTravel_20171017170911644493_34523.txt") == date(2017, 10, 17)
    assert upload_date_from_name("x/My_App_Name_20171017170911644493_34523.txt") == date(2017, 10, 17)
    assert upload_date_from_name("x/notes.txt") is None
    assert upload_date_from_name("x/App_20171317170911644493_34523.txt") is None


DAY = date(2026, 11, 20)


@pytest.mark.parametrize(
    ("layout", "key", "belongs"),
    [
        pytest.param(PartitionLayout("q"), "q/2026-11-20/App_20261120101010000000_00001.txt", True, id="dated"),
        pytest.param(PartitionLayout("q"), "q/2026-11-21/App_20261120101010000000_00001.txt", False, id="other-day"),
        pytest.param(PartitionLayout("q"), "q/2026-11-20/", False, id="folder-marker"),
        pytest.param(
            PartitionLayout("q"), "q/2026-11-20/mParticle_Bucket_Verification_20261120-101010.txt", False, id="verify"
        ),
        pytest.param(PartitionLayout(""), "2026-11-20/App_20261120101010000000_00001.txt", True, id="bucket-root"),
        pytest.param(PartitionLayout("q", layout="flat"), "q/App_20261120235959999999_00001.txt", True, id="by-name"),
        pytest.param(
            PartitionLayout("q", layout="flat"), "q/App_20261121000000000000_00001.txt", False, id="by-name-next"
        ),
        pytest.param(
            PartitionLayout("q", layout="flat", state_prefix="q/_backfill"),
            "q/_backfill/App_20261120101010000000_00001.txt",
            False,
            id="state-never-listed",
        ),
        pytest.param(
            PartitionLayout("", layout="flat", state_prefix="_backfill"),
            "_backfill/2026-11-20/ledger/part.txt",
            False,
            id="state-at-root",
        ),
        pytest.param(
            PartitionLayout("fh", layout="firehose_hourly"),
            "fh/2026/11/20/23/quarantine-stream-1-2026-11-20-23-59-59-0c9f.gz",
            True,
            id="firehose-hour",
        ),
        pytest.param(
            PartitionLayout("fh", layout="firehose_hourly"),
            "fh/2026/11/21/00/quarantine-stream-1-2026-11-21-00-00-01-0c9f",
            False,
            id="firehose-next-day",
        ),
        pytest.param(
            PartitionLayout("fh", layout="firehose_hourly"), "fh/2026/11/20/24/x", False, id="firehose-no-hour-24"
        ),
        pytest.param(
            PartitionLayout("fh", layout="firehose_hourly"), "fh/2026/11/20/notes.txt", False, id="firehose-no-hour"
        ),
    ],
)
def test_partition_membership(layout, key, belongs):
    assert layout.belongs(key, DAY) is belongs


def test_listing_prefix():
    assert PartitionLayout("q/").listing_prefix(DAY) == "q/2026-11-20/"
    assert PartitionLayout("", layout="flat").listing_prefix(DAY) == ""
    assert PartitionLayout("fh", layout="firehose_hourly").listing_prefix(DAY) == "fh/2026/11/20/"
    with pytest.raises(ValueError, match="layout must be one of"):
        PartitionLayout("q", layout="hourly")


def _metadata_line(metadata: dict) -> bytes:
    return jsonio.dumps({"mpid": "1", "context": {"data_plan": {"block_metadata": {"dto_version": 1, **metadata}}}})


@pytest.mark.parametrize(
    ("metadata", "detail"),
    [
        ({"blocked_event_ids": ""}, "blocked_event_ids is not a list"),
        ({"blocked_event_ids": {}}, "blocked_event_ids is not a list"),
        ({"blocked_event_ids": ["1", 2.5]}, "blocked_event_ids holds a value that is not a string or integer"),
        ({"blocked_event_ids": ["1", "  "]}, "blocked_event_ids holds an empty id"),
        ({"blocked_user_attributes": [None]}, "blocked_user_attributes holds a value that is not a string or integer"),
        ({"blocked_event_attributes": {"a": 1}}, "blocked_event_attributes is not a list"),
        ({"blocked_event_attributes": [{"event_id": "1"}]}, "blocked_event_attributes[0] without an event_id"),
        ({"dto_version": True}, "dto_version True is not one of [1]"),
    ],
)
def test_malformed_block_metadata_is_refused_with_the_field_named(metadata, detail):
    (bad,) = iter_records(KEY, stream(_metadata_line(metadata) + b"\n"))
    assert isinstance(bad, BadRecord), bad
    assert bad.reason in (INVALID_BLOCK_METADATA, UNKNOWN_DTO_VERSION)
    assert bad.detail.startswith(detail)


def test_block_metadata_ids_normalised_and_names_kept_exactly():
    line = _metadata_line(
        {
            "blocked_event_ids": [" 7 ", 8, "-9"],
            "blocked_event_attributes": [
                {"event_id": 10, "event_attributes": ["./data/custom_attributes/a"]},
                {"event_id": "10", "event_attributes": ["./data/custom_attributes/b"]},
            ],
            "blocked_user_attributes": [" tier", "$gender"],
            "blocked_user_identities": None,
        }
    )
    (record,) = iter_records(KEY, stream(line + b"\n"))
    assert isinstance(record, QuarantineRecord)
    assert record.block.blocked_event_ids == {"7", "8", "-9"}
    assert record.block.blocked_event_attributes == {"10": ("./data/custom_attributes/a", "./data/custom_attributes/b")}
    assert record.block.blocked_user_attributes == (" tier", "$gender")  # a name is not an id: never trimmed
    assert record.block.blocked_user_identities == ()


def test_plain_object_starting_with_the_gzip_magic_bytes_is_read_as_lines(real_record):
    """Found by the property test: two junk bytes must not make a plain object unreadable."""
    records = list(iter_records(KEY, stream(b"\x1f\x8b\n" + ndjson(real_record))))
    assert [type(r).__name__ for r in records] == ["BadRecord", "QuarantineRecord"]
    assert records[0].reason == INVALID_JSON and records[1].ref.line == 2
