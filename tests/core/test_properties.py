"""Properties: no input line crashes the reader, and the counts always reconcile."""

from __future__ import annotations

import gzip
import io
import json
import random
import re

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mparticle_backfill.dedupe_check import DedupeCheck
from mparticle_backfill.extract import CORRUPT_GZIP, GZIP_MAGIC, INVALID_JSON, iter_records
from mparticle_backfill.model import BadRecord, QuarantineRecord
from mparticle_backfill.select import SelectionSettings
from mparticle_backfill.transform import TransformSettings
from tests.conftest import REAL_RECORD_TIME_MS, real_record_dict
from tools import synthetic
from tools.one_process import run_in_one_process, run_staged

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)


def mutated_record(draw_value, path_choice):
    """The real record with one value somewhere replaced by anything."""
    record = real_record_dict()
    node = record
    keys = path_choice
    for key in keys[:-1]:
        node = node[key] if isinstance(node, dict) and key in node else node
    if isinstance(node, dict):
        node[keys[-1]] = draw_value
    return record


PATHS = [
    ("events",),
    ("context",),
    ("context", "data_plan"),
    ("context", "data_plan", "block_metadata"),
    ("context", "data_plan", "block_metadata", "blocked_event_ids"),
    ("context", "data_plan", "block_metadata", "blocked_event_attributes"),
    ("context", "data_plan", "block_metadata", "dto_version"),
    ("user_identities",),
    ("mpid",),
    ("user_attributes",),
    ("timestamp_unixtime_ms",),
    ("batch_id",),
    ("environment",),
]


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()), max_size=8))
def test_reader_never_crashes_on_arbitrary_lines(lines):
    data = b"\n".join(line.replace(b"\n", b" ") for line in lines)
    for item in iter_records("k.txt", io.BytesIO(data)):
        assert isinstance(item, (QuarantineRecord, BadRecord))


@settings(max_examples=100)
@given(st.binary(max_size=300))
def test_reader_never_crashes_on_arbitrary_gzip_bytes(tail):
    for item in iter_records("k.txt", io.BytesIO(b"\x1f\x8b" + tail)):
        assert isinstance(item, (QuarantineRecord, BadRecord))


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    values=st.lists(st.tuples(json_values, st.sampled_from(PATHS)), max_size=6),
    duplicates=st.integers(0, 2),
    junk=st.lists(st.binary(max_size=50), max_size=3),
    options=st.tuples(st.booleans(), st.booleans(), st.booleans(), st.booleans()),
    cutoff_shift=st.integers(-(10**6), 10**6),
    compress=st.booleans(),
)
def test_counts_always_reconcile(values, duplicates, junk, options, cutoff_shift, compress):
    records = [mutated_record(value, path) for value, path in values] + [real_record_dict()] * duplicates
    lines = [json.dumps(r).encode() for r in records] + [j.replace(b"\n", b"") for j in junk]
    random.Random(len(lines)).shuffle(lines)
    body = b"\n".join(lines)
    if compress:
        body = gzip.compress(body)
    dead = []
    summary = run_in_one_process(
        [("q/2020-09-11/App_20200911000000000000_00001.txt", io.BytesIO(body))],
        selection=SelectionSettings(*options[:3]),
        cutoff_ms=REAL_RECORD_TIME_MS + cutoff_shift,
        transform_settings=TransformSettings(include_blocked_identities=options[3]),
        dedupe=DedupeCheck(),
        dead_letter=dead.append,
    )
    assert summary.reconciles(), summary.render()
    # Every non-blank line is at least one record (concatenated JSON gives more). Not when the object
    # is gzip, or begins with gzip's magic bytes and method (then it is read as gzip, and if it is not,
    # the whole object is one located corrupt_gzip dead letter).
    if not compress and not body.startswith(GZIP_MAGIC):
        assert summary.records_read >= sum(1 for line in lines if line.strip())
    elif body.startswith(GZIP_MAGIC) and not compress:
        assert any(letter.reason == CORRUPT_GZIP for letter in dead)


@settings(max_examples=120, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    values=st.lists(st.tuples(json_values, st.sampled_from(PATHS)), max_size=6),
    duplicates=st.integers(0, 3),
    junk=st.lists(st.binary(max_size=50), max_size=3),
    options=st.tuples(st.booleans(), st.booleans(), st.booleans(), st.booleans()),
    cutoff_shift=st.integers(-(10**6), 10**6),
    chunk_count=st.integers(1, 4),
    ledger_share=st.sampled_from([0, 2]),
)
def test_counts_reconcile_through_the_stages_on_arbitrary_records(
    values, duplicates, junk, options, cutoff_shift, chunk_count, ledger_share
):
    """Arbitrary records (mutated at any path) in chunks, through stage files between the stages, the dedupe
    check over every chunk with an earlier run's ledger, coalescing and packing as the send task does them.
    What the send task does with answers (refusals, lost answers, a crash mid-send) is checked on the path
    the DAG runs, with the operator, S3 and the emulator: tests/airflow/test_send_properties.py."""
    records = [mutated_record(value, path) for value, path in values] + [real_record_dict()] * duplicates
    lines = [json.dumps(r).encode() for r in records] + [j.replace(b"\n", b"") for j in junk]
    random.Random(len(lines)).shuffle(lines)
    objects = [
        (f"q/2020-09-11/App_2020091100000000000{i}_00001.txt", b"\n".join(lines[i::chunk_count]))
        for i in range(chunk_count)
    ]
    chunks = [[(key, io.BytesIO(body))] for key, body in objects]
    real = real_record_dict()
    earlier_run = [f"{real['batch_id']}:{event['data']['event_id']}" for event in real["events"]][:ledger_share]

    dead = []
    summary = run_staged(
        chunks,
        selection=SelectionSettings(*options[:3]),
        cutoff_ms=REAL_RECORD_TIME_MS + cutoff_shift,
        transform_settings=TransformSettings(include_blocked_identities=options[3]),
        ledger=earlier_run,
        dead_letter=dead.append,
    )
    assert summary.reconciles(), summary.render()


def test_synthetic_partition_reconciles_exactly():
    rng = random.Random(7)
    lines = list(synthetic.partition_lines(rng, REAL_RECORD_TIME_MS, 500, bad_every=50))
    dead = []
    summary = run_in_one_process(
        [
            ("a.txt", io.BytesIO(synthetic.object_body(lines[:250], compress=True))),
            ("b.txt", io.BytesIO(synthetic.object_body(lines[250:], compress=False))),
        ],
        selection=SelectionSettings(),
        cutoff_ms=REAL_RECORD_TIME_MS + 43_200_000,
        transform_settings=TransformSettings(),
        dedupe=DedupeCheck(),
        dead_letter=dead.append,
    )
    assert summary.records_read == 500
    assert summary.reconciles()
    assert summary.total("dead_lettered") == 10 == len([d for d in dead if d.stage == "extract"])
    assert summary.total("too_old") > 0 and summary.total("replayed") > 0


_METADATA_FIELDS = (
    "dto_version",
    "blocked_event_ids",
    "blocked_event_attributes",
    "blocked_user_attributes",
    "blocked_user_identities",
    "blocked_device_identities",
)
_ids = st.lists(
    st.text(max_size=6) | st.integers() | st.none() | st.booleans() | st.floats(allow_nan=False), max_size=3
)


@settings(max_examples=300, deadline=None)
@given(
    metadata=st.fixed_dictionaries(
        {},
        optional={
            "dto_version": st.sampled_from([1, 1, 1, 2, True, "1", None, 1.0]),
            "blocked_event_ids": _ids | json_values,
            "blocked_event_attributes": st.lists(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "event_id": st.text(max_size=4) | st.integers() | json_values,
                        "event_attributes": st.lists(st.text(max_size=8)) | json_values,
                    },
                ),
                max_size=2,
            )
            | json_values,
            "blocked_user_attributes": _ids | json_values,
            "blocked_user_identities": _ids | json_values,
            "blocked_device_identities": _ids | json_values,
        },
    )
)
@example({"dto_version": 2})
@example({"dto_version": True})
@example({"dto_version": 1, "blocked_event_ids": ""})
@example({"dto_version": 1, "blocked_event_ids": [" 7 ", 8]})
@example({"dto_version": 1, "blocked_user_attributes": [None]})
@example({"dto_version": 1, "blocked_event_attributes": [{"event_id": "1", "event_attributes": "x"}]})
def test_block_metadata_fast_check_and_diagnosis_agree(metadata):
    """The C-level check accepts exactly what the documented shape allows; a refusal always says why."""
    from mparticle_backfill.extract import _block_metadata, _diagnose_block_metadata

    def ok_list(value, item_ok):
        return value is None or (type(value) is list and all(item_ok(item) for item in value))

    def id_ok(item):
        return (type(item) is str and item.strip() != "") or type(item) is int

    def name_ok(item):
        return type(item) in (str, int)

    def entry_ok(entry):
        return (
            type(entry) is dict
            and id_ok(entry.get("event_id"))
            and type(entry.get("event_attributes")) is list
            and all(type(p) is str for p in entry["event_attributes"])
        )

    documented = (
        type(metadata.get("dto_version")) is int
        and metadata.get("dto_version") == 1
        and ok_list(metadata.get("blocked_event_ids"), id_ok)
        and ok_list(metadata.get("blocked_event_attributes"), entry_ok)
        and all(ok_list(metadata.get(name), name_ok) for name in _METADATA_FIELDS[3:])
    )
    block, reason, detail = _block_metadata({"context": {"data_plan": {"block_metadata": metadata}}})
    assert (block is not None) == documented, (reason, detail)
    if block is None:
        assert reason and detail
        assert (reason, detail) == _diagnose_block_metadata(metadata)
    else:
        assert block.blocked_event_ids == {str(i).strip() for i in metadata.get("blocked_event_ids") or ()}


# Kinesis Data Firehose objects: records concatenated with or without separators, corrupt fragments
# between them. A fragment is corrupt: a record cut short anywhere, or bytes that cannot start JSON.
_STRING_TEXT = st.text(alphabet='{}[]":,\\ ab\u00e9', max_size=12)
_SEPARATORS = st.sampled_from([b"", b"", b" ", b"\n", b"\r\n", b"\t \n ", b"\n\n"])


@st.composite
def _firehose_object(draw):
    """(object bytes, names of the records in order, byte ranges of the records, number of fragments)."""
    pieces, names, ranges, fragments = [], [], [], 0
    size = 0

    def add(piece):
        nonlocal size
        pieces.append(piece)
        size += len(piece)

    for index in range(draw(st.integers(0, 5))):
        record = real_record_dict()
        record["batch_id"] = 2**63 - 1 - index  # exact beyond 2**53, and the record's name
        record["user_attributes"]["note"] = draw(_STRING_TEXT)
        compact = draw(st.booleans())
        encoded = json.dumps(record, separators=(",", ":") if compact else None).encode()
        for _ in range(draw(st.integers(0, 2))):
            if draw(st.booleans()):
                cut = draw(st.integers(1, len(encoded) - 1))
                fragment = encoded[:cut]
            else:
                first = draw(st.sampled_from([b"#", b"!", b"\x00", b"\xff", b"@", b"x"]))
                fragment = first + draw(st.binary(max_size=40)).replace(b"\n", b"")
            add(fragment)
            add(draw(_SEPARATORS))
            fragments += 1
        ranges.append((size, size + len(encoded)))
        add(encoded)
        names.append(str(record["batch_id"]))
        add(draw(_SEPARATORS))
    if draw(st.booleans()):
        add(draw(st.sampled_from([b"#tail", b'{"events": [{"data": {"x": "}{'])))  # a final part cut short
        fragments += 1
    return b"".join(pieces), names, ranges, fragments


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(firehose=_firehose_object(), compress=st.booleans())
def test_firehose_records_are_read_once_whatever_corrupt_fragments_lie_between(firehose, compress):
    """Every record is read exactly once; each corrupt fragment is at most one dead letter, located by
    a byte range that holds no byte of any record; nothing raises."""
    body, names, ranges, fragments = firehose
    items = list(iter_records("k.txt", io.BytesIO(gzip.compress(body) if compress else body)))
    records = [item for item in items if isinstance(item, QuarantineRecord)]
    letters = [item for item in items if isinstance(item, BadRecord)]
    assert [record.identity for record in records] == names
    assert all(type(record.batch["batch_id"]) is int for record in records)
    assert all(letter.reason == INVALID_JSON for letter in letters)
    assert (0 if fragments == 0 else 1) <= len(letters) <= fragments
    for letter in letters:
        length, start = map(int, re.match(r"(\d+) bytes from byte (\d+) ", letter.detail).groups())
        assert body[start : start + length].decode("utf-8", "replace").startswith(letter.raw)
        assert all(start + length <= first or last <= start for first, last in ranges)
