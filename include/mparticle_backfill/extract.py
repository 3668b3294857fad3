"""Extract: stream quarantine records out of objects and keep what to replay of each."""

from __future__ import annotations

import gzip
import hashlib
import io
import zlib
from collections.abc import Iterable, Iterator
from typing import Any, BinaryIO, Literal

import msgspec

from . import jsonio
from .accounting import Summary
from .model import BadRecord, BlockMetadata, DeadLetter, DeadLetterSink, QuarantineRecord, RecordRef, Replay
from .partition import is_verification_object
from .select import SelectionSettings, select
from .values import id_string

# gzip magic bytes and compression method 8 (deflate, the only one RFC 1952 defines): a plain object
# whose first line happens to start with the two magic bytes is still read as plain lines.
GZIP_MAGIC = b"\x1f\x8b\x08"
KNOWN_DTO_VERSIONS = frozenset({1})

# Reasons a line becomes a bad record (dead-lettered, never silently dropped).
INVALID_JSON = "invalid_json"
NOT_AN_OBJECT = "not_an_object"
NO_BLOCK_METADATA = "no_block_metadata"
UNKNOWN_DTO_VERSION = "unknown_dto_version"
INVALID_BLOCK_METADATA = "invalid_block_metadata"
INVALID_BATCH = "invalid_batch"
CORRUPT_GZIP = "corrupt_gzip"
# A dead letter of JSON that does not decode keeps at most this much of it (the detail says where the
# rest is): a corrupt stretch of a Firehose object may run to the end of an object of many MB.
MAX_DEAD_LETTER_BYTES = 64 * 1024

_convert = msgspec.convert
_LIST_FIELDS = (
    "blocked_event_ids",
    "blocked_user_attributes",
    "blocked_user_identities",
    "blocked_device_identities",
)


class _RawReader(io.RawIOBase):
    """Adapts any object with ``read(n)`` (e.g. botocore's StreamingBody) to a raw stream."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        chunk = self._stream.read(len(buffer))
        size = len(chunk)
        buffer[:size] = chunk
        return size


def open_object(stream: Any) -> tuple[BinaryIO, bool]:
    """Wrap an object's byte stream for line reading; gzip is detected by magic bytes, not by name.

    :return: the line-readable stream, and whether it is gzip.
    """
    buffered = io.BufferedReader(_RawReader(stream), buffer_size=1 << 16)
    if buffered.peek(3)[:3] == GZIP_MAGIC:
        return gzip.GzipFile(fileobj=buffered, mode="rb"), True  # type: ignore[return-value]
    return buffered, False


def batch_identity(batch: dict[str, Any], raw: bytes) -> str:
    """The original batch's identity: its ``batch_id``, else a hash of the line as read."""
    batch_id = batch.get("batch_id")
    if isinstance(batch_id, (int, str)) and not isinstance(batch_id, bool) and str(batch_id).strip():
        return str(batch_id).strip()
    return "sha256:" + hashlib.sha256(raw).hexdigest()[:32]


class _EventAttributes(msgspec.Struct):
    event_id: str | int
    event_attributes: tuple[str, ...]


class _TypedBlockMetadata(msgspec.Struct):
    """The shape of a valid ``block_metadata``; checked in C by msgspec (the common, fast case)."""

    dto_version: Literal[1]  # KNOWN_DTO_VERSIONS
    blocked_event_ids: tuple[str | int, ...] | None = None
    blocked_event_attributes: list[_EventAttributes] | None = None
    blocked_user_attributes: tuple[str | int, ...] | None = None
    blocked_user_identities: tuple[str | int, ...] | None = None
    blocked_device_identities: tuple[str | int, ...] | None = None


def _event_ids(values: tuple[str | int, ...] | None) -> frozenset[str] | None:
    """Event ids as exact strings, as :func:`id_string` makes them; None if one is empty."""
    if not values:
        return frozenset()
    try:
        ids = frozenset(map(str.strip, values))  # type: ignore[arg-type]
    except TypeError:  # some ids came as JSON integers
        ids = frozenset(map(id_string, values))  # type: ignore[arg-type]
    return None if "" in ids or None in ids else ids


def _names(values: tuple[str | int, ...] | None) -> tuple[str, ...]:
    """Attribute and identity names, exactly as written (an integer name as its digits)."""
    return tuple(map(str, values)) if values else ()


def _fast_block_metadata(metadata: Any) -> BlockMetadata | None:
    """``block_metadata`` when it is well formed (nearly always); None sends it to the diagnosis."""
    try:
        typed = _convert(metadata, _TypedBlockMetadata)
    except msgspec.ValidationError:
        return None
    event_ids = _event_ids(typed.blocked_event_ids)
    if event_ids is None:
        return None
    attributes: dict[str, tuple[str, ...]] = {}
    for entry in typed.blocked_event_attributes or ():
        event_id = id_string(entry.event_id)
        if event_id is None:
            return None
        attributes[event_id] = attributes.get(event_id, ()) + entry.event_attributes
    return BlockMetadata(
        event_ids,
        attributes,
        _names(typed.blocked_user_attributes),
        _names(typed.blocked_user_identities),
        _names(typed.blocked_device_identities),
    )


def _block_metadata(batch: dict[str, Any]) -> tuple[BlockMetadata | None, str, str]:
    """The record's block metadata, or why it has none usable (reason and detail)."""
    context = batch.get("context")
    data_plan = context.get("data_plan") if isinstance(context, dict) else None
    metadata = data_plan.get("block_metadata") if isinstance(data_plan, dict) else None
    if not isinstance(metadata, dict):
        return None, NO_BLOCK_METADATA, "no context.data_plan.block_metadata object"
    block = _fast_block_metadata(metadata)
    if block is not None:
        return block, "", ""
    return None, *_diagnose_block_metadata(metadata)


def _diagnose_block_metadata(metadata: dict[str, Any]) -> tuple[str, str]:
    """Why ``metadata`` is not usable block metadata (the fast check refused it): reason, detail."""
    version = metadata.get("dto_version")
    if isinstance(version, bool) or not isinstance(version, int) or version not in KNOWN_DTO_VERSIONS:
        return UNKNOWN_DTO_VERSION, f"dto_version {version!r} is not one of {sorted(KNOWN_DTO_VERSIONS)}"
    for name in _LIST_FIELDS:
        value = metadata.get(name)
        if value is not None and not isinstance(value, list):
            return INVALID_BLOCK_METADATA, f"{name} is not a list"
        if any(isinstance(item, bool) or not isinstance(item, (str, int)) for item in value or ()):
            return INVALID_BLOCK_METADATA, f"{name} holds a value that is not a string or integer"
    if any(id_string(item) is None for item in metadata.get("blocked_event_ids") or ()):
        return INVALID_BLOCK_METADATA, "blocked_event_ids holds an empty id"
    entries = metadata.get("blocked_event_attributes")
    if entries is not None and not isinstance(entries, list):
        return INVALID_BLOCK_METADATA, "blocked_event_attributes is not a list"
    for index, entry in enumerate(entries or ()):
        event_id = id_string(entry.get("event_id")) if isinstance(entry, dict) else None
        paths = entry.get("event_attributes") if isinstance(entry, dict) else None
        if event_id is None or not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
            return INVALID_BLOCK_METADATA, f"blocked_event_attributes[{index}] without an event_id or a list of paths"
    return INVALID_BLOCK_METADATA, "block_metadata does not have the documented shape"


def parse_document(ref: RecordRef, document: Any, raw: bytes) -> QuarantineRecord | BadRecord:
    """Check one decoded JSON document and make it a record, or say why it is not one."""
    if type(document) is not dict:
        return _bad(ref, raw, NOT_AN_OBJECT, f"a JSON {type(document).__name__}, not an object")
    events = document.get("events")
    if events is not None and not (type(events) is list and all(type(e) is dict for e in events)):
        return _bad(ref, raw, INVALID_BATCH, "events is not a list of objects")
    block, reason, detail = _block_metadata(document)
    if block is None:
        return _bad(ref, raw, reason, detail)
    return QuarantineRecord(ref, document, block, batch_identity(document, raw))


def _bad(ref: RecordRef, raw: bytes, reason: str, detail: str) -> BadRecord:
    return BadRecord(ref, reason, detail, raw.decode("utf-8", errors="replace"))


def parse_line(
    object_key: str, line_number: int, raw: bytes, offset: int = 0, *, compressed: bool = False
) -> list[QuarantineRecord | BadRecord]:
    """Parse one NDJSON line; a line of several concatenated documents gives one record per part.

    See :func:`iter_line_records` (this is it, as a list).
    """
    return list(iter_line_records(object_key, line_number, raw, offset, compressed=compressed))


def iter_line_records(
    object_key: str, line_number: int, raw: bytes, offset: int = 0, *, compressed: bool = False
) -> Iterator[QuarantineRecord | BadRecord]:
    """The records of one line, as they are decoded (a Firehose object may be one line of many MB).

    A line holding one document (NDJSON) is one record with part 0. A line of several concatenated
    documents (Kinesis Firehose) gives parts 1, 2, ... in order; a stretch that is not JSON is one
    ``invalid_json`` part located by its byte offset, and every document before and after it is read.

    :param raw: the line without the whitespace around it.
    :param offset: where ``raw`` starts in the object (after gunzip when ``compressed``), for locating bad parts.
    """
    try:
        document = jsonio.loads(raw)
    except jsonio.DecodeError:
        pass  # several documents on one line (Firehose), or not JSON: the scanner tells which
    else:
        yield parse_document(RecordRef(object_key, line_number), document, raw)
        return
    size = len(raw)
    for number, part in enumerate(jsonio.iter_parts(raw, _is_batch), start=1):
        whole_line = part.start == 0 and part.end == size  # a line that is not JSON at all: part 0, as above
        ref = RecordRef(object_key, line_number, 0 if whole_line else number)
        if part.error:
            yield _not_json(ref, raw, part, offset, compressed)
            continue
        record = parse_document(ref, part.value, raw[part.start : part.end])
        if type(record) is QuarantineRecord and record.identity.startswith("sha256:"):
            # Without a batch_id, a part's identity has always hashed its compact encoding (not the
            # bytes as written): keep it so, or the ledger would not know records replayed before.
            record.identity = batch_identity(part.value, jsonio.dumps(part.value))
        yield record


def _is_batch(document: Any) -> bool:
    """Where a stretch of corrupt JSON ends: at the next object shaped like a quarantine batch (with a
    ``context`` object holding ``data_plan``). No object nested in a batch is one, so the broken
    record's own nested objects never pass for records."""
    if type(document) is not dict:
        return False
    context = document.get("context")
    return type(context) is dict and "data_plan" in context


def _not_json(ref: RecordRef, raw: bytes, part: jsonio.Part, offset: int, compressed: bool) -> BadRecord:
    """A stretch of a line that is not JSON, located by byte offset, its content cut to a sane size."""
    length = part.end - part.start
    where = "the object after gunzip" if compressed else "the object"
    detail = f"{length} bytes from byte {offset + part.start} of {where} (line {ref.line}) are not JSON: "
    detail += part.error + (f" near byte {offset + part.error_at}" if part.error_at >= 0 else "")
    content = raw[part.start : part.start + min(length, MAX_DEAD_LETTER_BYTES)]
    if length > MAX_DEAD_LETTER_BYTES:
        detail += f"; content is their first {MAX_DEAD_LETTER_BYTES:,} bytes"
    return BadRecord(ref, INVALID_JSON, detail, content.decode("utf-8", errors="replace"))


def iter_records(object_key: str, stream: Any) -> Iterator[QuarantineRecord | BadRecord]:
    """Stream the records of one quarantine object, line by line, in bounded memory.

    Blank lines are skipped; verification objects yield nothing; a corrupt or truncated gzip stream
    yields one bad record naming the line where reading stopped. Nothing here raises on bad data.
    A Firehose object of records concatenated without newlines is one line, held whole while it is
    read; its records are still decoded and yielded one at a time.
    """
    if is_verification_object(object_key):
        return
    line_number = 0
    line_start = 0  # offset of the line in the object (after gunzip)
    reader, compressed = open_object(stream)
    try:
        for line_number, raw_line in enumerate(reader, start=1):
            raw = raw_line.strip()
            if raw:
                offset = line_start + len(raw_line) - len(raw_line.lstrip())
                yield from iter_line_records(object_key, line_number, raw, offset, compressed=compressed)
            line_start += len(raw_line)
    except (EOFError, OSError, zlib.error) as error:
        what = "truncated" if isinstance(error, EOFError) else "corrupt"
        yield BadRecord(
            RecordRef(object_key, line_number + 1),
            CORRUPT_GZIP if compressed else "unreadable_object",
            f"{what} stream after line {line_number}: {error}",
            "",
        )


def extract_records(
    objects: Iterable[tuple[str, Any]], selection: SelectionSettings, summary: Summary, dead_letter: DeadLetterSink
) -> Iterator[Replay]:
    """The extract stage: read objects ``(key, byte stream)`` and select what to replay; bad lines are
    dead-lettered, records with nothing to replay end here."""
    for key, stream in objects:
        summary.counts["objects_read"] += 1
        for item in iter_records(key, stream):
            summary.read()
            if isinstance(item, BadRecord):
                summary.bad_record(item)
                dead_letter(DeadLetter(item.ref, "extract", item.reason, item.detail, item.raw))
                continue
            replay = select(item, selection, summary.counts)
            if replay.empty:
                summary.finish(replay)
            else:
                yield replay
