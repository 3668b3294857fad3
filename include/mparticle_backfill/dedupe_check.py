"""Dedupe check: never send what the API already accepted, nor the same batch twice in a partition.

Replay keys are stable: ``<original batch id>:<event id>`` per event and
``<original batch id>:user_attributes`` for the restored user attributes. The ledger is the set of keys
the API accepted in earlier runs. Lookups are set membership, streamed record by record: memory grows
with the ledger and the number of distinct batches, never with the payloads.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator

from . import jsonio, stage_codec
from .accounting import Step, Summary, advance
from .model import ALREADY_REPLAYED, CONTENT_FIELDS, Replay, ReplayBatch
from .transform import source_request_id

IN_LEDGER = "in_ledger"
DUPLICATE_IN_PARTITION = "duplicate_in_partition"


class DedupeCheck:
    """Drops already-replayed keys and repeated batches.

    :param ledger_keys: replay keys accepted by the API in earlier runs of this partition.
    :param force: resend what the ledger holds (duplicates inside the partition are still dropped).
    :param request_id_salt: as in :class:`.transform.TransformSettings`, for rebuilt batches.
    """

    def __init__(self, ledger_keys: Iterable[str] = (), *, force: bool = False, request_id_salt: str = "") -> None:
        self.ledger = frozenset(() if force else ledger_keys)
        self.request_id_salt = request_id_salt
        self._seen_batches: set[str] = set()

    def keeps_whole(self, identity: str, batch_keys: list[tuple[str, ...]]) -> bool:
        """Whether :meth:`check` would keep a record with these batches (replay keys) as it is; if so the
        record counts as seen, as :meth:`check` would count it. Nothing changes when it would not."""
        if not batch_keys or identity in self._seen_batches:
            return False
        ledger = self.ledger
        if ledger and any(key in ledger for keys in batch_keys for key in keys):
            return False
        self._seen_batches.add(identity)
        return True

    def check(self, replay: Replay, counts: Counter[str]) -> Replay:
        """Keep only the batches (and parts of batches) of ``replay`` not replayed before."""
        if not replay.batches:
            return replay
        if replay.identity in self._seen_batches:
            counts[f"batches_dropped:{DUPLICATE_IN_PARTITION}"] += len(replay.batches)
            replay.trail.append((ALREADY_REPLAYED, DUPLICATE_IN_PARTITION))
            replay.batches = []
            return replay
        self._seen_batches.add(replay.identity)
        if not self.ledger:
            return replay
        kept: list[ReplayBatch] = []
        for batch in replay.batches:
            done = [key in self.ledger for key in batch.replay_keys]
            if not any(done):
                kept.append(batch)
                continue
            counts["keys_in_ledger"] += sum(done)
            replay.trail.append((ALREADY_REPLAYED, IN_LEDGER))
            if all(done):
                counts[f"batches_dropped:{IN_LEDGER}"] += 1
                continue
            kept.append(without_keys(replay.identity, batch, done, self.request_id_salt))
        replay.batches = kept
        return replay


def without_keys(identity: str, batch: ReplayBatch, done: list[bool], request_id_salt: str = "") -> ReplayBatch:
    """The batch minus its parts whose keys are ``done`` (in the ledger), with a new source_request_id."""
    original = batch.decoded_payload()
    payload = {k: v for k, v in original.items() if k not in CONTENT_FIELDS}
    events = original.get("events") or []
    keys: list[str] = []
    kept_events = []
    for key, event, already in zip(batch.replay_keys, events, done, strict=False):
        if not already:
            keys.append(key)
            kept_events.append(event)
    payload["events"] = kept_events
    for key, already in zip(batch.replay_keys[len(events) :], done[len(events) :], strict=True):
        if not already:
            keys.append(key)
            payload["user_attributes"] = original["user_attributes"]
    payload["source_request_id"] = source_request_id(identity, payload, request_id_salt)
    return ReplayBatch(tuple(keys), payload, len(jsonio.dumps(payload)))


def dedupe_step(check: DedupeCheck, summary: Summary) -> Step:
    """The check as one step of a record's way through the stages."""
    return lambda replay: check.check(replay, summary.counts)


def dedupe_replays(replays: Iterable[Replay], check: DedupeCheck, summary: Summary) -> Iterator[Replay]:
    """The dedupe_check stage: drop what was replayed before; records with nothing left end here."""
    return advance(replays, (dedupe_step(check, summary),), summary)


def dedupe_frames(frames: Iterable[bytes], check: DedupeCheck, summary: Summary) -> Iterator[bytes]:
    """:func:`dedupe_replays` on stage-file frames (:mod:`.stage_codec`), with the same outcome and
    counts: a record kept whole (most are) passes on as its frame, undecoded but for its identity and
    replay keys; the others are decoded, checked and encoded again."""
    for frame in frames:
        keys = stage_codec.frame_keys(frame)
        if keys is not None and check.keeps_whole(*keys):
            yield frame
            continue
        for replay in dedupe_replays((stage_codec.decode_frame(frame),), check, summary):
            yield stage_codec.encode_replay(replay)
