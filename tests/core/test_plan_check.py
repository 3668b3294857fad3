"""Plan check: what a data plan version would block again of a replay batch, and why."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema.validators import Draft202012Validator

from mparticle_backfill import plan_check
from mparticle_backfill.errors import InvalidSettings
from mparticle_backfill.model import BlockMetadata
from mparticle_backfill.plan_check import (
    INVALID,
    NO_ACTIVE_VERSION,
    NO_PLAN,
    PLAN_MISMATCH,
    UNPLANNED_EVENT,
    UNPLANNED_EVENT_ATTRIBUTE,
    UNPLANNED_PRODUCT_ATTRIBUTE,
    UNPLANNED_USER_ATTRIBUTE,
    UNPLANNED_USER_IDENTITY,
    VERSION_MISSING,
    BlockingCategories,
    PlanVersion,
    blocking_from_metadata,
    check_batch,
    infer_blocking,
    load_plan,
    plan_identities,
)

PLANS = Path(__file__).resolve().parents[1] / "fixtures" / "plans"
HIGGS_ID = "higgs_shop_basic_data_plan"
BLOCK_ALL = BlockingCategories(events=True, event_attributes=True, user_attributes=True, user_identities=True)
BLOCK_NONE = BlockingCategories()
ALL_CATEGORIES = frozenset(plan_check.CATEGORIES)


def higgs_document() -> dict[str, Any]:
    return json.loads((PLANS / "higgs_shop_v1.json").read_text())


def event_schema(attributes: dict[str, Any] | None = None, *, data_additional: Any = True, **data_properties):
    """A data point definition rooted at the event, as mParticle's plan editor writes them."""
    properties = dict(data_properties)
    if attributes is not None:
        properties["custom_attributes"] = attributes
    data: dict[str, Any] = {"type": "object", "properties": properties, "required": []}
    if data_additional is not None:
        data["additionalProperties"] = data_additional
    return {"properties": {"data": data}}


def closed(*names: str, **typed: str) -> dict[str, Any]:
    """An object schema allowing only these names (``additionalProperties: false``)."""
    properties = {name: {"description": ""} for name in names}
    properties.update({name: {"type": kind} for name, kind in typed.items()})
    return {"type": "object", "additionalProperties": False, "properties": properties, "required": []}


def data_point(match_type: str, definition: dict[str, Any] | None = None, **criteria: str) -> dict[str, Any]:
    return {
        "match": {"type": match_type, "criteria": criteria},
        "validator": {"type": "json_schema", "definition": definition if definition is not None else event_schema()},
    }


def version_document(*points, version=2, plan_id="shop", environment="production") -> dict[str, Any]:
    return {
        "version": version,
        "data_plan_id": plan_id,
        "activated_environment": environment,
        "version_document": {"data_points": list(points)},
    }


def version_of(*points, **kwargs) -> PlanVersion:
    plan = load_plan(version_document(*points, **kwargs), "test")
    return next(iter(plan.versions.values()))


def custom(name="Sign Up", kind="navigation", **attributes) -> dict[str, Any]:
    data: dict[str, Any] = {"event_name": name, "custom_event_type": kind, "timestamp_unixtime_ms": 1599790566900}
    if attributes:
        data["custom_attributes"] = attributes
    return {"event_type": "custom_event", "data": data}


def screen(name="Shop", **attributes) -> dict[str, Any]:
    data: dict[str, Any] = {"screen_name": name}
    if attributes:
        data["custom_attributes"] = attributes
    return {"event_type": "screen_view", "data": data}


def commerce(**data) -> dict[str, Any]:
    return {"event_type": "commerce_event", "data": data}


def batch(*events, plan_id="shop", plan_version=None, environment="production", **fields) -> dict[str, Any]:
    data_plan: dict[str, Any] = {"plan_id": plan_id}
    if plan_version is not None:
        data_plan["plan_version"] = plan_version
    return {"events": list(events), "environment": environment, "context": {"data_plan": data_plan}, **fields}


def reasons(verdict) -> list[tuple[str, str | None]]:
    return [(issue.reason, issue.name) for issue in verdict.issues]


# --- Matching ----------------------------------------------------------------------------------------

SHOP_POINTS = (
    data_point("custom_event", event_name="Sign Up", custom_event_type="navigation"),
    data_point("screen_view", screen_name="Shop"),
    data_point("product_action", action="purchase"),
    data_point("product_action", action="remove_from_wish_list"),
    data_point("promotion_action", action="view"),
    data_point("product_impression"),
)


@pytest.mark.parametrize(
    ("event", "planned", "label"),
    [
        pytest.param(custom(), True, "custom_event 'Sign Up' (navigation)", id="custom-event"),
        pytest.param(custom("sign up"), False, "custom_event 'sign up' (navigation)", id="custom-name-case-sensitive"),
        pytest.param(
            custom("Sign Up ", "navigation"), False, "custom_event 'Sign Up ' (navigation)", id="custom-space"
        ),
        pytest.param(custom(kind="other"), False, "custom_event 'Sign Up' (other)", id="custom-other-type"),
        pytest.param(custom(kind="Navigation"), False, "custom_event 'Sign Up' (Navigation)", id="custom-type-case"),
        pytest.param(
            {"event_type": "custom_event", "data": {"event_name": "Sign Up"}},
            False,
            "custom_event 'Sign Up' (None)",
            id="custom-without-type",
        ),
        pytest.param(screen(), True, "screen_view 'Shop'", id="screen-view"),
        pytest.param(screen("shop"), False, "screen_view 'shop'", id="screen-case-sensitive"),
        pytest.param(
            commerce(product_action={"action": "purchase", "products": []}),
            True,
            "product_action 'purchase'",
            id="product-action",
        ),
        pytest.param(
            commerce(product_action={"action": "refund"}), False, "product_action 'refund'", id="product-action-other"
        ),
        pytest.param(
            commerce(product_action={"action": "refund"}, product_impressions=[{"products": []}]),
            False,
            "product_action 'refund'",
            id="product-action-before-impressions",
        ),
        pytest.param(
            commerce(product_action={"action": "remove_from_wishlist"}),
            True,
            "product_action 'remove_from_wishlist'",
            id="wish-list-spelling",
        ),
        pytest.param(commerce(promotion_action={"action": "view"}), True, "promotion_action 'view'", id="promotion"),
        pytest.param(
            commerce(promotion_action={"action": "click"}), False, "promotion_action 'click'", id="promotion-other"
        ),
        pytest.param(
            commerce(promotion_action={"action": "click"}, product_impressions=[{}]),
            False,
            "promotion_action 'click'",
            id="promotion-before-impressions",
        ),
        pytest.param(commerce(product_impressions=[{"products": []}]), True, "product_impression", id="impressions"),
        # Empty values as mParticle's validator (TypeScript) tests them: {} and [] are present, "" is not.
        pytest.param(
            commerce(product_action={}, product_impressions=[{"products": []}]),
            False,
            "product_action without an action",
            id="empty-product-action-is-a-product-action",
        ),
        pytest.param(
            commerce(product_action=[], product_impressions=[{"products": []}]),
            False,
            "product_action without an action",
            id="empty-list-product-action-is-a-product-action",
        ),
        pytest.param(
            commerce(promotion_action={}, product_impressions=[{"products": []}]),
            False,
            "promotion_action without an action",
            id="empty-promotion-action-is-a-promotion-action",
        ),
        pytest.param(commerce(product_impressions=[]), True, "product_impression", id="empty-impressions-are-present"),
        pytest.param(
            commerce(shopping_cart={}),
            False,
            "commerce_event without product_action, promotion_action or product_impressions",
            id="commerce-without-action",
        ),
        pytest.param(
            {"event_type": "custom_event", "data": {"event_name": ["x"], "custom_event_type": "other"}},
            False,
            "custom_event ['x'] (other)",
            id="unhashable-name",
        ),
    ],
)
def test_events_match_points_like_mparticles_validator(event, planned, label):
    verdict = version_of(*SHOP_POINTS).check(batch(event), BLOCK_ALL)
    if planned:
        assert verdict.issues == ()
        return
    (issue,) = verdict.issues
    assert issue.reason == UNPLANNED_EVENT and issue.blocked and issue.data_point == label
    assert issue.suggestion == f"add {label} to plan shop v2"
    assert verdict.blocked_event_indexes == (0,)


@pytest.mark.parametrize(
    "event_type",
    [
        pytest.param(name, id=name)
        for name in (
            "session_start",
            "session_end",
            "application_state_transition",
            "breadcrumb",
            "crash_report",
            "network_performance",
            "opt_out",
            "push_registration",
            "push_message",
            "uninstall",
            "first_run",
            "media",
            "profile",
            "user_attribute_change",
            "user_identity_change",
            "something_new",
        )
    ],
)
def test_events_a_plan_cannot_plan_are_never_unplanned(event_type):
    version = version_of(data_point("custom_event", event_name="Sign Up", custom_event_type="navigation"))
    verdict = version.check(batch({"event_type": event_type, "data": {"custom_attributes": {"x": 1}}}), BLOCK_ALL)
    assert verdict.issues == () and not verdict.blocked


@pytest.mark.parametrize(
    ("blocking", "blocked"),
    [
        pytest.param(BLOCK_ALL, True, id="blocking-events"),
        pytest.param(BlockingCategories(event_attributes=True, user_attributes=True), False, id="not-blocking-events"),
    ],
)
def test_an_unplanned_event_is_blocked_only_if_the_input_blocks_unplanned_events(blocking, blocked):
    verdict = version_of(*SHOP_POINTS).check(batch(screen(), custom("Nope", "other"), screen()), blocking)
    assert [(event.index, event.blocked) for event in verdict.events] == [(1, blocked)]
    assert verdict.blocked is blocked
    assert verdict.blocked_event_indexes == ((1,) if blocked else ())


# --- Attributes ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("definition", "attributes", "unplanned"),
    [
        pytest.param(event_schema(closed("label", "seats")), {"label": "a", "seats": 2}, [], id="all-planned"),
        pytest.param(event_schema(closed("label")), {"label": "a", "seats": 2, "row": 3}, ["row", "seats"], id="extra"),
        pytest.param(
            event_schema({"type": "object", "properties": {"label": {}}}), {"seats": 1}, [], id="additional-absent"
        ),
        pytest.param(
            event_schema({"type": "object", "additionalProperties": True, "properties": {}}),
            {"seats": 1},
            [],
            id="additional-true",
        ),
        pytest.param(
            event_schema({"type": "object", "additionalProperties": {"type": "string"}}),
            {"seats": "1"},
            [],
            id="additional-schema",
        ),
        pytest.param(event_schema(None, data_additional=False), {"a": 1, "b": 2}, ["a", "b"], id="no-node-closed"),
        pytest.param(event_schema(None, data_additional=True), {"a": 1}, [], id="no-node-open"),
        pytest.param(event_schema(None, data_additional=None), {"a": 1}, [], id="no-node-additional-absent"),
        pytest.param({}, {"a": 1}, [], id="empty-definition"),
        pytest.param(event_schema(closed()), {}, [], id="no-attributes-sent"),
    ],
)
def test_event_attributes_the_schema_does_not_allow_are_unplanned(definition, attributes, unplanned):
    version = version_of(data_point("custom_event", definition, event_name="Sign Up", custom_event_type="navigation"))
    event = custom()
    event["data"]["custom_attributes"] = attributes
    verdict = version.check(batch(event), BLOCK_ALL)
    issues = [issue for issue in verdict.issues if issue.reason == UNPLANNED_EVENT_ATTRIBUTE]
    assert [issue.name for issue in issues] == unplanned
    assert all(issue.blocked and issue.event_index == 0 for issue in issues)
    if unplanned:
        (event_verdict,) = verdict.events
        assert not event_verdict.blocked and event_verdict.blocked_attributes == tuple(unplanned)
        assert issues[0].suggestion == (
            f"allow attribute {unplanned[0]!r} on custom_event 'Sign Up' (navigation) in plan shop v2"
        )
        assert issues[0].path == "$.events[0].data.custom_attributes"


def test_unplanned_attributes_are_reported_but_not_blocked_when_the_category_does_not_block():
    version = version_of(
        data_point("screen_view", event_schema(closed("label")), screen_name="Shop"),
    )
    verdict = version.check(batch(screen(label="x", seats=1)), BlockingCategories(events=True))
    assert reasons(verdict) == [(UNPLANNED_EVENT_ATTRIBUTE, "seats")]
    assert not verdict.blocked and verdict.events[0].blocked_attributes == ()


def product_schema(items: dict[str, Any]) -> dict[str, Any]:
    return event_schema(
        product_action={
            "type": "object",
            "properties": {"action": {"type": "string"}, "products": {"type": "array", "items": items}},
        }
    )


def impression_schema(product_items: dict[str, Any]) -> dict[str, Any]:
    products = {"type": "array", "items": product_items}
    impression = {"type": "object", "additionalProperties": False, "properties": {"products": products}}
    return event_schema(product_impressions={"type": "array", "items": impression})


@pytest.mark.parametrize(
    ("definition", "event", "unplanned"),
    [
        pytest.param(
            product_schema({"type": "object", "properties": {"custom_attributes": closed("size", "color")}}),
            commerce(product_action={"action": "purchase", "products": [{"custom_attributes": {"size": "M"}}]}),
            [],
            id="planned",
        ),
        pytest.param(
            product_schema({"type": "object", "properties": {"custom_attributes": closed("size")}}),
            commerce(
                product_action={
                    "action": "purchase",
                    "products": [{"custom_attributes": {"size": "M", "fit": "slim"}}, {"custom_attributes": {"g": 1}}],
                }
            ),
            ["fit", "g"],
            id="unplanned-across-products",
        ),
        pytest.param(
            product_schema({"type": "object", "additionalProperties": False, "properties": {"id": {}}}),
            commerce(product_action={"action": "purchase", "products": [{"id": "1", "custom_attributes": {"a": 1}}]}),
            ["a"],
            id="items-closed-without-node",
        ),
        pytest.param(
            product_schema({"type": "object", "properties": {"id": {}}}),
            commerce(product_action={"action": "purchase", "products": [{"id": "1", "custom_attributes": {"a": 1}}]}),
            [],
            id="items-open-without-node",
        ),
    ],
)
def test_product_attributes_the_schema_does_not_allow_are_unplanned(definition, event, unplanned):
    version = version_of(data_point("product_action", definition, action="purchase"))
    verdict = version.check(batch(event), BLOCK_ALL)
    issues = [issue for issue in verdict.issues if issue.reason == UNPLANNED_PRODUCT_ATTRIBUTE]
    assert [issue.name for issue in issues] == unplanned
    assert all(issue.blocked for issue in issues)
    assert [issue.reason for issue in verdict.issues if issue.reason != UNPLANNED_PRODUCT_ATTRIBUTE] == []
    if unplanned:
        assert issues[0].suggestion.startswith(f"allow product attribute {unplanned[0]!r} on product_action 'purchase'")
        assert issues[0].path == "$.events[0].data.product_action.products[*].custom_attributes"


def test_impression_product_attributes_are_checked_against_the_impression_schema():
    version = version_of(
        data_point(
            "product_impression",
            impression_schema({"type": "object", "properties": {"custom_attributes": closed("tag")}}),
        )
    )
    event = commerce(product_impressions=[{"products": [{"custom_attributes": {"tag": "a", "promo": "b"}}]}])
    verdict = version.check(batch(event), BLOCK_ALL)
    (issue,) = verdict.issues
    assert (issue.reason, issue.name) == (UNPLANNED_PRODUCT_ATTRIBUTE, "promo")
    assert issue.path == "$.events[0].data.product_impressions[*].products[*].custom_attributes"


# --- User attributes and identities ----------------------------------------------------------------


def user_attributes_point(definition):
    return data_point("user_attributes", definition)


@pytest.mark.parametrize(
    ("points", "attributes", "unplanned"),
    [
        pytest.param(
            [user_attributes_point(closed("tier", "$FirstName"))], {"tier": "a", "$FirstName": "b"}, [], id="planned"
        ),
        pytest.param(
            [user_attributes_point(closed("tier"))],
            {"tier": "a", "score": 1, "age": 2},
            ["age", "score"],
            id="unplanned",
        ),
        pytest.param(
            [user_attributes_point({"type": "object", "additionalProperties": True})], {"x": 1}, [], id="open"
        ),
        pytest.param([user_attributes_point({})], {"x": 1}, [], id="additional-absent"),
        pytest.param([], {"x": 1}, [], id="no-user-attributes-point"),
    ],
)
def test_user_attributes_the_plan_does_not_allow_are_unplanned(points, attributes, unplanned):
    version = version_of(*points)
    verdict = version.check(batch(user_attributes=attributes), BLOCK_ALL)
    assert [(issue.reason, issue.name, issue.blocked) for issue in verdict.issues] == [
        (UNPLANNED_USER_ATTRIBUTE, name, True) for name in unplanned
    ]
    for issue in verdict.batch_issues:
        assert issue.suggestion == f"allow user attribute {issue.name!r} in plan shop v2"
        assert issue.data_point == "user_attributes" and issue.event_index is None


# The Events API's names (user_identities and device_info) and the IDSync names plans use, from
# mParticle's docs and SDKs (IdentityType enums of its .NET and web SDKs).
IDENTITY_MAPPING = [
    ("user_identities", "customer_id", "customerid"),
    ("user_identities", "email", "email"),
    ("user_identities", "other", "other"),
    ("user_identities", "other_id_2", "other2"),
    ("user_identities", "other_id_3", "other3"),
    ("user_identities", "other_id_4", "other4"),
    ("user_identities", "other_id_5", "other5"),
    ("user_identities", "other_id_6", "other6"),
    ("user_identities", "other_id_7", "other7"),
    ("user_identities", "other_id_8", "other8"),
    ("user_identities", "other_id_9", "other9"),
    ("user_identities", "other_id_10", "other10"),
    ("user_identities", "mobile_number", "mobile_number"),
    ("user_identities", "phone_number_2", "phone_number_2"),
    ("user_identities", "phone_number_3", "phone_number_3"),
    ("user_identities", "facebook", "facebook"),
    ("user_identities", "facebook_custom_audience_id", "facebookcustomaudienceid"),
    ("user_identities", "google", "google"),
    ("user_identities", "microsoft", "microsoft"),
    ("user_identities", "yahoo", "yahoo"),
    ("user_identities", "twitter", "twitter"),
    ("user_identities", "alias", "alias"),
    ("device_info", "ios_advertising_id", "ios_idfa"),
    ("device_info", "ios_idfv", "ios_idfv"),
    ("device_info", "android_advertising_id", "android_aaid"),
    ("device_info", "android_uuid", "android_uuid"),
    ("device_info", "push_token", "push_token"),
    ("device_info", "roku_advertising_id", "roku_aid"),
    ("device_info", "roku_publisher_id", "roku_publisher_id"),
    ("device_info", "fire_advertising_id", "fire_aid"),
    ("device_info", "microsoft_advertising_id", "microsoft_aid"),
    ("device_info", "microsoft_publisher_id", "microsoft_publisher_id"),
    ("device_info", "amp_id", "amp_id"),
]


def test_the_identity_mapping_covers_every_events_api_identity():
    assert {(key, names[0]) for key, names in plan_check.USER_IDENTITY_NAMES.items()} == {
        (key, name) for section, key, name in IDENTITY_MAPPING if section == "user_identities"
    }
    assert {(key, names[0]) for key, names in plan_check.DEVICE_IDENTITY_NAMES.items()} == {
        (key, name) for section, key, name in IDENTITY_MAPPING if section == "device_info"
    }


@pytest.mark.parametrize(
    ("section", "key", "plan_name"), [pytest.param(*row, id=f"{row[1]}->{row[2]}") for row in IDENTITY_MAPPING]
)
def test_identities_are_compared_by_their_idsync_name(section, key, plan_name):
    sent = {section: {key: "value-1"}}
    planned = version_of(data_point("user_identities", closed(plan_name)))
    assert planned.check(batch(**sent), BLOCK_ALL).issues == ()
    unplanned = version_of(data_point("user_identities", closed("somethingelse")))
    (issue,) = unplanned.check(batch(**sent), BLOCK_ALL).issues
    assert (issue.reason, issue.name, issue.blocked) == (UNPLANNED_USER_IDENTITY, plan_name, True)
    assert issue.path == f"$.{section}.{key}"
    assert issue.suggestion == f"allow identity {plan_name!r} in plan shop v2"
    assert "value-1" not in repr(issue)


def test_identity_details():
    sent = batch(
        user_identities={"customer_id": "c1", "email": "", "other_id_11": "x"},
        device_info={"os_version": "17", "platform": "iOS", "ios_idfv": None},
    )
    assert plan_identities(sent) == {
        "customerid": ("user_identities.customer_id", ("customerid",)),
        "other_id_11": ("user_identities.other_id_11", ("other_id_11",)),
    }
    spelled = version_of(data_point("user_identities", closed("facebook_custom_audience_id")))
    assert spelled.check(batch(user_identities={"facebook_custom_audience_id": "f"}), BLOCK_ALL).issues == ()
    no_point = version_of(data_point("screen_view", screen_name="Shop"))
    assert no_point.check(batch(user_identities={"other_id_5": "x"}), BLOCK_ALL).issues == ()
    open_point = version_of(data_point("user_identities", {"type": "object", "properties": {}}))
    assert open_point.check(batch(user_identities={"other_id_5": "x"}), BLOCK_ALL).issues == ()


# --- Blocking categories -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        pytest.param(None, BlockingCategories(), id="none"),
        pytest.param({}, BlockingCategories(), id="empty"),
        pytest.param({"dto_version": 1, "blocked_event_ids": []}, BlockingCategories(), id="empty-lists"),
        pytest.param({"blocked_event_ids": ["1"]}, BlockingCategories(events=True), id="events"),
        pytest.param(
            {"blocked_event_attributes": [{"event_id": "1", "event_attributes": ["./data/custom_attributes/x"]}]},
            BlockingCategories(event_attributes=True),
            id="event-attributes",
        ),
        pytest.param({"blocked_user_attributes": ["tier"]}, BlockingCategories(user_attributes=True), id="user-attrs"),
        pytest.param({"blocked_user_identities": ["other"]}, BlockingCategories(user_identities=True), id="identities"),
        pytest.param(
            {"blocked_device_identities": ["ios_idfa"]}, BlockingCategories(user_identities=True), id="device-ids"
        ),
        pytest.param(
            BlockMetadata(frozenset({"1"}), {}, ("tier",), (), ()),
            BlockingCategories(events=True, user_attributes=True),
            id="parsed-struct",
        ),
    ],
)
def test_block_metadata_shows_which_categories_were_blocked(metadata, expected):
    assert blocking_from_metadata(metadata) == expected


def test_categories_are_inferred_from_the_records_of_a_partition(real_record):
    # The real record blocked events, an event attribute, a user attribute, user and device identities.
    assert blocking_from_metadata(real_record["context"]["data_plan"]["block_metadata"]) == BLOCK_ALL
    records = [{"blocked_user_attributes": ["tier"]}, {"blocked_event_ids": []}, {"blocked_event_ids": ["1"]}]
    inferred = infer_blocking(blocking_from_metadata(record) for record in records)
    assert inferred == BlockingCategories(events=True, user_attributes=True, inferred=ALL_CATEGORIES)
    assert infer_blocking([]) == BlockingCategories(inferred=ALL_CATEGORIES)
    counts = {"events": 3, "event_attributes": 0, "user_attributes": 1, "user_identities": 0}
    assert infer_blocking(counts) == BlockingCategories(events=True, user_attributes=True, inferred=ALL_CATEGORIES)
    assert infer_blocking(counts, override={"events": False, "user_identities": True}) == BlockingCategories(
        user_attributes=True, user_identities=True, inferred=frozenset({"event_attributes", "user_attributes"})
    )
    setting = {"events": True, "event_attributes": False, "user_attributes": False, "user_identities": True}
    assert BlockingCategories.from_setting(setting) == BlockingCategories(events=True, user_identities=True)
    assert BlockingCategories(events=True) | BlockingCategories(user_identities=True) == BlockingCategories(
        events=True, user_identities=True
    )


def test_data_a_fix_rule_introduced_is_checked_whatever_the_partition_showed():
    """The partition showed no category blocked: what it showed keeps that; what a rule introduced does not."""
    plan = load_plan(
        version_document(
            data_point(
                "custom_event", event_schema(closed("label")), event_name="Sign Up", custom_event_type="navigation"
            ),
            data_point("user_attributes", closed("tier")),
        ),
        "v",
    )
    shown_events = [custom(seats=1), custom(), custom(label="a"), custom(seats="1")]
    fixed_events = [
        shown_events[0],  # not changed: its unplanned 'seats' was shown, and not blocked
        custom("Register"),  # rename_event: an event the partition never showed
        custom(label="a", promo="x"),  # set_event_attribute: an attribute it never showed
        custom(seats=1),  # cast_event_attribute: 'seats' was shown
    ]
    shown = {"events": shown_events, "user_attributes": {"tier": "gold", "legacy": 1}}
    fixed = batch(*fixed_events, user_attributes={"tier": "gold", "legacy": 1, "plan_fixed": True})
    nothing_shown_blocked = infer_blocking(dict.fromkeys(plan_check.CATEGORIES, 0))

    verdict = check_batch(plan, fixed, nothing_shown_blocked, shown)
    assert [(issue.event_index, issue.reason, issue.name, issue.blocked) for issue in verdict.issues] == [
        (0, UNPLANNED_EVENT_ATTRIBUTE, "seats", False),
        (1, UNPLANNED_EVENT, None, True),
        (2, UNPLANNED_EVENT_ATTRIBUTE, "promo", True),
        (3, UNPLANNED_EVENT_ATTRIBUTE, "seats", False),
        (None, UNPLANNED_USER_ATTRIBUTE, "legacy", False),
        (None, UNPLANNED_USER_ATTRIBUTE, "plan_fixed", True),
    ]
    assert verdict.blocked_event_indexes == (1,)
    # Without what the partition showed, the inference alone decides (nothing blocks).
    assert not check_batch(plan, fixed, nothing_shown_blocked).blocked
    # plan_blocking, a setting, is not an inference: it decides for introduced data too.
    settled = infer_blocking(dict.fromkeys(plan_check.CATEGORIES, 0), {"events": False, "user_attributes": False})
    assert [(i.name, i.blocked) for i in check_batch(plan, fixed, settled, shown).issues if i.blocked] == [
        ("promo", True)
    ]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        pytest.param(lambda: BlockingCategories.from_setting({"events": True}), "missing categories", id="missing"),
        pytest.param(lambda: infer_blocking({}, override={"event": True}), "unknown categories ['event']", id="name"),
        pytest.param(lambda: infer_blocking({}, override={"events": "yes"}), "events must be true or false", id="type"),
        pytest.param(lambda: infer_blocking({"attributes": 1}), "unknown categories ['attributes']", id="counts"),
        pytest.param(lambda: infer_blocking({}, override=["events"]), "must be an object", id="not-object"),
    ],
)
def test_bad_blocking_settings_are_refused(call, message):
    with pytest.raises(InvalidSettings, match=r"'blocking'") as error:
        call()
    assert message in str(error.value)


# --- Versions and documents ------------------------------------------------------------------------------


def whole_plan(*versions, plan_id="shop") -> dict[str, Any]:
    return {"data_plan_id": plan_id, "data_plan_name": "Shop", "data_plan_versions": list(versions)}


MULTI = whole_plan(
    version_document(version=1, environment="none"),
    version_document(version=2, environment="production"),
    version_document(version=3, environment="development"),
    version_document(version=4, environment="development"),
)


@pytest.mark.parametrize(
    ("document", "plan_id", "number", "environment", "expected"),
    [
        pytest.param(MULTI, "shop", 1, "production", 1, id="number"),
        pytest.param(MULTI, "shop", None, "production", 2, id="active-production"),
        pytest.param(MULTI, "shop", None, "development", 4, id="latest-active-development"),
        pytest.param(MULTI, "shop", 9, "production", VERSION_MISSING, id="missing-version"),
        pytest.param(MULTI, "other", 1, "production", PLAN_MISMATCH, id="other-plan"),
        pytest.param(MULTI, None, 1, "production", None, id="no-plan"),
        pytest.param(
            whole_plan(
                version_document(version=1, environment="none"), version_document(version=2, environment="none")
            ),
            "shop",
            None,
            "production",
            NO_ACTIVE_VERSION,
            id="none-active",
        ),
        pytest.param(version_document(version=7), "shop", None, "production", 7, id="single-active"),
        pytest.param(version_document(version=7, environment="none"), "shop", 7, "production", 7, id="single-named"),
        pytest.param(
            version_document(version=7, environment="none"),
            "shop",
            None,
            "production",
            NO_ACTIVE_VERSION,
            id="single-not-active",
        ),
        pytest.param(
            version_document(version=7, environment="development"),
            "shop",
            None,
            "production",
            NO_ACTIVE_VERSION,
            id="single-active-in-the-other-environment",
        ),
        pytest.param(version_document(version=7), "shop", 6, "production", VERSION_MISSING, id="single-other-number"),
    ],
)
def test_the_version_a_batch_names(document, plan_id, number, environment, expected):
    chosen = load_plan(document, "test").version_for(plan_id, number, environment)
    assert (chosen.version if isinstance(chosen, PlanVersion) else chosen) == expected


@pytest.mark.parametrize(
    ("context", "environment", "status", "version"),
    [
        pytest.param({"plan_id": "shop", "plan_version": 3}, "production", "checked", 3, id="number"),
        pytest.param({"plan_id": "shop", "plan_version": "3"}, "production", "checked", 3, id="number-as-string"),
        pytest.param({"plan_id": "shop"}, "development", "checked", 4, id="active"),
        pytest.param({"plan_id": "shop"}, None, "checked", 2, id="environment-defaults-to-production"),
        pytest.param({"plan_id": "shop", "plan_version": 8}, "production", VERSION_MISSING, 8, id="missing"),
        pytest.param({"plan_id": "web"}, "production", PLAN_MISMATCH, None, id="mismatch"),
        pytest.param(None, "production", NO_PLAN, None, id="no-plan"),
    ],
)
def test_check_batch_uses_the_version_the_batch_names(context, environment, status, version):
    plan = load_plan(MULTI, "test")
    sent: dict[str, Any] = {"events": [custom("Nope", "other")]}
    if context is not None:
        sent["context"] = {"data_plan": context}
    if environment is not None:
        sent["environment"] = environment
    verdict = check_batch(plan, sent, BLOCK_ALL)
    assert (verdict.status, verdict.plan_version) == (status, version)
    assert verdict.blocked is (status == "checked")
    assert plan.check_batch(sent, BLOCK_ALL) == verdict


# The data_plan holds only v2's version document, which allows the data; v1, active, blocks it.
@pytest.mark.parametrize(
    "v2_environment",
    [
        pytest.param("none", id="v2-active-nowhere"),
        pytest.param("production", id="v2-active-in-the-other-environment"),
    ],
)
def test_a_version_not_active_for_the_environment_is_trusted_only_when_named(v2_environment):
    plan = load_plan(
        version_document(
            data_point("custom_event", event_name="Sign Up", custom_event_type="navigation"),
            version=2,
            environment=v2_environment,
        ),
        "v2.json",
    )
    # plan_version = omit: mParticle applies the version active in development, which the document lacks.
    unnamed = check_batch(plan, batch(custom(), environment="development"), BLOCK_ALL)
    assert (unnamed.status, unnamed.plan_version) == (NO_ACTIVE_VERSION, None)
    named = check_batch(plan, batch(custom(), plan_version=2, environment="development"), BLOCK_ALL)
    assert (named.status, named.plan_version, named.issues) == ("checked", 2, ())


def test_a_whole_plan_and_its_version_document_check_alike():
    points = (data_point("screen_view", event_schema(closed("label")), screen_name="Shop"),)
    sent = batch(screen(label="a", seats=1), custom(), plan_version=2)
    from_version = check_batch(load_plan(version_document(*points), "v"), sent, BLOCK_ALL)
    from_plan = check_batch(load_plan(whole_plan(version_document(*points)), "p"), sent, BLOCK_ALL)
    assert from_version == from_plan
    assert reasons(from_plan) == [(UNPLANNED_EVENT_ATTRIBUTE, "seats"), (UNPLANNED_EVENT, None)]


def test_identical_data_points_are_compiled_once_per_plan():
    point = data_point("screen_view", event_schema(closed("label", tier="string")), screen_name="Shop")
    plan = load_plan(whole_plan(version_document(point, version=1), version_document(point, version=2)), "p")
    assert plan.versions[1].points[0].check is plan.versions[2].points[0].check


def bad_point(**changes):
    point = data_point("custom_event", event_name="Sign Up", custom_event_type="navigation")
    point.update(changes)
    return point


@pytest.mark.parametrize(
    ("document", "message"),
    [
        pytest.param([], "plans/shop.json: the document is not a JSON object (got list)", id="not-object"),
        pytest.param({"version_document": {"data_points": []}}, "no data_plan_id", id="no-id"),
        pytest.param(whole_plan(), "plan 'shop' has no versions", id="no-versions"),
        pytest.param({"data_plan_id": "shop"}, "neither a plan (data_plan_versions) nor a plan version", id="neither"),
        pytest.param(
            whole_plan(version_document(version=1), version_document(version=1)), "has version 1 twice", id="twice"
        ),
        pytest.param(version_document(version="2"), "version must be an integer, got '2'", id="version-type"),
        pytest.param(
            {**version_document(), "version_document": {}}, "version 2: version_document.data_points", id="no-points"
        ),
        pytest.param(version_document(bad_point(match=None)), "version 2, data point 0 has no match", id="no-match"),
        pytest.param(
            version_document(data_point("screen_view", screen_name="Shop"), bad_point(validator=None)),
            "version 2, data point 1 (custom_event 'Sign Up' (navigation)) has no validator",
            id="no-validator",
        ),
        pytest.param(
            version_document(data_point("page_view", page="x")),
            "data point 0: unknown match type 'page_view'",
            id="unknown-match-type",
        ),
        pytest.param(
            version_document(data_point("custom_event", event_name="Sign Up")),
            "data point 0 (custom_event): match.criteria.custom_event_type must be a string",
            id="criteria",
        ),
        pytest.param(
            version_document(bad_point(validator={"type": "regex", "definition": {}})),
            "validator type must be 'json_schema', got 'regex'",
            id="validator-type",
        ),
        pytest.param(
            version_document(
                data_point("screen_view", screen_name="Shop"),
                bad_point(validator={"type": "json_schema", "definition": event_schema(closed(seats="integr"))}),
            ),
            "plans/shop.json: plan 'shop' version 2, data point 1 (custom_event 'Sign Up' (navigation)): "
            "validator.definition is not a valid JSON Schema: ",
            id="bad-schema",
        ),
        pytest.param(
            version_document(bad_point(validator={"type": "json_schema", "definition": {"minLength": -1}})),
            "is not a valid JSON Schema",
            id="bad-schema-value",
        ),
        pytest.param(
            {**version_document(), "activated_environment": "staging"},
            "activated_environment must be none, development or production",
            id="environment",
        ),
        pytest.param(
            whole_plan({**version_document(version=1), "data_plan_id": "web"}),
            "data_plan_id 'web' differs from the plan's",
            id="version-of-another-plan",
        ),
    ],
)
def test_bad_documents_are_refused_naming_what_and_where(document, message):
    with pytest.raises(InvalidSettings, match="'data_plan'") as error:
        load_plan(document, "plans/shop.json")
    assert message in str(error.value)
    assert str(error.value).startswith("invalid setting 'data_plan': plans/shop.json: ")


def test_a_bad_schema_message_says_where_in_the_schema():
    point = bad_point(validator={"type": "json_schema", "definition": event_schema(closed(seats="integr"))})
    with pytest.raises(InvalidSettings) as error:
        load_plan(version_document(point), "p.json")
    assert "$.properties.data.properties.custom_attributes.properties.seats.type" in str(error.value)


def test_points_for_unplannable_types_are_accepted_and_plan_nothing():
    version = version_of(data_point("session_start"), data_point("application_state_transition"))
    assert version.check(batch({"event_type": "session_start", "data": {}}), BLOCK_ALL).issues == ()


# --- Invalid values ----------------------------------------------------------------------------------


SEATS = event_schema(
    {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "seats": {"type": "integer", "minimum": 1},
            "tier": {"type": "string", "enum": ["gold", "silver"]},
            "code": {"type": "string", "pattern": "^[A-Z]{3}$"},
        },
        "required": ["seats"],
    }
)


@pytest.mark.parametrize(
    ("attributes", "expected"),
    [
        pytest.param({"seats": 2, "tier": "gold", "code": "ABC"}, [], id="valid"),
        pytest.param({"seats": 2.0}, [], id="integral-float-is-integer"),
        pytest.param(
            {"seats": "secret-7"}, [("$.events[0].data.custom_attributes.seats", "must be of type integer")], id="type"
        ),
        pytest.param(
            {"seats": True}, [("$.events[0].data.custom_attributes.seats", "must be of type integer")], id="bool"
        ),
        pytest.param({"seats": 0}, [("$.events[0].data.custom_attributes.seats", "must be at least 1")], id="minimum"),
        pytest.param(
            {"seats": 1, "tier": "secret-bronze"},
            [("$.events[0].data.custom_attributes.tier", "must be one of 'gold', 'silver'")],
            id="enum",
        ),
        pytest.param(
            {"seats": 1, "code": "secret-abc"},
            [("$.events[0].data.custom_attributes.code", "must match '^[A-Z]{3}$'")],
            id="pattern",
        ),
        pytest.param({"tier": "gold"}, [("$.events[0].data.custom_attributes", "missing 'seats'")], id="required"),
    ],
)
def test_invalid_values_are_reported_never_blocked_and_never_shown(attributes, expected):
    version = version_of(data_point("custom_event", SEATS, event_name="Sign Up", custom_event_type="navigation"))
    verdict = version.check(batch(custom(**attributes)), BLOCK_ALL)
    assert [(issue.path, issue.message) for issue in verdict.issues] == expected
    assert all(issue.reason == INVALID and not issue.blocked for issue in verdict.issues)
    assert not verdict.blocked
    assert "secret" not in repr(verdict)
    for issue in verdict.issues:
        assert issue.suggestion.endswith("in plan shop v2; invalid data is not blocked")


def test_unplanned_and_invalid_in_one_event_are_told_apart():
    version = version_of(data_point("custom_event", SEATS, event_name="Sign Up", custom_event_type="navigation"))
    verdict = version.check(batch(custom(seats="x", extra=1)), BLOCK_ALL)
    assert reasons(verdict) == [(INVALID, None), (UNPLANNED_EVENT_ATTRIBUTE, "extra")]
    (event_verdict,) = verdict.events
    assert event_verdict.blocked_attributes == ("extra",) and not event_verdict.blocked


def test_other_fields_the_plan_does_not_list_are_invalid_not_blocked():
    definition = event_schema(closed("label"), data_additional=False, event_name={}, custom_event_type={})
    version = version_of(data_point("custom_event", definition, event_name="Sign Up", custom_event_type="navigation"))
    verdict = version.check(batch(custom(label="a")), BLOCK_ALL)
    (issue,) = verdict.issues
    assert (issue.reason, issue.blocked, issue.path) == (INVALID, False, "$.events[0].data")
    assert issue.message == "not in the plan: 'timestamp_unixtime_ms'"


def test_invalid_user_attribute_and_identity_values_are_reported_without_the_value():
    version = version_of(
        data_point("user_attributes", closed(age="integer")),
        data_point(
            "user_identities",
            {
                "type": "object",
                "additionalProperties": False,
                "properties": {"email": {"type": "string", "pattern": "@"}},
            },
        ),
    )
    sent = batch(user_attributes={"age": "secret-12"}, user_identities={"email": "secret-no-at"})
    verdict = version.check(sent, BLOCK_ALL)
    assert [(issue.reason, issue.path, issue.message, issue.data_point) for issue in verdict.issues] == [
        (INVALID, "$.user_attributes.age", "must be of type integer", "user_attributes"),
        (INVALID, "$.identities.email", "must match '@'", "user_identities"),
    ]
    assert "secret" not in repr(verdict)


def test_schemas_outside_the_fast_subset_are_checked_by_jsonschema():
    any_of = event_schema({"type": "object", "properties": {"n": {"anyOf": [{"type": "integer"}, {"type": "null"}]}}})
    version = version_of(data_point("screen_view", any_of, screen_name="Shop"))
    assert version.check(batch(screen(n=None)), BLOCK_ALL).issues == ()
    (issue,) = version.check(batch(screen(n="x")), BLOCK_ALL).issues
    assert (issue.reason, issue.path, issue.message) == (
        INVALID,
        "$.events[0].data.custom_attributes.n",
        "fails the plan's 'anyOf' rule",
    )


def test_valid_events_never_run_the_full_validator(monkeypatch):
    version = version_of(data_point("custom_event", SEATS, event_name="Sign Up", custom_event_type="navigation"))

    def refuse(*args, **kwargs):
        raise AssertionError("the full jsonschema validator ran on a valid event")

    monkeypatch.setattr(Draft202012Validator, "iter_errors", refuse)
    verdict = version.check(
        batch(*[custom(seats=n + 1, tier="gold") for n in range(50)], custom(seats=1, x=2)), BLOCK_ALL
    )
    assert reasons(verdict) == [(UNPLANNED_EVENT_ATTRIBUTE, "x")]


# The fast check must agree with jsonschema on every instance (attribute containers aside).
FAST_SCHEMAS = [point["validator"]["definition"] for point in higgs_document()["version_document"]["data_points"]] + [
    SEATS,
    {"type": ["string", "null"], "minLength": 2, "maxLength": 3},
    {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 10},
    {"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 2},
    {"type": "object", "required": ["a"], "properties": {"a": {"const": "x"}, "b": False}},
    {"enum": ["a", "b"]},
    {"items": False},
    {"type": "boolean"},
    {"type": "integer", "maximum": 3},
    {"properties": {"n": {"type": ["integer", "boolean"]}}, "additionalProperties": False},
]
EDGE_CASES = [
    ({"type": "integer"}, 2.0),
    ({"type": "integer"}, 2.5),
    ({"type": "integer"}, True),
    ({"type": "number"}, False),
    ({"type": "number", "minimum": 1}, True),
    ({"type": "string", "minLength": 2}, "é"),
    ({"enum": ["1"]}, 1),
    ({"const": "a"}, "a"),
    ({"pattern": "^a"}, 5),
    ({"type": "object", "required": ["a"]}, []),
    ({"required": ["a"]}, "not an object"),
    ({"type": "array", "maxItems": 1}, [1, 2]),
    ({"additionalProperties": False, "properties": {"a": {}}}, {"a": 1, "b": 2}),
]
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-3, 12)
    | st.floats(-3, 12, allow_nan=False)
    | st.sampled_from(["", "a", "x", "ABC", "gold", "a@b"]),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                [
                    "a",
                    "b",
                    "data",
                    "custom_attributes",
                    "seats",
                    "tier",
                    "code",
                    "product_action",
                    "products",
                    "label",
                    "size",
                    "id",
                ]
            ),
            children,
            max_size=4,
        )
    ),
    max_leaves=12,
)


@pytest.mark.parametrize(
    ("schema", "instance"), [pytest.param(*case, id=f"{case[0]}-{case[1]!r}") for case in EDGE_CASES]
)
def test_the_fast_check_agrees_with_jsonschema_on_edge_cases(schema, instance):
    check = plan_check._compile(schema, (), frozenset())
    assert (check is None or check(instance)) is Draft202012Validator(schema).is_valid(instance)


@settings(max_examples=1000, deadline=None)
@given(index=st.integers(0, len(FAST_SCHEMAS) - 1), instance=JSON_VALUES)
def test_the_fast_check_agrees_with_jsonschema(index, instance):
    schema = FAST_SCHEMAS[index]
    check = plan_check._compile(schema, (), frozenset())
    expected = Draft202012Validator(schema).is_valid(instance)
    assert (check is None or check(instance)) is expected


# --- The real plan -----------------------------------------------------------------------------------


def higgs_batch(*events, **fields) -> dict[str, Any]:
    return batch(*events, plan_id=HIGGS_ID, plan_version=1, environment="development", **fields)


def test_the_real_higgs_shop_plan_loads():
    plan = load_plan(higgs_document(), "higgs_shop_v1.json")
    version = plan.versions[1]
    assert (plan.plan_id, version.activated_environment, len(version.points)) == (HIGGS_ID, "development", 16)
    assert plan.version_for(HIGGS_ID, None, "development") is version
    navbar = version.event_points[("custom_event", "navigation", "Navbar Click")]
    assert navbar.allowed == {"label"} and navbar.label == "custom_event 'Navbar Click' (navigation)"
    assert version.event_points[("product_action", "purchase")].product_allowed == {"size", "color"}
    assert version.user_identities is not None and version.user_identities.allowed == {
        "email",
        "customerid",
        "ios_idfv",
    }
    assert version.user_attributes is None


def test_a_realistic_higgs_shop_replay():
    add_to_cart = commerce(
        product_action={
            "action": "add_to_cart",
            "products": [
                {
                    "id": "1",
                    "name": "Hat",
                    "total_product_amount": 10.0,
                    "custom_attributes": {"size": "M", "color": "red"},
                }
            ],
        }
    )
    sent = higgs_batch(
        custom("Navbar Click", "navigation", label="Shop"),
        screen("View My Cart", number_of_products="2", total_product_amounts="10"),
        add_to_cart,
        {"event_type": "session_start", "data": {}},
        screen("Shop"),
        custom("Sign Up", "navigation"),
        custom("Navbar Click", "navigation", label="Shop", position=3),
        commerce(
            product_action={"action": "purchase", "products": [{"id": "1", "custom_attributes": {"fit": "slim"}}]}
        ),
        custom("Landing Button Click", "other", anything="goes"),
        user_identities={"customer_id": "c1", "email": "a@b.c", "other_id_2": "o"},
        device_info={"ios_idfv": "v", "ios_advertising_id": "a", "os_version": "17"},
        user_attributes={"tier": "gold"},
    )
    verdict = check_batch(load_plan(higgs_document(), "higgs"), sent, BLOCK_ALL)
    assert verdict.status == "checked" and verdict.plan_version == 1
    assert [(issue.event_index, issue.reason, issue.name) for issue in verdict.issues] == [
        (5, UNPLANNED_EVENT, None),
        (6, UNPLANNED_EVENT_ATTRIBUTE, "position"),
        (7, UNPLANNED_PRODUCT_ATTRIBUTE, "fit"),
        (None, UNPLANNED_USER_IDENTITY, "ios_idfa"),
        (None, UNPLANNED_USER_IDENTITY, "other2"),
    ]
    assert verdict.blocked_event_indexes == (5,)
    assert [issue.suggestion for issue in verdict.issues] == [
        f"add custom_event 'Sign Up' (navigation) to plan {HIGGS_ID} v1",
        f"allow attribute 'position' on custom_event 'Navbar Click' (navigation) in plan {HIGGS_ID} v1",
        f"allow product attribute 'fit' on product_action 'purchase' in plan {HIGGS_ID} v1",
        f"allow identity 'ios_idfa' in plan {HIGGS_ID} v1",
        f"allow identity 'other2' in plan {HIGGS_ID} v1",
    ]


def test_a_fixed_version_of_the_real_plan_lets_the_replay_through():
    """Replaying under the version that blocked the data blocks it again; a fixed version does not."""
    v1 = higgs_document()
    v2 = copy.deepcopy(v1)
    v2["version"], v2["activated_environment"] = 2, "production"
    points = v2["version_document"]["data_points"]
    points.append(data_point("custom_event", event_name="Sign Up", custom_event_type="navigation"))
    navbar = next(p for p in points if p["match"]["criteria"].get("event_name") == "Navbar Click")
    navbar["validator"]["definition"]["properties"]["data"]["properties"]["custom_attributes"]["properties"][
        "position"
    ] = {"type": "number"}
    plan = load_plan(whole_plan(v1, v2, plan_id=HIGGS_ID), "higgs")
    events = (custom("Sign Up", "navigation"), custom("Navbar Click", "navigation", label="Shop", position=3))
    again = check_batch(plan, batch(*events, plan_id=HIGGS_ID, plan_version=1), BLOCK_ALL)
    assert again.blocked and again.blocked_event_indexes == (0,)
    fixed = check_batch(plan, batch(*events, plan_id=HIGGS_ID), BLOCK_ALL)
    assert (fixed.plan_version, fixed.issues) == (2, ())
