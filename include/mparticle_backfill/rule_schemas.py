"""JSON Schemas of the ``fixes`` and ``routes`` settings, for the trigger form (and any editor).

The validators in :mod:`.fixes` and :mod:`.routes` stay the authority: they name the bad rule and say why,
which a schema error path cannot. These schemas describe the same shapes from the same constants, so that
the trigger form's ``overrides`` schema refuses a misspelt step before a run starts (Airflow's API checks it
when Trigger is pressed). ``tests/core/test_rule_schemas.py`` checks that schema and validator agree on
every example, valid and invalid.

Hand-written rather than generated from msgspec Structs: the rules are heterogeneous single-key objects
(``{"rename_event": "Sign Up"}``), which Structs express only through a tagged union of another shape, and
changing the rules' JSON shape would break every Variable already written.
"""

from __future__ import annotations

from typing import Any

from .fixes import CAST_TYPES, EVENT_STEPS, OPERATORS, USER_STEPS
from .limits import CUSTOM_EVENT_TYPES, MAX_NAME_LENGTH

_NAME: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": MAX_NAME_LENGTH}
_VALUE: dict[str, Any] = {"type": ["string", "number", "boolean", "null"]}
_NAME_AND_VALUE: dict[str, Any] = {
    "type": "object",
    "required": ["name", "value"],
    "properties": {"name": _NAME, "value": _VALUE},
    "additionalProperties": False,
}
_OPERANDS: dict[str, dict[str, Any]] = {
    "equals": {"description": "the value equals this"},
    "in": {"type": "array", "description": "the value is one of these"},
    "matches": {"type": "string", "description": "a regular expression the value matches (searched)"},
    "exists": {"type": "boolean", "description": "the path leads to a value (true) or nowhere (false)"},
}
assert set(_OPERANDS) == set(OPERATORS)


def _condition(field: dict[str, Any]) -> dict[str, Any]:
    """``{"field": ..., "<operator>": operand}`` with exactly one operator."""
    return {
        "type": "object",
        "required": ["field"],
        "properties": {"field": field, **_OPERANDS},
        "additionalProperties": False,
        "minProperties": 2,
        "maxProperties": 2,
    }


def _step(action: str, argument: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "title": action,
        "required": [action],
        "properties": {action: argument},
        "additionalProperties": False,
    }


_STEP_ARGUMENTS: dict[str, dict[str, Any]] = {
    "rename_event": _NAME,
    "set_custom_event_type": {"enum": sorted(CUSTOM_EVENT_TYPES)},
    "set_event_attribute": _NAME_AND_VALUE,
    "rename_event_attribute": {
        "type": "object",
        "required": ["from", "to"],
        "properties": {"from": _NAME, "to": _NAME},
        "additionalProperties": False,
    },
    "remove_event_attribute": _NAME,
    "cast_event_attribute": {
        "type": "object",
        "required": ["name", "to"],
        "properties": {"name": _NAME, "to": {"enum": list(CAST_TYPES)}},
        "additionalProperties": False,
    },
    "set_user_attribute": _NAME_AND_VALUE,
    "remove_user_attribute": _NAME,
}
assert set(_STEP_ARGUMENTS) == set(EVENT_STEPS + USER_STEPS)

FIX_RULE: dict[str, Any] = {
    "type": "object",
    "title": "fix rule",
    "required": ["name", "then"],
    "properties": {
        "name": _NAME,
        "description": {"type": "string"},
        "when": {
            "type": "array",
            "description": "conditions on the event, all must hold (none: every replayed event)",
            "items": _condition(
                {"type": "string", "pattern": r"^(event_type|event_name|data\..+|user_attributes\..+)$"}
            ),
        },
        "then": {
            "type": "array",
            "minItems": 1,
            "description": "steps, in order",
            "items": {"oneOf": [_step(action, argument) for action, argument in _STEP_ARGUMENTS.items()]},
        },
    },
    "additionalProperties": False,
}

ROUTE: dict[str, Any] = {
    "type": "object",
    "title": "route",
    "required": ["when", "connection"],
    "properties": {
        "name": {"type": "string"},
        "description": {"type": "string"},
        "when": {
            "type": "array",
            "minItems": 1,
            "description": "conditions on the original batch (dotted paths, e.g. device_info.platform), all must hold",
            "items": _condition({"type": "string", "pattern": r"^[^.]+(\.[^.]+)*$"}),
        },
        "connection": {"type": "string", "pattern": r"^[A-Za-z0-9_.\-]{1,250}$"},
    },
    "additionalProperties": False,
}
