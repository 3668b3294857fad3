"""The Events API emulator as an independent oracle: mParticle's schema and limits, HTTP answers, data plans.

Everything goes over HTTP on 127.0.0.1 to an in-process emulator. The data plan is mParticle's real
higgs_shop sample plan (tools/schemas/mparticle.data_plan_version.higgs_shop_v1.json).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
import requests
import yaml

from tools import emulator as emulator_module
from tools.emulator import EventsApiEmulator

KEY, SECRET = "test-key", "test-secret-value"
ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "tools" / "schemas"
HIGGS = SCHEMAS / "mparticle.data_plan_version.higgs_shop_v1.json"
HIGGS_ID = "higgs_shop_basic_data_plan"
SAMPLE = ROOT / "tests" / "fixtures" / "mparticle.inbound.eventsapi.sample.json"


def custom_event(name: str, custom_event_type: str = "other", event_id: int = 1, **data: Any) -> dict[str, Any]:
    return {
        "event_type": "custom_event",
        "data": {"event_name": name, "custom_event_type": custom_event_type, "event_id": event_id, **data},
    }


def screen_view(name: str, event_id: int = 2, **data: Any) -> dict[str, Any]:
    return {"event_type": "screen_view", "data": {"screen_name": name, "event_id": event_id, **data}}


def commerce(action: str, event_id: int = 3, products: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    product_action = {"action": action, "products": products or [{"id": "sku-1", "name": "Shoe", "price": 10.0}]}
    return {"event_type": "commerce_event", "data": {"product_action": product_action, "event_id": event_id}}


def batch(*events: dict[str, Any], **changes: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "environment": "development",
        "mpid": 1234567890123456789,
        "user_identities": {"customer_id": "c1"},
        "events": list(events) or [custom_event("Landing Button Click")],
    }
    payload.update(changes)
    return payload


def planned(*events: dict[str, Any], plan_version: int | None = 1, plan_id: str = HIGGS_ID, **changes: Any):
    """A batch naming the higgs_shop plan (and a version, unless None: the active one then applies)."""
    data_plan: dict[str, Any] = {"plan_id": plan_id}
    if plan_version is not None:
        data_plan["plan_version"] = plan_version
    return batch(*events, context={"data_plan": data_plan}, **changes)


def post(
    server: EventsApiEmulator,
    body: Any,
    path: str = "/v2/bulkevents",
    *,
    method: str = "POST",
    content_type: str | None = "application/json",
) -> requests.Response:
    data = body if isinstance(body, bytes) else msgspec.json.encode(body)
    headers = {"Content-Type": content_type} if content_type else {}
    return requests.request(method, server.url + path, data=data, auth=(KEY, SECRET), headers=headers, timeout=10)


def stats(server: EventsApiEmulator) -> dict[str, int]:
    return requests.get(f"{server.url}/_emulator/stats", timeout=5).json()


def message(response: requests.Response) -> str:
    (error,) = response.json()["errors"]
    assert set(error) == {"code", "message"}
    return error["message"]


@pytest.fixture
def emulator():
    with EventsApiEmulator(KEY, SECRET) as server:
        yield server


@pytest.fixture
def plan_emulator():
    with EventsApiEmulator(KEY, SECRET, data_plans=[HIGGS]) as server:
        yield server


# --- What mParticle accepts -------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v2/events", "/v2/bulkevents"])
def test_the_official_sample_batch_is_accepted_exactly(emulator, path):
    raw = SAMPLE.read_bytes()
    response = post(emulator, raw if path == "/v2/events" else b"[" + raw + b"]", path)
    assert response.status_code == 202, response.text
    (received,) = emulator.state.batches
    assert received == msgspec.json.decode(raw)
    assert received["mpid"] == -7636538281262557000  # an integer beyond 2**53, not rounded through a float
    assert stats(emulator)["events_accepted"] == 14


def test_64_bit_ids_are_accepted_as_strings_and_as_big_integers(emulator):
    body = (
        b'[{"environment":"production","mpid":9223372036854775807,'
        b'"events":[{"event_type":"screen_view","data":{"screen_name":"Home","event_id":-9223372036854775808,'
        b'"session_id":"-7778608565459706417","timestamp_unixtime_ms":1599790566900}}]},'
        b'{"environment":"production","mpid":"-8433569646818451201",'
        b'"events":[{"event_type":"screen_view","data":{"screen_name":"Home","event_id":"8561854144327985348"}}]}]'
    )
    assert post(emulator, body).status_code == 202
    first, second = emulator.state.batches
    assert first["mpid"] == 2**63 - 1 and first["events"][0]["data"]["event_id"] == -(2**63)
    assert second["mpid"] == "-8433569646818451201"


def test_a_request_near_256_kb_of_batches_under_128_kb_is_accepted(emulator):
    batches = [batch(user_attributes={f"a{i}": "x" * 1390 for i in range(60)}) for _ in range(3)]
    body = msgspec.json.encode(batches)
    assert 240_000 < len(body) < 256_000 and all(len(msgspec.json.encode(b)) < 128_000 for b in batches)
    assert post(emulator, body).status_code == 202


def test_server_set_fields_are_accepted_but_counted_and_a_repeated_batch_id_is_dropped(emulator):
    original = batch(batch_id=-5158959812941698317, timestamp_unixtime_ms=1599790566900)
    assert post(emulator, [original]).status_code == 202
    assert post(emulator, [{**original, "events": []}]).status_code == 202  # the same batch_id again
    counts = stats(emulator)
    assert counts["batches_accepted"] == 1 and counts["batch_id_duplicates_dropped"] == 1
    assert counts["batches_with_server_set_fields"] == 1


# --- What mParticle refuses: 400, the whole request, naming the batch and the JSON path --------------


def _with_data(event: dict[str, Any], **data: Any) -> dict[str, Any]:
    return {**event, "data": {**event["data"], **data}}


def _without(event: dict[str, Any], name: str) -> dict[str, Any]:
    return {**event, "data": {k: v for k, v in event["data"].items() if k != name}}


REFUSALS = [
    pytest.param(
        [batch({"event_type": "party", "data": {}})],
        "batch 0: $.events[0].event_type: 'party' is not one of",
        id="unknown event type",
    ),
    pytest.param(
        [batch(_without(custom_event("e"), "event_name"))],
        "batch 0: $.events[0].data: custom_event without required data.event_name",
        id="custom_event without event_name",
    ),
    pytest.param(
        [batch(_without(custom_event("e"), "custom_event_type"))],
        "$.events[0].data: custom_event without required data.custom_event_type",
        id="custom_event without custom_event_type",
    ),
    pytest.param(
        [batch(custom_event(""))],
        "$.events[0].data.event_name: custom_event with empty required data.event_name",
        id="empty event_name",
    ),
    pytest.param(
        [batch(custom_event("e", "party_time"))],
        "$.events[0].data.custom_event_type: 'party_time' is not one of",
        id="unknown custom_event_type",
    ),
    pytest.param(
        [batch(_without(screen_view("s"), "screen_name"))],
        "$.events[0].data: screen_view without required data.screen_name",
        id="screen_view without screen_name",
    ),
    pytest.param(
        [batch({"event_type": "session_start"})],
        "$.events[0]: required field 'data' is missing",
        id="event without data",
    ),
    pytest.param(
        [batch({"event_type": "session_start", "data": "x"})],
        "$.events[0].data: 'x' is not of type object",
        id="string for event data",
    ),
    pytest.param(
        [batch(device_info="iPhone")],
        "$.device_info: 'iPhone' is not of type object or null",
        id="string for device_info",
    ),
    pytest.param(
        [batch(user_attributes="vip")],
        "$.user_attributes: 'vip' is not of type object or null",
        id="string for user_attributes",
    ),
    pytest.param(
        [batch(), batch(user_identities={"email": ["a@example.com", "b@example.com"]})],
        "batch 1: $.user_identities.email: ['a@example.com', 'b@example.com'] is not one string (one user per batch)",
        id="a second user by identity",
    ),
    pytest.param(
        [batch(mpid=[1, 2])],
        "$.mpid: [1, 2] is not of type integer or string or null",
        id="a second user by mpid",
    ),
    pytest.param(
        [batch(user_identities={"email": 42})],
        "$.user_identities.email: 42 is not one string (one user per batch)",
        id="identity not a string",
    ),
    pytest.param(
        [batch(user_identities={"other_id_11": "x"})],
        "$.user_identities: unknown field(s) ('other_id_11' was unexpected)",
        id="unknown identity type",
    ),
    pytest.param(
        [batch(environment="staging")],
        "$.environment: 'staging' is not one of development, production",
        id="unknown environment",
    ),
    pytest.param(
        [{k: v for k, v in batch().items() if k != "environment"}],
        "batch 0: $: required field 'environment' is missing",
        id="no environment",
    ),
    pytest.param(
        [batch(user_id="u1")],
        "batch 0: $: unknown field(s) ('user_id' was unexpected)",
        id="unknown batch field",
    ),
    pytest.param(
        [batch(screen_view("s", timestamp_unixtime_ms="1599790566900"))],
        "$.events[0].data.timestamp_unixtime_ms: '1599790566900' is not of type integer or null",
        id="timestamp as a string",
    ),
    pytest.param(
        [batch(screen_view("s", timestamp_unixtime_ms=1599790566900.0))],
        "$.events[0].data.timestamp_unixtime_ms: 1599790566900.0 is not a 64-bit integer",
        id="timestamp as a float",
    ),
    pytest.param(
        [batch(mpid=2**63)],
        "$.mpid: 9223372036854775808 is not a 64-bit integer",
        id="mpid beyond 64 bits",
    ),
    pytest.param(
        [batch(mpid="12ab")],
        "$.mpid: '12ab' is not a 64-bit integer",
        id="mpid not decimal",
    ),
    pytest.param(
        [batch(ip="")],
        "$.ip: '' is none of: '' is not a 'ipv4'; '' is not a 'ipv6'",
        id="empty ip",
    ),
    pytest.param(
        [batch(context={"data_plan": {"plan_version": 1}})],
        "$.context.data_plan: required field 'plan_id' is missing",
        id="data plan without plan_id",
    ),
    pytest.param(
        [batch(screen_view("s", custom_attributes={f"a{i}": "x" for i in range(101)}))],
        "$.events[0].data.custom_attributes: 101 event attributes, more than 100",
        id="101 event attributes",
    ),
    pytest.param(
        [batch(user_attributes={f"a{i}": "x" for i in range(101)})],
        "$.user_attributes: 101 user attributes, more than 100",
        id="101 user attributes",
    ),
    pytest.param(
        [batch(screen_view("s", custom_attributes={"n" * 257: "x"}))],
        "$.events[0].data.custom_attributes: event attribute name 'nnn",
        id="attribute name of 257 characters",
    ),
    pytest.param(
        [batch(user_attributes={"bio": "x" * 4097})],
        "$.user_attributes['bio']: user attribute value longer than 4096 characters",
        id="value of 4097 characters",
    ),
    pytest.param(
        [batch(user_attributes={"tags": ["ok", "x" * 4097]})],
        "user attribute value longer than 4096 characters",
        id="list value of 4097 characters",
    ),
    pytest.param(
        [batch(user_attributes={"address": {"city": "Paris"}})],
        "$.user_attributes.address: {'city': 'Paris'} is none of",
        id="object as a user attribute value",
    ),
    pytest.param(
        [batch(user_attributes={f"a{i}": "x" * 1500 for i in range(90)})],
        "batch 0: $: batch of 136042 bytes, over the 128 KB batch limit (128000 bytes)",
        id="batch over 128 KB",
    ),
    pytest.param([batch() for _ in range(101)], "101 batches in one request, more than 100", id="101 batches"),
    pytest.param(b'[{"environment": "production"', "body is not valid JSON", id="not JSON"),
    pytest.param(batch(), "bulk body: $: {", id="an object for bulk"),
]


@pytest.mark.parametrize(("body", "expected"), REFUSALS)
def test_each_refusal_is_a_400_naming_the_batch_and_the_path(emulator, body, expected):
    response = post(emulator, body)
    assert response.status_code == 400, response.text
    assert expected in message(response)
    assert response.json()["errors"][0]["code"] == "BAD_REQUEST"
    assert emulator.state.batches == []  # the whole request is refused


def test_a_single_batch_endpoint_refuses_with_batch_0(emulator):
    response = post(emulator, batch(custom_event("")), "/v2/events")
    assert response.status_code == 400
    assert message(response).startswith("batch 0: $.events[0].data.event_name:")


def test_a_named_event_is_refused_with_the_whole_request_as_a_server_side_rule():
    with EventsApiEmulator(KEY, SECRET, refuse_events=["Bad Event"]) as server:
        good, bad = batch(custom_event("Fine")), batch(custom_event("Fine"), screen_view("Bad Event"))
        response = post(server, [good, bad])
        assert response.status_code == 400
        assert (
            message(response) == "batch 1: $.events[1].data.screen_name: 'Bad Event' is refused by a rule of this input"
        )
        assert server.state.batches == []
        assert post(server, [good]).status_code == 202
        assert len(server.state.batches) == 1


def test_a_lost_answer_was_processed_and_its_repeat_is_dropped(emulator):
    requests.post(f"{emulator.url}/_emulator/fail-next", json=["lost"], timeout=5)
    body = [batch(source_request_id="3f0a3c1e-0000-5000-8000-000000000001")]
    with pytest.raises(requests.ConnectionError):
        post(emulator, body)
    assert post(emulator, body).status_code == 202
    counts = stats(emulator)
    assert counts["batches_accepted"] == 1 and counts["duplicates_dropped"] == 1
    assert counts["connections_dropped"] == 1


# --- HTTP answers mParticle's front end gives --------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        pytest.param("POST", "/v2/bulkevents/historical", 404, id="historical endpoint is not in the OpenAPI file"),
        pytest.param("POST", "/v1/events", 404, id="unknown version"),
        pytest.param("GET", "/nothing", 404, id="unknown path"),
        pytest.param("GET", "/v2/events", 405, id="GET on events"),
        pytest.param("PUT", "/v2/bulkevents", 405, id="PUT on bulkevents"),
        pytest.param("DELETE", "/v2/events", 405, id="DELETE on events"),
        pytest.param("POST", "/_emulator/stats", 405, id="POST on stats"),
    ],
)
def test_unknown_paths_are_404_and_wrong_methods_405(emulator, method, path, status):
    response = post(emulator, [batch()], path, method=method)
    assert response.status_code == status
    assert message(response)
    if status == 405:
        assert response.headers["Allow"] in ("POST", "GET")
    assert emulator.state.batches == []


@pytest.mark.parametrize(
    "content_type",
    [
        pytest.param("text/plain", id="text"),
        pytest.param("application/x-www-form-urlencoded", id="form"),
        pytest.param(None, id="none"),
    ],
)
def test_a_content_type_other_than_json_is_415(emulator, content_type):
    response = post(emulator, [batch()], content_type=content_type)
    assert response.status_code == 415
    assert "application/json" in message(response)


def test_json_with_a_charset_is_json(emulator):
    assert post(emulator, [batch()], content_type="application/json; charset=utf-8").status_code == 202


def test_a_body_over_256_kb_is_413_and_the_connection_stays_usable(emulator):
    body = msgspec.json.encode([batch(user_attributes={"bio": "x" * 4000}) for _ in range(70)])
    assert len(body) > 256_000
    with requests.Session() as session:
        session.auth = (KEY, SECRET)
        headers = {"Content-Type": "application/json"}
        response = session.post(f"{emulator.url}/v2/bulkevents", data=body, headers=headers, timeout=10)
        assert response.status_code == 413
        assert "256 KB" in message(response)
        again = session.post(f"{emulator.url}/v2/bulkevents", data=b"[]", headers=headers, timeout=10)
        assert again.status_code == 202
    assert stats(emulator)["status_413"] == 1


def test_credentials_are_checked_before_the_body(emulator):
    response = requests.post(f"{emulator.url}/v2/bulkevents", data=b"not json", timeout=5)
    assert response.status_code == 401
    wrong = requests.post(f"{emulator.url}/v2/events", data=b"{}", auth=(KEY, "nope"), timeout=5)
    assert wrong.status_code == 403


# --- The contract comes from mParticle's documents ----------------------------------------------------


def test_the_validator_is_compiled_once_and_shared():
    assert emulator_module.contract() is emulator_module.contract()
    with EventsApiEmulator(KEY, SECRET) as first, EventsApiEmulator(KEY, SECRET) as second:
        assert first.state.contract is second.state.contract


def test_routes_come_from_the_openapi_description():
    routes = emulator_module.contract().routes
    assert set(routes) == {"/v2/events", "/v2/bulkevents"}
    assert not routes["/v2/events"].bulk and routes["/v2/bulkevents"].bulk
    assert all(r.methods == {"POST"} and r.content_types == {"application/json"} for r in routes.values())


def test_schema_patches_match_the_official_documents():
    schema = json.loads((SCHEMAS / "mparticle.inbound.eventsapi.schema.json").read_text())
    openapi = yaml.safe_load((SCHEMAS / "mparticle.events.oas.yaml").read_text())
    # The identity types patched in are exactly the OpenAPI description's.
    oas_identities = openapi["components"]["schemas"]["Batch"]["properties"]["user_identities"]["properties"]
    assert set(emulator_module._IDENTITY_TYPES) == set(oas_identities)
    # Dispatching on event_type covers every shape of the official oneOf, and every type of its EventType.
    shapes = {ref["$ref"].rsplit("/", 1)[-1] for ref in schema["properties"]["events"]["items"]["oneOf"]}
    assert shapes == {s for s in emulator_module._EVENT_SHAPES.values() if s}
    assert set(emulator_module._EVENT_SHAPES) == set(schema["definitions"]["EventType"]["enum"])
    # Every object definition now says it is an object.
    patched = emulator_module._patched(schema, emulator_module.SCHEMA_PATCHES)
    untyped = [n for n, d in patched["definitions"].items() if "properties" in d and "type" not in d]
    assert untyped == []


# --- Data plans: what mParticle's blocking would quarantine -----------------------------------------


def quarantined(server: EventsApiEmulator) -> list[dict[str, Any]]:
    records = requests.get(f"{server.url}/_emulator/quarantined", timeout=5).json()
    assert records == json.loads(msgspec.json.encode(server.state.quarantined))
    return records


def test_planned_events_are_forwarded(plan_emulator):
    events = [
        custom_event("Landing Button Click", custom_attributes={"anything": "goes"}),  # additionalProperties true
        custom_event("Navbar Click", "navigation", custom_attributes={"label": "Shop"}),
        screen_view("Shop"),
        commerce("view_detail", products=[{"id": "1", "name": "Shoe", "price": 1.0, "custom_attributes": {"x": "y"}}]),
    ]
    assert post(plan_emulator, [planned(*events)]).status_code == 202
    counts = stats(plan_emulator)
    assert counts["events_forwarded"] == 4 and counts.get("events_quarantined", 0) == 0
    assert counts["batches_plan_checked"] == 1
    assert quarantined(plan_emulator) == []


def test_unplanned_events_are_quarantined_and_recorded(plan_emulator):
    events = [
        custom_event("Landing Button Click", event_id=11),
        custom_event("Landing Button Click", "navigation", event_id=-7778608565459706417),  # planned as "other"
        custom_event("Secret Event", event_id=13),
        screen_view("Admin", event_id=14),
        commerce("refund", event_id=15),
        {"event_type": "commerce_event", "data": {"promotion_action": {"action": "view", "promotions": []}}},
    ]
    assert post(plan_emulator, [planned(*events, source_request_id="r1")]).status_code == 202
    counts = stats(plan_emulator)
    assert counts["events_forwarded"] == 1 and counts["events_quarantined"] == 5
    assert counts["events_accepted"] == counts["events_forwarded"] + counts["events_quarantined"]
    (record,) = quarantined(plan_emulator)
    assert record["batch"] == 0 and record["source_request_id"] == "r1"
    assert (record["plan_id"], record["plan_version"]) == (HIGGS_ID, 1)
    assert [(e["index"], e["key"]) for e in record["blocked_events"]] == [
        (1, "custom_event:navigation:Landing Button Click"),
        (2, "custom_event:other:Secret Event"),
        (3, "screen_view::Admin"),
        (4, "product_action:refund"),
        (5, "promotion_action:view"),
    ]
    assert record["blocked_event_ids"] == ["-7778608565459706417", "13", "14", "15"]
    assert plan_emulator.state.batches[0]["events"] == events  # accepted (202) and kept whole, as mParticle does


def test_an_unplanned_attribute_on_a_planned_event_is_counted_and_the_event_forwarded(plan_emulator):
    events = [
        custom_event("Navbar Click", "navigation", event_id=21, custom_attributes={"label": "Shop", "color": "red"}),
        screen_view("View My Cart", event_id=22, custom_attributes={"number_of_products": "2", "coupon": "X"}),
        commerce(
            "add_to_cart",
            event_id=23,
            products=[{"id": "1", "name": "Shoe", "custom_attributes": {"size": "9", "material": "felt"}}],
        ),
    ]
    assert post(plan_emulator, [planned(*events)]).status_code == 202
    counts = stats(plan_emulator)
    assert counts["events_forwarded"] == 3 and counts.get("events_quarantined", 0) == 0
    assert counts["event_attributes_quarantined"] == 3
    (record,) = quarantined(plan_emulator)
    assert record["blocked_events"] == []
    assert [(e["index"], e["event_id"], e["attributes_quarantined"], e["event_attributes"]) for e in
            record["blocked_event_attributes"]] == [
        (0, "21", 1, ["./data/custom_attributes/color"]),
        (1, "22", 1, ["./data/custom_attributes/coupon"]),
        (2, "23", 1, ["./data/product_action/products/0/custom_attributes/material"]),
    ]  # fmt: skip


def test_an_invalid_value_is_never_blocked(plan_emulator):
    # The plan types label as a string and product prices as numbers: wrong types are invalid, not unplanned.
    events = [
        custom_event("Navbar Click", "navigation", custom_attributes={"label": 42}),
        commerce("view_detail", products=[{"id": "1", "name": "Shoe", "price": 1}]),
    ]
    assert post(plan_emulator, [planned(*events)]).status_code == 202
    assert stats(plan_emulator)["events_forwarded"] == 2
    assert quarantined(plan_emulator) == []


def test_events_a_plan_cannot_plan_are_never_unplanned(plan_emulator):
    events = [
        {"event_type": "session_start", "data": {"session_id": 1}},
        {"event_type": "session_end", "data": {"session_duration_ms": 10}},
        {"event_type": "application_state_transition", "data": {"application_transition_type": "application_exit"}},
        {"event_type": "breadcrumb", "data": {"label": "b"}},
        {"event_type": "commerce_event", "data": {"currency_code": "EUR"}},  # no action nor impressions
    ]
    assert post(plan_emulator, [planned(*events)]).status_code == 202
    assert stats(plan_emulator)["events_forwarded"] == 5
    assert quarantined(plan_emulator) == []


def test_identities_are_checked_under_their_idsync_names(plan_emulator):
    # The plan allows email, customerid and ios_idfv (IDSync names).
    identities = {"customer_id": "c1", "email": "a@example.com", "other_id_2": "o2", "mobile_number": "+1555"}
    device = {
        "ios_idfv": "0f129dcb-d5b9-450b-9003-a38a7b7e946d",
        "ios_advertising_id": "613ff528-afd1-4c1b-9628-e6ed25ece9c0",
    }
    device["android_advertising_id"] = "00000000-0000-0000-0000-000000000000"
    assert post(plan_emulator, [planned(user_identities=identities, device_info=device)]).status_code == 202
    (record,) = quarantined(plan_emulator)
    assert record["blocked_user_identities"] == ["other_id_2", "mobile_number"]
    assert record["blocked_device_identities"] == ["ios_advertising_id", "android_advertising_id"]
    assert record["blocked_events"] == [] and stats(plan_emulator)["user_identities_quarantined"] == 4


def higgs_with_user_attributes(*names: str) -> dict[str, Any]:
    plan = json.loads(HIGGS.read_text())
    definition = {"additionalProperties": False, "properties": {n: {"type": "string"} for n in names}}
    point = {
        "match": {"type": "user_attributes", "criteria": {}},
        "validator": {"type": "json_schema", "definition": definition},
    }
    plan["version_document"]["data_points"].append(point)
    return plan


def test_user_attributes_are_checked_against_the_user_attributes_point():
    with EventsApiEmulator(KEY, SECRET, data_plans=[higgs_with_user_attributes("$age")]) as server:
        response = post(server, [planned(user_attributes={"$age": "40", "$gender": "M", "tier": ["a", "b"]})])
        assert response.status_code == 202
        (record,) = quarantined(server)
        assert record["blocked_user_attributes"] == ["$gender", "tier"]
        assert stats(server)["user_attributes_quarantined"] == 2


def test_a_plan_without_a_user_attributes_point_constrains_none(plan_emulator):
    assert post(plan_emulator, [planned(user_attributes={"$gender": "M"})]).status_code == 202
    assert quarantined(plan_emulator) == [] and stats(plan_emulator).get("user_attributes_quarantined", 0) == 0


@pytest.mark.parametrize(
    ("environment", "checked"),
    [
        pytest.param("development", True, id="development: the active version applies"),
        pytest.param("production", False, id="production: no version active there, nothing checked"),
    ],
)
def test_without_plan_version_the_version_active_in_the_environment_applies(plan_emulator, environment, checked):
    body = [planned(custom_event("Secret Event"), plan_version=None, environment=environment)]
    assert post(plan_emulator, body).status_code == 202
    counts = stats(plan_emulator)
    assert counts.get("events_quarantined", 0) == (1 if checked else 0)
    assert counts.get("batches_plan_checked", 0) == (1 if checked else 0)


@pytest.mark.parametrize(
    "data_plan",
    [
        pytest.param({"plan_id": "another_plan", "plan_version": 1}, id="another plan id"),
        pytest.param({"plan_id": HIGGS_ID, "plan_version": 2}, id="a version not loaded"),
        pytest.param(None, id="no plan"),
    ],
)
def test_batches_of_other_plans_are_not_checked(plan_emulator, data_plan):
    body = batch(custom_event("Secret Event"), **({"context": {"data_plan": data_plan}} if data_plan else {}))
    assert post(plan_emulator, [body]).status_code == 202
    counts = stats(plan_emulator)
    assert (
        counts["events_forwarded"] == 1 and "events_quarantined" not in counts and "batches_plan_checked" not in counts
    )


def test_a_whole_plan_document_and_the_active_version_per_environment():
    v1 = json.loads(HIGGS.read_text())
    v2 = copy.deepcopy(v1) | {"version": 2, "activated_environment": "production"}
    secret = {"match": {"type": "custom_event", "criteria": {"event_name": "Secret Event", "custom_event_type": "other"}},
              "validator": {"type": "json_schema", "definition": {"properties": {"data": {"additionalProperties": True}}}}}  # fmt: skip
    v2["version_document"]["data_points"].append(secret)
    for version in (v1, v2):
        del version["data_plan_id"]  # a whole plan names its id once
    whole = {"data_plan_id": HIGGS_ID, "data_plan_versions": [v1, v2]}
    with EventsApiEmulator(KEY, SECRET, data_plans=[whole]) as server:
        body = [
            planned(custom_event("Secret Event"), plan_version=None, environment="production"),  # v2: planned
            planned(custom_event("Secret Event"), plan_version=None, environment="development"),  # v1: unplanned
            planned(custom_event("Secret Event"), plan_version=1, environment="production"),  # v1 named: unplanned
        ]
        assert post(server, body).status_code == 202
        assert [(r["batch"], r["plan_version"]) for r in quarantined(server)] == [(1, 1), (2, 1)]


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        pytest.param(["events"], (1, 0), id="events only"),
        pytest.param(["event_attributes"], (0, 1), id="event attributes only"),
        pytest.param([], (0, 0), id="nothing blocked"),
    ],
)
def test_only_the_blocked_categories_are_quarantined(block, expected):
    events = [custom_event("Secret Event"), custom_event("Navbar Click", "navigation", custom_attributes={"x": "1"})]
    with EventsApiEmulator(KEY, SECRET, data_plans=[HIGGS], block=block) as server:
        assert post(server, [planned(*events, user_identities={"other_id_3": "o"})]).status_code == 202
        counts = stats(server)
    assert (counts.get("events_quarantined", 0), counts.get("event_attributes_quarantined", 0)) == expected
    assert counts.get("user_identities_quarantined", 0) == 0
    assert counts["events_forwarded"] == 2 - expected[0]


def test_a_duplicate_is_not_checked_twice_and_reset_clears_the_records(plan_emulator):
    body = [planned(custom_event("Secret Event"), source_request_id="same")]
    assert post(plan_emulator, body).status_code == 202
    assert post(plan_emulator, body).status_code == 202
    assert len(quarantined(plan_emulator)) == 1 and stats(plan_emulator)["events_quarantined"] == 1
    requests.post(f"{plan_emulator.url}/_emulator/reset", timeout=5)
    assert quarantined(plan_emulator) == [] and stats(plan_emulator) == {}


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        pytest.param({"data_points": []}, "not a data plan", id="a bare version_document"),
        pytest.param({"version_document": {"data_points": []}}, "needs data_plan_id", id="no plan id"),
    ],
)
def test_a_document_that_is_not_a_plan_is_refused_at_start(document, problem):
    with pytest.raises(ValueError, match=problem):
        EventsApiEmulator(KEY, SECRET, data_plans=[document])


def test_an_unknown_block_category_is_refused_at_start():
    with pytest.raises(ValueError, match="unknown block categories"):
        EventsApiEmulator(KEY, SECRET, block=["events", "everything"])
