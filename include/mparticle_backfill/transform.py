"""Transform: turn what was selected from a record into valid Events API batches of the same user."""

from __future__ import annotations

import hashlib
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from . import jsonio, limits
from .accounting import Step, Summary, advance
from .errors import FixFailed, InvalidSettings
from .fixes import FixRule, apply_fixes
from .model import DEAD_LETTERED, HELD, DeadLetter, DeadLetterSink, Replay, ReplayBatch, SelectedEvent
from .plan_gate import PlanGate
from .routes import NO_ROUTE, Routing
from .values import exact_int

KEEP = "keep"
OMIT = "omit"
STAGE = "transform"
ROUTE_STAGE = "route"  # what no route takes is held, like what the plan would block

# Dead-letter reasons of this stage.
NO_RESOLVABLE_IDENTITY = "no_resolvable_identity"
INVALID_EVENT = "invalid_event"
EVENT_TOO_LARGE = "event_too_large"
INVALID_USER_ATTRIBUTES = "invalid_user_attributes"
INVALID_BATCH = "invalid_batch"
FIX_FAILED = "fix_failed"

# Batch fields carried over from the original as they are.
_KEPT_FIELDS = ("mp_deviceid", "application_info", "consent_state", "integration_attributes")
# Room kept in each batch for "source_request_id" and the keys that join the parts.
_ENVELOPE_SLACK = 128
# What appending the source_request_id adds to an encoded batch.
_REQUEST_ID_BYTES = len(',"source_request_id":""') + 36


@dataclass(frozen=True, slots=True)
class TransformSettings:
    """How replay batches are built.

    :param environment: ``production`` or ``development`` for every batch; None keeps each batch's own.
    :param plan_version: ``"keep"`` the original's, ``"omit"`` it (the active version applies), or an
        int to name the plan version that allows the data.
    :param include_blocked_identities: send blocked user/device identities too (default). The original
        batch was resolved to its user with the whole set; a subset could resolve to another user.
    :param fixes: validated fix rules (:func:`.fixes.compile_rules`).
    :param request_id_salt: mixed into ``source_request_id``; empty for normal runs, so a repeated send
        has the same id and mParticle drops it. A forced resend sets it (else mParticle would drop it).
    :param plan_gate: the data plan check (:mod:`.plan_gate`); None sends without checking.
    :param routing: which connection each record's batches go to (:mod:`.routes`); None: the default.
    """

    environment: str | None = None
    plan_version: str | int = KEEP
    include_blocked_identities: bool = True
    fixes: tuple[FixRule, ...] = ()
    request_id_salt: str = ""
    plan_gate: PlanGate | None = None
    routing: Routing | None = None

    def __post_init__(self) -> None:
        if self.environment is not None and self.environment not in limits.ENVIRONMENTS:
            raise InvalidSettings("environment", f"must be one of {list(limits.ENVIRONMENTS)} or empty")
        version = self.plan_version
        if version not in (KEEP, OMIT) and (isinstance(version, bool) or not isinstance(version, int) or version < 1):
            raise InvalidSettings("plan_version", f"must be 'keep', 'omit' or a version number >= 1, got {version!r}")


def source_request_id(identity: str, payload: dict[str, Any], salt: str = "") -> str:
    """A deterministic id from the original batch and the replayed content (a UUID string).

    It hashes the batch exactly as it is encoded for sending (:func:`.jsonio.dumps`, which keeps the
    order in which the transform builds it), without its own ``source_request_id``: the same record
    replayed again gives the same id, so mParticle drops the repeat.
    """
    content = {k: v for k, v in payload.items() if k != "source_request_id"}
    return _request_id(identity, salt, jsonio.dumps(content))


def _request_id(identity: str, salt: str, encoded: bytes) -> str:
    """The UUID (version 5 layout) of the sha256 of identity, salt and the encoded batch."""
    hasher = hashlib.sha256(identity.encode())
    hasher.update(b"\0" + salt.encode() + b"\0")
    hasher.update(encoded)
    return str(uuid.UUID(bytes=hasher.digest()[:16], version=5))  # sets the version and variant bits


def _with_request_id(encoded: bytes, request_id: str) -> bytes:
    """The encoded batch with its ``source_request_id`` added (``encoded`` is a non-empty object)."""
    return b'%s,"source_request_id":"%s"}' % (encoded[:-1], request_id.encode())


def _block_metadata(batch: dict[str, Any]) -> dict[str, Any]:
    return ((batch.get("context") or {}).get("data_plan") or {}).get("block_metadata") or {}


def has_resolvable_identity(batch: dict[str, Any]) -> bool:
    """Whether the original batch names its user by an mpid or an identity that was not blocked."""
    if exact_int(batch.get("mpid")):  # the mpid the replay will carry (see _envelope); 0 is no user
        return True
    identities = batch.get("user_identities")
    if type(identities) is not dict:
        return False
    blocked = set(_block_metadata(batch).get("blocked_user_identities") or ())
    return any(value not in (None, "") and name not in blocked for name, value in identities.items())


def _envelope(batch: dict[str, Any], settings: TransformSettings) -> dict[str, Any]:
    """Everything of a replay batch except events, user attributes and source_request_id."""
    envelope: dict[str, Any] = {"environment": settings.environment or batch.get("environment")}
    identities = batch.get("user_identities")
    if type(identities) is dict and identities:
        if not settings.include_blocked_identities:
            blocked = set(_block_metadata(batch).get("blocked_user_identities") or ())
            identities = {k: v for k, v in identities.items() if k not in blocked}
        envelope["user_identities"] = identities
    device_info = batch.get("device_info")
    if type(device_info) is dict and device_info:
        if not settings.include_blocked_identities:
            blocked = set(_block_metadata(batch).get("blocked_device_identities") or ())
            device_info = {k: v for k, v in device_info.items() if k not in blocked}
        envelope["device_info"] = device_info
    mpid = exact_int(batch.get("mpid"))
    if mpid:
        envelope["mpid"] = mpid
    for name in _KEPT_FIELDS:
        value = batch.get(name)
        if value is not None and value != "" and value != {} and value != []:
            envelope[name] = value
    if batch.get("ip"):
        envelope["ip"] = batch["ip"]
    context = batch.get("context")
    data_plan = context.get("data_plan") if type(context) is dict else None
    if type(data_plan) is dict and data_plan.get("plan_id"):
        plan: dict[str, Any] = {"plan_id": data_plan["plan_id"]}
        if settings.plan_version == KEEP and data_plan.get("plan_version") is not None:
            plan["plan_version"] = data_plan["plan_version"]
        elif isinstance(settings.plan_version, int):
            plan["plan_version"] = settings.plan_version
        envelope["context"] = {"data_plan": plan}
    return envelope


def _chunks(attributes: dict[str, Any], size: int) -> list[dict[str, Any]]:
    if len(attributes) <= size:
        return [attributes] if attributes else []
    items = list(attributes.items())
    return [dict(items[i : i + size]) for i in range(0, len(items), size)]


def transform(
    replay: Replay,
    settings: TransformSettings,
    counts: Counter[str],
    dead_letter: Callable[[DeadLetter], None],
) -> Replay:
    """Build the replay batches of ``replay`` (``replay.batches``); dead-letter what cannot be valid."""
    if replay.empty:
        return replay
    batch = replay.batch

    def reject(reason: str, detail: str, content: Any, events: int) -> None:
        counts[f"events_dead_lettered:{reason}"] += events
        replay.trail.append((DEAD_LETTERED, reason))
        dead_letter(DeadLetter(replay.ref, STAGE, reason, detail, content))

    if settings.routing is not None and settings.routing.routes:
        route = settings.routing.route_for(batch)
        if route is None:  # no rule matched and unrouted = hold
            counts["events_held:no_route"] += len(replay.events)
            replay.trail.append((HELD, NO_ROUTE))
            dead_letter(
                DeadLetter(
                    replay.ref, ROUTE_STAGE, NO_ROUTE, "no route matched this batch", _with_events(batch, replay.events)
                )
            )
            replay.events, replay.user_attributes = [], {}
            return replay
        replay.route = route

    if not has_resolvable_identity(batch):
        reject(
            NO_RESOLVABLE_IDENTITY,
            "the original batch has no mpid and no user identity that was not blocked: a replay could "
            "resolve to a new user (billed twice)",
            _with_events(batch, replay.events),
            len(replay.events),
        )
        replay.events, replay.user_attributes = [], {}
        return replay

    def fix_failed(selected: SelectedEvent, error: FixFailed) -> None:
        reject(FIX_FAILED, str(error), selected.event, 1)

    events, user_attributes = apply_fixes(settings.fixes, replay.events, replay.user_attributes, counts, fix_failed)

    envelope = _envelope(batch, settings)
    problem = limits.batch_problem(envelope)
    if problem:
        reject(INVALID_BATCH, problem, _with_events(batch, events), len(events))
        replay.events, replay.user_attributes = [], {}
        return replay

    valid: list[SelectedEvent] = []
    for selected in events:
        problem = limits.event_problem(selected.event)
        if problem:
            reject(INVALID_EVENT, problem, selected.event, 1)
        else:
            valid.append(selected)
    attribute_chunks: list[dict[str, Any]] = []
    for chunk in _chunks(user_attributes, limits.MAX_USER_ATTRIBUTES):
        problem = limits.user_attributes_problem(chunk)
        if problem:
            reject(INVALID_USER_ATTRIBUTES, problem, chunk, 0)
        else:
            attribute_chunks.append(chunk)
    shown = (replay.events, replay.user_attributes)  # as the partition showed them, before fix rules
    replay.events, replay.user_attributes = [], {}
    if settings.plan_gate is not None and (valid or attribute_chunks):
        merged = {name: value for chunk in attribute_chunks for name, value in chunk.items()}
        valid, merged = settings.plan_gate.apply(replay, envelope, valid, merged, counts, dead_letter, shown)
        attribute_chunks = _chunks(merged, limits.MAX_USER_ATTRIBUTES)
    if not valid and not attribute_chunks:
        return replay

    # Nearly always everything fits in one batch: encode it once, and that encoding is what is sent.
    if len(attribute_chunks) <= 1:
        keys = [f"{replay.identity}:{selected.event_id}" for selected in valid]
        payload = {**envelope, "events": [selected.event for selected in valid]}
        if attribute_chunks:
            keys.append(f"{replay.identity}:user_attributes")
            payload["user_attributes"] = attribute_chunks[0]
        encoded = jsonio.dumps(payload)
        if len(encoded) + _REQUEST_ID_BYTES <= limits.MAX_BATCH_BYTES:
            _add_batch(replay, keys, payload, encoded, settings.request_id_salt)
            counts["batches_built"] += 1
            return replay

    built = _split(replay, envelope, valid, attribute_chunks, reject)
    for keys, payload in built:
        _add_batch(replay, keys, payload, jsonio.dumps(payload), settings.request_id_salt)
    if len(built) > 1:
        counts["records_split"] += 1
    counts["batches_built"] += len(built)
    return replay


def _with_events(batch: dict[str, Any], events: list[SelectedEvent]) -> dict[str, Any]:
    """A dead letter's content: the original batch with the events that would have been replayed."""
    return {**batch, "events": [selected.event for selected in events]}


def _add_batch(replay: Replay, keys: list[str], payload: dict[str, Any], encoded: bytes, salt: str) -> None:
    """Give the batch its ``source_request_id`` and add it, encoded, to ``replay.batches``."""
    request_id = _request_id(replay.identity, salt, encoded)
    payload["source_request_id"] = request_id
    body = _with_request_id(encoded, request_id)
    replay.batches.append(ReplayBatch(tuple(keys), payload, len(body), body))


def _split(
    replay: Replay,
    envelope: dict[str, Any],
    valid: list[SelectedEvent],
    attribute_chunks: list[dict[str, Any]],
    reject: Callable[[str, str, Any, int], None],
) -> list[tuple[list[str], dict[str, Any]]]:
    """Batches of one user, each under the size limit, for a record too large for one batch.

    Events are packed greedily in order; user attributes ride in the first batch when everything else
    fits in one, else in batches of their own. An event larger than any batch is dead-lettered.
    """
    base_size = len(jsonio.dumps(envelope)) + _ENVELOPE_SLACK
    all_events_size = len(jsonio.dumps([selected.event for selected in valid])) if valid else 0
    fits_in_one = base_size + all_events_size <= limits.MAX_BATCH_BYTES
    sized_events: list[tuple[str, dict[str, Any], int]] = []
    for selected in valid:
        size = 0 if fits_in_one else len(jsonio.dumps(selected.event)) + 1
        if base_size + size > limits.MAX_BATCH_BYTES:
            reject(EVENT_TOO_LARGE, f"{size} bytes: no batch of this user can hold it", selected.event, 1)
            continue
        sized_events.append((f"{replay.identity}:{selected.event_id}", selected.event, size))

    groups: list[tuple[list[str], list[dict[str, Any]], int]] = []
    current_keys: list[str] = []
    current_events: list[dict[str, Any]] = []
    current_size = base_size
    for key, event, size in sized_events:
        if current_events and current_size + size > limits.MAX_BATCH_BYTES:
            groups.append((current_keys, current_events, current_size))
            current_keys, current_events, current_size = [], [], base_size
        current_keys.append(key)
        current_events.append(event)
        current_size += size
    if current_events:
        groups.append((current_keys, current_events, base_size + all_events_size if fits_in_one else current_size))

    built: list[tuple[list[str], dict[str, Any]]] = []
    for keys, group_events, _size in groups:
        built.append((keys, {**envelope, "events": group_events}))
    for index, chunk in enumerate(attribute_chunks):
        key = f"{replay.identity}:user_attributes" + (f":{index + 1}" if index else "")
        chunk_size = len(jsonio.dumps(chunk)) + 20
        if index == 0 and len(groups) == 1 and groups[0][2] + chunk_size <= limits.MAX_BATCH_BYTES:
            keys, payload = built[0]
            built[0] = ([*keys, key], {**payload, "user_attributes": chunk})
        elif base_size + chunk_size <= limits.MAX_BATCH_BYTES:
            built.append(([key], {**envelope, "events": [], "user_attributes": chunk}))
        else:
            reject(INVALID_USER_ATTRIBUTES, f"{chunk_size} bytes of user attributes: too large", chunk, 0)
    return built


def transform_step(settings: TransformSettings, summary: Summary, dead_letter: DeadLetterSink) -> Step:
    """The transform as one step of a record's way through the stages."""
    return lambda replay: transform(replay, settings, summary.counts, dead_letter)


def transform_replays(
    replays: Iterable[Replay], settings: TransformSettings, summary: Summary, dead_letter: DeadLetterSink
) -> Iterator[Replay]:
    """The transform stage: build replay batches; records with no valid batch end here."""
    return advance(replays, (transform_step(settings, summary, dead_letter),), summary)
