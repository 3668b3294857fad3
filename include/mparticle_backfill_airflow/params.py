"""The DAG's run params: the per-run choices, each a field of its own, and one JSON object of overrides of the
standing settings (the Variable's), empty by default.

Shaped by how Airflow 3.3's trigger form draws and sends params (its React ``FlexibleForm``): the form
sends every field's value, whether the person touched it or not; a boolean is a switch, and a null one is
drawn OFF and sends ``false`` once touched; a number field clamps to its schema's bounds on blur, silently;
a JSON field is parsed, not checked against its schema. So a field of its own is given only to a choice
whose default the form can show truly (a switch that is off, a date that is empty); the settings whose
value lives in the Variable are keys of one object, ``{}`` unless the person types one, so an untouched
form changes nothing and a number is never clamped. What the object's schema refuses (a value out of
range, a misspelt key) the API refuses when Trigger is pressed, and the form shows why, before any run.
"""

from __future__ import annotations

import json
from typing import Any

from airflow.sdk import Param

from mparticle_backfill.partition import LAYOUTS
from mparticle_backfill.rule_schemas import FIX_RULE, ROUTE
from mparticle_backfill.settings import OVERRIDES, SETTINGS, STANDING

# The schema of each standing setting inside the overrides object (null: not overridden).
_TYPES: dict[str, dict[str, Any]] = {
    "bucket": {"type": ["null", "string"]},
    "prefix": {"type": ["null", "string"]},
    "layout": {"type": ["null", "string"], "enum": [None, *LAYOUTS]},
    "state_bucket": {"type": ["null", "string"]},
    "state_prefix": {"type": ["null", "string"]},
    "max_age_days": {"type": ["null", "integer"], "minimum": 1, "maximum": 30},
    "replay_blocked_events": {"type": ["null", "boolean"]},
    "replay_blocked_event_attributes": {"type": ["null", "boolean"]},
    "replay_blocked_user_attributes": {"type": ["null", "boolean"]},
    "include_blocked_identities": {"type": ["null", "boolean"]},
    "environment": {"type": ["null", "string"], "enum": [None, "production", "development"]},
    "plan_version": {"type": ["null", "string", "integer"]},
    "data_plan": {"type": ["null", "string"]},
    "plan_check": {"type": ["null", "string"], "enum": [None, "hold", "report", "off"]},
    "plan_blocking": {
        "type": ["null", "object"],
        "properties": {
            name: {"type": "boolean"} for name in ("events", "event_attributes", "user_attributes", "user_identities")
        },
        "additionalProperties": False,
    },
    "fixes": {"type": ["null", "array"], "items": FIX_RULE},
    "routes": {"type": ["null", "array"], "items": ROUTE},
    "unrouted": {"type": ["null", "string"], "enum": [None, "default", "hold"]},
    "coalesce": {"type": ["null", "boolean"]},
    "shards": {"type": ["null", "integer"], "minimum": 1, "maximum": 1024},
    "files_per_chunk": {"type": ["null", "integer"], "minimum": 1, "maximum": 10_000},
    "lock_ttl_hours": {"type": ["null", "integer"], "minimum": 1, "maximum": 168},
}

# The per-run choices: fields of their own, each defaulting to what a run does without it.
_PER_RUN: dict[str, tuple[dict[str, Any], str]] = {
    "partition_date": (
        {"type": ["null", "string"], "format": "date"},
        "The quarantine date this manual run processes. Empty: yesterday (UTC). Leave it empty in the "
        "Backfill dialog: scheduled and backfill runs process their own date and refuse one.",
    ),
    "dry_run": (
        {"type": ["null", "boolean"]},
        "On: send nothing, and write the payloads that would be sent. Off: send.",
    ),
    "force": (
        {"type": ["null", "boolean"]},
        "On: resend what the ledger says mParticle already accepted. Off: never send anything twice.",
    ),
    "reference_time": (
        {"type": ["null", "string"], "format": "date-time"},
        "The end of the replay window. Empty: the time the run plans (the usual choice, also for backfills).",
    ),
}


def _overrides_help(variable: str) -> str:
    """The overrides field's help, in Markdown, short enough that the form's error alert (at its top) stays
    in view under it on a usual screen: what ``{}`` means, and the keys with their defaults."""
    keys = "; ".join(f"{name}: {_default(name)}" for name in STANDING)
    return (
        f"**`{{}}`: every setting is the {variable} Variable's.** Type only what this run changes, e.g. "
        '`{"coalesce": false}`. A value the schema refuses (out of range, unknown key) is refused when you '
        f"press Trigger, no run is created, and the reason is shown at the top of this form. Keys (default): {keys}."
    )


# What an empty (null) default means, where it means something else than "none".
_DERIVED = {
    "bucket": "required",
    "state_bucket": "= bucket",
    "state_prefix": "prefix/_backfill",
    "environment": "each batch's own",
    "data_plan": "none",
    "plan_check": '"hold" with a data_plan',
    "plan_blocking": "inferred",
    "shards": "one per chunk",
}


def _default(name: str) -> str:
    shown = _DERIVED.get(name) or json.dumps(SETTINGS[name][0])
    bounds = _TYPES[name]
    return f"{shown} ({bounds['minimum']} to {bounds['maximum']})" if "maximum" in bounds else shown


def run_params(variable: str = "mparticle_backfill") -> dict[str, Param]:
    """The trigger form: the per-run choices, then the overrides of the ``variable`` Variable, ``{}``."""
    params = {
        name: Param(
            SETTINGS[name][0],
            title=name.replace("_", " ").capitalize(),
            description=description,
            **schema,
        )
        for name, (schema, description) in _PER_RUN.items()
    }
    params[OVERRIDES] = Param(
        {},
        title="Settings that differ from the Variable",
        # Shown as Markdown by the form (a param's plain description would be shown instead, as one line).
        description_md=_overrides_help(variable),
        section=f"Settings: the {variable} Variable's unless overridden here",
        type=["null", "object"],
        properties={name: _TYPES[name] for name in STANDING},
        additionalProperties=False,
    )
    return params
