"""Send journal: every batch is written down before it is sent, so that one whose answer was lost is sent
again verbatim (same body, same ``source_request_id``) and never rebuilt under another id.

Why. mParticle drops a repeated batch only when its ``source_request_id`` is the same. A merged batch's id
follows from its members (:mod:`.coalesce`), so it is stable for a retry of the same stage file, but not
across runs when the members change: objects uploaded late to the date, the window moving on, held data
released after a plan fix, another ``coalesce`` or ``shards`` setting. If a batch was accepted and its
keys did not reach the ledger (a worker killed, an answer lost after the retries ran out), the next run
would merge its events differently and send them a second time under a new id.

How. The send task appends each batch it is about to send (its body, id, members and keys, route and user
context) to a journal part under the partition's state prefix *before* the first request that carries it.
A batch is **answered** once each of its keys is in the ledger (accepted), or its id (or those of the
parts its refusal was cut into) is in a journal part of refused ids (the API refused it, and it was
dead-lettered). Refusals are kept by id, not by key: a record fixed after a refusal keeps its keys but
gets a new batch, and that batch's journal entry must not look answered. Every send try, of any run, first reads the journal
parts that may hold entries of its shard, and resends what is not answered, verbatim
(:func:`to_resend`): mParticle drops the repeat if the batch had been accepted, else takes it once. Only
then does it coalesce the rest of its shard, minus every key those resends answered; none of that was
ever sent, so its batches may take any make-up. A try whose every batch was answered removes the journal
parts it wrote and read: the journal holds only what a crash left behind, so a normal run reads nothing.

A refused merged batch is cut in halves by its records, recursively, and each half sent alone
(:func:`.coalesce.split_members`, deterministic): a journal entry some of whose keys were answered is
resent as the halves its refusal had been cut into (:func:`.coalesce.parts_to_resend`), so halves
accepted before are dropped as repeats and the rest goes out once.

Entries are placed by their user context hash (a merged batch never mixes user contexts): a part named
for shard P of N may hold entries of the reader shard r of R iff ``P ≡ r (mod gcd(N, R))``
(:func:`.coalesce.ledger_part_may_hold`), and each entry is resent by the one shard its context hash
falls in, whatever the shard counts of the two runs. Part names carry the version of the hash
(:data:`HASH_VERSION`); parts of another version are read by every shard, and their entries resent by
shard 0.
"""

from __future__ import annotations

from collections.abc import Iterable, Set

import msgspec

from .coalesce import CoalescedBatch, parts_to_resend, shard_of
from .errors import BackfillError

# The version of :func:`.coalesce.user_context_hash` that placed a part's keys and entries in shards.
HASH_VERSION = 1


class JournalEntry(msgspec.Struct, frozen=True):
    """One batch as it was (about to be) sent.

    :param route: the Events API connection it goes to ("" for the send task's default).
    :param context_hash: the user context of its records (:func:`.coalesce.user_context_hash`).
    :param hash_version: the version of that hash (:data:`HASH_VERSION`).
    :param batch: the batch: body as sent, members and replay keys.
    """

    route: str
    context_hash: int
    batch: CoalescedBatch
    hash_version: int = HASH_VERSION


class JournalPart(msgspec.Struct, frozen=True):
    """What one journal part holds: the entries written before sending them."""

    entries: list[JournalEntry]


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(JournalPart).decode


class JournalError(BackfillError):
    """A journal part that cannot be read (never skipped: its entries may have been accepted)."""


def encode_part(entries: Iterable[JournalEntry]) -> bytes:
    """A journal part's bytes (msgpack; the Airflow layer compresses it)."""
    return _encode(JournalPart(list(entries)))


def decode_part(data: bytes, where: str) -> list[JournalEntry]:
    """The entries of a journal part; raises :class:`JournalError` naming ``where`` if it is not one."""
    try:
        return _decode(data).entries
    except (msgspec.DecodeError, msgspec.ValidationError) as error:
        raise JournalError(f"{where}: not a send journal part ({error})") from None


def owner_shard(entry: JournalEntry, shards: int) -> int:
    """The shard (of ``shards``) that resends ``entry``: that of its user context, or 0 for an entry
    placed by another version of the hash."""
    if entry.hash_version != HASH_VERSION:
        return 0
    return shard_of(entry.context_hash, shards)


def to_resend(
    entries: Iterable[JournalEntry], accepted: Set[str], refused: Set[str], shard: int, shards: int
) -> list[tuple[str, CoalescedBatch]]:
    """The batches shard ``shard`` of ``shards`` must resend before anything else, as (route, batch).

    An entry is resent by the shard that owns it (:func:`owner_shard`), once (an entry journaled twice,
    by a try that resent it, counts once), in the order journaled, as :func:`.coalesce.parts_to_resend`
    says given the keys ``accepted`` (in the ledger) and the ids of the batches ``refused``.
    """
    seen: set[bytes] = set()
    resend: list[tuple[str, CoalescedBatch]] = []
    for entry in entries:
        if owner_shard(entry, shards) != shard or entry.batch.body in seen:
            continue
        seen.add(entry.batch.body)
        resend.extend((entry.route, part) for part in parts_to_resend(entry.batch, accepted, refused))
    return resend
