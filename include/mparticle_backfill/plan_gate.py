"""Plan gate: keep out of a replay what the data plan version it names would block again.

A 202 from the Events API only means mParticle took a batch: what the plan version the batch names does
not allow is blocked again and goes back to quarantine. The gate asks :mod:`.plan_check` about each
record's replay, in the transform stage, before any batch is built, and then, with ``hold``, keeps back
every event that would be blocked again (whole: an event is not sent with an unplanned attribute
stripped, that would duplicate the delivered event without the value being backfilled) and the restored
user attributes if any of them would be; with ``report``, sends everything and counts what it predicts.
Unplanned identities are only counted: mParticle drops the identity, the events still reach outputs.

It errs toward holding: a wrong "allowed" sends data that mParticle blocks again while the ledger
records it delivered. With ``hold``, a replay the document cannot check (it names another plan, a
version the document lacks, or no version while the document lacks the one active for its environment)
is held too, never sent on a guess; :func:`check_settings` fails the run before any data is read when
the settings and the document alone show it. Data a fix rule introduced is checked whatever the
partition's block metadata showed (:meth:`.plan_check.BlockingCategories.for_unseen_data`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import InvalidSettings
from .model import HELD, DeadLetter, Replay, SelectedEvent
from .plan_check import (
    CHECKED,
    NO_ACTIVE_VERSION,
    NO_PLAN,
    PLAN_MISMATCH,
    UNPLANNED_EVENT,
    UNPLANNED_USER_ATTRIBUTE,
    UNPLANNED_USER_IDENTITY,
    VERSION_MISSING,
    BatchVerdict,
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
CANNOT_BE_CHECKED = "cannot_be_checked"  # no version of the document applies: held, not sent on a guess

# Why a replay was not checked, as the report says it.
_NOT_CHECKED = {
    PLAN_MISMATCH: "the replay names another plan than the document's",
    VERSION_MISSING: "the version the replay names is not in the document",
    NO_ACTIVE_VERSION: "the replay names no version and no version in the document is active for its environment",
    NO_PLAN: "the replay names no plan, so no plan blocks it",
}


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
        shown: tuple[list[SelectedEvent], dict[str, Any]] | None = None,
    ) -> tuple[list[SelectedEvent], dict[str, Any]]:
        """What of ``events`` and ``user_attributes`` may be sent; the rest is held (``hold``, trail, counts).

        :param shown: the record's events and user attributes before fix rules: what a rule introduced
            (a renamed event, a new attribute or user attribute) is checked with every category the
            partition's block metadata could not show blocking, unless ``plan_blocking`` set it.
        """
        probe = {**envelope, "events": [selected.event for selected in events]}
        if user_attributes:
            probe["user_attributes"] = user_attributes
        verdict = self.plan.check_batch(probe, self.blocking, _as_shown(events, user_attributes, shown))
        if verdict.status != CHECKED:
            return self._not_checked(verdict, replay, events, user_attributes, counts, hold)
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

    def _not_checked(
        self,
        verdict: BatchVerdict,
        replay: Replay,
        events: list[SelectedEvent],
        user_attributes: dict[str, Any],
        counts: Counter[str],
        hold: Callable[[DeadLetter], None],
    ) -> tuple[list[SelectedEvent], dict[str, Any]]:
        """No version of the document applies: ``hold`` holds it all, naming why; ``report`` sends it."""
        counts[f"plan_not_checked:{verdict.status}"] += len(events) or 1
        if self.mode != HOLD or verdict.status == NO_PLAN:
            return events, user_attributes
        detail = why_not_checked(self.plan, verdict)
        for selected in events:
            counts["events_held"] += 1
            replay.trail.append((HELD, CANNOT_BE_CHECKED))
            hold(DeadLetter(replay.ref, STAGE, CANNOT_BE_CHECKED, detail, selected.event))
        if user_attributes:
            counts["user_attributes_held"] += len(user_attributes)
            replay.trail.append((HELD, CANNOT_BE_CHECKED))
            hold(DeadLetter(replay.ref, STAGE, CANNOT_BE_CHECKED, detail, user_attributes))
        return [], {}


def _as_shown(
    events: list[SelectedEvent],
    user_attributes: dict[str, Any],
    shown: tuple[list[SelectedEvent], dict[str, Any]] | None,
) -> dict[str, Any] | None:
    """The batch as the partition showed it, event for event, or None when no fix rule changed anything."""
    if shown is None:
        return None
    shown_events, shown_attributes = shown
    new_user_attributes = not user_attributes.keys() <= shown_attributes.keys()
    if (
        not new_user_attributes
        and len(events) == len(shown_events)
        and all(selected.event is original.event for selected, original in zip(events, shown_events, strict=True))
    ):
        return None  # nearly always: no rule changed anything
    originals = {selected.event_id: selected.event for selected in shown_events}
    aligned = [originals.get(selected.event_id) for selected in events]
    if not new_user_attributes and all(
        original is selected.event for original, selected in zip(aligned, events, strict=True)
    ):
        return None  # an event was left out (invalid, or a rule failed), none changed
    return {"events": aligned, "user_attributes": shown_attributes}


def why_not_checked(plan: DataPlan, verdict: BatchVerdict) -> str:
    """Why no version of ``plan`` applies to a replay, and what to give the run instead (no values)."""
    source = plan.source or "the data_plan document"
    if verdict.status == PLAN_MISMATCH:
        return (
            f"the replay names plan {verdict.plan_id!r}; {source} is plan {plan.plan_id!r}: give the run "
            f"plan {verdict.plan_id!r} (data_plan = api:{verdict.plan_id})"
        )
    if verdict.status == VERSION_MISSING:
        return (
            f"the replay names version {verdict.plan_version} of plan {plan.plan_id!r}; {source} holds "
            f"{_versions(plan)}: give the run the whole plan (data_plan = api:{plan.plan_id}) or that version"
        )
    if verdict.status == NO_ACTIVE_VERSION:
        return (
            f"the replay names no version of plan {plan.plan_id!r}, so mParticle applies the version active "
            f"in {verdict.environment}; {source} holds {_versions(plan)}, none active there: give the run the "
            f"whole plan (data_plan = api:{plan.plan_id}), or name the version that allows the data with "
            "plan_version"
        )
    return _NOT_CHECKED.get(verdict.status, verdict.status)


def _versions(plan: DataPlan) -> str:
    listed = ", ".join(f"v{n} ({plan.versions[n].activated_environment})" for n in sorted(plan.versions))
    return f"version {listed}" if len(plan.versions) == 1 else f"versions {listed}"


def check_settings(plan: DataPlan, plan_version: str | int, environment: str | None, mode: str) -> None:
    """Raise :class:`~.errors.InvalidSettings` when the settings and the document alone show that ``hold``
    could check none of the replays: a numeric ``plan_version`` the document lacks, or, with ``omit``, no
    version active for the environment the replays go to (``environment``, or any when each keeps its own).

    Called before any data is read. ``report`` sends regardless (the report says what went unchecked);
    ``keep`` names each record's own version, known only once the data is read: held then.
    """
    if mode != HOLD:
        return
    source = plan.source or "the data_plan document"
    if isinstance(plan_version, int) and not isinstance(plan_version, bool):
        if plan_version not in plan.versions:
            raise InvalidSettings(
                "plan_version",
                f"names version {plan_version} of plan {plan.plan_id!r}, which {source} does not hold (it holds "
                f"{_versions(plan)}): give the run the whole plan (data_plan = api:{plan.plan_id}) or that "
                "version's document, or name a version it holds",
            )
        return
    if plan_version != "omit":
        return
    active = plan.active_environments()
    if (environment and environment not in active) or not active:
        where = environment or "any environment"
        raise InvalidSettings(
            "data_plan",
            f"no version in {source} is active in {where} ({_versions(plan)}); with plan_version = omit the "
            "replays name no version, so mParticle applies the active one, which the document lacks: give "
            f"the run the whole plan (data_plan = api:{plan.plan_id}), or name the version that allows the "
            "data with plan_version",
        )


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
    held_unchecked = {k: n for k, n in not_checked.items() if k != NO_PLAN} if mode == HOLD else {}
    if held_unchecked:
        lines.append(
            "Held, not checked (no version of the plan document applies, and nothing is sent on a guess; "
            "the held objects say what to give the run): "
            + "; ".join(f"{n} ({_NOT_CHECKED.get(k, k)}: {k})" for k, n in sorted(held_unchecked.items()))
        )
    sent_unchecked = {k: n for k, n in not_checked.items() if k not in held_unchecked}
    if sent_unchecked:
        lines.append(
            "Sent, not checked: "
            + "; ".join(f"{n} ({_NOT_CHECKED.get(k, k)}: {k})" for k, n in sorted(sent_unchecked.items()))
        )
    fixes = sorted(
        ((n, k.split(":", 1)[1]) for k, n in counts.items() if k.startswith("plan_fix:") and n), reverse=True
    )
    if fixes:
        lines += ["", "| what to change in the plan | occurrences |", "|---|---:|"]
        lines += [f"| {suggestion} | {n} |" for n, suggestion in fixes]
    return lines
