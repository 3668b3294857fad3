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
