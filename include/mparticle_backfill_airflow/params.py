"""The DAG's run params: one per setting, all empty by default so the Variable's value applies."""

from __future__ import annotations

from typing import Any

from airflow.sdk import Param

from mparticle_backfill.partition import LAYOUTS
from mparticle_backfill.rule_schemas import FIX_RULE, ROUTE
from mparticle_backfill.settings import SETTINGS

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
    # With an item schema the form shows a JSON editor that knows the rules (without one: a list of strings).
    "fixes": {"type": ["null", "array"], "items": FIX_RULE},
    "routes": {"type": ["null", "array"], "items": ROUTE},
    "unrouted": {"type": ["null", "string"], "enum": [None, "default", "hold"]},
    "coalesce": {"type": ["null", "boolean"]},
    "shards": {"type": ["null", "integer"], "minimum": 1, "maximum": 1024},
    "dry_run": {"type": ["null", "boolean"]},
    "force": {"type": ["null", "boolean"]},
    "partition_date": {"type": ["null", "string"], "format": "date"},
    "reference_time": {"type": ["null", "string"], "format": "date-time"},
    "files_per_chunk": {"type": ["null", "integer"], "minimum": 1},
    "lock_ttl_hours": {"type": ["null", "integer"], "minimum": 1, "maximum": 168},
}


def run_params(variable: str = "mparticle_backfill") -> dict[str, Param]:
    """Params for the trigger form; an empty one means "use the settings Variable" (``variable``)."""
    return {
        name: Param(
            None,
            title=name.replace("_", " ").capitalize(),
            description=f"{description} Empty: use the {variable} Variable (default {default!r}).",
            **_TYPES[name],
        )
        for name, (default, description) in SETTINGS.items()
    }
