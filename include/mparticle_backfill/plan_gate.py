"""Plan gate: keep out of a replay what the data plan version it names would block again.

A 202 from the Events API only means mParticle took a batch: what the plan version the batch names does
not allow is blocked again and goes back to quarantine. The gate asks :mod:`.plan_check` about each
record's replay, in the transform stage, before any batch is built, and then, with ``hold``, keeps back
every event that would be blocked again (whole: an event is not sent with an unplanned attribute
stripped, that would duplicate the delivered event without the value being backfilled) and the restored
user attributes if any of them would be; with ``report``, sends everything and counts what it predicts.
Unplanned identities are only counted: mParticle drops the identity, the events still reach outputs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .model import HELD, DeadLetter, Replay, SelectedEvent
from .plan_check import (
    CHECKED,
    UNPLANNED_EVENT,
    UNPLANNED_USER_ATTRIBUTE,
    UNPLANNED_USER_IDENTITY,
    BlockingCategories,
    DataPlan,
    PlanIssue,
)

HOLD = "hold"
REPORT = "report"
OFF = "off"
MODES = (HOLD, REPORT, OFF)
STAGE = "plan_check"
WOULD_BE_BLOCKED_AGAIN = "would_be_blocked_again"


@dataclass(frozen=True, slots=True)
class PlanGate:
    """The plan check as the transform stage applies it.

    :param plan: the plan document, loaded (:func:`.plan_check.load_plan`).
    :param blocking: which categories the input blocks (inferred from the partition, or the setting).
    :param mode: ``hold`` (do not send what would be blocked again) or ``report`` (send, and count).
    """

    plan: DataPlan
    blocking: BlockingCategories
    mode: str = HOLD

    def apply(
        self,
        replay: Replay,
        envelope: dict[str, Any],
        events: list[SelectedEvent],
        user_attributes: dict[str, Any],
        counts: Counter[str],
        hold: Callable[[DeadLetter], None],
    ) -> tuple[list[SelectedEvent], dict[str, Any]]:
        """What of ``events`` and ``user_attributes`` may be sent; the rest is held (``hold``, trail, counts)."""
        probe = {**envelope, "events": [selected.event for selected in events]}
        if user_attributes:
            probe["user_attributes"] = user_attributes
        verdict = self.plan.check_batch(probe, self.blocking)
        if verdict.status != CHECKED:
            counts[f"plan_not_checked:{verdict.status}"] += len(events) or 1
            return events, user_attributes
        counts["plan_checked_events"] += len(events)
        if not verdict.events and not verdict.batch_issues:  # nearly always: everything is planned
            return events, user_attributes
        held_events: dict[int, list[PlanIssue]] = {}
        for event in verdict.events:
            blocked = [issue for issue in event.issues if issue.blocked]
            if blocked:
                held_events[event.index] = blocked
            for issue in event.issues:
                if not issue.blocked:
                    counts[f"plan_invalid_not_blocked:{issue.data_point}"] += 1
        attribute_issues = [i for i in verdict.batch_issues if i.blocked and i.reason == UNPLANNED_USER_ATTRIBUTE]
        for issue in verdict.batch_issues:
            if issue.blocked and issue.reason == UNPLANNED_USER_IDENTITY:
                counts[f"plan_identity_would_be_dropped:{issue.name}"] += 1
        for issues in held_events.values():
            for issue in issues:
                counts[f"plan_fix:{issue.suggestion}"] += 1
        for issue in attribute_issues:
            counts[f"plan_fix:{issue.suggestion}"] += 1
        whole = sum(1 for issues in held_events.values() if any(i.reason == UNPLANNED_EVENT for i in issues))
        if self.mode == REPORT:
            counts["plan_predicted_events_blocked"] += whole
            counts["plan_predicted_event_attributes_blocked"] += sum(
                1 for issues in held_events.values() for i in issues if i.reason != UNPLANNED_EVENT
            )
            counts["plan_predicted_user_attributes_blocked"] += len(attribute_issues)
            return events, user_attributes
        kept: list[SelectedEvent] = []
        for index, selected in enumerate(events):
            issues = held_events.get(index)
            if issues is None:
                kept.append(selected)
                continue
            counts["events_held"] += 1
            replay.trail.append((HELD, WOULD_BE_BLOCKED_AGAIN))
            hold(DeadLetter(replay.ref, STAGE, WOULD_BE_BLOCKED_AGAIN, _detail(issues), selected.event))
        if attribute_issues:
            counts["user_attributes_held"] += len(user_attributes)
            replay.trail.append((HELD, WOULD_BE_BLOCKED_AGAIN))
            hold(DeadLetter(replay.ref, STAGE, WOULD_BE_BLOCKED_AGAIN, _detail(attribute_issues), user_attributes))
            user_attributes = {}
        return kept, user_attributes


def _detail(issues: list[PlanIssue]) -> str:
    """Names, data points and what to change; never a value."""
    return "; ".join(f"{issue.reason} {issue.name or ''} on {issue.data_point}: {issue.suggestion}" for issue in issues)


def describe(mode: str, source: str, plan_version: str | int, counts: Mapping[str, int]) -> list[str]:
    """The report's plan section, as Markdown lines: what was checked, held or predicted, and what to
    change in the plan."""
    if mode == OFF:
        lines = [
            "Delivery to outputs was **not checked** against a data plan (setting `data_plan` is empty): "
            "a 202 from the Events API does not mean the data reached the outputs; what the plan version a "
            "replay names does not allow is blocked again and goes back to quarantine."
        ]
        if plan_version == "keep":
            lines.append(
                "**Warning:** `plan_version = keep` names the version that blocked this data; unless that "
                "version was edited in place to allow it, mParticle blocks every replay again."
            )
        return lines
    held = counts.get("events_held", 0)
    lines = [f"Checked against `{source}` (`plan_check = {mode}`): {counts.get('plan_checked_events', 0)} events."]
    if mode == HOLD:
        lines.append(
            f"Held (not sent; a later run of this date sends them once the plan allows them): {held} events, "
            f"{counts.get('user_attributes_held', 0)} user attributes."
        )
    else:
        lines.append(
            "Sent anyway; predicted to be blocked again: "
            f"{counts.get('plan_predicted_events_blocked', 0)} events, "
            f"{counts.get('plan_predicted_event_attributes_blocked', 0)} event attributes, "
            f"{counts.get('plan_predicted_user_attributes_blocked', 0)} user attributes."
        )
    not_checked = {k.split(":", 1)[1]: n for k, n in counts.items() if k.startswith("plan_not_checked:") and n}
    if not_checked:
        lines.append(
            "Not checked (the plan document does not apply): "
            + ", ".join(f"{k} {n}" for k, n in sorted(not_checked.items()))
        )
    fixes = sorted(
        ((n, k.split(":", 1)[1]) for k, n in counts.items() if k.startswith("plan_fix:") and n), reverse=True
    )
    if fixes:
        lines += ["", "| what to change in the plan | occurrences |", "|---|---:|"]
        lines += [f"| {suggestion} | {n} |" for n, suggestion in fixes]
    return lines
