"""mParticle Events API rules a batch must meet: sizes, counts, event types and required fields.

One source for the transform (which makes batches valid or dead-letters them) and the emulator
(which refuses what mParticle refuses). Sizes use 1 KB = 1000 bytes: the conservative reading of
mParticle's "128 KB" and "256 KB".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .values import INTEGER_EVENT_FIELDS

MAX_BATCH_BYTES = 128_000
MAX_REQUEST_BYTES = 256_000
MAX_BATCHES_PER_REQUEST = 100
MAX_EVENT_ATTRIBUTES = 100
MAX_USER_ATTRIBUTES = 100
MAX_NAME_LENGTH = 256
MAX_VALUE_LENGTH = 4096
ENVIRONMENTS = ("development", "production")

# Required fields of ``data`` per event type (mparticle.inbound.eventsapi.schema.json).
REQUIRED_EVENT_FIELDS: Mapping[str, tuple[str, ...]] = {
    "custom_event": ("event_name", "custom_event_type"),
    "screen_view": ("screen_name",),
    "session_start": ("session_id",),
    "session_end": ("session_duration_ms",),
    "commerce_event": (),
    "crash_report": (),
    "opt_out": ("is_opted_out",),
    "first_run": (),
    "pre_attribution": (),
    "push_registration": ("register", "registration_token"),
    "application_state_transition": ("application_transition_type",),
    "push_message": ("push_message_token", "push_message_type", "push_notification_payload"),
    "network_performance": ("url", "response_code"),
    "breadcrumb": ("label",),
    "profile": ("previous_mpid", "current_mpid", "profile_event_type"),
    "push_reaction": (),
    "user_attribute_change": ("user_attribute_name", "new", "old"),
    "user_identity_change": ("new", "old"),
    "uninstall": (),
}
# "attribution": what mParticle's official Python SDK sends for its attribution events
# (AppEvent.create_attribution_event), and mParticle takes (the schema lists it for commerce events only).
CUSTOM_EVENT_TYPES = frozenset(
    {
        "navigation",
        "location",
        "search",
        "transaction",
        "user_content",
        "user_preference",
        "social",
        "other",
        "media",
        "attribution",
    }
)
# "customerid": the customer id as mParticle's official Python, Node and Ruby SDKs spell it (mParticle
# takes both spellings; quarantined batches of those SDKs carry it).
USER_IDENTITY_TYPES = frozenset(
    {
        "other",
        "customer_id",
        "customerid",
        "facebook",
        "twitter",
        "google",
        "microsoft",
        "yahoo",
        "email",
        "alias",
        "facebook_custom_audience_id",
        "mobile_number",
        "phone_number_2",
        "phone_number_3",
    }
    | {f"other_id_{n}" for n in range(2, 11)}
)
# Batch fields that only mParticle sets: a replay never sends them.
SERVER_SET_BATCH_FIELDS = ("batch_id", "timestamp_unixtime_ms", "source_info")


def _scalar_problem(kind: str, name: Any, value: Any) -> str | None:
    if not isinstance(name, str) or not name:
        return f"{kind} name {name!r} is not a non-empty string"
    if len(name) > MAX_NAME_LENGTH:
        return f"{kind} name is longer than {MAX_NAME_LENGTH} characters"
    values = value if isinstance(value, list) else [value]
    for item in values:
        if isinstance(item, str) and len(item) > MAX_VALUE_LENGTH:
            return f"{kind} {name!r} has a value longer than {MAX_VALUE_LENGTH} characters"
    return None


def event_problem(event: Any) -> str | None:
    """Why mParticle would refuse this event, or None when it is valid."""
    data = event.get("data") if type(event) is dict else None
    if type(data) is not dict:
        return "event is not an object with a data object"
    event_type = event.get("event_type")
    required = REQUIRED_EVENT_FIELDS.get(event_type) if type(event_type) is str else None
    if required is None:
        return f"unknown event_type {event_type!r}"
    for name in required:
        value = data.get(name)
        if value is None or value == "":
            return f"{event_type} without required data.{name}"
    if event_type == "custom_event":
        custom_type = data["custom_event_type"]
        if type(custom_type) is not str or custom_type not in CUSTOM_EVENT_TYPES:
            return f"custom_event_type {custom_type!r} is not one of {sorted(CUSTOM_EVENT_TYPES)}"
    for name in INTEGER_EVENT_FIELDS:
        value = data.get(name)
        if value is not None and type(value) is not int:
            return f"data.{name} is not an integer"
    attributes = data.get("custom_attributes")
    if attributes is not None:
        if not isinstance(attributes, dict):
            return "data.custom_attributes is not an object"
        if len(attributes) > MAX_EVENT_ATTRIBUTES:
            return f"{len(attributes)} custom attributes, more than {MAX_EVENT_ATTRIBUTES}"
        for name, value in attributes.items():
            kind = type(value)
            if (
                type(name) is str
                and 0 < len(name) <= MAX_NAME_LENGTH
                and ((kind is str and len(value) <= MAX_VALUE_LENGTH) or kind in (int, float, bool) or value is None)
            ):
                continue  # the common case, checked fast
            problem = _scalar_problem("custom attribute", name, value)
            if problem:
                return problem
            if isinstance(value, (dict, list)):
                return f"custom attribute {name!r} is not a string, number or boolean"
    return None


def user_attributes_problem(user_attributes: Any) -> str | None:
    """Why mParticle would refuse these user attributes, or None."""
    if user_attributes is None:
        return None
    if not isinstance(user_attributes, dict):
        return "user_attributes is not an object"
    if len(user_attributes) > MAX_USER_ATTRIBUTES:
        return f"{len(user_attributes)} user attributes, more than {MAX_USER_ATTRIBUTES}"
    for name, value in user_attributes.items():
        problem = _scalar_problem("user attribute", name, value)
        if problem:
            return problem
        if isinstance(value, dict):
            return f"user attribute {name!r} is an object"
    return None


def batch_problem(batch: Any) -> str | None:
    """Why mParticle would refuse this batch (size aside), or None."""
    if not isinstance(batch, dict):
        return "batch is not a JSON object"
    if batch.get("environment") not in ENVIRONMENTS:
        return f"environment {batch.get('environment')!r} is not one of {list(ENVIRONMENTS)}"
    identities = batch.get("user_identities")
    if identities is not None:
        if not isinstance(identities, dict):
            return "user_identities is not an object"
        for name, value in identities.items():
            if name not in USER_IDENTITY_TYPES:
                return f"unknown user identity type {name!r}"
            if value is not None and not isinstance(value, str):
                return f"user identity {name!r} is not a single string (one user per batch)"
    if "ip" in batch and not isinstance(batch["ip"], str):
        return "ip is not a string"
    mpid = batch.get("mpid")
    if mpid is not None and (isinstance(mpid, bool) or not isinstance(mpid, (int, str))):
        return "mpid is not a single 64-bit id (one user per batch)"
    if isinstance(mpid, str) and not mpid.lstrip("-").isdigit():
        return "mpid is not a 64-bit integer"
    events = batch.get("events")
    if events is not None:
        if not isinstance(events, list):
            return "events is not a list"
        for index, event in enumerate(events):
            problem = event_problem(event)
            if problem:
                return f"events[{index}]: {problem}"
    problem = user_attributes_problem(batch.get("user_attributes"))
    if problem:
        return problem
    data_plan = (batch.get("context") or {}).get("data_plan") if isinstance(batch.get("context"), dict) else None
    if data_plan is not None and (not isinstance(data_plan, dict) or not data_plan.get("plan_id")):
        return "context.data_plan without plan_id"
    return None
