"""Plan check: predict which replayed data mParticle's data plan would block again, before sending it."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from jsonschema.exceptions import SchemaError
from jsonschema.validators import Draft6Validator, Draft7Validator, Draft201909Validator, Draft202012Validator
from jsonschema.validators import validator_for as _validator_for

from .errors import InvalidSettings

# Reasons of a :class:`PlanIssue`.
UNPLANNED_EVENT = "unplanned_event"
UNPLANNED_EVENT_ATTRIBUTE = "unplanned_event_attribute"
UNPLANNED_PRODUCT_ATTRIBUTE = "unplanned_product_attribute"
UNPLANNED_USER_ATTRIBUTE = "unplanned_user_attribute"
UNPLANNED_USER_IDENTITY = "unplanned_user_identity"
INVALID = "invalid"

# Statuses of a :class:`BatchVerdict`; every one but CHECKED means no plan version was applied.
CHECKED = "checked"
NO_PLAN = "no_plan"
PLAN_MISMATCH = "plan_mismatch"
VERSION_MISSING = "version_missing"
NO_ACTIVE_VERSION = "no_active_version"

CATEGORIES = ("events", "event_attributes", "user_attributes", "user_identities")

# Event types a data plan can plan; every other type (session_start, crash_report, ...) is never unplanned.
PLANNABLE_EVENT_TYPES = frozenset({"custom_event", "screen_view", "commerce_event"})
EVENT_MATCH_TYPES = frozenset(
    {"custom_event", "screen_view", "product_action", "promotion_action", "product_impression"}
)
PLANNING_MATCH_TYPES = EVENT_MATCH_TYPES | {"user_attributes", "user_identities"}
# Match types mParticle's models know but that plan nothing a batch can be blocked for (kept, never used).
UNPLANNABLE_MATCH_TYPES = frozenset(
    {
        "unknown", "session_start", "session_end", "crash_report", "opt_out", "first_run",
        "application_state_transition", "network_performance", "breadcrumb", "profile", "commerce",
        "user_attribute_change", "user_identity_change", "user_identity_chagne", "uninstall", "media",
    }
)  # fmt: skip
_REQUIRED_CRITERIA = {
    "custom_event": ("event_name", "custom_event_type"),
    "screen_view": ("screen_name",),
    "product_action": ("action",),
    "promotion_action": ("action",),
}

# Events API ``user_identities`` keys -> the IDSync names data plans use. The first name is the one a
# plan's user_identities point normally lists; further ones are spellings some of mParticle's SDKs use.
USER_IDENTITY_NAMES: dict[str, tuple[str, ...]] = {
    "customer_id": ("customerid",),
    "email": ("email",),
    "other": ("other",),
    **{f"other_id_{n}": (f"other{n}",) for n in range(2, 11)},
    "mobile_number": ("mobile_number",),
    "phone_number_2": ("phone_number_2",),
    "phone_number_3": ("phone_number_3",),
    "facebook": ("facebook",),
    "facebook_custom_audience_id": ("facebookcustomaudienceid", "facebook_custom_audience_id"),
    "google": ("google",),
    "microsoft": ("microsoft",),
    "yahoo": ("yahoo",),
    "twitter": ("twitter",),
    "alias": ("alias",),
}
# Events API ``device_info`` identity keys -> IDSync names (a plan's user_identities point lists both kinds).
DEVICE_IDENTITY_NAMES: dict[str, tuple[str, ...]] = {
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

# Where attributes sit in an event (object keys; "*" = every array item). Unplanned attributes there are
# reported by name from precomputed sets, so the value check ignores ``additionalProperties`` there.
_EVENT_ATTRIBUTES = ("data", "custom_attributes")
_PRODUCT_ATTRIBUTES = ("data", "product_action", "products", "*", "custom_attributes")
_IMPRESSION_PRODUCT_ATTRIBUTES = ("data", "product_impressions", "*", "products", "*", "custom_attributes")
_EVENT_CONTAINERS = frozenset({_EVENT_ATTRIBUTES, _PRODUCT_ATTRIBUTES, _IMPRESSION_PRODUCT_ATTRIBUTES})
_BATCH_CONTAINERS = frozenset({()})
_EMPTY: dict[str, Any] = {}
_ABSENT = object()


@dataclass(frozen=True, slots=True)
class BlockingCategories:
    """Which kinds of unplanned data the input blocks (a setting of the input, not of the plan).

    :param events: unplanned events are blocked whole.
    :param event_attributes: unplanned event (and product) attributes are removed from their events.
    :param user_attributes: unplanned user attributes are removed.
    :param user_identities: unplanned user and device identities are removed.
    :param inferred: the categories whose value was inferred from a partition's block metadata (not set by
        the ``plan_blocking`` setting). A partition shows only the data in it: data a fix rule introduces
        is judged with every inferred category blocking (:meth:`for_unseen_data`).
    """

    events: bool = False
    event_attributes: bool = False
    user_attributes: bool = False
    user_identities: bool = False
    inferred: frozenset[str] = frozenset()

    def __or__(self, other: BlockingCategories) -> BlockingCategories:
        return BlockingCategories(
            self.events or other.events,
            self.event_attributes or other.event_attributes,
            self.user_attributes or other.user_attributes,
            self.user_identities or other.user_identities,
            self.inferred | other.inferred,
        )

    def for_unseen_data(self) -> BlockingCategories:
        """The categories that block data the partition did not show (an event a fix rule renamed, an
        attribute or user attribute it set): every inferred category blocks, since no record could show
        that it does not; a category set by ``plan_blocking`` keeps its setting."""
        if not self.inferred:
            return self
        values = self.as_dict()
        values.update(dict.fromkeys(self.inferred, True))
        return BlockingCategories(**values)

    @classmethod
    def from_setting(cls, setting: Mapping[str, Any]) -> BlockingCategories:
        """All four categories from a setting such as ``{"events": true, "event_attributes": false, ...}``."""
        return _override(cls(), setting, require_all=True)

    def as_dict(self) -> dict[str, bool]:
        return {name: getattr(self, name) for name in CATEGORIES}


def blocking_from_metadata(metadata: Any) -> BlockingCategories:
    """The categories one quarantine record shows blocked, from its ``block_metadata``.

    Takes the raw ``context.data_plan.block_metadata`` dict or a parsed
    :class:`~mparticle_backfill.model.BlockMetadata`; ``blocked_device_identities`` counts as identities.
    """
    if metadata is None:
        return BlockingCategories()
    if isinstance(metadata, Mapping):
        get = metadata.get
    else:

        def get(name: str) -> Any:
            return getattr(metadata, name, None)

    return BlockingCategories(
        events=bool(get("blocked_event_ids")),
        event_attributes=bool(get("blocked_event_attributes")),
        user_attributes=bool(get("blocked_user_attributes")),
        user_identities=bool(get("blocked_user_identities") or get("blocked_device_identities")),
    )


def infer_blocking(
    counts: Mapping[str, int] | Iterable[BlockingCategories], override: Mapping[str, Any] | None = None
) -> BlockingCategories:
    """Which categories the input blocks, as a partition's quarantine records show it.

    A category counts as blocking if any record had something of it blocked. ``counts`` is either the
    number of records per category (``{"events": 12, "user_attributes": 0, ...}``) or the per-record
    :func:`blocking_from_metadata` flags, OR-ed together. ``override`` (a setting: category name ->
    boolean) replaces what was inferred for the categories it names; the others stay ``inferred``.
    """
    every = frozenset(CATEGORIES)
    inferred = BlockingCategories(inferred=every)
    if isinstance(counts, Mapping):
        unknown = sorted(set(counts) - set(CATEGORIES))
        if unknown:
            raise InvalidSettings("blocking", f"unknown categories {unknown}; known: {list(CATEGORIES)}")
        inferred = BlockingCategories(**{name: bool(counts.get(name)) for name in CATEGORIES}, inferred=every)
    else:
        for flags in counts:
            inferred = inferred | flags
    return _override(inferred, override or {}, require_all=False)


def _override(base: BlockingCategories, setting: Mapping[str, Any], require_all: bool) -> BlockingCategories:
    if not isinstance(setting, Mapping):
        raise InvalidSettings("blocking", f"must be an object of {list(CATEGORIES)} to booleans")
    unknown = sorted(set(setting) - set(CATEGORIES))
    if unknown:
        raise InvalidSettings("blocking", f"unknown categories {unknown}; known: {list(CATEGORIES)}")
    missing = [name for name in CATEGORIES if name not in setting]
    if require_all and missing:
        raise InvalidSettings("blocking", f"missing categories {missing}")
    values = base.as_dict()
    for name, value in setting.items():
        if not isinstance(value, bool):
            raise InvalidSettings("blocking", f"{name} must be true or false, got {value!r}")
        values[name] = value
    return BlockingCategories(**values, inferred=base.inferred - set(setting))


# --- Results -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PlanIssue:
    """One thing the plan version does not allow. Never holds a value, only names and paths.

    :param reason: ``unplanned_event``, ``unplanned_event_attribute``, ``unplanned_product_attribute``,
        ``unplanned_user_attribute``, ``unplanned_user_identity`` or ``invalid``.
    :param blocked: whether mParticle would block it again, given the input's blocking categories
        (``invalid`` never is: mParticle does not block invalid data).
    :param data_point: the data point concerned: ``custom_event 'Sign Up' (navigation)``,
        ``user_attributes``, ``user_identities``.
    :param suggestion: one line saying what to change in the plan; group a report by it.
    :param name: the attribute name, or the identity's IDSync name; None for events and invalid values.
    :param path: JSON path in the batch (``$.events[2].data.custom_attributes.seats``).
    :param message: for ``invalid``, what the rule requires (the offending value is never included).
    :param event_index: index of the event in the batch; None for batch-level issues.
    """

    reason: str
    blocked: bool
    data_point: str
    suggestion: str
    name: str | None = None
    path: str = ""
    message: str = ""
    event_index: int | None = None


@dataclass(frozen=True, slots=True)
class EventVerdict:
    """What the plan says of one event that has issues.

    :param index: the event's index in the batch's ``events``.
    :param event_type: its ``event_type``.
    :param data_point: the data point it matches, or would need (when unplanned).
    :param issues: what is unplanned or invalid in it.
    """

    index: int
    event_type: str
    data_point: str
    issues: tuple[PlanIssue, ...]

    @property
    def blocked(self) -> bool:
        """The whole event would be blocked again (unplanned, and unplanned events are blocked)."""
        return any(issue.blocked and issue.reason == UNPLANNED_EVENT for issue in self.issues)

    @property
    def blocked_attributes(self) -> tuple[str, ...]:
        """Event and product attributes that would be removed again."""
        return tuple(
            issue.name
            for issue in self.issues
            if issue.blocked and issue.name is not None and issue.reason != UNPLANNED_EVENT
        )


@dataclass(frozen=True, slots=True)
class BatchVerdict:
    """What a plan version would block of one replay batch.

    :param status: ``checked``; or why no version was applied: ``no_plan`` (the batch names none),
        ``plan_mismatch`` (it names another plan), ``version_missing`` (a version the document lacks),
        ``no_active_version`` (none active for the batch's environment).
    :param plan_id: the plan the batch names.
    :param plan_version: the version applied (or named, when it is missing).
    :param environment: the batch's environment.
    :param events: the events that have issues (clean events are not listed).
    :param batch_issues: user attribute and identity issues.
    """

    status: str
    plan_id: str | None = None
    plan_version: int | None = None
    environment: str = "production"
    events: tuple[EventVerdict, ...] = ()
    batch_issues: tuple[PlanIssue, ...] = ()

    @property
    def issues(self) -> tuple[PlanIssue, ...]:
        return tuple(issue for event in self.events for issue in event.issues) + self.batch_issues

    @property
    def blocked(self) -> bool:
        """Something of the batch would be blocked again."""
        return any(issue.blocked for issue in self.issues)

    @property
    def blocked_event_indexes(self) -> tuple[int, ...]:
        """Events that would be blocked again whole."""
        return tuple(event.index for event in self.events if event.blocked)


# --- The plan ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class DataPoint:
    """One compiled data point: how it matches, which attributes it allows, how it checks values.

    :param match_type: ``custom_event``, ``screen_view``, ``product_action``, ..., ``user_identities``.
    :param label: the match type and criteria as a person reads them (``custom_event 'Sign Up' (navigation)``).
    :param index: its position in the version's ``data_points``.
    :param allowed: the attributes (or identities, or user attributes) it allows; None allows any.
    :param product_allowed: the product attributes allowed on ``product_action.products``; None allows any.
    :param impression_product_allowed: the same for ``product_impressions[].products``.
    """

    match_type: str
    label: str
    index: int
    allowed: frozenset[str] | None = None
    product_allowed: frozenset[str] | None = None
    impression_product_allowed: frozenset[str] | None = None
    check: Callable[[Any], bool] | None = field(default=None, repr=False)
    schema: _CompiledSchema | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True, eq=False)
class PlanVersion:
    """One compiled version of a data plan; :meth:`check` predicts what it blocks in a replay batch.

    :param plan_id: the plan's id.
    :param version: the version number.
    :param activated_environment: ``none``, ``development`` or ``production``.
    :param points: every data point, in document order.
    """

    plan_id: str
    version: int
    activated_environment: str
    points: tuple[DataPoint, ...] = field(repr=False)
    event_points: Mapping[tuple[Any, ...], DataPoint] = field(repr=False, default_factory=dict)
    user_attributes: DataPoint | None = field(default=None, repr=False)
    user_identities: DataPoint | None = field(default=None, repr=False)

    @property
    def label(self) -> str:
        return f"{self.plan_id} v{self.version}"

    def check(
        self, batch: Mapping[str, Any], blocking: BlockingCategories, shown: Mapping[str, Any] | None = None
    ) -> BatchVerdict:
        """Check one Events API batch (``events``, ``user_attributes``, ``user_identities``, ``device_info``).

        :param shown: the batch as the partition showed it, before fix rules: its ``events`` aligned with
            ``batch``'s (an event that is the very same object was not changed) and its
            ``user_attributes``. What ``batch`` holds that ``shown`` did not (an event that now matches
            another data point, an attribute or user attribute a rule set or renamed) is judged with
            :meth:`BlockingCategories.for_unseen_data`. None: the partition showed all of ``batch``.
        """
        events: list[EventVerdict] = []
        check_event = self._check_event
        unseen = blocking
        shown_events: Any = None
        shown_attributes: frozenset[str] | None = None
        if shown is not None and blocking.inferred:  # else what a fix rule introduced is judged alike
            unseen = blocking.for_unseen_data()
            shown_events = shown.get("events") or ()
            restored = shown.get("user_attributes")
            shown_attributes = frozenset(restored) if type(restored) is dict else frozenset()
        for index, event in enumerate(batch.get("events") or ()):
            if type(event) is dict:
                was = None
                if shown_events is not None:
                    original = shown_events[index] if index < len(shown_events) else None
                    if original is not event:
                        was = _ShownEvent.of(original)
                verdict = check_event(index, event, blocking, was, unseen)
                if verdict is not None:
                    events.append(verdict)
        batch_issues = (
            *self._check_user_attributes(batch, blocking, shown_attributes, unseen),
            *self._check_identities(batch, blocking),
        )
        return BatchVerdict(CHECKED, self.plan_id, self.version, _environment(batch), tuple(events), batch_issues)

    def _check_event(
        self,
        index: int,
        event: dict[str, Any],
        blocking: BlockingCategories,
        was: _ShownEvent | None = None,
        unseen: BlockingCategories | None = None,
    ) -> EventVerdict | None:
        """``was``: what the partition showed of this event, if a fix rule changed it (else None)."""
        event_type = event.get("event_type")
        if type(event_type) is not str or event_type not in PLANNABLE_EVENT_TYPES:
            return None
        data = event.get("data")
        if type(data) is not dict:
            data = _EMPTY
        key = _event_key(event_type, data)
        try:
            point = self.event_points.get(key)
        except TypeError:  # an unhashable name (a list where a string belongs): matches no point
            point = None
        # Data a fix rule introduced: the event now matches another data point, or an attribute is new.
        moved = new_event = False
        shown = None  # what the partition showed of the event, when attributes it did not show block
        if was is not None and unseen is not None:
            moved = was.key != key
            new_event = moved and unseen.events
            shown = was if unseen.event_attributes else None
        if point is None:
            label = _event_label(key)
            issue = PlanIssue(
                UNPLANNED_EVENT,
                blocking.events or new_event,
                label,
                f"add {label} to plan {self.label}",
                path=f"$.events[{index}]",
                event_index=index,
            )
            return EventVerdict(index, event_type, label, (issue,))
        issues: list[PlanIssue] = []
        allowed = point.allowed
        attributes = data.get("custom_attributes")
        if allowed is not None and type(attributes) is dict and not attributes.keys() <= allowed:
            for name in attributes.keys() - allowed:
                issues.append(
                    PlanIssue(
                        UNPLANNED_EVENT_ATTRIBUTE,
                        blocking.event_attributes or (shown is not None and (moved or name not in shown.attributes)),
                        point.label,
                        f"allow attribute {name!r} on {point.label} in plan {self.label}",
                        name,
                        f"$.events[{index}].data.custom_attributes",
                        event_index=index,
                    )
                )
        if event_type == "commerce_event" and (
            point.product_allowed is not None or point.impression_product_allowed is not None
        ):
            issues.extend(self._check_products(index, data, point, blocking, shown, moved))
        if point.check is not None and not point.check(event):
            issues.extend(self._invalid(point, event, f"$.events[{index}]", index))
        if not issues:
            return None
        issues.sort(key=_issue_order)
        return EventVerdict(index, event_type, point.label, tuple(issues))

    def _check_products(
        self,
        index: int,
        data: dict[str, Any],
        point: DataPoint,
        blocking: BlockingCategories,
        shown: _ShownEvent | None = None,
        moved: bool = False,
    ) -> Iterator[PlanIssue]:
        """``shown``: what the partition showed of the event, when product attributes a fix rule
        introduced block (``moved``: the event now matches another data point)."""
        unplanned: dict[str, str] = {}
        action = data.get("product_action")
        if point.product_allowed is not None and type(action) is dict:
            for product in _dicts(action.get("products")):
                _unplanned_names(product.get("custom_attributes"), point.product_allowed, unplanned, "product_action")
        if point.impression_product_allowed is not None:
            for impression in _dicts(data.get("product_impressions")):
                for product in _dicts(impression.get("products")):
                    _unplanned_names(
                        product.get("custom_attributes"), point.impression_product_allowed, unplanned, "impressions"
                    )
        for name, where in unplanned.items():
            path = (
                f"$.events[{index}].data.product_action.products[*].custom_attributes"
                if where == "product_action"
                else f"$.events[{index}].data.product_impressions[*].products[*].custom_attributes"
            )
            yield PlanIssue(
                UNPLANNED_PRODUCT_ATTRIBUTE,
                blocking.event_attributes or (shown is not None and (moved or name not in shown.product_attributes)),
                point.label,
                f"allow product attribute {name!r} on {point.label} in plan {self.label}",
                name,
                path,
                event_index=index,
            )

    def _check_user_attributes(
        self,
        batch: Mapping[str, Any],
        blocking: BlockingCategories,
        shown: frozenset[str] | None = None,
        unseen: BlockingCategories | None = None,
    ) -> list[PlanIssue]:
        """``shown``: the user attribute names the partition showed, when a fix rule may have added some."""
        point = self.user_attributes
        attributes = batch.get("user_attributes")
        if point is None or type(attributes) is not dict or not attributes:
            return []
        issues = []
        if unseen is None or not unseen.user_attributes:
            shown = None  # a new name blocks no more than one the partition showed
        if point.allowed is not None:
            for name in sorted(attributes.keys() - point.allowed):
                issues.append(
                    PlanIssue(
                        UNPLANNED_USER_ATTRIBUTE,
                        blocking.user_attributes or (shown is not None and name not in shown),
                        point.label,
                        f"allow user attribute {name!r} in plan {self.label}",
                        name,
                        "$.user_attributes",
                    )
                )
        if point.check is not None and not point.check(attributes):
            issues.extend(self._invalid(point, attributes, "$.user_attributes", None))
        return issues

    def _check_identities(self, batch: Mapping[str, Any], blocking: BlockingCategories) -> list[PlanIssue]:
        point = self.user_identities
        if point is None:
            return []
        identities = plan_identities(batch)
        if not identities:
            return []
        issues = []
        if point.allowed is not None:
            for plan_name, (source, names) in sorted(identities.items()):
                if point.allowed.isdisjoint(names):
                    issues.append(
                        PlanIssue(
                            UNPLANNED_USER_IDENTITY,
                            blocking.user_identities,
                            point.label,
                            f"allow identity {plan_name!r} in plan {self.label}",
                            plan_name,
                            f"$.{source}",
                        )
                    )
        if point.check is not None:
            values = _identity_values(batch, identities)
            if not point.check(values):
                issues.extend(self._invalid(point, values, "$.identities", None))
        return issues

    def _invalid(self, point: DataPoint, instance: Any, prefix: str, index: int | None) -> Iterator[PlanIssue]:
        assert point.schema is not None
        for path, field_name, message in point.schema.violations(instance):
            yield PlanIssue(
                INVALID,
                False,
                point.label,
                f"fix {field_name or '(root)'} ({message}) or change {point.label} in plan {self.label};"
                " invalid data is not blocked",
                path=prefix + path[1:],
                message=message,
                event_index=index,
            )


@dataclass(frozen=True, slots=True)
class _ShownEvent:
    """What the partition showed of an event a fix rule changed: its match key and attribute names."""

    key: tuple[Any, ...] | None
    attributes: frozenset[str]
    product_attributes: frozenset[str]

    @classmethod
    def of(cls, event: Any) -> _ShownEvent:
        """None (no such event was shown) gives a key and names nothing matches: all of it is new."""
        if type(event) is not dict:
            return cls(None, frozenset(), frozenset())
        event_type = event.get("event_type")
        data = event.get("data")
        data = data if type(data) is dict else _EMPTY
        plannable = type(event_type) is str and event_type in PLANNABLE_EVENT_TYPES
        attributes = data.get("custom_attributes")
        products: set[str] = set()
        action = data.get("product_action")
        for product in _dicts(action.get("products") if type(action) is dict else None):
            if type(product.get("custom_attributes")) is dict:
                products.update(product["custom_attributes"])
        for impression in _dicts(data.get("product_impressions")):
            for product in _dicts(impression.get("products")):
                if type(product.get("custom_attributes")) is dict:
                    products.update(product["custom_attributes"])
        return cls(
            _event_key(event_type, data) if plannable else None,
            frozenset(attributes) if type(attributes) is dict else frozenset(),
            frozenset(products),
        )


@dataclass(frozen=True, slots=True, eq=False)
class DataPlan:
    """A data plan as loaded from a Data Planning API document, every version compiled once.

    :param plan_id: the plan's ``data_plan_id``.
    :param versions: compiled versions by number.
    :param source: where the document came from (for messages).
    :param single_version: the document was one version document (not a whole plan). Even then its
        version applies only where a version applies: named, or active for the batch's environment.
    """

    plan_id: str
    versions: Mapping[int, PlanVersion]
    source: str = ""
    single_version: bool = False
    _chosen: dict[tuple[int | None, str], PlanVersion | str] = field(default_factory=dict, repr=False, compare=False)

    def version_for(self, plan_id: str | None, plan_version: int | None, environment: str) -> PlanVersion | str | None:
        """The version a batch's ``context.data_plan`` names, as mParticle chooses it.

        The given number (whatever its ``activated_environment``: a batch naming it gets it); or, with
        none, the version active in the batch's environment. A version active in no environment or in
        the other one is never chosen for a batch that does not name it: mParticle applies the active
        version, and a document without it (one version document, an old export) cannot tell what that
        version blocks. None when the batch names no plan; ``"plan_mismatch"``, ``"version_missing"``
        or ``"no_active_version"`` when the document holds no version that applies.
        """
        if not plan_id:
            return None
        if plan_id != self.plan_id:
            return PLAN_MISMATCH
        found = self._chosen.get((plan_version, environment))
        if found is None:
            found = self._chosen[(plan_version, environment)] = self._choose(plan_version, environment)
        return found

    def _choose(self, plan_version: int | None, environment: str) -> PlanVersion | str:
        if plan_version is not None:
            return self.versions.get(plan_version, VERSION_MISSING)
        active = [version for version in self.versions.values() if version.activated_environment == environment]
        if active:
            return max(active, key=lambda version: version.version)
        return NO_ACTIVE_VERSION

    def active_environments(self) -> frozenset[str]:
        """The environments some version of the document is active in."""
        return frozenset(v.activated_environment for v in self.versions.values()) - {"none"}

    def check_batch(
        self, batch: Mapping[str, Any], blocking: BlockingCategories, shown: Mapping[str, Any] | None = None
    ) -> BatchVerdict:
        """Check a batch under the version its ``context.data_plan`` names (see :meth:`version_for`)."""
        return check_batch(self, batch, blocking, shown)


def check_batch(
    plan: DataPlan, batch: Mapping[str, Any], blocking: BlockingCategories, shown: Mapping[str, Any] | None = None
) -> BatchVerdict:
    """What ``plan`` would block of one replay batch, under the version the batch names.

    ``shown``: the batch as the partition showed it, before fix rules (see :meth:`PlanVersion.check`).
    """
    environment = _environment(batch)
    context = _data_plan_context(batch) or _EMPTY
    plan_id = context.get("plan_id")
    plan_id = plan_id if isinstance(plan_id, str) else None
    number = _version_number(context.get("plan_version"))
    version = plan.version_for(plan_id, number, environment)
    if isinstance(version, PlanVersion):
        return version.check(batch, blocking, shown)
    return BatchVerdict(version or NO_PLAN, plan_id, number, environment)


def plan_identities(batch: Mapping[str, Any]) -> dict[str, tuple[str, tuple[str, ...]]]:
    """The batch's user and device identities by IDSync name: ``{name: (where in the batch, accepted names)}``.

    ``user_identities.other_id_2`` becomes ``other2``, ``device_info.ios_advertising_id`` ``ios_idfa``, and
    so on; an unknown key keeps its own name. Empty values are not identities.
    """
    found: dict[str, tuple[str, tuple[str, ...]]] = {}
    for section, names in (("user_identities", USER_IDENTITY_NAMES), ("device_info", DEVICE_IDENTITY_NAMES)):
        values = batch.get(section)
        if type(values) is not dict:
            continue
        for key, value in values.items():
            if value is None or value == "":
                continue
            if section == "device_info" and key not in names:
                continue  # os_version, platform, ...: not identities
            accepted = names.get(key, (key,))
            found[accepted[0]] = (f"{section}.{key}", accepted)
    return found


def _identity_values(batch: Mapping[str, Any], identities: Mapping[str, tuple[str, tuple[str, ...]]]) -> dict[str, Any]:
    values = {}
    for plan_name, (source, _) in identities.items():
        section, key = source.split(".", 1)
        values[plan_name] = batch[section][key]
    return values


def _data_plan_context(batch: Mapping[str, Any]) -> dict[str, Any] | None:
    context = batch.get("context")
    data_plan = context.get("data_plan") if type(context) is dict else None
    return data_plan if type(data_plan) is dict else None


def _environment(batch: Mapping[str, Any]) -> str:
    environment = batch.get("environment")
    return environment if isinstance(environment, str) and environment else "production"


def _version_number(value: Any) -> int | None:
    if isinstance(value, bool) or value is None or value == "":
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _normalise_action(action: Any) -> Any:
    # mParticle's Android SDK reads a plan's "remove_from_wish_list" as the Events API's "remove_from_wishlist".
    return "remove_from_wishlist" if action == "remove_from_wish_list" else action


def _js_truthy(value: Any) -> bool:
    """JavaScript's truthiness, which mParticle's validator (TypeScript) tests fields by: ``{}`` and ``[]``
    are true; ``null``, absent, ``false``, ``0``, ``NaN`` and ``""`` are false."""
    if value is None or value is False or value == "":
        return False
    if isinstance(value, (int, float)):
        return value == value and value != 0  # NaN != NaN
    return True


def _event_key(event_type: str, data: dict[str, Any]) -> tuple[Any, ...]:
    """The match key of an event, as mParticle's validator builds it (exact, case-sensitive strings).

    A commerce event matches on the first of ``product_action``, ``promotion_action`` and
    ``product_impressions`` that is present by JavaScript's rule (``data_plan_event_validator.ts``
    tests ``if (product_action)``): ``product_action: {}`` is a product action (of no action, which no
    data point plans), not the impressions beside it.
    """
    if event_type == "custom_event":
        return ("custom_event", data.get("custom_event_type"), data.get("event_name"))
    if event_type == "screen_view":
        return ("screen_view", data.get("screen_name"))
    action = data.get("product_action")
    if _js_truthy(action):
        return ("product_action", _normalise_action(action.get("action") if type(action) is dict else None))
    promotion = data.get("promotion_action")
    if _js_truthy(promotion):
        return ("promotion_action", promotion.get("action") if type(promotion) is dict else None)
    if _js_truthy(data.get("product_impressions")):
        return ("product_impression",)
    return ("commerce_event",)


def _event_label(key: tuple[Any, ...]) -> str:
    match_type = key[0]
    if match_type == "custom_event":
        return f"custom_event {_quoted(key[2])} ({key[1]})"
    if match_type in ("product_action", "promotion_action") and key[1] is None:
        return f"{match_type} without an action"
    if match_type in ("screen_view", "product_action", "promotion_action"):
        return f"{match_type} {_quoted(key[1])}"
    if match_type == "product_impression":
        return "product_impression"
    return "commerce_event without product_action, promotion_action or product_impressions"


def _quoted(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def _issue_order(issue: PlanIssue) -> tuple[str, str]:
    return (issue.reason, issue.name or "")


def _dicts(value: Any) -> Iterator[dict[str, Any]]:
    if type(value) is list:
        for item in value:
            if type(item) is dict:
                yield item


def _unplanned_names(attributes: Any, allowed: frozenset[str], into: dict[str, str], where: str) -> None:
    if type(attributes) is dict and not attributes.keys() <= allowed:
        for name in sorted(attributes.keys() - allowed):
            into.setdefault(name, where)


# --- Loading -----------------------------------------------------------------------------------------


def load_plan(document: Any, source: str) -> DataPlan:
    """Parse a Data Planning API document: one plan version, or a whole plan with ``data_plan_versions``.

    Every data point is checked and compiled once per process (identical definitions, in any version
    or plan, share the work). Raises :class:`~mparticle_backfill.errors.InvalidSettings` (setting
    ``data_plan``) naming the source, version and data point of what is wrong.
    """
    if not isinstance(document, dict):
        _fail(source, f"the document is not a JSON object (got {type(document).__name__})")
    plan_id = document.get("data_plan_id")
    if not isinstance(plan_id, str) or not plan_id:
        _fail(source, "no data_plan_id")
    if "data_plan_versions" in document:
        raw_versions = document["data_plan_versions"]
        if not isinstance(raw_versions, list) or not raw_versions:
            _fail(source, f"plan {plan_id!r} has no versions (data_plan_versions is empty or not a list)")
        single = False
    elif "version_document" in document:
        raw_versions = [document]
        single = True
    else:
        _fail(source, f"plan {plan_id!r}: neither a plan (data_plan_versions) nor a plan version (version_document)")
    versions: dict[int, PlanVersion] = {}
    for position, raw in enumerate(raw_versions):
        version = _load_version(raw, plan_id, source, position)
        if version.version in versions:
            _fail(source, f"plan {plan_id!r} has version {version.version} twice")
        versions[version.version] = version
    return DataPlan(plan_id, versions, source, single)


def _fail(source: str, problem: str) -> Any:
    raise InvalidSettings("data_plan", f"{source}: {problem}")


def _load_version(raw: Any, plan_id: str, source: str, position: int) -> PlanVersion:
    where = f"plan {plan_id!r}, data_plan_versions[{position}]"
    if not isinstance(raw, dict):
        _fail(source, f"{where} is not an object")
    number = raw.get("version")
    if isinstance(number, bool) or not isinstance(number, int):
        _fail(source, f"{where}: version must be an integer, got {number!r}")
    where = f"plan {plan_id!r} version {number}"
    own_id = raw.get("data_plan_id")
    if own_id is not None and own_id != plan_id:
        _fail(source, f"{where}: data_plan_id {own_id!r} differs from the plan's")
    environment = raw.get("activated_environment") or "none"
    if environment not in ("none", "development", "production"):
        _fail(source, f"{where}: activated_environment must be none, development or production, got {environment!r}")
    version_document = raw.get("version_document")
    if not isinstance(version_document, dict):
        _fail(source, f"{where}: no version_document object")
    raw_points = version_document.get("data_points")
    if not isinstance(raw_points, list):
        _fail(source, f"{where}: version_document.data_points must be a list")
    points: list[DataPoint] = []
    event_points: dict[tuple[Any, ...], DataPoint] = {}
    user_attributes = user_identities = None
    for index, raw_point in enumerate(raw_points):
        point = _load_point(raw_point, f"{where}, data point {index}", source, index)
        points.append(point)
        if point.match_type == "user_attributes":
            user_attributes = point
        elif point.match_type == "user_identities":
            user_identities = point
        elif point.match_type in EVENT_MATCH_TYPES:
            # A repeated match key: the later point wins, as in mParticle's validator.
            event_points[_point_key(raw_point["match"])] = point
    return PlanVersion(plan_id, number, environment, tuple(points), event_points, user_attributes, user_identities)


def _point_key(match: dict[str, Any]) -> tuple[Any, ...]:
    match_type = match["type"]
    criteria = match.get("criteria") or {}
    if match_type == "custom_event":
        return ("custom_event", criteria["custom_event_type"], criteria["event_name"])
    if match_type == "screen_view":
        return ("screen_view", criteria["screen_name"])
    if match_type == "product_action":
        return ("product_action", _normalise_action(criteria["action"]))
    if match_type == "promotion_action":
        return ("promotion_action", criteria["action"])
    return (match_type,)


def _load_point(raw: Any, where: str, source: str, index: int) -> DataPoint:
    if not isinstance(raw, dict):
        _fail(source, f"{where} is not an object")
    match = raw.get("match")
    if not isinstance(match, dict) or not isinstance(match.get("type"), str):
        _fail(source, f"{where} has no match (an object with a type)")
    match_type = match["type"]
    if match_type not in PLANNING_MATCH_TYPES and match_type not in UNPLANNABLE_MATCH_TYPES:
        _fail(source, f"{where}: unknown match type {match_type!r}; known: {', '.join(sorted(PLANNING_MATCH_TYPES))}")
    criteria = match.get("criteria")
    if criteria is not None and not isinstance(criteria, dict):
        _fail(source, f"{where} ({match_type}): match.criteria must be an object")
    for name in _REQUIRED_CRITERIA.get(match_type, ()):
        if not isinstance((criteria or {}).get(name), str):
            _fail(source, f"{where} ({match_type}): match.criteria.{name} must be a string")
    label = _event_label(_point_key(match)) if match_type in EVENT_MATCH_TYPES else match_type
    validator = raw.get("validator")
    if not isinstance(validator, dict):
        _fail(source, f"{where} ({label}) has no validator")
    if validator.get("type") != "json_schema":
        _fail(source, f"{where} ({label}): validator type must be 'json_schema', got {validator.get('type')!r}")
    definition = validator.get("definition")
    if not isinstance(definition, dict):
        _fail(source, f"{where} ({label}): validator.definition must be a JSON Schema object")
    batch_level = match_type in ("user_attributes", "user_identities")
    try:
        done = _compile_definition(json.dumps(definition, sort_keys=True), batch_level)
    except SchemaError as error:
        _fail(
            source,
            f"{where} ({label}): validator.definition is not a valid JSON Schema: {error.message} at {error.json_path}",
        )
    except (TypeError, ValueError) as error:
        _fail(source, f"{where} ({label}): validator.definition is not JSON: {error}")
    if match_type not in EVENT_MATCH_TYPES and not batch_level:
        return DataPoint(match_type, label, index)  # plans nothing that can be blocked
    return DataPoint(
        match_type,
        label,
        index,
        done.allowed,
        done.product_allowed,
        done.impression_product_allowed,
        done.check,
        done.schema,
    )


@dataclass(frozen=True, slots=True, eq=False)
class _CompiledDefinition:
    allowed: frozenset[str] | None
    product_allowed: frozenset[str] | None
    impression_product_allowed: frozenset[str] | None
    check: Callable[[Any], bool] | None
    schema: _CompiledSchema


@functools.lru_cache(maxsize=4096)
def _compile_definition(definition_json: str, batch_level: bool) -> _CompiledDefinition:
    """Compile a definition once per process, whatever plan, version or load it comes from.

    Keyed by its canonical JSON text, and compiled from a copy of it: later changes to the caller's
    document cannot reach the compiled checks.
    """
    definition = json.loads(definition_json)
    schema = _CompiledSchema(definition, _BATCH_CONTAINERS if batch_level else _EVENT_CONTAINERS)
    if batch_level:
        return _CompiledDefinition(_keyset(definition), None, None, schema.check, schema)
    data = _child(definition, "data", constrained=False)
    products = _items(_child(_child(data, "product_action"), "products"))
    impression_products = _items(_child(_items(_child(data, "product_impressions")), "products"))
    return _CompiledDefinition(
        _keyset(_child(data, "custom_attributes")),
        _keyset(_child(products, "custom_attributes")),
        _keyset(_child(impression_products, "custom_attributes")),
        schema.check,
        schema,
    )


# The allowed-attribute walk (mParticle's Android DataplanFilter.kt; its web SDK kitBlocking.ts agrees for
# events): a node is a schema dict, None (anything allowed below) or _NOTHING (nothing allowed below).
_NOTHING: dict[str, Any] = {"additionalProperties": False, "properties": {}}


def _child(node: dict[str, Any] | None, name: str, constrained: bool = True) -> dict[str, Any] | None:
    if node is None or node is _NOTHING:
        return node
    properties = node.get("properties")
    child = properties.get(name) if isinstance(properties, dict) else None
    if isinstance(child, dict):
        return child
    if constrained and node.get("additionalProperties", True) is False:
        return _NOTHING
    return None


def _items(node: dict[str, Any] | None) -> dict[str, Any] | None:
    if node is None or node is _NOTHING:
        return node
    items = node.get("items")
    return items if isinstance(items, dict) else None


def _keyset(node: dict[str, Any] | None) -> frozenset[str] | None:
    if node is None:
        return None
    if node.get("additionalProperties", True) is not False:
        return None
    properties = node.get("properties")
    return frozenset(properties) if isinstance(properties, dict) else frozenset()


# --- Value checks ------------------------------------------------------------------------------------

_FAST_DIALECTS = (Draft6Validator, Draft7Validator, Draft201909Validator, Draft202012Validator)
# "format" only annotates: jsonschema asserts it only when given a format checker, and none is given here.
_ANNOTATIONS = frozenset(
    {"description", "title", "$comment", "examples", "default", "deprecated", "readOnly", "writeOnly",
     "$schema", "$id", "format"}
)  # fmt: skip
_FAST_KEYWORDS = frozenset(
    {"type", "properties", "additionalProperties", "required", "items", "enum", "const", "pattern",
     "minLength", "maxLength", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minItems",
     "maxItems"}
)  # fmt: skip


class _Unsupported(Exception):
    """The schema uses a keyword the fast check does not implement: jsonschema checks it instead."""


class _CompiledSchema:
    """A definition's value check: a fast, exact check of the JSON Schema subset plans use, compiled once,
    and jsonschema (metaschema-checked) for the details when it fails or for anything outside the subset.

    ``additionalProperties`` at attribute containers is left to the allowed-name sets.
    """

    __slots__ = ("check", "containers", "validator")

    def __init__(self, definition: dict[str, Any], containers: frozenset[tuple[str, ...]]) -> None:
        cls = _validator_for(definition, default=Draft202012Validator)
        cls.check_schema(definition)
        self.validator = cls(definition)
        self.containers = containers
        check: Callable[[Any], bool] | None
        try:
            if not issubclass(cls, _FAST_DIALECTS):
                raise _Unsupported
            check = _compile(definition, (), containers)
        except _Unsupported:
            check = self._slow_check
        self.check = check

    def _slow_check(self, instance: Any) -> bool:
        return next(self.violations(instance), None) is None

    def violations(self, instance: Any) -> Iterator[tuple[str, str, str]]:
        """(JSON path, field with ``*`` for indexes, value-free message) of each violation."""
        for error in self.validator.iter_errors(instance):
            location = tuple("*" if isinstance(part, int) else part for part in error.absolute_path)
            if error.validator == "additionalProperties":
                extras = self._extras(error, location)
                if not extras:
                    continue
                message = "not in the plan: " + ", ".join(repr(name) for name in extras)
            else:
                message = _describe(error)
            field_name = ".".join(str(part) for part in location)
            yield error.json_path, field_name, message

    def _extras(self, error: Any, location: tuple[str, ...]) -> list[str]:
        if location in self.containers or not isinstance(error.instance, dict):
            return []
        schema = error.schema if isinstance(error.schema, dict) else {}
        properties = schema.get("properties") or {}
        patterns = [re.compile(pattern) for pattern in schema.get("patternProperties") or {}]
        extras = []
        for name in error.instance:
            if name in properties or any(pattern.search(name) for pattern in patterns):
                continue
            if (*location, name) in self.containers:
                continue  # the attributes themselves are reported by name as unplanned
            extras.append(name)
        return sorted(extras)


def _describe(error: Any) -> str:
    """What the rule requires, without the offending value (which may be personal data)."""
    keyword, expected = error.validator, error.validator_value
    if keyword == "type":
        return f"must be of type {' or '.join(expected) if isinstance(expected, list) else expected}"
    if keyword == "enum":
        shown = ", ".join(repr(value) for value in list(expected)[:10])
        return f"must be one of {shown}{', ...' if len(expected) > 10 else ''}"
    if keyword == "const":
        return f"must be {expected!r}"
    if keyword == "pattern":
        return f"must match {expected!r}"
    if keyword == "required":
        instance = error.instance if isinstance(error.instance, dict) else {}
        missing = [name for name in expected if name not in instance]
        return "missing " + ", ".join(repr(name) for name in missing)
    phrases = {
        "minLength": "must have at least {} characters",
        "maxLength": "must have at most {} characters",
        "minimum": "must be at least {}",
        "maximum": "must be at most {}",
        "exclusiveMinimum": "must be more than {}",
        "exclusiveMaximum": "must be less than {}",
        "minItems": "must have at least {} items",
        "maxItems": "must have at most {} items",
        "multipleOf": "must be a multiple of {}",
    }
    if keyword in phrases:
        return phrases[keyword].format(expected)
    return f"fails the plan's {keyword!r} rule"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


_TYPE_CHECKS: dict[str, Callable[[Any], bool]] = {
    "string": lambda value: isinstance(value, str),
    "object": lambda value: isinstance(value, dict),
    "array": lambda value: isinstance(value, list),
    "boolean": lambda value: isinstance(value, bool),
    "null": lambda value: value is None,
    "number": _is_number,
    "integer": lambda value: (
        (isinstance(value, int) and not isinstance(value, bool)) or (isinstance(value, float) and value.is_integer())
    ),
}


def _compile(
    schema: Any, path: tuple[str, ...], containers: frozenset[tuple[str, ...]]
) -> Callable[[Any], bool] | None:
    """A predicate equal to jsonschema's verdict on ``schema`` (None: always valid), or _Unsupported."""
    if schema is True:
        return None
    if schema is False:
        return lambda instance: False
    if not isinstance(schema, dict):
        raise _Unsupported
    if not schema.keys() <= _FAST_KEYWORDS | _ANNOTATIONS:
        raise _Unsupported
    checks: list[Callable[[Any], bool]] = []
    # {"type": "object", ...} and {"type": "array", ...}: the type test is folded into the object/array check.
    folded = schema.get("type") if schema.get("type") in ("object", "array") else None
    if "type" in schema and folded is None:
        checks.append(_type_check(schema["type"]))
    if "enum" in schema:
        checks.append(_string_set_check(schema["enum"]))
    if "const" in schema:
        checks.append(_string_set_check([schema["const"]]))
    string_check = _string_checks(schema)
    if string_check is not None:
        checks.append(string_check)
    number_check = _number_checks(schema)
    if number_check is not None:
        checks.append(number_check)
    object_check = _object_checks(schema, path, containers, folded == "object")
    if object_check is not None:
        checks.append(object_check)
    elif folded == "object":
        checks.append(_TYPE_CHECKS["object"])
    array_check = _array_checks(schema, path, containers, folded == "array")
    if array_check is not None:
        checks.append(array_check)
    elif folded == "array":
        checks.append(_TYPE_CHECKS["array"])
    if not checks:
        return None
    if len(checks) == 1:
        return checks[0]
    all_checks = tuple(checks)

    def check_all(instance: Any) -> bool:
        for check in all_checks:  # noqa: SIM110 (a plain loop: twice as fast as all() over a generator)
            if not check(instance):
                return False
        return True

    return check_all


def _type_check(expected: Any) -> Callable[[Any], bool]:
    names = [expected] if isinstance(expected, str) else expected
    if not isinstance(names, list) or not all(name in _TYPE_CHECKS for name in names):
        raise _Unsupported
    if len(names) == 1:
        return _TYPE_CHECKS[names[0]]
    type_checks = tuple(_TYPE_CHECKS[name] for name in names)

    def check_any(instance: Any) -> bool:
        for check in type_checks:  # noqa: SIM110 (as above)
            if check(instance):
                return True
        return False

    return check_any


def _string_set_check(values: Any) -> Callable[[Any], bool]:
    # Only all-string enums: jsonschema's equality for numbers and booleans (1 == 1.0, True != 1) stays its own.
    if not isinstance(values, list) or not all(isinstance(value, str) for value in values):
        raise _Unsupported
    allowed = frozenset(values)
    return lambda instance: isinstance(instance, str) and instance in allowed


def _string_checks(schema: dict[str, Any]) -> Callable[[Any], bool] | None:
    pattern = schema.get("pattern")
    min_length, max_length = schema.get("minLength"), schema.get("maxLength")
    if pattern is None and min_length is None and max_length is None:
        return None
    if pattern is not None and not isinstance(pattern, str):
        raise _Unsupported
    try:
        search = re.compile(pattern).search if pattern is not None else None
    except re.error as error:
        raise _Unsupported from error

    def check(instance: Any) -> bool:
        if not isinstance(instance, str):
            return True
        if search is not None and search(instance) is None:
            return False
        if min_length is not None and len(instance) < min_length:
            return False
        return max_length is None or len(instance) <= max_length

    return check


def _number_checks(schema: dict[str, Any]) -> Callable[[Any], bool] | None:
    bounds = [schema.get(name) for name in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")]
    if all(bound is None for bound in bounds):
        return None
    if not all(bound is None or _is_number(bound) for bound in bounds):
        raise _Unsupported
    minimum, maximum, above, below = bounds

    def check(instance: Any) -> bool:
        if not _is_number(instance):
            return True
        if minimum is not None and instance < minimum:
            return False
        if maximum is not None and instance > maximum:
            return False
        if above is not None and instance <= above:
            return False
        return below is None or instance < below

    return check


def _object_checks(
    schema: dict[str, Any], path: tuple[str, ...], containers: frozenset[tuple[str, ...]], must_be_object: bool
) -> Callable[[Any], bool] | None:
    properties = schema.get("properties", {})
    required = schema.get("required", [])
    additional = schema.get("additionalProperties", True)
    if not isinstance(properties, dict) or not isinstance(required, list) or not isinstance(additional, bool):
        raise _Unsupported
    compiled = []
    for name, subschema in properties.items():
        check = _compile(subschema, (*path, name), containers)
        if check is not None:
            compiled.append((name, check))
    allowed: frozenset[str] | None = None
    if additional is False and path not in containers:
        allowed = frozenset(properties) | {name for *parent, name in containers if tuple(parent) == path}
    required_names = tuple(required)
    property_checks = tuple(compiled)
    if not property_checks and not required_names and allowed is None:
        return None

    def check(instance: Any) -> bool:
        if not isinstance(instance, dict):
            return not must_be_object
        for name in required_names:
            if name not in instance:
                return False
        if allowed is not None and not instance.keys() <= allowed:
            return False
        for name, property_check in property_checks:
            value = instance.get(name, _ABSENT)
            if value is not _ABSENT and not property_check(value):
                return False
        return True

    return check


def _array_checks(
    schema: dict[str, Any], path: tuple[str, ...], containers: frozenset[tuple[str, ...]], must_be_array: bool
) -> Callable[[Any], bool] | None:
    items = schema.get("items", True)
    min_items, max_items = schema.get("minItems"), schema.get("maxItems")
    if not isinstance(items, (dict, bool)):
        raise _Unsupported  # the array form of items differs between dialects
    item_check = _compile(items, (*path, "*"), containers)
    if item_check is None and min_items is None and max_items is None:
        return None

    def check(instance: Any) -> bool:
        if not isinstance(instance, list):
            return not must_be_array
        if min_items is not None and len(instance) < min_items:
            return False
        if max_items is not None and len(instance) > max_items:
            return False
        if item_check is not None:
            for item in instance:
                if not item_check(item):
                    return False
        return True

    return check
