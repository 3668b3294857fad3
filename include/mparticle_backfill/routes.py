"""Routes: which Events API connection (which mParticle input) receives each replayed batch.

mParticle's backfill guide asks each user to choose the input a replay goes to: a dedicated Custom Feed
is cleanest, but some integrations hang off the original input (Web, iOS, Android), so its key and
secret must be used. A workspace's quarantine output mixes batches of all its inputs, so a run routes
each original batch by its batch-level fields, with the fix rules' condition language::

    [{"when": [{"field": "application_info.os", "in": ["IOS", "iOS"]}], "connection": "mparticle_ios"},
     {"when": [{"field": "source_info.channel", "equals": "javascript"}], "connection": "mparticle_web"}]

Conditions test a dotted path into the original batch (``application_info.os``, ``device_info.platform``,
``source_info.channel``, ``environment``, ``context.data_plan.plan_id``, ...) with exactly one of
``equals``, ``in``, ``matches`` (a regex, searched) or ``exists``; all must hold; the first rule that
matches wins. No match goes to the default connection, or, with ``unrouted = hold``, is held
(``no_route``). Replay keys do not depend on the route: the ledger knows a batch whichever input
received it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import InvalidSettings
from .fixes import ABSENT, compile_test, passes

# The route of a batch no rule matches: the DAG's own Events API connection (``mparticle_events_api``, or
# the one its entry in mparticle_backfills.yaml names), resolved by the send task, not here.
DEFAULT_ROUTE = ""
SEND_TO_DEFAULT = "default"
HOLD = "hold"
UNROUTED = (SEND_TO_DEFAULT, HOLD)
NO_ROUTE = "no_route"
_CONNECTION_ID = re.compile(r"^[A-Za-z0-9_.\-]{1,250}$")


@dataclass(frozen=True, slots=True)
class Condition:
    """``path`` (dotted, into the original batch) passes ``operator`` ``operand``."""

    path: tuple[str, ...]
    operator: str
    operand: Any

    def holds(self, batch: Mapping[str, Any]) -> bool:
        node: Any = batch
        for part in self.path:
            if not isinstance(node, Mapping) or part not in node:
                node = ABSENT
                break
            node = node[part]
        return passes(self.operator, self.operand, node)


@dataclass(frozen=True, slots=True)
class Route:
    """One rule: when every condition holds, the batch goes to ``connection``."""

    label: str
    conditions: tuple[Condition, ...]
    connection: str


@dataclass(frozen=True, slots=True)
class Routing:
    """The validated routes of a run.

    :param routes: the rules, in order (the first that matches wins).
    :param default: the route of batches no rule matches: ``DEFAULT_ROUTE`` (the DAG's own connection), or
        None with ``unrouted = hold``.
    """

    routes: tuple[Route, ...] = ()
    default: str | None = DEFAULT_ROUTE

    def route_for(self, batch: Mapping[str, Any]) -> str | None:
        """The connection id for an original batch; ``DEFAULT_ROUTE``: the DAG's own connection; None: hold it
        (no rule matched, ``unrouted = hold``)."""
        for route in self.routes:
            if all(condition.holds(batch) for condition in route.conditions):
                return route.connection
        return self.default

    @property
    def connections(self) -> list[str]:
        """Every connection the rules name (each is checked before a run reads data), in order."""
        return list(dict.fromkeys(route.connection for route in self.routes))


def compile_routes(raw_routes: Any, unrouted: str = SEND_TO_DEFAULT) -> Routing:
    """Validate the ``routes`` setting. Raises :class:`InvalidSettings` naming the first bad rule and why."""
    if unrouted not in UNROUTED:
        raise InvalidSettings("unrouted", f"must be one of {list(UNROUTED)}, got {unrouted!r}")
    if raw_routes is None:
        raw_routes = []
    if not isinstance(raw_routes, list):
        raise InvalidSettings("routes", "must be a JSON list of rules")
    routes = []
    for index, raw in enumerate(raw_routes, start=1):
        label = f"#{index}"
        try:
            if not isinstance(raw, dict):
                raise ValueError("a route must be a JSON object")
            label = f"#{index} {raw['name']!r}" if isinstance(raw.get("name"), str) else label
            unknown = set(raw) - {"name", "when", "connection", "description"}
            if unknown:
                raise ValueError(f"unknown keys {sorted(unknown)}; a route has name, when, connection, description")
            connection = raw.get("connection")
            if not isinstance(connection, str) or not _CONNECTION_ID.match(connection):
                raise ValueError(f"'connection' must be an Airflow connection id, got {connection!r}")
            when = raw.get("when")
            if not isinstance(when, list) or not when:
                raise ValueError("'when' must be a non-empty list of conditions")
            conditions = []
            for condition in when:
                if not isinstance(condition, dict) or not isinstance(condition.get("field"), str):
                    raise ValueError("each condition must be an object with a 'field'")
                field = condition["field"]
                if not field or any(not part for part in field.split(".")):
                    raise ValueError(f"condition field {field!r} is not a dotted path into the batch")
                conditions.append(Condition(tuple(field.split(".")), *compile_test(field, condition)))
            routes.append(Route(label, tuple(conditions), connection))
        except ValueError as error:
            raise InvalidSettings("routes", f"route {label}: {error}") from None
    return Routing(tuple(routes), DEFAULT_ROUTE if unrouted == SEND_TO_DEFAULT else None)
