"""The encoding of replays in the stage files handed between tasks: typed msgpack frames.

Between the DAG's tasks every replay is written once and read once per hop (four hops), so the encoding
is on the hot path. gzip NDJSON cost ~56 µs per replay and hop (encode, compress, decompress, decode); a
:class:`.Replay` Struct encoded by msgspec's msgpack and decoded straight back into the Struct, with the
stream compressed by zstd level 1 (in the Airflow package's stage file writer), costs ~22 µs, in smaller
files (``bench/bench_stage_files.py``).

A frame is a 1-byte kind, a 4-byte big-endian length and the body. Kind ``M``: msgpack of the Replay.
Kind ``J``: the Replay's JSON (:meth:`.Replay.to_json`), for the rare record msgpack cannot hold (an
integer beyond 64 bits, which JSON keeps exactly). A replay batch is written as its ``body`` (the JSON
the transform encoded, as it is sent), not its payload: the send stage merges bodies without decoding
them (:mod:`.coalesce`), and the other readers decode the payload from the body.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

import msgspec

from . import jsonio
from .model import RecordRef, Replay, ReplayBatch

SUFFIX = ".msgpack.zst"
_HEADER = struct.Struct(">cI")
_MSGPACK, _JSON = b"M", b"J"
_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(Replay).decode


class _Placement(msgspec.Struct):
    """The field of a Replay frame that places it in a slice; decoding it skips the rest unbuilt (~1 µs
    against ~6 µs for the whole record)."""

    context_hash: int | None = None


_decode_placement = msgspec.msgpack.Decoder(_Placement).decode


class _BatchKeys(msgspec.Struct):
    replay_keys: tuple[str, ...]


class _Keys(msgspec.Struct):
    """What the dedupe check needs of a Replay frame: its identity and its batches' replay keys."""

    identity: str
    batches: list[_BatchKeys] = []


_decode_keys = msgspec.msgpack.Decoder(_Keys).decode


class _Received(msgspec.Struct):
    """What the send stage reads of a record's original batch: when mParticle received it (coalescing's
    "latest original batch wins"). Decoding skips the rest unbuilt."""

    timestamp_unixtime_ms: Any = None


class _SendReplay(msgspec.Struct):
    """A Replay frame as the send stage reads it: every field it uses, the original batch reduced to
    :class:`_Received` (the selected events and user attributes are empty after the transform)."""

    ref: RecordRef
    identity: str
    batch: _Received
    events: list[msgspec.Raw] = []  # empty after the transform; if not, the frame is decoded whole
    user_attributes: dict[str, msgspec.Raw] = {}
    trail: list[tuple[str, str]] = []
    batches: list[ReplayBatch] = []
    route: str = ""
    context_hash: int | None = None


_decode_for_send = msgspec.msgpack.Decoder(_SendReplay).decode


class _Time(msgspec.Struct):
    timestamp_unixtime_ms: Any = None


class EventTime(msgspec.Struct):
    """An event reduced to its ``data.timestamp_unixtime_ms`` (what the age filter and coalescing's
    ordering read); decoding skips the rest. An event or ``data`` that is not a map fails to decode:
    the caller decodes it whole."""

    data: _Time | None = None


class _SelectedTime(msgspec.Struct):
    event: EventTime


class _Ages(msgspec.Struct):
    """What the age filter reads of a Replay frame: the times of its events and of its original batch."""

    batch: _Received
    events: list[_SelectedTime] = []
    user_attributes: dict[str, msgspec.Raw] = {}


_decode_ages = msgspec.msgpack.Decoder(_Ages).decode


class CorruptStageFile(ValueError):
    """A stage file that ends inside a frame or holds an unknown kind: written by no task of this version."""


def encode_replay(replay: Replay) -> bytes:
    """One frame holding ``replay``; its batches as their bodies (:meth:`.ReplayBatch.stage_form`)."""
    if replay.batches:
        replay = msgspec.structs.replace(replay, batches=[batch.stage_form() for batch in replay.batches])
    try:
        body, kind = _encode(replay), _MSGPACK
    except OverflowError:  # an integer msgpack cannot hold: JSON keeps it exactly
        body, kind = jsonio.dumps(replay.to_json()), _JSON
    return _HEADER.pack(kind, len(body)) + body


def iter_frames(stream: BinaryIO, name: str = "stage file") -> Iterator[bytes]:
    """The frames of a stream, whole (header and body) and undecoded: to copy them elsewhere as they are."""
    read = stream.read
    while True:
        header = read(_HEADER.size)
        if not header:
            return
        if len(header) < _HEADER.size:
            raise CorruptStageFile(f"{name}: ends inside a frame header")
        kind, length = _HEADER.unpack(header)
        if kind not in (_MSGPACK, _JSON):
            raise CorruptStageFile(f"{name}: unknown frame kind {kind!r}")
        body = read(length)
        if len(body) < length:
            raise CorruptStageFile(f"{name}: ends inside a frame ({len(body)} of {length} bytes)")
        yield header + body


def decode_frame(frame: bytes) -> Replay:
    """The replay of one whole frame (as :func:`iter_frames` yields it)."""
    body = memoryview(frame)[_HEADER.size :]
    return _decode_whole(body) if frame[:1] == _MSGPACK else Replay.from_json(jsonio.loads(bytes(body)))


def _decode_whole(body: bytes | memoryview) -> Replay:
    """A msgpack frame's replay, each batch's payload decoded from its body (the frame holds the body)."""
    replay = _decode(body)
    for batch in replay.batches:
        if batch.payload is None:
            batch.payload = batch.decoded_payload()
    return replay


def frame_context_hash(frame: bytes) -> int | None:
    """The ``context_hash`` a frame's replay carries, without decoding the replay (None if it has none)."""
    if frame[:1] == _MSGPACK:
        return _decode_placement(memoryview(frame)[_HEADER.size :]).context_hash
    return decode_frame(frame).context_hash


def frame_keys(frame: bytes) -> tuple[str, list[tuple[str, ...]]] | None:
    """A frame's replay identity and the replay keys of each of its batches, without decoding the rest of
    the replay; None for a JSON frame (decode it whole)."""
    if frame[:1] != _MSGPACK:
        return None
    keys = _decode_keys(memoryview(frame)[_HEADER.size :])
    return keys.identity, [batch.replay_keys for batch in keys.batches]


def frame_ages(frame: bytes) -> tuple[Any, list[Any], bool] | None:
    """A frame's original batch ``timestamp_unixtime_ms`` (as written), its selected events'
    ``data.timestamp_unixtime_ms`` (None where absent) and whether it has user attributes, without
    decoding the rest; None for a frame to decode whole (JSON, or an event whose ``data`` is not a map)."""
    if frame[:1] != _MSGPACK:
        return None
    try:
        ages = _decode_ages(memoryview(frame)[_HEADER.size :])
    except msgspec.ValidationError:
        return None
    times = [None if item.event.data is None else item.event.data.timestamp_unixtime_ms for item in ages.events]
    return ages.batch.timestamp_unixtime_ms, times, bool(ages.user_attributes)


def iter_replays(stream: BinaryIO, name: str = "stage file") -> Iterator[Replay]:
    """The replays of a stream of frames, one at a time."""
    return _iter(stream, name, _decode_whole)


def iter_replays_for_send(stream: BinaryIO, name: str = "stage file") -> Iterator[Replay]:
    """:func:`iter_replays` for the send stage: each replay's original batch (``Replay.batch``) holds only
    its ``timestamp_unixtime_ms``, the one field of it that sending and coalescing read, and its replay
    batches hold their body, not their payload (coalescing merges bodies;
    :meth:`.ReplayBatch.decoded_payload` decodes one when it must). The original batch's identities,
    device info, context and block metadata and the batches' payloads are most of a decoded record:
    skipping them divides the memory of a slice and the time to decode it (``bench/bench_worker.py``)."""
    return _iter(stream, name, _send_replay)


def _send_replay(body: bytes) -> Replay:
    lean = _decode_for_send(body)
    if lean.events or lean.user_attributes:  # not written by the transform: keep everything
        return _decode_whole(body)
    received = lean.batch.timestamp_unixtime_ms
    return Replay(
        ref=lean.ref,
        identity=lean.identity,
        batch={} if received is None else {"timestamp_unixtime_ms": received},
        events=[],
        user_attributes={},
        trail=lean.trail,
        batches=lean.batches,
        route=lean.route,
        context_hash=lean.context_hash,
    )


def _iter(stream: BinaryIO, name: str, decode: Callable[[bytes], Replay]) -> Iterator[Replay]:
    read = stream.read
    while True:
        header = read(_HEADER.size)
        if not header:
            return
        if len(header) < _HEADER.size:
            raise CorruptStageFile(f"{name}: ends inside a frame header")
        kind, length = _HEADER.unpack(header)
        body = read(length)
        if len(body) < length:
            raise CorruptStageFile(f"{name}: ends inside a frame ({len(body)} of {length} bytes)")
        if kind == _MSGPACK:
            yield decode(body)
        elif kind == _JSON:
            yield Replay.from_json(jsonio.loads(body))
        else:
            raise CorruptStageFile(f"{name}: unknown frame kind {kind!r}")
