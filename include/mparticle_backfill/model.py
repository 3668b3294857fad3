"""The records that flow between stages: where a record came from, and what of it is replayed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from msgspec import Struct, field

from . import jsonio

# Outcomes a record can end in, best first: a record ends in the best outcome any part of it reached,
# so a record whose events were partly replayed counts as replayed (its other parts are still
# dead-lettered and counted at event level).
REPLAYED = "replayed"
HELD = "held"  # would be blocked again by the data plan: kept back, sent by a later run once the plan allows it
DEAD_LETTERED = "dead_lettered"
ALREADY_REPLAYED = "already_replayed"
TOO_OLD = "too_old"
NOTHING_TO_REPLAY = "nothing_to_replay"
OUTCOMES: tuple[str, ...] = (REPLAYED, HELD, DEAD_LETTERED, ALREADY_REPLAYED, TOO_OLD, NOTHING_TO_REPLAY)
_RANK = {outcome: rank for rank, outcome in enumerate(OUTCOMES)}

# What a selected event is replayed for.
BLOCKED_EVENT = "blocked_event"
RESTORED_ATTRIBUTES = "restored_attributes"


class RecordRef(Struct, frozen=True):
    """Where a record came from: object key, 1-based line and, for concatenated JSON, the part."""

    object_key: str
    line: int
    part: int = 0

    def __str__(self) -> str:
        return f"{self.object_key}:{self.line}" + (f"#{self.part}" if self.part else "")

    def to_json(self) -> list[Any]:
        return [self.object_key, self.line, self.part]

    @classmethod
    def from_json(cls, value: list[Any]) -> RecordRef:
        return cls(value[0], int(value[1]), int(value[2]))


class BlockMetadata(Struct, frozen=True):
    """``context.data_plan.block_metadata`` of a quarantine record, ids normalised to strings."""

    blocked_event_ids: frozenset[str]
    blocked_event_attributes: dict[str, tuple[str, ...]]
    blocked_user_attributes: tuple[str, ...]
    blocked_user_identities: tuple[str, ...]
    blocked_device_identities: tuple[str, ...]


class QuarantineRecord(Struct):
    """One line of a quarantine object: a whole original batch and what of it was blocked."""

    ref: RecordRef
    batch: dict[str, Any]
    block: BlockMetadata
    identity: str


class BadRecord(Struct, frozen=True):
    """A line that cannot be a quarantine record. ``raw`` is the line as read (for the dead letter)."""

    ref: RecordRef
    reason: str
    detail: str
    raw: str


class SelectedEvent(Struct):
    """An event chosen for replay, with why."""

    event: dict[str, Any]
    event_id: str
    kind: str
    restored_attributes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"event": self.event, "id": self.event_id, "kind": self.kind, "restored": self.restored_attributes}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> SelectedEvent:
        return cls(value["event"], value["id"], value["kind"], tuple(value["restored"]))


class Replay(Struct):
    """What one quarantine record contributes to the backfill, as it moves through the stages.

    ``batch`` is the original batch without its events (the selected ones, normalised, are in
    ``events``). ``trail`` keeps every (outcome, reason) of the parts dropped on the way, so the
    record's final outcome and the event-level counts can be told at the end whatever stage dropped
    what. ``batches`` is filled by the transform stage. ``context_hash`` is the hash of the original
    batch's user context (:func:`.coalesce.user_context_hash`), set when the transform shards the record
    and kept in the stage files, so that later stages can place a record without decoding it whole.
    """

    ref: RecordRef
    identity: str
    batch: dict[str, Any]
    events: list[SelectedEvent]
    user_attributes: dict[str, Any]
    trail: list[tuple[str, str]] = field(default_factory=list)
    batches: list[ReplayBatch] = field(default_factory=list)
    route: str = ""  # the Events API connection its batches go to ("": the send task's default)
    context_hash: int | None = None

    @property
    def empty(self) -> bool:
        return not self.events and not self.user_attributes and not self.batches

    def outcome(self) -> tuple[str, str]:
        """The record's outcome so far, from what its parts met (best outcome first)."""
        trail = self.trail
        if len(trail) == 1:
            return trail[0]
        if not trail:
            return (NOTHING_TO_REPLAY, "nothing_selected")
        return min(trail, key=lambda item: _RANK[item[0]])

    def to_json(self) -> dict[str, Any]:
        return {
            "ref": self.ref.to_json(),
            "identity": self.identity,
            "batch": self.batch,
            "events": [event.to_json() for event in self.events],
            "user_attributes": self.user_attributes,
            "trail": [list(item) for item in self.trail],
            "batches": [batch.to_json() for batch in self.batches],
            "route": self.route,
            "context_hash": self.context_hash,
        }

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> Replay:
        return cls(
            ref=RecordRef.from_json(value["ref"]),
            identity=value["identity"],
            batch=value["batch"],
            events=[SelectedEvent.from_json(event) for event in value["events"]],
            user_attributes=value["user_attributes"],
            trail=[(item[0], item[1]) for item in value["trail"]],
            batches=[ReplayBatch.from_json(batch) for batch in value["batches"]],
            route=value.get("route", ""),
            context_hash=value.get("context_hash"),
        )


class ReplayBatch(Struct):
    """One batch ready for the Events API, and the replay keys it delivers.

    In memory the transform gives a batch both its ``payload`` and its encoded ``body`` (what is sent).
    A stage file holds the ``body`` only (:meth:`stage_form`). The send stage reads it so (``payload``
    None): coalescing merges bodies without decoding their events, and :meth:`decoded_payload` decodes
    one when, rarely, it must. Every other reader gets ``payload`` decoded from the body.
    """

    replay_keys: tuple[str, ...]
    payload: dict[str, Any] | None
    size: int = 0
    body: bytes | None = None  # the encoded payload, when already made

    def decoded_payload(self) -> dict[str, Any]:
        """The payload, decoded from the body if this batch was read without it."""
        if self.payload is not None:
            return self.payload
        if self.body is None:
            raise ValueError("a replay batch with neither payload nor body")
        return jsonio.loads(self.body)

    def encoded(self) -> bytes:
        """The body, encoded from the payload if it was not yet."""
        return self.body if self.body is not None else jsonio.dumps(self.payload)

    def stage_form(self) -> ReplayBatch:
        """This batch as a stage file holds it: its body and size, no payload."""
        if self.payload is None:
            return self
        body = self.encoded()
        return ReplayBatch(self.replay_keys, None, len(body), body)

    def to_json(self) -> dict[str, Any]:
        return {"keys": list(self.replay_keys), "payload": self.decoded_payload(), "size": self.size}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> ReplayBatch:
        return cls(tuple(value["keys"]), value["payload"], value["size"])


# Payload fields that are a batch's content; every other field is its envelope (who, where, how).
CONTENT_FIELDS = frozenset({"events", "user_attributes", "source_request_id"})


class DeadLetter(Struct, frozen=True):
    """Something that will not be replayed and needs a person: what it is, where from, and why."""

    ref: RecordRef
    stage: str
    reason: str
    detail: str
    content: Any

    def to_json(self) -> dict[str, Any]:
        return {
            "source": str(self.ref),
            "stage": self.stage,
            "reason": self.reason,
            "detail": self.detail,
            "content": self.content,
        }


DeadLetterSink = Callable[[DeadLetter], None]
