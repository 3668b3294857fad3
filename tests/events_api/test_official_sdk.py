"""What mParticle's official Python SDK (``mparticle`` on PyPI, pinned in requirements-dev.txt) sends, the emulator takes.

Batches are built with the SDK's own model classes and sent through the SDK's own HTTP client (``EventsApi``
with a ``Configuration`` whose host is the emulator), to the single-batch and to the bulk endpoint. The SDK
spells the customer id identity ``customerid`` (its ``UserIdentities``), not the schema's ``customer_id``,
and its ``AppEvent.create_attribution_event()`` sends ``custom_event_type: "attribution"`` on a custom event;
mParticle takes both, so the emulator must (``SDK_IDENTITY_SPELLINGS`` and ``SCHEMA_PATCHES`` in
tools/emulator.py). Everything else the SDK builds already matched the schema, key for key.
"""

from __future__ import annotations

import json
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tools import emulator as emulator_module
from tools.emulator import EventsApiEmulator

with warnings.catch_warnings():
    # The SDK's rest.py compares a string with "is": a SyntaxWarning each time Python compiles it.
    warnings.simplefilter("ignore", SyntaxWarning)
    import mparticle
    from mparticle.api_client import ApiClient
    from mparticle.rest import ApiException

KEY, SECRET = "sdk-key", "sdk-secret-value"
HIGGS = Path(__file__).resolve().parents[2] / "tools" / "schemas" / "mparticle.data_plan_version.higgs_shop_v1.json"
T0 = 1_700_000_000_000  # a fixed time (ms): the same batches every run

# urllib3 2 deprecates HTTPResponse.getheaders(), which the SDK's client calls on every answer.
pytestmark = pytest.mark.filterwarnings("ignore:HTTPResponse.getheaders:DeprecationWarning")

# Every value the SDK's setters allow, less "unknown" (see test_values_the_schema_does_not_list_stay_refused).
CUSTOM_EVENT_TYPES = ("navigation", "location", "search", "transaction", "user_content", "user_preference", "social")
PRODUCT_ACTIONS = (
    "add_to_cart",
    "remove_from_cart",
    "checkout",
    "checkout_option",
    "click",
    "view_detail",
    "purchase",
    "refund",
    "add_to_wishlist",
    "remove_from_wish_list",
)


@pytest.fixture
def emulator() -> Iterator[EventsApiEmulator]:
    with EventsApiEmulator(KEY, SECRET) as server:
        yield server


def events_api(server: EventsApiEmulator) -> mparticle.EventsApi:
    """The SDK's own client, pointed at the emulator (its default host is mParticle's)."""
    configuration = mparticle.Configuration()
    configuration.host = f"{server.url}/v2"
    configuration.api_key = KEY
    configuration.api_secret = SECRET
    return mparticle.EventsApi(configuration)


def uid(n: int) -> str:
    return str(uuid.UUID(int=n))


def every_identity(user: int) -> mparticle.UserIdentities:
    """Every identity type the SDK's UserIdentities has, set: 22, the customer id as ``customerid``."""
    identities = mparticle.UserIdentities()
    for name in identities.swagger_types:
        setattr(identities, name, f"{name}-{user}")
    identities.email = f"user{user}@example.com"
    identities.mobile_number = f"+1555000{user:04d}"
    return identities


def device(user: int) -> mparticle.DeviceInformation:
    """Every DeviceInformation field the SDK has, set."""
    info = mparticle.DeviceInformation()
    for name in ("brand", "product", "device", "device_manufacturer", "os_version", "device_model"):
        setattr(info, name, f"{name}-{user}")
    info.platform = "iOS"
    info.screen_height, info.screen_width, info.screen_dpi = 2532, 1170, 460
    info.device_country, info.locale_language, info.locale_country = "US", "en", "US"
    info.network_country, info.network_carrier, info.network_code, info.network_mobile_country_code = (
        "us",
        "Carrier",
        "410",
        "310",
    )
    info.timezone_offset = -5
    info.build_identifier = "build-1"
    info.http_header_user_agent = "Mozilla/5.0"
    info.cpu_architecture = "arm64"
    info.is_tablet = False
    info.push_notification_sound_enabled = info.push_notification_vibrate_enabled = True
    info.radio_access_technology = "LTE"
    info.supports_telephony = info.has_nfc = info.bluetooth_enabled = True
    info.bluetooth_version = "5.0"
    info.att_authorization_status = "authorized"
    info.att_timestamp_unixtime_ms = T0
    info.push_token = f"push-token-{user}"
    info.amp_id = f"amp-{user}"
    # The device identities (the SDK checks that the advertising ids are UUIDs; the schema wants a UUID for all
    # but push_token and amp_id).
    for offset, name in enumerate(
        (
            "ios_advertising_id",
            "ios_idfv",
            "android_advertising_id",
            "android_uuid",
            "roku_advertising_id",
            "roku_publisher_id",
            "fire_advertising_id",
            "microsoft_advertising_id",
            "microsoft_publisher_id",
        )
    ):
        setattr(info, name, uid(1000 * user + offset))
    return info


def product(n: int) -> mparticle.Product:
    item = mparticle.Product()
    item.id, item.name, item.brand, item.category, item.variant = f"sku-{n}", f"Product {n}", "Brand", "Shoes", "red"
    item.price, item.quantity, item.total_product_amount, item.position = 19.99, 2, 39.98, n
    item.coupon_code, item.added_to_cart_time_ms = "SAVE", T0
    item.custom_attributes = {"size": "42"}
    return item


def commerce_events(start: int) -> list[mparticle.CommerceEvent]:
    """A commerce event per product action, one per promotion action, impressions, a shopping cart."""
    events = []
    for n, name in enumerate(PRODUCT_ACTIONS):
        action = mparticle.ProductAction(name)
        action.products = [product(1), product(2)]
        action.transaction_id, action.affiliation, action.coupon_code = f"t-{n}", "web", "SAVE"
        action.total_amount, action.tax_amount, action.shipping_amount = 44.97, 3.0, 2.0
        action.checkout_step, action.checkout_options = 1, "express"
        action.product_action_list, action.product_list_source = "list", "search"
        event = mparticle.CommerceEvent(action)
        event.currency_code, event.screen_name, event.is_non_interactive = "USD", "Checkout", False
        event.custom_attributes = {"channel": "app"}
        events.append(event)
    for name in ("view", "click"):
        promotion = mparticle.Promotion()
        promotion.id, promotion.name, promotion.creative, promotion.position = "p-1", "Sale", "banner", "top"
        promotion_action = mparticle.PromotionAction()
        promotion_action.action = name
        promotion_action.promotions = [promotion]
        events.append(mparticle.CommerceEvent(promotion_action=promotion_action))
    impression = mparticle.ProductImpression()
    impression.product_impression_list, impression.products = "home", [product(3)]
    event = mparticle.CommerceEvent(product_impressions=[impression])
    cart = mparticle.ShoppingCart()
    cart.products = [product(4)]
    event.shopping_cart = cart
    events.append(event)
    for offset, event in enumerate(events):
        event.timestamp_unixtime_ms, event.event_id = T0 + start + offset, start + offset
    return events


def sdk_batch(user: int) -> mparticle.Batch:
    """One user's batch with every kind of data the SDK models, built as its docs show."""
    batch = mparticle.Batch()
    batch.environment = "development"
    batch.source_request_id = uid(user)
    batch.mpid = 8_000_000_000_000_000_000 + user  # beyond 2**53
    batch.mp_deviceid = uid(500 + user)
    batch.ip = "203.0.113.7"
    batch.user_identities = every_identity(user)
    batch.device_info = device(user)
    application = mparticle.ApplicationInformation()
    application.application_name, application.application_version = "Shop", "1.2.3"
    application.install_referrer, application.package = "store", "com.example.shop"
    batch.application_info = application
    batch.user_attributes = {"plan": "trial", "tags": ["a", "b"], "age": 42, "vip": True}
    batch.deleted_user_attributes = ["old"]
    gdpr = mparticle.GDPRConsentState()
    gdpr.document, gdpr.consented, gdpr.timestamp_unixtime_ms = "agreement.v2", True, T0
    gdpr.location, gdpr.hardware_id = "example.com/signup", "IDFA:a5d934n0"
    ccpa = mparticle.CCPAConsentState()
    ccpa.document, ccpa.consented, ccpa.timestamp_unixtime_ms = "agreement.v3", False, T0
    consent = mparticle.ConsentState()
    consent.gdpr, consent.ccpa = {"My Purpose": gdpr}, {"data_sale_opt_out": ccpa}
    batch.consent_state = consent

    session_id, session_uuid = 1000 + user, uid(900 + user)
    start = mparticle.SessionStartEvent()
    start.session_id, start.session_uuid = session_id, session_uuid
    screen = mparticle.ScreenViewEvent()
    screen.screen_name, screen.activity_type = "Landing", "main"
    screen.custom_attributes, screen.custom_flags = {"from": "push"}, {"flag": "on"}
    screen.location = mparticle.GeoLocation(40.7, -74.0, 10.0)
    app_events = [
        mparticle.AppEvent(f"Event {kind}", kind, custom_attributes={"k": "v"}) for kind in CUSTOM_EVENT_TYPES
    ]
    app_events.append(mparticle.AppEvent("Default type"))  # the SDK's default: "other"
    app_events.append(mparticle.AppEvent.create_attribution_event(publisher="Publisher", campaign="Campaign"))
    app_events.append(mparticle.AppEvent.create_attribution_delete_event())
    state_changes = [
        mparticle.ApplicationStateTransitionEvent.create_install_event(),
        mparticle.ApplicationStateTransitionEvent.create_upgrade_event(),
        mparticle.ApplicationStateTransitionEvent.create_foreground_event(),
        mparticle.ApplicationStateTransitionEvent.create_background_event(),
    ]
    end = mparticle.SessionEndEvent()
    end.session_id, end.session_duration_ms = session_id, 60_000
    events = [start, screen, *app_events, *state_changes, *commerce_events(100), end]
    for offset, event in enumerate(events):
        if event.timestamp_unixtime_ms is None:
            event.timestamp_unixtime_ms, event.event_id = T0 + offset, offset
        event.session_id = session_id
    batch.events = events  # the setter wraps each event with its event_type (the constructor would not)
    return batch


def sdk_json(batch: Any) -> Any:
    """What the SDK puts on the wire for ``batch`` (its own serializer, then JSON as its client sends it)."""
    return json.loads(json.dumps(ApiClient.sanitize_for_serialization(batch)))


def stats(server: EventsApiEmulator) -> dict[str, int]:
    return requests.get(f"{server.url}/_emulator/stats", timeout=5).json()


def received(server: EventsApiEmulator) -> list[dict[str, Any]]:
    return requests.get(f"{server.url}/_emulator/batches", timeout=5).json()


def test_the_sdk_batches_use_the_sdk_spellings():
    """The premise: what the SDK sends carries its own spellings (else the tests below would prove nothing)."""
    body = sdk_json(sdk_batch(1))
    # Every field of the SDK's identity, device and commerce models is set, so a key the emulator refuses shows.
    assert set(body["user_identities"]) == set(mparticle.UserIdentities().attribute_map.values())
    assert len(body["user_identities"]) == 22
    assert set(body["device_info"]) == set(mparticle.DeviceInformation().attribute_map.values())
    purchase = next(e["data"] for e in body["events"] if (e["data"].get("product_action") or {}).get("action"))
    assert set(purchase["product_action"]) == set(mparticle.ProductAction().attribute_map.values())
    assert set(purchase["product_action"]["products"][0]) == set(mparticle.Product().attribute_map.values())
    assert body["user_identities"]["customerid"] == "customerid-1" and "customer_id" not in body["user_identities"]
    types = [event["event_type"] for event in body["events"]]
    assert types.count("custom_event") == 10 and types.count("commerce_event") == 13
    assert {"session_start", "session_end", "screen_view", "application_state_transition"} <= set(types)
    attribution = [e["data"] for e in body["events"] if e["data"].get("event_name") == "attribution"]
    assert [data["custom_event_type"] for data in attribution] == ["attribution", "attribution"]


def test_the_sdk_patches_only_add_to_the_official_schema():
    """The patches for the SDK add its spellings to what the schema lists; they take nothing away."""
    schema = json.loads(emulator_module.BATCH_SCHEMA.read_text())
    patched = emulator_module._patched(schema, emulator_module.SCHEMA_PATCHES)
    identities = patched["properties"]["user_identities"]
    assert set(identities["properties"]) == {*emulator_module._IDENTITY_TYPES, "customerid"}
    assert identities["additionalProperties"] is False
    assert emulator_module.SDK_IDENTITY_SPELLINGS == {"customerid": "customer_id"}

    def custom_event_types(document: dict[str, Any]) -> list[str]:
        data = document["definitions"]["CustomEvent"]["properties"]["data"]
        return data["allOf"][1]["properties"]["custom_event_type"]["enum"]

    assert custom_event_types(patched) == [*custom_event_types(schema), "attribution"]


def test_each_sdk_batch_is_accepted_by_the_single_batch_endpoint(emulator):
    api = events_api(emulator)
    batches = [sdk_batch(user) for user in (1, 2, 3)]
    for batch in batches:
        data, status, _headers = api.upload_events_with_http_info(batch)
        assert (data, status) == (None, 202)
    events = sum(len(batch.events) for batch in batches)
    assert received(emulator) == [sdk_json(batch) for batch in batches]
    assert stats(emulator) == {
        "requests": 3,
        "status_202": 3,
        "batches_accepted": 3,
        "events_accepted": events,
        "events_forwarded": events,
    }
    assert stats(emulator).get("duplicates_dropped", 0) == 0


def test_sdk_batches_are_accepted_by_the_bulk_endpoint(emulator):
    api = events_api(emulator)
    batches = [sdk_batch(user) for user in (1, 2, 3, 4)]
    data, status, _headers = api.bulk_upload_events_with_http_info(batches)
    assert (data, status) == (None, 202)
    events = sum(len(batch.events) for batch in batches)
    assert received(emulator) == [sdk_json(batch) for batch in batches]
    assert stats(emulator) == {
        "requests": 1,
        "status_202": 1,
        "batches_accepted": 4,
        "events_accepted": events,
        "events_forwarded": events,
    }
    assert stats(emulator).get("duplicates_dropped", 0) == 0


def test_the_sdk_client_resending_a_batch_is_dropped_as_a_repeat(emulator):
    api = events_api(emulator)
    api.upload_events(sdk_batch(1))
    api.upload_events(sdk_batch(1))  # the same source_request_id
    assert len(received(emulator)) == 1
    assert stats(emulator)["duplicates_dropped"] == 1


@pytest.mark.parametrize(
    ("identities", "accepted"),
    [
        ({"customerid": "c1", "customer_id": "c1"}, True),  # one value under both spellings: one user
        ({"customerid": "c1", "customer_id": None}, True),
        ({"customerid": "", "customer_id": "c1"}, True),  # an empty identity is no identity
        ({"customerid": "c1", "customer_id": "c2"}, False),  # two customer ids: two users in one batch
    ],
)
def test_both_spellings_of_the_customer_id_are_one_identity_type(emulator, identities, accepted):
    batch = mparticle.Batch()
    batch.environment = "development"
    batch.user_identities = identities  # a dict: the SDK serializes it as given
    batch.events = [mparticle.AppEvent("Example", "navigation")]
    api = events_api(emulator)
    if accepted:
        assert api.upload_events_with_http_info(batch)[1] == 202
        return
    with pytest.raises(ApiException) as refused:
        api.upload_events(batch)
    assert refused.value.status == 400
    (error,) = json.loads(refused.value.body)["errors"]
    assert error["message"] == (
        "batch 0: $.user_identities.customerid: 'c1' and customer_id 'c2' are two values of one identity type"
        " (one user per batch)"
    )
    assert received(emulator) == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda b: setattr(b.events[0].data, "custom_event_type", "unknown"), "$.events[0].data.custom_event_type"),
        (lambda b: setattr(b.events[1].data.product_action, "action", "unknown"), "$.events[1].data.product_action"),
        (lambda b: setattr(b.device_info, "platform", "Unknown"), "$.device_info.platform"),
    ],
)
def test_values_the_schema_does_not_list_stay_refused(emulator, change, message):
    """The SDK's setters also allow "unknown" (its enums' default member), which no SDK factory or default
    sends and mParticle's schema does not list: the emulator stays strict there."""
    batch = mparticle.Batch()
    batch.environment = "development"
    batch.device_info = mparticle.DeviceInformation()
    batch.events = [mparticle.AppEvent("Example", "navigation"), commerce_events(0)[0]]
    change(batch)
    with pytest.raises(ApiException) as refused:
        events_api(emulator).upload_events(batch)
    assert refused.value.status == 400
    assert message in json.loads(refused.value.body)["errors"][0]["message"]


def test_a_data_plan_reads_the_sdk_spelling_under_its_idsync_name():
    """higgs_shop allows the identities customerid, email and ios_idfv (IDSync names): the SDK's customerid
    is planned, its other identities are not."""
    with EventsApiEmulator(KEY, SECRET, data_plans=[HIGGS]) as server:
        batch = mparticle.Batch()
        batch.environment = "development"
        batch.context = mparticle.BatchContext(mparticle.DataPlanContext("higgs_shop_basic_data_plan", 1))
        identities = mparticle.UserIdentities()
        identities.customerid, identities.email, identities.other = "c1", "a@example.com", "o1"
        batch.user_identities = identities
        batch.events = [mparticle.AppEvent("Landing Button Click", "other")]
        assert events_api(server).upload_events_with_http_info(batch)[1] == 202
        (record,) = requests.get(f"{server.url}/_emulator/quarantined", timeout=5).json()
        assert record["blocked_user_identities"] == ["other"]
        assert record["blocked_events"] == []
        assert stats(server)["user_identities_quarantined"] == 1
