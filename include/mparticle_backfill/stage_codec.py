"""The encoding of replays in the stage files handed between tasks: typed msgpack frames.

Between the DAG's tasks every replay is written once and read once per hop (four hops), so the encoding
is on the hot path. gzip NDJSON cost ~56 µs per replay and hop (encode, compress, decompress, decode); a
:class:`.Replay` Struct encoded by msgspec's msgpack and decoded straight back into the Struct, with the
stream compressed by zstd level 1 (in the Airflow package's stage file writer), costs ~22 µs, in smaller
files (``bench/bench_stage_files.py``).

A frame is a 1-byte kind, a 4-byte big-endian length and the body. Kind ``M``: msgpack of the Replay.
Kind ``J``: the Replay's JSON (:meth:`.Replay.to_json`), for the rare record msgpack cannot hold (an
integer beyond 64 bits, which JSON keeps exactly). A replay batch's cached ``body`` is not written (the
reader re-encodes it when it is needed, as the JSON path always did).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import BinaryIO

import msgspec

from . import jsonio
from .model import Replay

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


class CorruptStageFile(ValueError):
    """A stage file that ends inside a frame or holds an unknown kind: written by no task of this version."""


def encode_replay(replay: Replay) -> bytes:
    """One frame holding ``replay``."""
    if any(batch.body is not None for batch in replay.batches):
        replay = msgspec.structs.replace(
            replay, batches=[msgspec.structs.replace(batch, body=None) for batch in replay.batches]
        )
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
    return _decode(body) if frame[:1] == _MSGPACK else Replay.from_json(jsonio.loads(bytes(body)))


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


def iter_replays(stream: BinaryIO, name: str = "stage file") -> Iterator[Replay]:
    """The replays of a stream of frames, one at a time."""
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
            yield _decode(body)
        elif kind == _JSON:
            yield Replay.from_json(jsonio.loads(body))
        else:
            raise CorruptStageFile(f"{name}: unknown frame kind {kind!r}")
