"""A strict local stand-in for mParticle's Events API (``/v2/events``, ``/v2/bulkevents``), data plans included.

It is an *independent oracle*: nothing here comes from the product (``mparticle_backfill``), so a misreading
of mParticle's rules there shows up as a refusal here. What it checks comes from mParticle's own published
documents, copied verbatim into ``tools/schemas/`` (see the README there):

- the OpenAPI description (``mparticle.events.oas.yaml``) gives the routes (its server path ``/v2`` plus
  ``/events``, one batch, and ``/bulkevents``, an array of batches), their methods and content type;
- the JSON schema (``mparticle.inbound.eventsapi.schema.json``; the bulk schema is the array around it)
  validates every batch, compiled once, with the small documented :data:`SCHEMA_PATCHES` where it is stale.
  The OpenAPI's own batch schema is older still (``batch_context`` instead of ``context``, object-valued user
  attributes, every product field required: mParticle's own sample batch fails it), and mParticle's docs
  point to the JSON schema "for the precise API schema", so that is the one batches are validated against;
- the documented limits a schema cannot express are checked here: a request <= 256 KB and <= 100 batches,
  a batch <= 128 KB (1 KB = 1000 bytes, the strict reading), 100 attributes per event, 100 user attributes,
  names <= 256 characters, string values <= 4096, required event fields (``event_name``,
  ``custom_event_type``, ``screen_name``, ...) present *and not empty*, one user per batch (one ``mpid``, one
  string per identity type, whichever its spelling), 64-bit integers within range and never a float.

What mParticle's own SDKs send, it accepts (``tests/events_api/test_official_sdk.py`` sends batches built with
the official Python SDK, ``mparticle`` on PyPI, pinned in requirements-dev.txt, through that SDK's own client).
Two things the SDK sends differ from the JSON schema, and mParticle takes both: the customer id identity is
spelled ``customerid`` (the Python, Node and Ruby SDKs; the schema and the Java SDK say ``customer_id``:
:data:`SDK_IDENTITY_SPELLINGS`), and ``AppEvent.create_attribution_event()`` sends ``custom_event_type:
"attribution"`` on a custom event (the schema lists it for commerce events only). Both are schema patches.
``customerid`` and ``customer_id`` are one identity type: a batch with both, holding two values, is refused
(two users), and a data plan reads either under the IDSync name ``customerid``. Every other key of the SDK's
models is the schema's own; values its setters allow that no document lists (``"unknown"``) stay refused.

Status codes. The OpenAPI file documents 202, 400 ("malformed JSON or required fields missing"), 401, 403,
429 and 503, nothing else; the other answers follow HTTP, as the front end of any such service gives them:
404 for an unknown path, 405 (with ``Allow``) for a wrong method on a known one, 411 without
Content-Length, 413 for a body over the 256 KB request limit, 415 for a content type other than the
documented ``application/json``. Whatever is wrong *inside* the body (not JSON, more than 100 batches, a
batch over 128 KB, a schema or limit violation) is 400 ``{"errors": [{"code": "BAD_REQUEST", "message":
"batch 3: $.events[0].data: custom_event without required data.event_name"}]}``: the whole request is
refused (mParticle has no per-batch result) and the message names the batch index and the JSON path.

Like mParticle it answers 202 to what it accepts, 401/403 to missing or wrong Basic auth, 429 with
``Retry-After`` past its rate limit, sends ``X-mp-rate-limit-percentage-used`` on success, and drops a
repeated ``source_request_id`` (``duplicates_dropped``) or ``batch_id`` (``batch_id_duplicates_dropped``;
batch fields only mParticle sets, ``batch_id``/``timestamp_unixtime_ms``/``source_info``, are accepted as in
mParticle's sample but counted in ``batches_with_server_set_fields``). It injects faults on demand (5xx at a
rate, slow answers, dropped connections, ``POST /_emulator/fail-next``: a status code, ``0`` to drop the
connection before processing, ``"lost"`` to process the request and drop the connection before answering),
and refuses requests holding an event of a name it is told to refuse (``--refuse-event``,
``refuse_events=``), as mParticle does for rules no published schema shows.

Data plans (``--data-plan FILE``, ``data_plans=``) in the Data Planning API's format (a version document or a
whole plan): an accepted batch whose ``context.data_plan`` names a loaded plan (``plan_version``, or without
it the version whose ``activated_environment`` is the batch's environment) is checked as mParticle's blocking
would, for the categories in ``--block``. Events the plan blocks are counted ``events_quarantined``, the
others ``events_forwarded``; unplanned event (and product) attributes, user attributes and identities are
counted too, and every batch with something blocked gets a record (``GET /_emulator/quarantined``). Only
*unplanned* data is blocked, never *invalid* data (a value of the wrong type); events a plan cannot plan
(sessions, application state, ...) are never unplanned. Where mParticle's open-source validators disagree,
the choice is noted at :class:`PlanVersion`.

Every accepted batch is kept (and appended to a JSONL file with ``--record``); ``GET /_emulator/stats``,
``/_emulator/batches`` and ``/_emulator/quarantined`` let tests look inside.

Run: ``python -m tools.emulator --port 8089 --api-key K --api-secret S
[--data-plan tools/schemas/mparticle.data_plan_version.higgs_shop_v1.json] [--block events user_attributes]``
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import copy
import functools
import hmac
import http
import logging
import random
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import msgspec
import referencing
import referencing.jsonschema
import yaml
from jsonschema.exceptions import ValidationError, best_match

log = logging.getLogger("tools.emulator")

SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"
BATCH_SCHEMA = SCHEMA_DIR / "mparticle.inbound.eventsapi.schema.json"
BULK_SCHEMA = SCHEMA_DIR / "mparticle.inbound.eventsapi.bulk.schema.json"
OPENAPI = SCHEMA_DIR / "mparticle.events.oas.yaml"

# Documented limits ("Default Service Limits", Events API docs); 1 KB = 1000 bytes, the strict reading.
MAX_REQUEST_BYTES = 256_000
MAX_BATCH_BYTES = 128_000
MAX_BATCHES_PER_REQUEST = 100
MAX_EVENT_ATTRIBUTES = 100
MAX_USER_ATTRIBUTES = 100
MAX_NAME_CHARS = 256
MAX_VALUE_CHARS = 4096
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# A body above this is not even read: the connection is closed after the 413.
_MAX_READ_BYTES = 16 * 1024 * 1024
# Batch fields only mParticle sets (a replay should not send them; mParticle's sample batch has them).
SERVER_SET_FIELDS = ("batch_id", "timestamp_unixtime_ms", "source_info")

# Event type -> its shape in the JSON schema (the schema's ``events.items.oneOf`` list, keyed by type).
# None: the schema's EventType enum (and the OpenAPI's) lists the type but no shape describes it.
_EVENT_SHAPES: dict[str, str | None] = {
    "session_start": "SessionStartEvent",
    "session_end": "SessionEndEvent",
    "screen_view": "ScreenViewEvent",
    "custom_event": "CustomEvent",
    "crash_report": "CrashReportEvent",
    "opt_out": "OptOutEvent",
    "first_run": "FirstRunEvent",
    "push_registration": "PushRegistrationEvent",
    "application_state_transition": "ApplicationStateTransitionEvent",
    "push_message": "PushMessageEvent",
    "network_performance": "NetworkPerformanceEvent",
    "breadcrumb": "BreadcrumbEvent",
    "profile": "ProfileEvent",
    "commerce_event": "CommerceEvent",
    "user_attribute_change": "UserAttributeChangeEvent",
    "user_identity_change": "UserIdentityChangeEvent",
    "uninstall": "UninstallEvent",
    "pre_attribution": None,
    "push_reaction": None,
}
# A 64-bit id: a JSON integer or a decimal string, within the signed 64-bit range (format checked below).
_INT64_ID = {"type": ["integer", "string", "null"], "format": "int64"}
_STRING = {"$ref": "#/definitions/String"}
# Identity types the OpenAPI description lists (the JSON schema stops at other_id_4).
_IDENTITY_TYPES = (
    "other",
    "customer_id",
    "facebook",
    "twitter",
    "google",
    "microsoft",
    "yahoo",
    "email",
    "alias",
    "facebook_custom_audience_id",
    "other_id_2",
    "other_id_3",
    "other_id_4",
    "other_id_5",
    "other_id_6",
    "other_id_7",
    "other_id_8",
    "other_id_9",
    "other_id_10",
    "mobile_number",
    "phone_number_2",
    "phone_number_3",
)
# Identity keys mParticle's own server SDKs send where the schema has another spelling: SDK key -> the identity
# type it is. ``customerid``: the official Python SDK (``mparticle`` on PyPI, pinned in requirements-dev.txt;
# mparticle/models/user_identities.py, attribute_map ``'customerid': 'customerid'``, and mParticle's Python SDK
# docs: ``identities.customerid = '123456'``), its Node SDK (src/model/UserIdentities.js) and its Ruby SDK
# (lib/mparticle/models/user_identities.rb) all send it; its Java SDK sends ``customer_id``. mParticle takes
# both. Every other key of those SDKs' models (identities, device_info, events, commerce) is the schema's own.
# Both spellings are one identity type: present together they must carry one value (one user per batch).
SDK_IDENTITY_SPELLINGS: dict[str, str] = {"customerid": "customer_id"}
# The schema's Uuid pattern (device ids, mp_deviceid, source_message_id, session_uuid).
_UUID_PATTERN = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
# Definitions of objects that say nothing of their type.
_UNTYPED_OBJECTS = (
    "BatchContext",
    "DataPlanContext",
    "ApplicationInformation",
    "AttributionInfo",
    "EventData",
    "DeviceCurrentState",
    "DeviceInformation",
    "EventSystemNotificationInfo",
    "GDPRConsentState",
    "GeoLocation",
    "Product",
    "ProductAction",
    "ProductImpression",
    "Promotion",
    "PromotionAction",
    "ShoppingCart",
    "SourceInformation",
    "UserIdentity",
)

# Patches to the official JSON schema: JSON pointer -> the node put there (replacing what is there, or added to
# an existing object). Each exists because the schema is stale or wrong at that place; none loosens it beyond
# what mParticle accepts.
SCHEMA_PATCHES: dict[str, Any] = {
    # oneOf over 17 event shapes answers "not valid under any of the given schemas", and nothing requires
    # event_type: the batch schema checks each event's envelope (event_type and data required, as OpenAPI's
    # example error says: 'Required event field "event_type" is missing or empty'), then the event is
    # validated against the shape of its event_type (:data:`_EVENT_SHAPES`): the same events pass, and the
    # message names the field at fault. pre_attribution and push_reaction, in the EventType enum but with no
    # shape, take the common EventData.
    "/properties/events/items": {
        "type": "object",
        "required": ["event_type", "data"],
        "properties": {"event_type": {"$ref": "#/definitions/EventType"}, "data": {"type": "object"}},
    },
    # Identities stop at other_id_4 here; the OpenAPI description (and mParticle's docs) list up to other_id_10
    # and the three phone numbers, which mParticle's own quarantine output carries. The SDK spellings
    # (:data:`SDK_IDENTITY_SPELLINGS`: ``customerid``, what mParticle's Python, Node and Ruby SDKs send) too;
    # any other key stays refused.
    "/properties/user_identities/properties": {name: _STRING for name in (*_IDENTITY_TYPES, *SDK_IDENTITY_SPELLINGS)},
    # custom_event_type "attribution" on a custom event: the official Python SDK's own
    # AppEvent.create_attribution_event() and create_attribution_delete_event() send it (its AppEvent setter
    # allows it), and mParticle's docs show such events (event_name and custom_event_type "attribution", the
    # Adjust feed's sample JSON). The schema lists it only for commerce events. The SDK's setters also allow
    # "unknown" (for this and the other enums); no SDK factory or default sends it and no document lists it,
    # so it stays refused.
    "/definitions/CustomEvent/properties/data/allOf/1/properties/custom_event_type/enum": [
        *("navigation", "location", "search", "transaction", "user_content", "user_preference", "social"),
        *("other", "media", "attribution"),
    ],
    # 64-bit ids are typed integer, but mParticle takes them as decimal strings too (its web SDK sends mpid as
    # a string, its quarantine output writes every id as one: JavaScript has no 64-bit integers).
    "/properties/mpid": _INT64_ID,
    "/properties/origin_mpid": _INT64_ID,
    "/properties/batch_id": _INT64_ID,
    "/definitions/EventData/properties/event_id": _INT64_ID,
    "/definitions/EventData/properties/session_id": _INT64_ID,
    "/definitions/ProfileEvent/properties/data/allOf/1/properties/previous_mpid": _INT64_ID,
    "/definitions/ProfileEvent/properties/data/allOf/1/properties/current_mpid": _INT64_ID,
    # The OpenAPI types these integers int64 (timestamps stay integers: no decimal strings there): a larger
    # number, or a float that merely looks whole, cannot be what mParticle stores.
    "/definitions/Integer": {"type": ["integer", "null"], "format": "int64"},
    # These objects have no "type", so a string, number or list stands in for them unnoticed (JSON Schema
    # checks properties of objects only); mParticle reads each into an object: only an object (or null) goes.
    **{f"/definitions/{name}/type": ["object", "null"] for name in _UNTYPED_OBJECTS},
    # ip is oneOf(ipv4, ipv6) and both admit null, so oneOf refuses null; anyOf is what was meant.
    "/properties/ip": {"anyOf": [{"$ref": "#/definitions/IpV4Address"}, {"$ref": "#/definitions/IpV6Address"}]},
    # consent_state.gdpr is a map of purpose -> consent, and ccpa (data_sale_opt_out) exists, as mParticle's
    # SDKs send it and its docs describe; the schema has gdpr as one consent object, required, and no ccpa.
    "/definitions/ConsentState": {
        "type": ["object", "null"],
        "properties": {
            "gdpr": {"type": ["object", "null"], "additionalProperties": {"$ref": "#/definitions/GDPRConsentState"}},
            "ccpa": {
                "type": ["object", "null"],
                "properties": {"data_sale_opt_out": {"$ref": "#/definitions/GDPRConsentState"}},
                "additionalProperties": False,
            },
        },
        "additionalProperties": False,
    },
}

# Events API identity names -> the IDSync names data plans use (mParticle's SDKs: IdentityType names).
USER_IDENTITY_IDSYNC_NAMES: dict[str, tuple[str, ...]] = {
    "other": ("other",),
    "customer_id": ("customerid",),
    "facebook": ("facebook",),
    "twitter": ("twitter",),
    "google": ("google",),
    "microsoft": ("microsoft",),
    "yahoo": ("yahoo",),
    "email": ("email",),
    "alias": ("alias",),
    "facebook_custom_audience_id": ("facebookcustomaudienceid", "facebook_custom_audience_id"),
    **{f"other_id_{n}": (f"other{n}",) for n in range(2, 11)},
    "mobile_number": ("mobile_number",),
    "phone_number_2": ("phone_number_2",),
    "phone_number_3": ("phone_number_3",),
}
# An SDK spelling goes by the IDSync names of the identity type it is (customerid -> customerid).
USER_IDENTITY_IDSYNC_NAMES.update(
    {sdk: USER_IDENTITY_IDSYNC_NAMES[name] for sdk, name in SDK_IDENTITY_SPELLINGS.items()}
)
# Events API ``device_info`` identity keys -> IDSync names (a plan's user_identities point covers both).
DEVICE_IDENTITY_IDSYNC_NAMES: dict[str, tuple[str, ...]] = {
    "ios_advertising_id": ("ios_idfa",),
    "ios_idfv": ("ios_idfv",),
    "android_advertising_id": ("android_aaid",),
    "android_uuid": ("android_uuid",),
    "push_token": ("push_token",),
    "roku_advertising_id": ("roku_aid",),
    "roku_publisher_id": ("roku_publisher_id",),
    "fire_advertising_id": ("fire_aid",),
    "microsoft_advertising_id": ("microsoft_aid",),
    "microsoft_publisher_id": ("microsoft_publisher_id",),
    "amp_id": ("amp_id",),
}
BLOCK_CATEGORIES = ("events", "event_attributes", "user_attributes", "user_identities")


class RequestRefused(Exception):
    """A request the Events API would refuse: the HTTP status and the error message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# --- The Events API contract: routes from the OpenAPI file, batches against the JSON schema --------------


@dataclass(frozen=True, slots=True)
class _Route:
    methods: frozenset[str]
    content_types: frozenset[str]
    bulk: bool


@dataclass(frozen=True)
class EventsApiContract:
    """mParticle's published contract, loaded and compiled once: routes, validators, required event fields."""

    routes: Mapping[str, _Route]
    batch_validator: jsonschema.protocols.Validator
    event_validators: Mapping[str, jsonschema.protocols.Validator]
    bulk_validator: jsonschema.protocols.Validator
    required_event_fields: Mapping[str, tuple[str, ...]]

    def batches(self, path: str, body: bytes) -> list[dict[str, Any]]:
        """The batches of a request body to ``path``; raises :class:`RequestRefused` (400) if mParticle would."""
        try:
            document = msgspec.json.decode(body)  # 64-bit integers stay exact ints
        except msgspec.DecodeError as error:
            raise RequestRefused(400, f"body is not valid JSON: {error}") from None
        if not self.routes[path].bulk:
            batches = [document]
        elif isinstance(document, list):
            batches = document
        else:
            error = best_match(self.bulk_validator.iter_errors(document))
            problem = f"{error.json_path}: {_describe(error)}" if error else "not a JSON array of batches"
            raise RequestRefused(400, f"bulk body: {problem}")
        if len(batches) > MAX_BATCHES_PER_REQUEST:
            raise RequestRefused(400, f"{len(batches)} batches in one request, more than {MAX_BATCHES_PER_REQUEST}")
        for index, batch in enumerate(batches):
            problem = self.batch_problem(batch)
            if problem:
                raise RequestRefused(400, f"batch {index}: {problem[0]}: {problem[1]}")
        return batches

    def batch_problem(self, batch: Any) -> tuple[str, str] | None:
        """(JSON path, message) of the first reason mParticle would refuse ``batch``, or None."""
        size = len(msgspec.json.encode(batch))
        if size > MAX_BATCH_BYTES:
            return "$", f"batch of {size} bytes, over the 128 KB batch limit ({MAX_BATCH_BYTES} bytes)"
        error = best_match(self.batch_validator.iter_errors(batch))
        if error is not None:
            return error.json_path, _describe(error)
        for index, event in enumerate(batch.get("events") or ()):
            error = best_match(self.event_validators[event["event_type"]].iter_errors(event))
            if error is not None:
                return f"$.events[{index}]{error.json_path[1:]}", _describe(error, event)
        return next(_limit_problems(batch, self.required_event_fields), None)


def _patched(schema: dict[str, Any], patches: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``schema`` with each pointer's node put in place; its parent must exist (else the copy changed)."""
    result = copy.deepcopy(schema)
    for pointer, replacement in patches.items():
        *parents, last = pointer.removeprefix("/").split("/")
        node: Any = result
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if isinstance(node, list):
            node[int(last)] = copy.deepcopy(replacement)
        else:
            node[last] = copy.deepcopy(replacement)
    return result


def _inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with every ``#/definitions/...`` reference replaced by the definition (inlined itself).

    The same schema, validated several times faster (no reference lookups). In draft 7 a ``$ref`` node's
    other keywords are ignored, so replacing the node whole keeps its meaning. A cycle would keep its ``$ref``
    (the definitions stay, so it still resolves); this schema has none.
    """
    definitions = schema.get("definitions", {})
    done: dict[str, Any] = {}

    def inline(node: Any, seen: frozenset[str]) -> Any:
        if isinstance(node, list):
            return [inline(item, seen) for item in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/definitions/"):
            name = ref.removeprefix("#/definitions/")
            if name in seen:
                return node
            if name not in done:
                done[name] = inline(definitions[name], seen | {name})
            return done[name]
        return {key: inline(value, seen) for key, value in node.items()}

    return inline(schema, frozenset())


def _is_int64(value: Any) -> bool:
    """The "int64" format: a JSON integer or decimal string in the signed 64-bit range; never a float."""
    if isinstance(value, bool) or value is None:
        return True  # the type check speaks for these
    if isinstance(value, int):
        return INT64_MIN <= value <= INT64_MAX
    if isinstance(value, str):
        return re.fullmatch(r"-?[0-9]{1,19}", value) is not None and INT64_MIN <= int(value) <= INT64_MAX
    return not isinstance(value, float)


def _routes(openapi: Mapping[str, Any]) -> dict[str, _Route]:
    """``{"/v2/events": _Route(...)}`` from the OpenAPI description: server path + each path's operations."""
    base = urlsplit(openapi["servers"][0]["url"]).path.rstrip("/")
    components = openapi.get("components", {}).get("schemas", {})
    routes = {}
    for path, operations in openapi["paths"].items():
        methods, content_types, bulk = set(), set(), False
        for method, operation in operations.items():
            if method.upper() not in ("GET", "PUT", "POST", "DELETE", "PATCH", "HEAD", "OPTIONS"):
                continue
            methods.add(method.upper())
            for content_type, media in operation.get("requestBody", {}).get("content", {}).items():
                content_types.add(content_type)
                body_schema = media.get("schema", {})
                if "$ref" in body_schema:
                    body_schema = components[body_schema["$ref"].rsplit("/", 1)[-1]]
                bulk = bulk or body_schema.get("type") == "array"
        routes[base + path] = _Route(frozenset(methods), frozenset(content_types), bulk)
    return routes


@functools.cache
def contract() -> EventsApiContract:
    """Load the official documents from ``tools/schemas`` and compile the validators (once per process)."""
    batch_schema = _patched(msgspec.json.decode(BATCH_SCHEMA.read_bytes()), SCHEMA_PATCHES)
    bulk_schema = msgspec.json.decode(BULK_SCHEMA.read_bytes())
    openapi = yaml.safe_load(OPENAPI.read_text())
    validator_class = jsonschema.validators.validator_for(batch_schema)
    validator_class.check_schema(batch_schema)
    formats = jsonschema.FormatChecker(formats=("ipv4", "ipv6"))
    formats.checks("int64")(_is_int64)
    inlined = _inline_refs(batch_schema)
    definitions = inlined["definitions"]
    event_schemas = {
        event_type: definitions[shape] if shape else {"properties": {"data": definitions["EventData"]}}
        for event_type, shape in _EVENT_SHAPES.items()
    }
    required = {
        event_type: tuple(
            name for part in schema["properties"]["data"].get("allOf", ()) for name in part.get("required", ())
        )
        for event_type, schema in event_schemas.items()
    }
    # The bulk schema refers to the batch schema by its published URL: resolve it to the local, patched copy.
    registry = referencing.Registry().with_resource(
        batch_schema["$id"], referencing.jsonschema.DRAFT7.create_resource(inlined)
    )
    return EventsApiContract(
        routes=_routes(openapi),
        batch_validator=validator_class(inlined, format_checker=formats),
        event_validators={t: validator_class(schema, format_checker=formats) for t, schema in event_schemas.items()},
        bulk_validator=jsonschema.validators.validator_for(bulk_schema)(
            bulk_schema, registry=registry, format_checker=formats
        ),
        required_event_fields=required,
    )


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(error: ValidationError, event: Mapping[str, Any] | None = None) -> str:
    """A readable message for a schema error (the path is given beside it) of a batch, or of ``event``."""
    path = list(error.absolute_path)
    if error.validator == "required" and event is not None and path == ["data"]:
        missing = next(name for name in error.validator_value if name not in error.instance)
        return f"{event['event_type']} without required data.{missing}"
    if error.validator == "required":
        missing = next(name for name in error.validator_value if name not in error.instance)
        return f"required field {missing!r} is missing"
    if error.validator == "format" and error.validator_value == "int64":
        return f"{_short(error.instance)} is not a 64-bit integer (an integer, or a decimal string for ids; no floats)"
    if error.validator == "type" and event is None and len(path) == 2 and path[0] == "user_identities":
        return f"{_short(error.instance)} is not one string (one user per batch)"
    if error.validator in ("anyOf", "oneOf") and error.context:
        reasons = dict.fromkeys(_describe(e, event) for e in error.context)
        return f"{_short(error.instance)} is none of: {'; '.join(reasons)}"
    if error.validator == "type":
        expected = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
        return f"{_short(error.instance)} is not of type {' or '.join(map(str, expected))}"
    if error.validator == "enum":
        return f"{_short(error.instance)} is not one of {', '.join(map(str, error.validator_value))}"
    if error.validator == "pattern" and error.validator_value == _UUID_PATTERN:
        return f"{_short(error.instance)} is not a UUID (8-4-4-4-12 hexadecimal digits)"
    if error.validator == "additionalProperties":
        return error.message.replace("Additional properties are not allowed", "unknown field(s)")
    return error.message if len(error.message) <= 300 else error.message[:297] + "..."


def _attribute_problems(attributes: Mapping[str, Any], path: str, kind: str) -> Iterator[tuple[str, str]]:
    for name, value in attributes.items():
        if not name or len(name) > MAX_NAME_CHARS:
            yield path, f"{kind} name {_short(name, 40)} is empty or longer than {MAX_NAME_CHARS} characters"
        for item in value if isinstance(value, list) else (value,):
            if isinstance(item, str) and len(item) > MAX_VALUE_CHARS:
                yield f"{path}[{name!r}]", f"{kind} value longer than {MAX_VALUE_CHARS} characters"


def _limit_problems(batch: Mapping[str, Any], required: Mapping[str, tuple[str, ...]]) -> Iterator[tuple[str, str]]:
    """What the schema cannot say: documented counts and lengths, non-empty required fields, one user."""
    for index, event in enumerate(batch.get("events") or ()):
        event_type, data = event["event_type"], event["data"]
        at = f"$.events[{index}].data"
        for name in required.get(event_type, ()):
            if data.get(name) == "":
                yield f"{at}.{name}", f"{event_type} with empty required data.{name}"
        attributes = data.get("custom_attributes") or {}
        if len(attributes) > MAX_EVENT_ATTRIBUTES:
            yield f"{at}.custom_attributes", f"{len(attributes)} event attributes, more than {MAX_EVENT_ATTRIBUTES}"
        yield from _attribute_problems(attributes, f"{at}.custom_attributes", "event attribute")
        for product_path, product in _products(data):
            attributes = product.get("custom_attributes") or {}
            yield from _attribute_problems(attributes, f"{at}.{product_path}.custom_attributes", "product attribute")
    user_attributes = batch.get("user_attributes") or {}
    if len(user_attributes) > MAX_USER_ATTRIBUTES:
        yield "$.user_attributes", f"{len(user_attributes)} user attributes, more than {MAX_USER_ATTRIBUTES}"
    yield from _attribute_problems(user_attributes, "$.user_attributes", "user attribute")
    identities = batch.get("user_identities") or {}
    for name, value in identities.items():
        if value is not None and not isinstance(value, str):
            yield f"$.user_identities.{name}", f"{_short(value)} is not one string (one user per batch)"
    # An identity type sent under both its spellings carries one value (None or "" is no value).
    for spelling, name in SDK_IDENTITY_SPELLINGS.items():
        value, other = identities.get(spelling), identities.get(name)
        if value not in (None, "") and other not in (None, "") and value != other:
            yield (
                f"$.user_identities.{spelling}",
                f"{_short(value)} and {name} {_short(other)} are two values of one identity type (one user per batch)",
            )


def _products(data: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """(path relative to ``data``, product) of every product of a commerce event's data."""
    action = data.get("product_action") or {}
    for index, product in enumerate(action.get("products") or ()):
        yield f"product_action.products[{index}]", product
    for i, impression in enumerate(data.get("product_impressions") or ()):
        for index, product in enumerate(impression.get("products") or ()):
            yield f"product_impressions[{i}].products[{index}]", product
    for index, product in enumerate((data.get("shopping_cart") or {}).get("products") or ()):
        yield f"shopping_cart.products[{index}]", product


# --- Data plans: what mParticle's blocking would quarantine -------------------------------------------


def _allowed_names(node: Any, steps: Sequence[str]) -> frozenset[str] | None:
    """Property names a plan schema allows at the end of ``steps`` ("items" steps into an array); None: any.

    At each step a missing child under ``additionalProperties: false`` allows nothing below it; a missing
    child otherwise, or a final node whose ``additionalProperties`` is not false, allows anything.
    """
    for step in steps:
        if not isinstance(node, Mapping):
            return None
        child = node.get("items") if step == "items" else (node.get("properties") or {}).get(step)
        if child is None:
            return frozenset() if step != "items" and node.get("additionalProperties") is False else None
        node = child
    if not isinstance(node, Mapping) or node.get("additionalProperties") is not False:
        return None
    return frozenset(node.get("properties") or ())


def _normal_action(action: Any) -> Any:
    return "remove_from_wishlist" if action == "remove_from_wish_list" else action


def _point_key(match: Mapping[str, Any]) -> str | None:
    """The key of an event data point (mParticle's validator: ``custom_event:<type>:<name>``, ...), or None."""
    criteria = match.get("criteria") or {}
    match_type = match.get("type")
    if match_type == "custom_event":
        return f"custom_event:{criteria.get('custom_event_type')}:{criteria.get('event_name')}"
    if match_type == "screen_view":
        return f"screen_view::{criteria.get('screen_name')}"
    if match_type in ("product_action", "promotion_action"):
        return f"{match_type}:{_normal_action(criteria.get('action'))}"
    if match_type == "product_impression":
        return "product_impression"
    return None


def _event_key(event: Mapping[str, Any]) -> str | None:
    """The data point key an event matches, or None for an event no plan can plan (never unplanned)."""
    data = event.get("data") or {}
    event_type = event.get("event_type")
    if event_type == "custom_event":
        return f"custom_event:{data.get('custom_event_type')}:{data.get('event_name')}"
    if event_type == "screen_view":
        return f"screen_view::{data.get('screen_name')}"
    if event_type == "commerce_event":
        if isinstance(data.get("product_action"), Mapping):
            return f"product_action:{_normal_action(data['product_action'].get('action'))}"
        if isinstance(data.get("promotion_action"), Mapping):
            return f"promotion_action:{data['promotion_action'].get('action')}"
        if data.get("product_impressions"):
            return "product_impression"
    return None


@dataclass(frozen=True, slots=True)
class _PlannedEvent:
    """Attribute names one event data point allows (None: any)."""

    attributes: frozenset[str] | None
    product_action_attributes: frozenset[str] | None
    impression_attributes: frozenset[str] | None

    def unplanned_attribute_paths(self, data: Mapping[str, Any]) -> list[str]:
        """Paths (relative to the event, as in quarantine ``block_metadata``) of the attributes not allowed."""
        paths = []
        if self.attributes is not None:
            names = data.get("custom_attributes") or {}
            paths += [f"./data/custom_attributes/{n}" for n in names if n not in self.attributes]
        if self.product_action_attributes is not None:
            for i, product in enumerate((data.get("product_action") or {}).get("products") or ()):
                names = product.get("custom_attributes") or {}
                paths += [
                    f"./data/product_action/products/{i}/custom_attributes/{n}"
                    for n in names
                    if n not in self.product_action_attributes
                ]
        if self.impression_attributes is not None:
            for i, impression in enumerate(data.get("product_impressions") or ()):
                for j, product in enumerate(impression.get("products") or ()):
                    names = product.get("custom_attributes") or {}
                    paths += [
                        f"./data/product_impressions/{i}/products/{j}/custom_attributes/{n}"
                        for n in names
                        if n not in self.impression_attributes
                    ]
        return paths


@dataclass(frozen=True)
class PlanVersion:
    """One data plan version, reduced to what blocking needs.

    Choices where mParticle's open-source validators differ or are silent (``data-planning-node``'s
    ``DataPlanEventValidator``, the web SDK's ``kitBlocking.ts``, Android's ``DataplanFilter.kt``):

    - only ``custom_event``, ``screen_view`` and ``commerce_event`` can be planned; every other event type,
      and a commerce event with no product action, promotion action or impressions, is never unplanned;
    - a plan with no ``user_attributes`` (or ``user_identities``) point constrains none (all three agree);
    - an event with no data point has no attribute constraint (when unplanned events are not blocked);
    - product attributes are checked under ``product_action.products.items`` and
      ``product_impressions.items.products.items``, by the same rule as event attributes;
    - ``remove_from_wish_list`` (a plan's spelling) and ``remove_from_wishlist`` are the same action.
    """

    plan_id: str
    version: int
    activated_environment: str
    events: Mapping[str, _PlannedEvent]
    user_attributes: frozenset[str] | None
    user_identities: frozenset[str] | None

    @classmethod
    def from_document(cls, document: Mapping[str, Any], plan_id: str | None = None) -> PlanVersion:
        """From a version document of the Data Planning API (``{version, data_plan_id, version_document}``)."""
        plan_id = document.get("data_plan_id") or plan_id
        if not isinstance(plan_id, str) or not isinstance(document.get("version"), int):
            raise ValueError("a data plan version needs data_plan_id (a string) and version (an integer)")
        events: dict[str, _PlannedEvent] = {}
        user_attributes = user_identities = None
        for point in (document.get("version_document") or {}).get("data_points") or ():
            match, validator = point.get("match") or {}, point.get("validator") or {}
            definition = validator.get("definition") if validator.get("type") == "json_schema" else None
            definition = definition if isinstance(definition, Mapping) else {}
            if match.get("type") == "user_attributes":
                user_attributes = _allowed_names(definition, ())
            elif match.get("type") == "user_identities":
                user_identities = _allowed_names(definition, ())
            elif (key := _point_key(match)) is not None:
                events[key] = _PlannedEvent(
                    _allowed_names(definition, ("data", "custom_attributes")),
                    _allowed_names(definition, ("data", "product_action", "products", "items", "custom_attributes")),
                    _allowed_names(
                        definition,
                        ("data", "product_impressions", "items", "products", "items", "custom_attributes"),
                    ),
                )
        return cls(
            plan_id,
            document["version"],
            str(document.get("activated_environment") or "none"),
            events,
            user_attributes,
            user_identities,
        )

    def check(self, batch: Mapping[str, Any], block: frozenset[str]) -> dict[str, Any]:
        """What blocking the ``block`` categories would quarantine of ``batch`` (a record, lists maybe empty)."""
        blocked_events: list[dict[str, Any]] = []
        attribute_events: list[dict[str, Any]] = []
        for index, event in enumerate(batch.get("events") or ()):
            key = _event_key(event)
            if key is None:
                continue
            event_id = event["data"].get("event_id")
            event_id = None if event_id is None else str(event_id)
            planned = self.events.get(key)
            if planned is None:
                if "events" in block:
                    blocked_events.append({"index": index, "event_id": event_id, "key": key})
                continue
            if "event_attributes" in block and (paths := planned.unplanned_attribute_paths(event["data"])):
                attribute_events.append(
                    {
                        "index": index,
                        "event_id": event_id,
                        "key": key,
                        "attributes_quarantined": len(paths),
                        "event_attributes": paths,
                    }
                )
        user_attributes: list[str] = []
        if "user_attributes" in block and self.user_attributes is not None:
            user_attributes = [n for n in batch.get("user_attributes") or {} if n not in self.user_attributes]
        user_identities: list[str] = []
        device_identities: list[str] = []
        if "user_identities" in block and (allowed := self.user_identities) is not None:
            seen: set[str] = set()  # identity types: both spellings of one (one value, checked) count once
            for name, value in (batch.get("user_identities") or {}).items():
                identity_type = SDK_IDENTITY_SPELLINGS.get(name, name)
                if value is None or identity_type in seen:
                    continue
                seen.add(identity_type)
                if not allowed.intersection(USER_IDENTITY_IDSYNC_NAMES.get(name, (name,))):
                    user_identities.append(name)
            device_info = batch.get("device_info") or {}
            for name, idsync_names in DEVICE_IDENTITY_IDSYNC_NAMES.items():
                if device_info.get(name) not in (None, "") and not allowed.intersection(idsync_names):
                    device_identities.append(name)
        return {
            "plan_id": self.plan_id,
            "plan_version": self.version,
            "blocked_events": blocked_events,
            "blocked_event_ids": [e["event_id"] for e in blocked_events if e["event_id"] is not None],
            "blocked_event_attributes": attribute_events,
            "blocked_user_attributes": user_attributes,
            "blocked_user_identities": user_identities,
            "blocked_device_identities": device_identities,
        }


@dataclass
class DataPlans:
    """Loaded plan versions by plan id and version, and which categories the input blocks."""

    versions: dict[str, dict[int, PlanVersion]] = field(default_factory=dict)
    block: frozenset[str] = frozenset(BLOCK_CATEGORIES)

    @classmethod
    def load(cls, sources: Iterable[Any], block: Iterable[str] = BLOCK_CATEGORIES) -> DataPlans:
        """From files (paths) or decoded documents: version documents, whole plans, or JSON lists of them."""
        block = frozenset(block)
        if unknown := block - set(BLOCK_CATEGORIES):
            raise ValueError(f"unknown block categories {sorted(unknown)}; known: {', '.join(BLOCK_CATEGORIES)}")
        plans = cls(block=block)
        for number, source in enumerate(sources, 1):
            is_file = isinstance(source, str | Path)
            try:  # a decode error is a ValueError too
                plans._add(msgspec.json.decode(Path(source).read_bytes()) if is_file else source)
            except (ValueError, TypeError, AttributeError, KeyError) as error:
                raise ValueError(f"data plan {source if is_file else f'document {number}'}: {error}") from None
        return plans

    def _add(self, document: Any) -> None:
        if isinstance(document, list):
            for item in document:
                self._add(item)
        elif isinstance(document, Mapping) and "data_plan_versions" in document:
            for version in document["data_plan_versions"]:
                self._put(PlanVersion.from_document(version, document.get("data_plan_id")))
        elif isinstance(document, Mapping) and "version_document" in document:
            self._put(PlanVersion.from_document(document))
        else:
            raise ValueError("not a data plan (data_plan_versions) nor a plan version (version_document)")

    def _put(self, version: PlanVersion) -> None:
        self.versions.setdefault(version.plan_id, {})[version.version] = version

    def version_for(self, batch: Mapping[str, Any]) -> PlanVersion | None:
        """The version that applies to ``batch``: its ``plan_version``, else the one active in its environment."""
        context = batch.get("context")
        data_plan = context.get("data_plan") if isinstance(context, Mapping) else None
        if not isinstance(data_plan, Mapping) or data_plan.get("plan_id") not in self.versions:
            return None
        versions = self.versions[data_plan["plan_id"]]
        if data_plan.get("plan_version") is not None:
            return versions.get(data_plan["plan_version"])
        active = [v for v in versions.values() if v.activated_environment == batch.get("environment")]
        return max(active, key=lambda v: v.version) if active else None


# --- The server ---------------------------------------------------------------------------------------


class _RateLimiter:
    """A token bucket of ``rate`` batches per second, holding at most one second's worth."""

    def __init__(self, rate: float | None) -> None:
        self.rate = rate
        self.tokens = float(rate or 0)
        self.updated = time.monotonic()
        self.lock = threading.Lock()

    def take(self, batches: int) -> tuple[bool, float]:
        """Whether ``batches`` may pass now, and the share of the bucket in use afterwards (0..100)."""
        if not self.rate:
            return True, 0.0
        with self.lock:
            now = time.monotonic()
            self.tokens = min(self.rate, self.tokens + (now - self.updated) * self.rate)
            self.updated = now
            if batches > self.tokens and self.tokens < self.rate:
                return False, 100.0
            self.tokens -= batches
            return True, max(0.0, min(100.0, 100.0 * (1 - self.tokens / self.rate)))


class EmulatorState:
    """What the emulator was told and what it received.

    :param data_plans: plan files (paths) or decoded plan documents to check accepted batches against.
    :param block: the categories the input blocks (default all of :data:`BLOCK_CATEGORIES`).
    """

    def __init__(
        self,
        api_key: str,
        api_secret: str,
        *,
        rate: float | None = None,
        fail_rate: float = 0.0,
        drop_rate: float = 0.0,
        latency_ms: float = 0.0,
        record: Path | None = None,
        seed: int | None = None,
        data_plans: Iterable[Any] = (),
        block: Iterable[str] = BLOCK_CATEGORIES,
        refuse_events: Iterable[str] = (),
    ) -> None:
        self.api_key = api_key
        self.api_secret = api_secret
        self.fail_rate = fail_rate
        self.drop_rate = drop_rate
        self.latency_ms = latency_ms
        self.record = record
        self.contract = contract()
        self.plans = DataPlans.load(data_plans, block)
        self.limiter = _RateLimiter(rate)
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.batches: list[dict[str, Any]] = []
        self.quarantined: list[dict[str, Any]] = []  # one record per accepted batch with something blocked
        self.source_request_ids: set[str] = set()
        self.batch_ids: set[str] = set()
        self.stats: Counter[str] = Counter()
        self.fail_next: list[Any] = []  # answers forced on the next requests (tests): 0 drops, None passes,
        # "lost" processes the request and drops the connection before answering, a status code answers it
        # Event names (custom events' event_name, screen views' screen_name) refused whole, as a rule mParticle
        # applies server-side that no published schema shows (a value outside an enum, a blocked name).
        self.refuse_events: set[str] = set(refuse_events)

    def bump(self, name: str) -> None:
        with self.lock:
            self.stats[name] += 1

    def reset(self) -> None:
        with self.lock:
            self.batches.clear()
            self.quarantined.clear()
            self.source_request_ids.clear()
            self.batch_ids.clear()
            self.stats.clear()
            self.fail_next.clear()

    def check_rules(self, batches: list[dict[str, Any]]) -> None:
        """Raise :class:`RequestRefused` (400, the whole request) for a batch holding a refused event name."""
        if not self.refuse_events:
            return
        for index, batch in enumerate(batches):
            for position, event in enumerate(batch.get("events") or ()):
                data = event.get("data") or {}
                for field_name in ("event_name", "screen_name"):
                    if data.get(field_name) in self.refuse_events:
                        raise RequestRefused(
                            400,
                            f"batch {index}: $.events[{position}].data.{field_name}: "
                            f"{data[field_name]!r} is refused by a rule of this input",
                        )

    def accept(self, batches: list[dict[str, Any]]) -> None:
        with self.lock:
            fresh = []
            for batch in batches:
                request_id = batch.get("source_request_id")
                if isinstance(request_id, str) and request_id in self.source_request_ids:
                    self.stats["duplicates_dropped"] += 1
                    continue
                batch_id = batch.get("batch_id")
                if batch_id is not None and str(batch_id) in self.batch_ids:
                    self.stats["batch_id_duplicates_dropped"] += 1
                    continue
                if isinstance(request_id, str):
                    self.source_request_ids.add(request_id)
                if batch_id is not None:
                    self.batch_ids.add(str(batch_id))
                if any(name in batch for name in SERVER_SET_FIELDS):
                    self.stats["batches_with_server_set_fields"] += 1
                self.stats["batches_accepted"] += 1
                events = len(batch.get("events") or ())
                self.stats["events_accepted"] += events
                self._check_plan(batch, events)
                fresh.append(batch)
                self.batches.append(batch)
            if self.record is not None and fresh:
                with self.record.open("ab") as out:
                    out.write(b"".join(msgspec.json.encode(b) + b"\n" for b in fresh))

    def _check_plan(self, batch: dict[str, Any], events: int) -> None:
        version = self.plans.version_for(batch)
        if version is None:
            self.stats["events_forwarded"] += events
            return
        self.stats["batches_plan_checked"] += 1
        verdict = version.check(batch, self.plans.block)
        quarantined = len(verdict["blocked_events"])
        attributes = sum(e["attributes_quarantined"] for e in verdict["blocked_event_attributes"])
        identities = len(verdict["blocked_user_identities"]) + len(verdict["blocked_device_identities"])
        self.stats["events_quarantined"] += quarantined
        self.stats["events_forwarded"] += events - quarantined
        self.stats["event_attributes_quarantined"] += attributes
        self.stats["user_attributes_quarantined"] += len(verdict["blocked_user_attributes"])
        self.stats["user_identities_quarantined"] += identities
        if quarantined or attributes or verdict["blocked_user_attributes"] or identities:
            self.stats["batches_quarantined"] += 1
            record = {"batch": len(self.batches), "source_request_id": batch.get("source_request_id"), **verdict}
            self.quarantined.append(record)


def _error(status: int, message: str, code: str | None = None) -> bytes:
    if code is None:
        try:
            code = http.HTTPStatus(status).name
        except ValueError:
            code = "ERROR"
    return msgspec.json.encode({"errors": [{"code": code, "message": message}]})


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    # Emulator endpoints (not mParticle's): path -> (method, handler name).
    CONTROL = {
        "/_emulator/stats": ("GET", "_get_stats"),
        "/_emulator/batches": ("GET", "_get_batches"),
        "/_emulator/quarantined": ("GET", "_get_quarantined"),
        "/_emulator/reset": ("POST", "_post_reset"),
        "/_emulator/fail-next": ("POST", "_post_fail_next"),
    }

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def _send(self, status: int, body: bytes = b"", headers: Mapping[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _drop(self) -> None:
        self.close_connection = True
        self.connection.shutdown(2)

    def _read_body(self) -> bytes | None:
        """The body, or None when it is too large to read (the connection is then closed after answering)."""
        length = self.headers.get("Content-Length")
        size = int(length) if length and length.isdigit() else 0
        if size > _MAX_READ_BYTES:
            self.close_connection = True
            return None
        return self.rfile.read(size) if size else b""

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = do_GET

    def _dispatch(self) -> None:
        path = urlsplit(self.path).path
        control = self.CONTROL.get(path)
        route = self.server.state.contract.routes.get(path)
        if route is not None and self.command in route.methods:
            self._post_events(path, route)
            return
        body = self._read_body()  # read whatever was sent, so the connection stays usable
        allowed = {control[0]} if control else (route.methods if route else None)
        if allowed is None:
            self._send(404, _error(404, f"no such resource {path}"))
        elif self.command not in allowed:
            self._send(405, _error(405, f"{self.command} is not allowed on {path}"), {"Allow": ", ".join(allowed)})
        else:
            getattr(self, control[1])(body or b"")

    def _get_stats(self, body: bytes) -> None:
        state = self.server.state
        with state.lock:
            self._send(200, msgspec.json.encode(dict(state.stats)))

    def _get_batches(self, body: bytes) -> None:
        state = self.server.state
        with state.lock:
            self._send(200, msgspec.json.encode(state.batches))

    def _get_quarantined(self, body: bytes) -> None:
        state = self.server.state
        with state.lock:
            self._send(200, msgspec.json.encode(state.quarantined))

    def _post_reset(self, body: bytes) -> None:
        self.server.state.reset()
        self._send(204)

    def _post_fail_next(self, body: bytes) -> None:
        state = self.server.state
        with state.lock:
            state.fail_next.extend(msgspec.json.decode(body or b"[]"))
        self._send(204)

    def _post_events(self, path: str, route: _Route) -> None:
        state = self.server.state
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self.close_connection = True
            self._send(411, _error(411, "Content-Length is required"))
            return
        body = self._read_body()
        state.bump("requests")
        status = self._authorize()
        if status:
            state.bump(f"status_{status}")
            self._send(status, _error(status, "invalid credentials", "UNAUTHORIZED" if status == 401 else "FORBIDDEN"))
            return
        content_type = self.headers.get_content_type() if "Content-Type" in self.headers else ""
        if content_type not in route.content_types:
            state.bump("status_415")
            allowed = ", ".join(sorted(route.content_types))
            self._send(415, _error(415, f"Content-Type {content_type or '(none)'} is not supported; send {allowed}"))
            return
        if body is None or len(body) > MAX_REQUEST_BYTES:
            state.bump("status_413")
            self._send(413, _error(413, f"request of {length} bytes, over the 256 KB limit ({MAX_REQUEST_BYTES})"))
            return
        if state.latency_ms:
            time.sleep(state.latency_ms / 1000)
        with state.lock:
            forced = state.fail_next.pop(0) if state.fail_next else None
            roll = state.random.random()
        lose_answer = forced == "lost"  # processed as usual, then the connection is dropped before the answer
        if lose_answer:
            forced, roll = None, 1.0
        if forced == 0 or (forced is None and roll < state.drop_rate / 2):
            state.bump("connections_dropped")
            self._drop()  # lost before mParticle processed it
            return
        if forced or roll < state.drop_rate / 2 + state.fail_rate:
            # A forced answer is a status code, or {"status": 429, "retry_after": null} for a bare 429.
            code = (forced.get("status") if isinstance(forced, dict) else forced) or 503
            retry_after = forced.get("retry_after", "1") if isinstance(forced, dict) else "1"
            state.bump(f"status_{code}")
            headers = {"Retry-After": str(retry_after)} if code == 429 and retry_after is not None else {}
            self._send(code, _error(code, "forced answer" if forced else "try again later"), headers)
            return
        try:
            batches = state.contract.batches(path, body)
            state.check_rules(batches)
        except RequestRefused as refusal:
            state.bump(f"status_{refusal.status}")
            log.info("Refused a request to %s: %s", path, refusal.message)
            self._send(refusal.status, _error(refusal.status, refusal.message))
            return
        allowed, used = state.limiter.take(len(batches))
        if not allowed:
            state.bump("status_429")
            self._send(
                429,
                _error(429, "rate limit exceeded"),
                {"Retry-After": "1", "X-mp-rate-limit-exceeded": "true"},
            )
            return
        state.accept(batches)
        state.bump("status_202")
        if lose_answer or state.random.random() < state.drop_rate / 2:
            state.bump("connections_dropped")
            self._drop()  # processed, but the answer is lost: the client will resend
            return
        self._send(202, b"", {"X-mp-rate-limit-percentage-used": f"{used:.0f}"})

    def _authorize(self) -> int:
        state = self.server.state
        header = self.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return 401
        try:
            key, _, secret = base64.b64decode(header[6:], validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return 401
        ok = hmac.compare_digest(key, state.api_key) and hmac.compare_digest(secret, state.api_secret)
        return 0 if ok else 403


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], state: EmulatorState) -> None:
        super().__init__(address, _Handler)
        self.state = state


class EventsApiEmulator:
    """The emulator in a background thread (for tests and ``make run``).

    :param host: address to bind; loopback by default.
    :param port: 0 picks a free port (see :attr:`url`).
    :param options: :class:`EmulatorState` options (``rate``, ``data_plans``, ``block``, ...).
    """

    def __init__(self, api_key: str, api_secret: str, *, host: str = "127.0.0.1", port: int = 0, **options: Any):
        self.state = EmulatorState(api_key, api_secret, **options)
        self._server = _Server((host, port), self.state)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="events-api-emulator", daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> EventsApiEmulator:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> EventsApiEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8089)
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--api-secret", required=True)
    parser.add_argument("--rate", type=float, default=None, help="batches per second before 429 (default: none)")
    parser.add_argument("--fail-rate", type=float, default=0.0, help="share of requests answered 503")
    parser.add_argument("--drop-rate", type=float, default=0.0, help="share of connections dropped")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument(
        "--refuse-event",
        action="append",
        default=[],
        metavar="NAME",
        help="refuse (400) any request holding an event of this name, as a server-side rule; repeatable",
    )
    parser.add_argument("--record", type=Path, default=None, help="append accepted batches to this JSONL file")
    parser.add_argument(
        "--data-plan",
        type=Path,
        nargs="+",
        action="extend",
        default=[],
        metavar="FILE",
        help="data plan or plan version JSON (Data Planning API format); repeatable",
    )
    parser.add_argument(
        "--block",
        nargs="*",
        choices=BLOCK_CATEGORIES,
        default=None,
        metavar="CATEGORY",
        help=f"what the input blocks: {', '.join(BLOCK_CATEGORIES)} (default: all; none if given empty)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    block = BLOCK_CATEGORIES if args.block is None else args.block
    try:
        emulator = EventsApiEmulator(
            args.api_key,
            args.api_secret,
            host=args.host,
            port=args.port,
            rate=args.rate,
            fail_rate=args.fail_rate,
            drop_rate=args.drop_rate,
            refuse_events=args.refuse_event,
            latency_ms=args.latency_ms,
            record=args.record,
            data_plans=args.data_plan,
            block=block,
        )
    except (OSError, ValueError) as error:
        parser.error(str(error))
    plans = emulator.state.plans
    for plan_id, versions in sorted(plans.versions.items()):
        log.info("Data plan %s: versions %s, blocking %s", plan_id, sorted(versions), ", ".join(sorted(plans.block)))
    log.info("Events API emulator listening on %s", emulator.url)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    emulator.start()
    with contextlib.suppress(KeyboardInterrupt):
        stop.wait()
    emulator.stop()


if __name__ == "__main__":
    main()
