"""Coalesce: shard records by user context, and merge one user's replay batches into as few as the limits allow.

Why. The Events API limits **batches** per second (270 by default), counted per batch inside bulk requests,
and SDKs upload often (web every few seconds, mobile every 10 minutes and at backgrounding): a quarantine
partition holds many batches per user, and replaying one batch per record spends the limit on envelopes.
mParticle recommends "a combined event batch for each user". Two parts, both pure:

**Shards.** :func:`user_context_hash` hashes who and where a record's ORIGINAL batch is (mpid, identities,
device, application, environment, ip, consent, integration attributes, plan id and version), so every
record that could be merged with another lands in the same shard (:func:`shard_of`). The hash never looks
at run settings (a changed ``environment`` or ``plan_version`` setting changes the replay envelope, not the
shard), so a record's shard depends only on the shard count. The ledger is written per shard;
:func:`ledger_part_may_hold` tells which parts a reader shard must read when the shard count changed.

**Merging.** :func:`coalesce` takes the replays of one shard (after the dedupe check) and merges the
batches whose envelope (every payload field but ``events``, ``user_attributes`` and ``source_request_id``)
is identical, whose records go to the same route (Events API connection) and have the same user context
hash (so that a merged batch lies in one shard under any shard count: the send journal relies on it):

- events are ordered by ``data.timestamp_unixtime_ms`` (stable: ties keep record order), each unchanged;
- at most :data:`.limits.MAX_BATCH_BYTES` per encoded batch (``source_request_id`` included) and
  :data:`.limits.MAX_USER_ATTRIBUTES` user attributes: a group too large is split, events in time order;
- restored user attributes: the LATEST original batch wins. Latest is the original batch's
  ``timestamp_unixtime_ms`` (when mParticle received it: the attribute values it carries are the user's at
  that moment; event times can be much older, e.g. a phone that was offline), else its newest event's
  time, ties broken by the record's place (object key, line). An older value of a name a later batch also
  carries is not sent at all (counted ``user_attributes_superseded``): each name goes out once, with its
  latest value, so no two batches of the group can race to set it;
- replay keys are unchanged (``<batch>:<event>``, ``<batch>:user_attributes``): the ledger, the dedupe
  check and partial re-sends work as before. A merged batch records its **members**: per record, the keys
  it delivers, so the send stage ends each record when all its batches are answered, and dead-letters each
  member's part (:func:`member_payload`) if the API refuses the merged batch. A record's user attributes
  are never split over two batches (a key rides in exactly one batch); a record whose every restored
  attribute is superseded delivers its key with the batch that carries the newer values;
- a merged batch's ``source_request_id`` is the UUID (transform's format) of the sha256 of the salt and its
  sorted replay keys: a retry or re-run that builds the same batch gets the same id (mParticle drops the
  repeat), another membership another id. A run whose date changed builds other batches: a batch sent
  before whose answer was lost is therefore resent from the send journal as it was (:mod:`.journal`),
  never rebuilt;
- a merged batch the API refuses is cut in two by its records (:func:`split_members`), recursively, so
  that only the refused record is dead-lettered; the cut is deterministic;
- a group of ONE record keeps its batches exactly as the transform built them (same bodies, same ids);
- with ``coalesce`` off every record keeps its batches: exactly today's output, one group per record.

**Bodies, not payloads.** The send stage reads each replay batch as its encoded body (the stage file holds
the body, :mod:`.stage_codec`) and merging does not decode its events: the envelope is a slice of the first
member's body, each event is its JSON as the transform encoded it (a ``msgspec.Raw`` slice of its body,
of which only ``data.timestamp_unixtime_ms`` is decoded, to order it), and a merged batch is their
concatenation. msgspec's compact JSON of an object is the concatenation of its members' encodings, so the
bytes are exactly those of encoding the merged payload (the tests merge every case both ways). Grouping
compares envelopes as JSON values: by their encoding first, then each distinct encoding made canonical
once (keys sorted at every level), so an envelope written with its keys in another order is the same one.
A batch's payload is decoded only to dead-letter or re-cut it (:attr:`CoalescedBatch.payload`).

Memory: merging must see every record of a user before it can emit the user's batches (records are not
sorted by user), so :func:`coalesce` holds the replays it is given (their batches' bodies, ~2.4 KB per
record as the send stage reads it) plus the encoded bodies of one group at a time. Groups are yielded one
by one and each record's batches are released once its group is built. So that memory does not follow the shard, the
send task cuts a shard of more than :data:`SLICE_REPLAYS` records into slices by user context
(:func:`slice_of`: the hash bits above the shard's) and coalesces one slice at a time: a user's records
are all in one slice, so slicing merges exactly what the whole shard would (only records of different
user contexts whose replay envelopes a fix rule made equal could be apart).
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Iterable, Iterator, Set
from dataclasses import dataclass
from typing import Any

import msgspec

from . import jsonio, limits
from .model import CONTENT_FIELDS, RecordRef, Replay, ReplayBatch
from .stage_codec import EventTime
from .transform import _REQUEST_ID_BYTES, _request_id, _with_request_id
from .values import exact_int

# Airflow's max_map_length: a DAG cannot map a task over more shards than this.
MAX_MAPPED_TASKS = 1024
# The send task coalesces a shard one slice of about this many records at a time (its memory follows the
# slice); a shard's records are cut into slices by user context, like shards.
# bench/bench_worker.py, 1,000,000 records: a send task process peaks at 232 MB with shards of ~48,000
# replays and 250 MB with shards of ~119,000 (~176 MB of it is Airflow and the imports, as in every task
# process; replays held as their batches' bodies, ~2.4 KB each). With decoded payloads (be803df, 200,000
# records), 10,000 cost 18-32 MB more than 5,000 at the same CPU; smaller slices cost only more local
# slice files.
SLICE_REPLAYS = 5_000
# Batch-level fields of the ORIGINAL quarantine batch that say who and where (the user context).
USER_CONTEXT_FIELDS = (
    "mpid",
    "user_identities",
    "mp_deviceid",
    "device_info",
    "application_info",
    "environment",
    "ip",
    "consent_state",
    "integration_attributes",
)
# Names the hash of a merged batch's keys, so it never equals a transform id (which hashes a batch id).
_COALESCED = "coalesced"
_USER_ATTRIBUTES_FIELD = len(',"user_attributes":')

_canonical = msgspec.json.Encoder(order="sorted").encode


# --- Shards ---------------------------------------------------------------------------------------------


def user_context(original_batch: dict[str, Any]) -> dict[str, Any]:
    """The fields of :data:`USER_CONTEXT_FIELDS` and ``context.data_plan`` (``plan_id``, ``plan_version``;
    never ``block_metadata``) of an original batch, normalised: ``mpid`` and ``plan_version`` as exact
    ints (``"123"`` and ``123`` are the same), empty values (None, ``""``, ``{}``, ``[]``, mpid 0) left out
    as the transform leaves them out."""
    context: dict[str, Any] = {}
    for name in USER_CONTEXT_FIELDS:
        value = original_batch.get(name)
        if value is None or value == "" or value == {} or value == []:
            continue
        context[name] = value
    if "mpid" in context:
        mpid = exact_int(context["mpid"])
        if mpid == 0:
            del context["mpid"]
        elif mpid is not None:
            context["mpid"] = mpid
    batch_context = original_batch.get("context")
    data_plan = batch_context.get("data_plan") if type(batch_context) is dict else None
    if type(data_plan) is dict:
        plan = {}
        if data_plan.get("plan_id") not in (None, ""):
            plan["plan_id"] = data_plan["plan_id"]
        version = data_plan.get("plan_version")
        if version is not None and version != "":
            converted = exact_int(version)
            plan["plan_version"] = converted if converted is not None else version
        if plan:
            context["data_plan"] = plan
    return context


def user_context_hash(original_batch: dict[str, Any]) -> int:
    """A stable unsigned 64-bit hash of who and where the original batch is (:func:`user_context`).

    The blake2b of its canonical encoding (keys sorted at every level): the same on every machine, in
    every run, whatever the key order or the run's settings. ``original_batch`` is the quarantine batch
    (``Replay.batch``: the original without its events).
    """
    digest = hashlib.blake2b(_canonical(user_context(original_batch)), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def shard_of(context_hash: int, shard_count: int) -> int:
    """The shard (0 .. shard_count - 1) of a user context hash."""
    if shard_count < 1:
        raise ValueError(f"shard_count must be at least 1, got {shard_count}")
    return context_hash % shard_count


def replay_context_hash(replay: Replay) -> int:
    """The record's :func:`user_context_hash`, computed once and kept in ``replay.context_hash``."""
    if replay.context_hash is None:
        replay.context_hash = user_context_hash(replay.batch)
    return replay.context_hash


def replay_shard(replay: Replay, shard_count: int) -> int:
    """The shard of a record: that of its original batch's user context."""
    return shard_of(replay_context_hash(replay), shard_count)


def slice_count_for(replays: int, per_slice: int | None = None) -> int:
    """Into how many slices the send task cuts a shard of ``replays`` records to coalesce it: one per
    :data:`SLICE_REPLAYS` (at least 1)."""
    return max(1, math.ceil(replays / (per_slice or SLICE_REPLAYS)))


def slice_of(context_hash: int, shard_count: int, slice_count: int) -> int:
    """The slice (0 .. slice_count - 1) of a record of a shard: from the hash bits above those that chose
    the shard (``context_hash // shard_count``), so the slices of a shard are evenly filled."""
    if slice_count < 1:
        raise ValueError(f"slice_count must be at least 1, got {slice_count}")
    return (context_hash // shard_count) % slice_count


def ledger_part_may_hold(part_shards: int, part_index: int, reader_shards: int, reader_index: int) -> bool:
    """Whether a ledger part written by shard ``part_index`` of ``part_shards`` may hold replay keys of
    reader shard ``reader_index`` of ``reader_shards``: iff ``part_index ≡ reader_index (mod
    gcd(part_shards, reader_shards))``.

    Why: a key belongs to the record's context hash ``h``; it was written by shard ``h mod part_shards``
    and is looked up by shard ``h mod reader_shards``. By the Chinese remainder theorem a number ``h`` with
    ``h ≡ p (mod P)`` and ``h ≡ r (mod R)`` exists iff ``p ≡ r (mod gcd(P, R))``. So a re-run with another
    shard count still finds every key (it reads every part that may hold one), and reads no part that
    cannot: with the same count, shard r reads only parts of shard r; a part written unsharded
    (``part_shards=1``) is read by every shard.
    """
    if not (0 <= part_index < part_shards and 0 <= reader_index < reader_shards):
        raise ValueError(
            f"shard index out of range: part {part_index} of {part_shards}, reader {reader_index} of {reader_shards}"
        )
    return (part_index - reader_index) % math.gcd(part_shards, reader_shards) == 0


def shard_count_for(chunks: int) -> int:
    """How many shards a partition of ``chunks`` chunks is cut into: one per chunk (a shard then holds
    about a chunk's records), at least 1, at most Airflow's :data:`MAX_MAPPED_TASKS`."""
    return max(1, min(chunks, MAX_MAPPED_TASKS))


# --- Merging --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CoalesceSettings:
    """How a shard's replay batches are merged.

    :param coalesce: merge the batches of the same envelope; off: every record keeps its own batches.
    :param request_id_salt: as :attr:`.transform.TransformSettings.request_id_salt` (a forced resend
        sets it), mixed into the ``source_request_id`` of merged batches.
    """

    coalesce: bool = True
    request_id_salt: str = ""


class CoalescedBatch(msgspec.Struct, frozen=True):
    """One batch to send, and what it delivers for which records.

    :param members: per member record (sorted by :class:`.RecordRef`), the replay keys this batch
        delivers for it.
    :param replay_keys: every key of the batch: one per event, in the order of ``payload["events"]``,
        then the user attribute keys (as :class:`.ReplayBatch` orders them).
    :param body: the encoded Events API batch, as sent, ``source_request_id`` included (its last field).
    :param size: ``len(body)``.
    :param attribute_names: per user attribute key, the names of ``payload["user_attributes"]`` it
        delivers (empty when every one was superseded by a later batch's value).
    """

    members: tuple[tuple[RecordRef, tuple[str, ...]], ...]
    replay_keys: tuple[str, ...]
    body: bytes
    size: int
    attribute_names: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @property
    def refs(self) -> tuple[RecordRef, ...]:
        return tuple(ref for ref, _ in self.members)

    @property
    def payload(self) -> dict[str, Any]:
        """The batch decoded from its body (only to dead-letter or re-cut it: the body is what is sent)."""
        return jsonio.loads(self.body)

    def to_json(self) -> dict[str, Any]:
        return {
            "members": [[ref.to_json(), list(keys)] for ref, keys in self.members],
            "keys": list(self.replay_keys),
            "attribute_names": [[key, list(names)] for key, names in self.attribute_names],
            "payload": self.payload,
        }

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> CoalescedBatch:
        body = jsonio.dumps(value["payload"])  # source_request_id is its last field, as in the body sent
        return cls(
            members=tuple((RecordRef.from_json(ref), tuple(keys)) for ref, keys in value["members"]),
            replay_keys=tuple(value["keys"]),
            body=body,
            size=len(body),
            attribute_names=tuple((key, tuple(names)) for key, names in value.get("attribute_names", ())),
        )


class CoalescedGroup(msgspec.Struct):
    """The records of one envelope, route and user context, and the batches that deliver all of them.

    Every record is in exactly one group, so once a group is yielded the number of batches each of its
    records waits on is known (:func:`batches_per_record`). ``replays`` are the records themselves (for
    their trail and outcome), their ``batches`` emptied: the group's batches replace them.
    """

    route: str
    replays: list[Replay]
    batches: list[CoalescedBatch]
    context_hash: int = 0  # of every record of the group (:func:`user_context_hash`): where it is sharded


def batches_per_record(batches: Iterable[CoalescedBatch]) -> Counter[RecordRef]:
    """How many batches each record waits on: a record ends when all of them are answered."""
    waiting: Counter[RecordRef] = Counter()
    for batch in batches:
        for ref, _keys in batch.members:
            waiting[ref] += 1
    return waiting


def member_payload(batch: CoalescedBatch, ref: RecordRef) -> dict[str, Any]:
    """The part of ``batch`` that member ``ref`` contributes (its events, its user attributes) with the
    batch's envelope: what to dead-letter for that record when the API refuses the batch."""
    keys = next((set(keys) for member, keys in batch.members if member == ref), None)
    if keys is None:
        raise KeyError(f"{ref} is not a member of this batch")
    payload = batch.payload  # decoded once
    envelope = {name: value for name, value in payload.items() if name not in CONTENT_FIELDS}
    events = payload.get("events") or []
    part: dict[str, Any] = {
        **envelope,
        "events": [event for key, event in zip(batch.replay_keys, events, strict=False) if key in keys],
    }
    if batch.attribute_names:
        attributes = payload.get("user_attributes") or {}
        names = [name for key, names in batch.attribute_names if key in keys for name in names]
        if names:
            part["user_attributes"] = {name: attributes[name] for name in names}
    elif "user_attributes" in payload and any(key in keys for key in batch.replay_keys[len(events) :]):
        part["user_attributes"] = payload["user_attributes"]  # a batch kept as the transform built it
    return part


def coalesce(replays: Iterable[Replay], settings: CoalesceSettings, counts: Counter[str]) -> Iterator[CoalescedGroup]:
    """Merge the replay batches of one shard (see the module docstring); yield one group per envelope.

    Counts ``batches_before_coalescing``, ``batches_after_coalescing``, ``records_coalesced`` (records
    that share a batch with another record) and ``user_attributes_superseded``.
    """
    if not settings.coalesce:
        for replay in replays:
            yield _unchanged(replay, counts)
        return
    encodings: dict[tuple[str, bytes], list[Replay]] = {}
    for replay in replays:
        if not replay.batches:  # nothing to send (the send stage never gets one): still never lost
            yield _unchanged(replay, counts)
            continue
        key = (_route(replay), replay_context_hash(replay), _envelope_prefix(replay.batches[0]))
        encodings.setdefault(key, []).append(replay)
    # Envelopes equal as JSON values are one envelope, whatever the order of their keys at any level:
    # each distinct encoding is made canonical once (nearly always, a user's records encode it alike).
    # Records of different user contexts are never merged, even when a fix rule made their envelopes
    # equal: a merged batch then lies in one shard and one slice whatever their counts, so the send
    # journal's entries are each resent by exactly one shard (:mod:`.journal`).
    groups: dict[tuple[str, int, bytes], list[Replay]] = {}
    for (route, context, prefix), members in encodings.items():
        groups.setdefault((route, context, _canonical_envelope(prefix)), []).extend(members)
    encodings.clear()
    # Deterministic whatever the input order: records by their place, groups by their first record.
    ordered = sorted((sorted(members, key=_ref_order) for members in groups.values()), key=lambda m: _ref_order(m[0]))
    groups.clear()
    for members in ordered:
        if len(members) == 1:
            yield _unchanged(members[0], counts)
        else:
            yield _merge(members, settings.request_id_salt, counts)


def _route(replay: Replay) -> str:
    return getattr(replay, "route", "")


def _ref_order(replay: Replay) -> tuple[str, int, int]:
    ref = replay.ref
    return (ref.object_key, ref.line, ref.part)


def _canonical_envelope(prefix: bytes) -> bytes:
    """The canonical encoding (keys sorted at every level) of the envelope :func:`_envelope_prefix` gave:
    equal bytes iff equal envelopes."""
    return _canonical(jsonio.loads(prefix[:-1] + b"}" if len(prefix) > 1 else b"{}"))


class _Content(msgspec.Struct):
    """What merging reads of a batch's body: each event's JSON as it is, and the user attributes."""

    events: list[msgspec.Raw] | None = None
    user_attributes: dict[str, Any] | None = None


_decode_content = msgspec.json.Decoder(_Content).decode
_decode_fields = msgspec.json.Decoder(dict[str, msgspec.Raw]).decode
_decode_event_time = msgspec.json.Decoder(EventTime).decode


def event_time(event: Any) -> int | None:
    """An event's ``data.timestamp_unixtime_ms`` if it is an int, else None: what merging orders by."""
    data = event.get("data") if type(event) is dict else None
    ts = data.get("timestamp_unixtime_ms") if type(data) is dict else None
    return ts if type(ts) is int else None


def _encoded_event_time(encoded: Any) -> int | None:
    """:func:`event_time` of an encoded event, decoding only that field."""
    try:
        data = _decode_event_time(encoded).data
    except msgspec.ValidationError:  # the event or its data is not an object
        return event_time(jsonio.loads(encoded))
    ts = None if data is None else data.timestamp_unixtime_ms
    return ts if type(ts) is int else None


def _content(batch: ReplayBatch) -> tuple[list[Any], Iterable[int | None], dict[str, Any]]:
    """A batch's events, each encoded (from a body: a slice of it, never decoded whole), their times and
    its restored user attributes."""
    if batch.payload is None and batch.body is not None:  # as the send stage reads a stage file
        content = _decode_content(batch.body)
        events = content.events or []
        return events, map(_encoded_event_time, events), content.user_attributes or {}
    payload = batch.decoded_payload()
    events = payload.get("events") or []
    return [jsonio.dumps(event) for event in events], map(event_time, events), payload.get("user_attributes") or {}


def _envelope_prefix(batch: ReplayBatch) -> bytes:
    """The start of an encoded batch with ``batch``'s envelope: ``{`` and its envelope fields in order,
    each followed by a comma; a batch is this, then ``"events":[...]``, its user attributes and ``}``."""
    if batch.payload is None and batch.body is not None:  # as the send stage reads a stage file
        fields = _decode_fields(batch.body)  # in the body's order, values as they are
        prefix = _body_prefix(batch.body, fields)
        if prefix is not None:
            return prefix
        parts = [jsonio.dumps(name) + b":" + bytes(raw) for name, raw in fields.items() if name not in CONTENT_FIELDS]
    else:
        parts = [
            jsonio.dumps(name) + b":" + jsonio.dumps(value)
            for name, value in batch.decoded_payload().items()
            if name not in CONTENT_FIELDS
        ]
    return b"{" + b"".join(part + b"," for part in parts)


# What each content field adds to a body after its value's JSON: its name, quoted, a colon, a comma.
_TAIL = {"events": len(b'"events":'), "user_attributes": len(b',"user_attributes":')}
_TAIL["source_request_id"] = len(b',"source_request_id":')


def _body_prefix(body: bytes, fields: dict[str, msgspec.Raw]) -> bytes | None:
    """The envelope prefix of a body laid out as every body this package encodes (the envelope's
    fields, then ``events``, then ``user_attributes`` and ``source_request_id`` if present; compact,
    plain ASCII names, no key twice): a slice of the body, found from the lengths of the content fields'
    values, never by searching for ``"events":`` (a nested key could spell it too). None for any other
    body (then the caller encodes the envelope field by field): the parts' lengths must add up to the
    body's, which only a compact body of plain distinct names does."""
    if 2 + sum(map(len, fields)) + sum(map(len, fields.values())) + 4 * len(fields) - 1 != len(body):
        return None  # whitespace, a name with escapes or non-ASCII, or a key twice
    tail = 1  # the closing brace
    content = 0
    for name in reversed(fields):
        if name not in _TAIL:
            return None  # an envelope field after the content
        content += 1
        tail += _TAIL[name] + len(fields[name])
        if name == "events":
            break
    else:
        return None
    if sum(name in fields for name in _TAIL) != content:
        return None  # a content field before the events
    end = len(body) - tail
    if end < 1 or body[end : end + _TAIL["events"]] != b'"events":' or body[end - 1 : end] not in (b"{", b","):
        return None
    return body[:end]


def _same_envelope(prefix: bytes, other: bytes) -> bool:
    return prefix == other or _canonical_envelope(prefix) == _canonical_envelope(other)


def _unchanged(replay: Replay, counts: Counter[str]) -> CoalescedGroup:
    """A record's batches as the transform built them, one to one."""
    batches = []
    for batch in replay.batches:
        body = batch.encoded()
        batches.append(CoalescedBatch(((replay.ref, batch.replay_keys),), batch.replay_keys, body, len(body)))
    replay.batches = []
    counts["batches_before_coalescing"] += len(batches)
    counts["batches_after_coalescing"] += len(batches)
    return CoalescedGroup(_route(replay), [replay], batches, replay_context_hash(replay))


class _Event(msgspec.Struct):
    order: tuple[bool, int, str, int, int, int, int]
    key: str
    ref: RecordRef
    encoded: Any  # the event's JSON (a msgspec.Raw slice of its batch's body, or bytes)


class _Attributes(msgspec.Struct):
    """One record's restored user attributes (one replay key), reduced to the names it wins."""

    recency: tuple[int, int, str, int, int]
    key: str
    ref: RecordRef
    attributes: dict[str, Any]
    host: int = -1  # for a unit with no name left: the unit whose batch delivers its key
    batch: int = -1  # the batch it is placed in


def _merge(members: list[Replay], salt: str, counts: Counter[str]) -> CoalescedGroup:
    """Merge one envelope's records. Events are never decoded: each is its JSON as the transform encoded
    it, and the merged batch is their concatenation (msgspec's compact JSON of an object is the
    concatenation of its members' encodings: the same bytes as encoding the merged payload)."""
    prefix = _envelope_prefix(members[0].batches[0])
    events: list[_Event] = []
    units: list[_Attributes] = []
    loose: list[tuple[RecordRef, ReplayBatch]] = []  # a batch whose envelope differs from the group's
    before = 0
    for replay in members:
        ref = replay.ref
        place = (ref.object_key, ref.line, ref.part)
        newest: int | None = None
        record_units: list[_Attributes] = []
        for batch_index, batch in enumerate(replay.batches):
            before += 1
            if batch_index and not _same_envelope(_envelope_prefix(batch), prefix):
                loose.append((ref, batch))  # cannot happen with the transform's batches; kept safe
                continue
            batch_events, times, batch_attributes = _content(batch)
            for event_index, (key, encoded, ts) in enumerate(zip(batch.replay_keys, batch_events, times, strict=False)):
                if ts is not None and (newest is None or ts > newest):
                    newest = ts
                order = (ts is None, ts or 0, *place, batch_index, event_index)
                events.append(_Event(order, key, ref, encoded))
            for index, key in enumerate(batch.replay_keys[len(batch_events) :]):
                attributes = batch_attributes if index == 0 else {}
                record_units.append(_Attributes((0, 0, "", 0, 0), key, ref, dict(attributes)))
        received = exact_int(replay.batch.get("timestamp_unixtime_ms"))
        latest = received if received is not None else newest if newest is not None else -1
        for unit in record_units:
            unit.recency = (latest, newest if newest is not None else -1, *place)
        units.extend(record_units)
        replay.batches = []  # released: the group's batches deliver everything
    events.sort(key=lambda item: item.order)
    units.sort(key=lambda unit: unit.recency)
    names = _latest_wins(units, counts)

    batches = _pack(prefix, events, units, names, salt)
    for ref, batch in loose:
        body = batch.encoded()
        batches.append(CoalescedBatch(((ref, batch.replay_keys),), batch.replay_keys, body, len(body)))
    counts["batches_before_coalescing"] += before
    counts["batches_after_coalescing"] += len(batches)
    shared = {ref for batch in batches if len(batch.members) > 1 for ref, _ in batch.members}
    counts["records_coalesced"] += len(shared)
    return CoalescedGroup(_route(members[0]), members, batches, replay_context_hash(members[0]))


def _latest_wins(units: list[_Attributes], counts: Counter[str]) -> int:
    """Keep in each unit (sorted oldest first) only the names no later unit carries; return the number
    of distinct names. A unit left with no name delivers its key with the unit that won its first name."""
    winner: dict[str, int] = {}
    superseded = 0
    for index in range(len(units) - 1, -1, -1):
        unit = units[index]
        original = unit.attributes
        kept = {name: value for name, value in original.items() if name not in winner}
        superseded += len(original) - len(kept)
        if original and not kept:
            unit.host = winner[next(iter(original))]
        for name in kept:
            winner[name] = index
        unit.attributes = kept
    if superseded:
        counts["user_attributes_superseded"] += superseded
    return len(winner)


def _pack(prefix: bytes, events: list[_Event], units: list[_Attributes], names: int, salt: str) -> list[CoalescedBatch]:
    """The group's batches: one when everything fits (nearly always), else split by size and names."""
    if names <= limits.MAX_USER_ATTRIBUTES:
        for unit in units:
            unit.batch = 0
        encoded = _encode(prefix, events, units)
        if len(encoded) + _REQUEST_ID_BYTES <= limits.MAX_BATCH_BYTES:
            return [_batch(encoded, events, units, salt)]

    # Split: events in time order, greedily, each batch within the size limit (sizes are exact upper
    # bounds: the parts of a JSON object add up); then each record's user attributes, whole, into the
    # first batch with room for its names and bytes, else into a batch of their own.
    base = len(prefix) + len(b'"events":[]}') + _REQUEST_ID_BYTES
    room = limits.MAX_BATCH_BYTES
    parts: list[list[_Event]] = []
    sizes: list[int] = []
    current: list[_Event] = []
    size = base
    for item in events:
        cost = len(item.encoded) + 1
        if current and size + cost > room:
            parts.append(current)
            sizes.append(size)
            current, size = [], base
        current.append(item)
        size += cost
    if current:
        parts.append(current)
        sizes.append(size)
    counted = [0] * len(parts)
    for unit in units:
        if not unit.attributes:
            continue
        cost = _USER_ATTRIBUTES_FIELD + len(jsonio.dumps(unit.attributes))
        for index in range(len(parts)):
            if counted[index] + len(unit.attributes) <= limits.MAX_USER_ATTRIBUTES and sizes[index] + cost <= room:
                break
        else:
            index = len(parts)
            parts.append([])
            sizes.append(base)
            counted.append(0)
        unit.batch = index
        sizes[index] += cost
        counted[index] += len(unit.attributes)
    for unit in units:
        if not unit.attributes:
            unit.batch = units[unit.host].batch if unit.host >= 0 else 0
    if not parts:
        parts.append([])
    batches = []
    for index, part in enumerate(parts):
        placed = [unit for unit in units if unit.batch == index]
        batches.append(_batch(_encode(prefix, part, placed), part, placed, salt))
    return batches


def _encode(prefix: bytes, events: list[_Event], units: list[_Attributes]) -> bytes:
    """The encoded batch (without its ``source_request_id``): the envelope, the events in order, then the
    units' user attributes merged, exactly as encoding that payload would give."""
    encoded = prefix + b'"events":[' + b",".join(item.encoded for item in events) + b"]"
    merged = {name: value for unit in units for name, value in unit.attributes.items()}
    if merged:
        encoded += b',"user_attributes":' + jsonio.dumps(merged)
    return encoded + b"}"


def _batch(encoded: bytes, events: list[_Event], units: list[_Attributes], salt: str) -> CoalescedBatch:
    keys = [item.key for item in events] + [unit.key for unit in units]
    request_id = _request_id(_COALESCED, salt, jsonio.dumps(sorted(keys)))
    body = _with_request_id(encoded, request_id)
    by_ref: dict[RecordRef, list[str]] = {}
    for item in events:
        by_ref.setdefault(item.ref, []).append(item.key)
    for unit in units:
        by_ref.setdefault(unit.ref, []).append(unit.key)
    members = tuple(
        (ref, tuple(member_keys))
        for ref, member_keys in sorted(
            by_ref.items(), key=lambda item: (item[0].object_key, item[0].line, item[0].part)
        )
    )
    attribute_names = tuple((unit.key, tuple(unit.attributes)) for unit in units)
    return CoalescedBatch(members, tuple(keys), body, len(body), attribute_names)


def split_members(batch: CoalescedBatch) -> tuple[CoalescedBatch, CoalescedBatch] | None:
    """A merged batch the API refused, cut in two halves by its members (the first ``n // 2`` members, in
    their order, and the rest), each with its members' events, in order, and user attributes; None for a
    batch of one member (nothing left to cut: that record is what the API refuses).

    Deterministic: the same batch always gives the same halves, with the same ``source_request_id``
    (the sha256 of the refused batch's id and the half's sorted keys), so a retry or a later run that
    resends the refused batch (:mod:`.journal`) and cuts it again sends halves mParticle can drop as
    repeats. Each half is no larger than the batch it comes from.
    """
    if len(batch.members) < 2:
        return None
    middle = len(batch.members) // 2
    return _part(batch, batch.members[:middle]), _part(batch, batch.members[middle:])


def parts_to_resend(batch: CoalescedBatch, accepted: Set[str], refused: Set[str] = frozenset()) -> list[CoalescedBatch]:
    """What of ``batch`` (sent before, its answer maybe lost) to send again, given the keys ``accepted``
    since (in the ledger) and the ids of the batches ``refused`` since: the batch itself, verbatim, when
    nothing of it was answered; nothing when all of it was; else its halves (:func:`split_members`),
    recursively: the very batches its refusal had been cut into, so that those mParticle accepted are
    dropped as repeats, those it refused are not sent again, and the rest goes out once."""
    if refused and request_id_of(batch) in refused:
        return []
    done = sum(key in accepted for key in batch.replay_keys)
    if done == len(batch.replay_keys):
        return []
    if done == 0 and not refused:
        return [batch]
    halves = split_members(batch)
    if halves is None:
        return [batch]
    parts = [part for half in halves for part in parts_to_resend(half, accepted, refused)]
    if done == 0 and parts == list(halves):  # no part of it was answered: the batch as it was sent
        return [batch]
    return parts


_REQUEST_ID_TAIL = b'"source_request_id":"'


def request_id_of(batch: CoalescedBatch) -> str:
    """A batch's ``source_request_id`` (the last field of every body this package builds)."""
    body = batch.body
    start = len(body) - 38 - len(_REQUEST_ID_TAIL)
    if body.endswith(b'"}') and body[start : start + len(_REQUEST_ID_TAIL)] == _REQUEST_ID_TAIL:
        return body[-38:-2].decode()
    return str(batch.payload.get("source_request_id") or "")


def _part(batch: CoalescedBatch, members: tuple[tuple[RecordRef, tuple[str, ...]], ...]) -> CoalescedBatch:
    """The part of ``batch`` that ``members`` contribute, with its own ``source_request_id``."""
    keep = {key for _, keys in members for key in keys}
    original = batch.payload  # decoded once
    payload = {name: value for name, value in original.items() if name not in CONTENT_FIELDS}
    events = original.get("events") or []
    payload["events"] = [event for key, event in zip(batch.replay_keys, events, strict=False) if key in keep]
    attribute_keys = [key for key in batch.replay_keys[len(events) :] if key in keep]
    if attribute_keys and "user_attributes" in original:
        attributes = original["user_attributes"]
        if batch.attribute_names:
            names = {name for key, names in batch.attribute_names if key in keep for name in names}
            attributes = {name: value for name, value in attributes.items() if name in names}
        if attributes:
            payload["user_attributes"] = attributes
    keys = tuple(key for key in batch.replay_keys if key in keep)
    parent = str(original.get("source_request_id") or "")
    payload["source_request_id"] = _request_id(_COALESCED + ":split", parent, jsonio.dumps(sorted(keys)))
    body = jsonio.dumps(payload)
    attribute_names = tuple((key, names) for key, names in batch.attribute_names if key in keep)
    return CoalescedBatch(members, keys, body, len(body), attribute_names)
