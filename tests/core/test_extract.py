"""Extract: reading quarantine objects (gzip or not), exact numbers, bad lines located, partitions."""

from __future__ import annotations

import gzip
import hashlib
import json
from datetime import date

import pytest

from mparticle_backfill import jsonio
from mparticle_backfill.extract import (
    CORRUPT_GZIP,
    INVALID_BLOCK_METADATA,
    INVALID_JSON,
    MAX_DEAD_LETTER_BYTES,
    NO_BLOCK_METADATA,
    NOT_AN_OBJECT,
    UNKNOWN_DTO_VERSION,
    iter_records,
)
from mparticle_backfill.model import BadRecord, QuarantineRecord
from mparticle_backfill.partition import PartitionLayout, upload_date_from_name
from tests.conftest import ndjson, real_record_dict, stream

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
        pytest.param(b'{"a": "\xff"}', INVALID_JSON, id="not-utf8-in-a-string"),
        pytest.param(b"[" * 5000, INVALID_JSON, id="nested-too-deep"),
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


# Kinesis Data Firehose: records concatenated without newlines, sometimes with whitespace or newlines
# between some, corrupt parts among them.


def firehose_record(name: str, **fields) -> bytes:
    """A real quarantine record as its own document, told apart by its batch_id."""
    record = real_record_dict()
    record.update({"batch_id": name, **fields})
    return jsonio.dumps(record)


A, B, C = (firehose_record(name) for name in "ABC")
TRUNCATED = A[: len(A) // 2]  # a record cut short: the next one starts right after it
NAN = b'{"batch_id": "N", "x": NaN, "context": {"data_plan": {"block_metadata": {"dto_version": 1}}}}'
QUOTES_AND_BRACES = (
    b'{"note": "a }{ b \\" {\\"context\\": {\\"data_plan\\": {}}} \\"}{\\"", "n": [1, {"k": "}{"}], "x": tru}'
)


def _read(data: bytes) -> tuple[list[tuple[str, int, int]], list[BadRecord]]:
    good, bad = [], []
    for item in iter_records(KEY, stream(data)):
        if isinstance(item, QuarantineRecord):
            good.append((item.identity, item.ref.line, item.ref.part))
        else:
            bad.append(item)
    return good, bad


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(A + B + C, [("A", 1, 1), ("B", 1, 2), ("C", 1, 3)], id="no-separator"),
        pytest.param(A + b" \t" + B + b"\r " + C, [("A", 1, 1), ("B", 1, 2), ("C", 1, 3)], id="whitespace"),
        pytest.param(A + B + b"\n" + C, [("A", 1, 1), ("B", 1, 2), ("C", 2, 0)], id="newline-between-some"),
        pytest.param(A + b"\r\n" + B + C + b"\n", [("A", 1, 0), ("B", 2, 1), ("C", 2, 2)], id="crlf"),
        pytest.param(gzip.compress(A + B + C), [("A", 1, 1), ("B", 1, 2), ("C", 1, 3)], id="gzip"),
        pytest.param(
            firehose_record("A", note='}{"x"}{ \\"') + B, [("A", 1, 1), ("B", 1, 2)], id="braces-quotes-in-strings"
        ),
    ],
)
def test_concatenated_records_are_each_read_once(data, expected):
    good, bad = _read(data)
    assert good == expected
    assert bad == []


@pytest.mark.parametrize(
    ("pieces", "expected"),
    [
        pytest.param([A, TRUNCATED, B, C], ["A", "B", "C"], id="truncated-in-the-middle"),
        pytest.param([TRUNCATED, A, B], ["A", "B"], id="truncated-at-the-start"),
        pytest.param([A, B, TRUNCATED], ["A", "B"], id="truncated-final-document"),
        pytest.param([A, NAN, B], ["A", "B"], id="nan-in-the-middle"),
        pytest.param([A, b" garbage\x00 ", B], ["A", "B"], id="garbage-between"),
        pytest.param([A, QUOTES_AND_BRACES, B], ["A", "B"], id="braces-and-escaped-quotes-in-strings"),
        pytest.param([A, b'{"a": "\xff\xfe"}', B], ["A", "B"], id="invalid-utf8-in-a-string"),
        pytest.param([A, b"[" * 3000, B], ["A", "B"], id="nested-too-deep"),
        pytest.param([A, A[:-1], B[:1], C], ["A", "C"], id="two-corrupt-parts-side-by-side-are-one"),
    ],
)
def test_a_corrupt_part_is_one_located_dead_letter_and_the_rest_is_read(pieces, expected):
    good, bad = _read(b"".join(pieces))
    assert [identity for identity, _, _ in good] == expected
    (letter,) = bad
    start = next(index for index, piece in enumerate(pieces) if piece not in (A, B, C))
    offset = sum(len(piece) for piece in pieces[:start]) + len(pieces[start]) - len(pieces[start].lstrip())
    corrupt = b"".join(piece for piece in pieces[start:] if piece not in (A, B, C)).strip()
    assert letter.reason == INVALID_JSON
    assert letter.ref.object_key == KEY and letter.ref.line == 1 and letter.ref.part == start + 1
    assert letter.detail.startswith(f"{len(corrupt)} bytes from byte {offset} of the object (line 1) are not JSON")
    assert letter.raw == corrupt.decode("utf-8", "replace")
    assert sorted([part for _, _, part in good] + [letter.ref.part]) == list(range(1, len(good) + 2))


def test_the_dead_letter_of_a_corrupt_part_says_where_it_fails():
    data = b"\n" + A + b'{"a": 1, "b": NaN}' + B + b"\n"
    (letter,) = _read(data)[1]
    where = 1 + len(A)
    assert (
        letter.detail
        == f"18 bytes from byte {where} of the object (line 2) are not JSON: invalid character near byte {where + 14}"
    )
    assert letter.raw == '{"a": 1, "b": NaN}'


def test_corrupt_part_of_a_gzip_object_is_located_after_gunzip():
    good, (letter,) = _read(gzip.compress(A + b"\n" + B + TRUNCATED + C))
    assert [identity for identity, _, _ in good] == ["A", "B", "C"]
    assert str(letter.ref) == f"{KEY}:2#2"
    assert letter.detail.startswith(
        f"{len(TRUNCATED)} bytes from byte {len(A) + 1 + len(B)} of the object after gunzip"
    )
    assert "truncated" in letter.detail


def test_a_huge_corrupt_part_keeps_64_kb_in_its_dead_letter():
    junk = b"#" + b"x" * 200_000
    good, (letter,) = _read(A + junk + B)
    assert [identity for identity, _, _ in good] == ["A", "B"]
    assert letter.raw == junk[:MAX_DEAD_LETTER_BYTES].decode()
    assert letter.detail.startswith(f"{len(junk)} bytes from byte {len(A)} ")
    assert letter.detail.endswith(f"; content is their first {MAX_DEAD_LETTER_BYTES:,} bytes")


def test_concatenated_records_keep_64_bit_ids_exact():
    big = firehose_record(
        "x", batch_id=2**63 - 1, mpid=-(2**63), events=[{"event_type": "custom_event", "data": {"event_id": 2**64 - 1}}]
    )
    records = [r for r in iter_records(KEY, stream(big + TRUNCATED + big)) if isinstance(r, QuarantineRecord)]
    assert len(records) == 2
    for record in records:
        assert record.identity == "9223372036854775807"
        assert record.batch["mpid"] == -(2**63) and type(record.batch["mpid"]) is int
        assert record.batch["events"][0]["data"]["event_id"] == 2**64 - 1


def test_identity_without_batch_id_is_the_same_as_before_for_concatenated_records():
    """Ledger keys of records replayed by earlier versions must still match."""
    record = real_record_dict()
    del record["batch_id"]
    written = json.dumps(record).encode()  # with spaces: not the compact encoding
    first, second = iter_records(KEY, stream(written + written))
    expected = "sha256:" + hashlib.sha256(jsonio.dumps(record)).hexdigest()[:32]
    assert first.identity == second.identity == expected


def test_a_record_that_is_not_valid_after_a_corrupt_part_is_still_its_own_dead_letter():
    """A resynchronisation finds records by their shape; a record with bad block metadata is still one."""
    bad_metadata = firehose_record("M", context={"data_plan": {"block_metadata": {"dto_version": 2}}})
    good, bad = _read(A + TRUNCATED + bad_metadata + B)
    assert [identity for identity, _, _ in good] == ["A", "B"]
    assert [letter.reason for letter in bad] == [INVALID_JSON, UNKNOWN_DTO_VERSION]
