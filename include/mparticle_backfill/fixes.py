"""Fix rules: a small declarative language to correct replayed data, validated before any data is read.

A rule is a JSON object::

    {"name": "signup-name",
     "when": [{"field": "event_type", "equals": "custom_event"},
              {"field": "event_name", "matches": "^sign[ _]?up$"},
              {"field": "data.custom_attributes.plan", "in": ["pro", "team"]}],
     "then": [{"rename_event": "Sign Up"},
              {"cast_event_attribute": {"name": "seats", "to": "integer"}},
              {"set_user_attribute": {"name": "plan_fixed", "value": true}}]}

``when`` (all must hold; may be empty) tests ``event_type``, ``event_name`` (``screen_name`` for
screen views), a path in the event (``data.custom_attributes.plan``) or a restored user attribute
(``user_attributes.$gender``) with exactly one of ``equals``, ``in``, ``matches`` (a regex, searched)
or ``exists`` (true/false). ``then`` lists steps: ``rename_event``, ``set_custom_event_type``,
``set_event_attribute``, ``rename_event_attribute``, ``remove_event_attribute``,
``cast_event_attribute`` (to ``string``, ``integer``, ``number`` or ``boolean``),
``set_user_attribute``, ``remove_user_attribute``. Event steps apply to each matching event; user
attribute steps apply once to a batch when any of its events matched (or, for a rule that looks at no
event, when its conditions hold for the batch). Rules apply in order.
"""

from __future__ import annotations

import copy
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import FixFailed, FixRuleError
from .limits import CUSTOM_EVENT_TYPES, MAX_NAME_LENGTH
from .model import SelectedEvent
from .values import api_event

CAST_TYPES = ("string", "integer", "number", "boolean")
OPERATORS = ("equals", "in", "matches", "exists")
EVENT_STEPS = (
    "rename_event",
    "set_custom_event_type",
    "set_event_attribute",
    "rename_event_attribute",
    "remove_event_attribute",
    "cast_event_attribute",
)
USER_STEPS = ("set_user_attribute", "remove_user_attribute")
_ABSENT = object()


@dataclass(frozen=True, slots=True)
class Condition:
    field: str
    operator: str
    operand: Any

    @property
    def on_event(self) -> bool:
        return not self.field.startswith("user_attributes.")

    def holds(self, event: dict[str, Any] | None, user_attributes: dict[str, Any]) -> bool:
        return passes(self.operator, self.operand, self._value(event, user_attributes))

    def _value(self, event: dict[str, Any] | None, user_attributes: dict[str, Any]) -> Any:
        if not self.on_event:
            return user_attributes.get(self.field.removeprefix("user_attributes."), _ABSENT)
        if event is None:
            return _ABSENT
        if self.field == "event_type":
            return event.get("event_type", _ABSENT)
        data = event.get("data") or {}
        if self.field == "event_name":
            return data.get("screen_name" if event.get("event_type") == "screen_view" else "event_name", _ABSENT)
        node: Any = event
        for part in self.field.split("."):
            if not isinstance(node, dict) or part not in node:
                return _ABSENT
            node = node[part]
        return node


@dataclass(frozen=True, slots=True)
class Step:
    action: str
    argument: Any


@dataclass(frozen=True, slots=True)
class FixRule:
    """One validated rule."""

    name: str
    conditions: tuple[Condition, ...]
    event_steps: tuple[Step, ...]
    user_steps: tuple[Step, ...]

    @property
    def looks_at_events(self) -> bool:
        return bool(self.event_steps) or any(c.on_event for c in self.conditions)


def _name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_NAME_LENGTH:
        raise ValueError(f"{what} must be a non-empty string of at most {MAX_NAME_LENGTH} characters")
    return value


ABSENT = _ABSENT  # what a path that leads nowhere gives (``exists: false`` holds for it)


def passes(operator: str, operand: Any, value: Any) -> bool:
    """Whether ``value`` (or :data:`ABSENT`) passes a compiled test: the one place the operators are defined."""
    if operator == "exists":
        return (value is not _ABSENT) == operand
    if value is _ABSENT:
        return False
    if operator == "equals":
        return value == operand
    if operator == "in":
        return value in operand
    return operand.search(str(value)) is not None


def _compile_condition(raw: Any) -> Condition:
    if not isinstance(raw, dict) or not isinstance(raw.get("field"), str):
        raise ValueError("each condition must be an object with a 'field'")
    field = raw["field"]
    if field not in ("event_type", "event_name") and not field.startswith(("data.", "user_attributes.")):
        raise ValueError(
            f"condition field {field!r} is not event_type, event_name, data.<path> or user_attributes.<name>"
        )
    return Condition(field, *compile_test(field, raw))


def compile_test(field: str, raw: dict[str, Any]) -> tuple[str, Any]:
    """The operator and operand of a condition ``{"field": ..., "<operator>": operand}``, validated."""
    operators = [key for key in raw if key != "field"]
    if len(operators) != 1 or operators[0] not in OPERATORS:
        raise ValueError(f"condition on {field!r} must have exactly one of {', '.join(OPERATORS)}")
    operator = operators[0]
    operand = raw[operator]
    if operator == "in" and not isinstance(operand, list):
        raise ValueError(f"'in' on {field!r} takes a list")
    if operator == "exists" and not isinstance(operand, bool):
        raise ValueError(f"'exists' on {field!r} takes true or false")
    if operator == "matches":
        if not isinstance(operand, str):
            raise ValueError(f"'matches' on {field!r} takes a regular expression string")
        try:
            operand = re.compile(operand)
        except re.error as error:
            raise ValueError(f"'matches' on {field!r}: bad regular expression: {error}") from None
    return operator, operand


def _compile_step(raw: Any) -> Step:
    if not isinstance(raw, dict) or len(raw) != 1:
        raise ValueError("each step must be an object with exactly one action")
    ((action, argument),) = raw.items()
    if action not in EVENT_STEPS + USER_STEPS:
        raise ValueError(f"unknown step {action!r}; known: {', '.join(EVENT_STEPS + USER_STEPS)}")
    if action in ("rename_event", "remove_event_attribute", "remove_user_attribute"):
        _name(argument, action)
    elif action == "set_custom_event_type":
        if argument not in CUSTOM_EVENT_TYPES:
            raise ValueError(f"set_custom_event_type: {argument!r} is not one of {sorted(CUSTOM_EVENT_TYPES)}")
    elif action in ("set_event_attribute", "set_user_attribute"):
        if not isinstance(argument, dict) or set(argument) != {"name", "value"}:
            raise ValueError(f"{action} takes {{'name': ..., 'value': ...}}")
        _name(argument["name"], f"{action}.name")
        if not isinstance(argument["value"], (str, int, float, bool)) and argument["value"] is not None:
            raise ValueError(f"{action}.value must be a string, number, boolean or null")
    elif action == "rename_event_attribute":
        if not isinstance(argument, dict) or set(argument) != {"from", "to"}:
            raise ValueError("rename_event_attribute takes {'from': ..., 'to': ...}")
        _name(argument["from"], "rename_event_attribute.from")
        _name(argument["to"], "rename_event_attribute.to")
    elif action == "cast_event_attribute":
        if not isinstance(argument, dict) or set(argument) != {"name", "to"} or argument["to"] not in CAST_TYPES:
            raise ValueError(f"cast_event_attribute takes {{'name': ..., 'to': one of {', '.join(CAST_TYPES)}}}")
        _name(argument["name"], "cast_event_attribute.name")
    return Step(action, argument)


def compile_rules(raw_rules: Any) -> tuple[FixRule, ...]:
    """Validate fix rules up front. Raises :class:`FixRuleError` naming the first bad rule and why."""
    if raw_rules is None:
        return ()
    if not isinstance(raw_rules, list):
        raise FixRuleError("list", "fixes must be a JSON list of rules")
    rules: list[FixRule] = []
    seen: set[str] = set()
    for index, raw in enumerate(raw_rules, start=1):
        label = f"#{index}"
        try:
            if not isinstance(raw, dict):
                raise ValueError("a rule must be a JSON object")
            label = f"#{index} {raw.get('name')!r}" if raw.get("name") else label
            unknown = set(raw) - {"name", "when", "then", "description"}
            if unknown:
                raise ValueError(f"unknown keys {sorted(unknown)}; a rule has name, when, then, description")
            name = _name(raw.get("name"), "name")
            if name in seen:
                raise ValueError("another rule has the same name")
            seen.add(name)
            when = raw.get("when") or []
            then = raw.get("then")
            if not isinstance(when, list):
                raise ValueError("'when' must be a list of conditions")
            if not isinstance(then, list) or not then:
                raise ValueError("'then' must be a non-empty list of steps")
            steps = [_compile_step(step) for step in then]
            rules.append(
                FixRule(
                    name=name,
                    conditions=tuple(_compile_condition(c) for c in when),
                    event_steps=tuple(s for s in steps if s.action in EVENT_STEPS),
                    user_steps=tuple(s for s in steps if s.action in USER_STEPS),
                )
            )
        except ValueError as error:
            raise FixRuleError(label, str(error)) from None
    return tuple(rules)


def _cast(value: Any, to: str) -> Any:
    if to == "string":
        return (
            value
            if isinstance(value, str)
            else ("true" if value is True else "false" if value is False else str(value))
        )
    if to == "boolean":
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "1", "yes", "y"):
            return True
        if text in ("false", "0", "no", "n"):
            return False
        raise ValueError(f"{value!r} is not a boolean")
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is a boolean, not a {to}")
    if to == "integer":
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        text = str(value).strip()
        if text.lstrip("+-").isdigit():
            return int(text)
        raise ValueError(f"{value!r} is not an integer")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{value!r} is not a number") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise ValueError(f"{value!r} is not a finite number")
    return int(number) if isinstance(value, int) else number


def _apply_event_step(step: Step, event: dict[str, Any]) -> None:
    data = event.setdefault("data", {})
    attributes = data.get("custom_attributes")
    if step.action == "rename_event":
        data["screen_name" if event.get("event_type") == "screen_view" else "event_name"] = step.argument
    elif step.action == "set_custom_event_type":
        data["custom_event_type"] = step.argument
    elif step.action == "set_event_attribute":
        data.setdefault("custom_attributes", {})
        if data["custom_attributes"] is None:
            data["custom_attributes"] = {}
        data["custom_attributes"][step.argument["name"]] = step.argument["value"]
    elif isinstance(attributes, dict):
        if step.action == "remove_event_attribute":
            attributes.pop(step.argument, None)
        elif step.action == "rename_event_attribute" and step.argument["from"] in attributes:
            attributes[step.argument["to"]] = attributes.pop(step.argument["from"])
        elif step.action == "cast_event_attribute" and step.argument["name"] in attributes:
            name = step.argument["name"]
            try:
                attributes[name] = _cast(attributes[name], step.argument["to"])
            except ValueError as error:
                raise FixFailed(
                    "", f"cannot cast custom attribute {name!r} to {step.argument['to']}: {error}"
                ) from None


def _apply_user_step(step: Step, user_attributes: dict[str, Any]) -> None:
    if step.action == "set_user_attribute":
        user_attributes[step.argument["name"]] = step.argument["value"]
    else:
        user_attributes.pop(step.argument, None)


def apply_fixes(
    rules: Sequence[FixRule],
    events: list[SelectedEvent],
    user_attributes: dict[str, Any],
    counts: Counter[str],
    on_failure: Callable[[SelectedEvent, FixFailed], None],
) -> tuple[list[SelectedEvent], dict[str, Any]]:
    """Apply ``rules`` in order. Events a rule cannot fix go to ``on_failure`` and are left out.

    Matching events are copied before they change: the original record stays as read.
    """
    if not rules:
        return events, user_attributes
    user_attributes = dict(user_attributes)
    for rule in rules:
        if rule.looks_at_events:
            matched = 0
            kept: list[SelectedEvent] = []
            for selected in events:
                if not all(c.holds(selected.event, user_attributes) for c in rule.conditions):
                    kept.append(selected)
                    continue
                matched += 1
                if rule.event_steps:
                    fixed = copy.deepcopy(selected.event)
                    try:
                        for step in rule.event_steps:
                            _apply_event_step(step, fixed)
                    except FixFailed as error:
                        counts[f"fix_failed:{rule.name}"] += 1
                        on_failure(selected, FixFailed(rule.name, str(error).split(": ", 1)[-1]))
                        continue
                    # A step may have written a 64-bit field as a decimal string: send it as an int.
                    selected = SelectedEvent(
                        api_event(fixed), selected.event_id, selected.kind, selected.restored_attributes
                    )
                    counts[f"fix:{rule.name}"] += 1
                kept.append(selected)
            events = kept
            applies_to_user = matched > 0
        else:
            applies_to_user = all(c.holds(None, user_attributes) for c in rule.conditions)
        if applies_to_user and rule.user_steps:
            for step in rule.user_steps:
                _apply_user_step(step, user_attributes)
            if not rule.event_steps:
                counts[f"fix:{rule.name}"] += 1
    return events, user_attributes
