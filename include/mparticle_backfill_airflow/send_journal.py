"""The send journal in S3 (:mod:`mparticle_backfill.journal`): parts written before their batches are sent,
read by every later try, removed once everything in them was answered."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mparticle_backfill.journal import JournalEntry, decode_part, encode_part, owner_shard
from mparticle_backfill.send import BulkRequest
from mparticle_backfill.settings import StatePaths, ledger_part_wanted, part_owned

if TYPE_CHECKING:
    from .s3_hook import QuarantineS3Hook

log = logging.getLogger(__name__)

# Batches (or bytes of their bodies) written down in one journal part before any of them is sent: one
# PUT per ~2,000 batches (~7 s of sending at 270 batches per second), at most ~8 MB held to write it.
JOURNAL_BATCHES = 2_000
JOURNAL_BYTES = 8_000_000


@dataclass(slots=True)
class JournalState:
    """What the journal of a partition holds for one send shard."""

    entries: list[JournalEntry] = field(default_factory=list)
    refused: set[str] = field(default_factory=set)  # ids of batches the API refused
    parts: list[str] = field(default_factory=list)  # the parts read (keys)
    part_of_entry: list[str] = field(default_factory=list)  # per entry, the part that holds it

    def built_by_run(self, run_prefix: str, shard: int, shards: int) -> int:
        """How many batches earlier tries of this run built for this shard (each once)."""
        bodies = {
            entry.batch.body
            for entry, part in zip(self.entries, self.part_of_entry, strict=True)
            if part.startswith(run_prefix) and owner_shard(entry, shards) == shard
        }
        return len(bodies)


def read_journal(s3: QuarantineS3Hook, bucket: str, prefix: str, shard: int, shards: int) -> JournalState:
    """The journal parts under ``prefix`` that may hold entries of shard ``shard`` of ``shards``, in the
    order they were written (sequence numbers within a try; tries by name)."""
    import zstandard

    state = JournalState()
    for key in sorted(s3.list_keys(bucket_name=bucket, prefix=prefix)):
        if not ledger_part_wanted(key, shard, shards):
            continue
        found = s3.read_object(bucket, key)
        if found is None:  # removed in between by the try that answered it
            continue
        state.parts.append(key)
        if key.endswith(".refused.txt"):
            state.refused.update(line for line in found[0].decode().split("\n") if line)
        elif key.endswith(".sent.msgpack.zst"):
            data = zstandard.ZstdDecompressor().decompressobj().decompress(found[0])
            entries = decode_part(data, f"s3://{bucket}/{key}")
            state.entries.extend(entries)
            state.part_of_entry.extend([key] * len(entries))
    return state


class JournalWriter:
    """Writes the batches of a send try down before they are sent, and the ids of those the API refused.

    :meth:`journaled` wraps the stream of packed requests: it holds back up to :data:`JOURNAL_BATCHES`
    batches, writes them as one part, then lets them go to the client. Part names carry the shard, the
    shard count, the hash version and the try (:meth:`.StatePaths.journal_part`).
    """

    def __init__(
        self, s3: QuarantineS3Hook, bucket: str, paths: StatePaths, shard: int, shards: int, attempt: str
    ) -> None:
        self.s3, self.bucket, self.paths = s3, bucket, paths
        self.shard, self.shards, self.attempt = shard, shards, attempt
        self.sequence = 0
        self.written: list[str] = []
        self.entries = 0
        self.refused_ids: list[str] = []

    def _key(self, kind: str) -> str:
        key = self.paths.journal_part(self.shard, self.shards, self.attempt, self.sequence, kind)
        self.sequence += 1
        return key

    def write(self, entries: list[JournalEntry]) -> None:
        if not entries:
            return
        import zstandard

        key = self._key("sent")
        body = zstandard.ZstdCompressor(level=1).compress(encode_part(entries))
        self.s3.put_bytes(self.bucket, key, body, "application/octet-stream")
        self.written.append(key)
        self.entries += len(entries)

    def journaled(self, requests: Iterable[BulkRequest], route: str) -> Iterator[BulkRequest]:
        """``requests`` as they are, each written to the journal before it is handed on."""
        held: list[BulkRequest] = []
        batches = size = 0
        for request in requests:
            held.append(request)
            batches += len(request.batches)
            size += request.size
            if batches >= JOURNAL_BATCHES or size >= JOURNAL_BYTES:
                self.write(_entries(held, route))
                yield from held
                held, batches, size = [], 0, 0
        self.write(_entries(held, route))
        yield from held

    def refused(self, request_id: str) -> None:
        self.refused_ids.append(request_id)

    def flush_refused(self) -> None:
        """Write the ids of the batches refused since the last flush (after their dead letters are held)."""
        if self.refused_ids:
            key = self._key("refused")
            self.s3.put_bytes(self.bucket, key, ("\n".join(self.refused_ids) + "\n").encode(), "text/plain")
            self.written.append(key)
            self.refused_ids = []

    def remove_answered(self, read: Iterable[str], keep_refused: bool) -> int:
        """Remove the parts this try wrote and the parts of this shard it read: every batch in them was
        answered. ``keep_refused``: keep the parts of refused ids (they answer entries of parts another
        shard count wrote, which this try may not remove). Returns how many parts were removed."""
        removable = [key for key in read if part_owned(key, self.shard, self.shards)] + self.written
        if keep_refused:
            removable = [key for key in removable if not key.endswith(".refused.txt")]
        if removable:
            self.s3.delete_objects(self.bucket, sorted(set(removable)))
        return len(set(removable))


def _entries(requests: list[BulkRequest], route: str) -> list[JournalEntry]:
    entries = []
    for request in requests:
        for batch in request.batches:
            if batch.coalesced is None:  # the operator sends coalesced groups only
                raise TypeError("only coalesced batches are journaled")
            entries.append(JournalEntry(route, batch.context_hash, batch.coalesced))
    return entries
