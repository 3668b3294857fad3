"""The Events API client against the strict emulator, over real HTTP on 127.0.0.1 (no mocks)."""

from __future__ import annotations

import copy
import time

import pytest
import requests

from mparticle_backfill import jsonio
from mparticle_backfill.errors import CredentialsRefused, RequestRefused, TooManyRejections, TransientSendError
from mparticle_backfill.model import RecordRef, ReplayBatch
from mparticle_backfill.send import OutgoingBatch, pack
from mparticle_backfill.transform import source_request_id
from mparticle_backfill_airflow.events_api_client import ClientSettings, EventsApiClient
from tools.emulator import EventsApiEmulator

KEY, SECRET = "test-key", "test-secret-value"


def batch(n: int, **changes) -> ReplayBatch:
    payload = {
        "environment": "development",
        "mpid": 1234567890123456789,
        "user_identities": {"customer_id": f"c{n}"},
        "events": [
            {
                "event_type": "custom_event",
                "data": {
                    "event_name": "e",
                    "custom_event_type": "other",
                    "timestamp_unixtime_ms": 1_700_000_000_000 + n,
                },
            }
        ],
    }
    payload.update(changes)
    payload["source_request_id"] = source_request_id(str(n), payload)
    return ReplayBatch((f"b{n}:e",), payload, 0)


def requests_of(batches):
    return list(pack(OutgoingBatch.of(RecordRef("k", i), b) for i, b in enumerate(batches)))


@pytest.fixture
def emulator():
    with EventsApiEmulator(KEY, SECRET, seed=1) as server:
        yield server


def client_for(url, **options) -> EventsApiClient:
    defaults = {
        "backoff_seconds": 0.01,
        "max_backoff_seconds": 0.05,
        "batches_per_second": 100_000,
        "timeout_seconds": 5,
    }
    return EventsApiClient(ClientSettings(url, KEY, options.pop("secret", SECRET), **{**defaults, **options}))


def stats(emulator):
    return requests.get(f"{emulator.url}/_emulator/stats", timeout=5).json()


def force(emulator, *answers):
    requests.post(f"{emulator.url}/_emulator/fail-next", data=jsonio.dumps(list(answers)), timeout=5)


def test_happy_path_every_batch_arrives_once(emulator):
    packed = requests_of([batch(i) for i in range(250)])
    results = list(client_for(emulator.url).send(packed))
    assert sum(len(r.accepted) for r in results) == 250
    assert sum(r.retries for r in results) == 0
    counts = stats(emulator)
    assert counts["batches_accepted"] == 250
    # The emulator drops a repeated source_request_id before counting: that the client sent each request
    # once is what these say.
    assert counts.get("duplicates_dropped", 0) == 0
    assert counts["requests"] == len(packed) == sum(r.http_requests for r in results) == 3
    received = {b["source_request_id"] for b in emulator.state.batches}
    assert len(received) == 250


def test_429_with_retry_after_is_waited_and_retried(emulator):
    force(emulator, {"status": 429, "retry_after": "1"})
    started = time.monotonic()
    # Backoff alone would wait at most 0.05 s: what is waited here is the server's Retry-After (1 s).
    (result,) = client_for(emulator.url, max_workers=1, max_backoff_seconds=5).send(requests_of([batch(1)]))
    waited = time.monotonic() - started
    assert result.accepted and result.throttled == 1 and result.retries == 1
    assert stats(emulator)["status_429"] == 1
    assert waited >= 0.95


def test_retry_after_is_capped_by_the_longest_backoff(emulator):
    force(emulator, {"status": 429, "retry_after": "30"})
    started = time.monotonic()
    (result,) = client_for(emulator.url, max_workers=1, max_backoff_seconds=0.2).send(requests_of([batch(1)]))
    assert result.accepted and result.throttled == 1
    assert 0.15 <= time.monotonic() - started < 5


def test_429_without_retry_after_backs_off(emulator):
    force(emulator, {"status": 429, "retry_after": None}, {"status": 429, "retry_after": None})
    (result,) = client_for(emulator.url, max_workers=1).send(requests_of([batch(1)]))
    assert result.accepted and result.throttled == 2


def test_5xx_burst_is_retried(emulator):
    force(emulator, 503, 500, 502)
    (result,) = client_for(emulator.url, max_workers=1).send(requests_of([batch(1)]))
    assert result.accepted and result.retries == 3
    assert stats(emulator)["batches_accepted"] == 1


def test_dropped_connections_are_retried_and_nothing_arrives_twice():
    with EventsApiEmulator(KEY, SECRET, drop_rate=0.4, seed=3) as emulator:
        results = list(client_for(emulator.url, max_workers=2).send(requests_of([batch(i) for i in range(300)])))
        counts = stats(emulator)
    assert sum(len(r.accepted) for r in results) == 300
    assert counts["connections_dropped"] > 0
    assert counts["batches_accepted"] == 300  # resent after a lost answer: dropped by source_request_id


def test_refused_credentials_stop_at_once_without_printing_the_secret(emulator):
    client = client_for(emulator.url, secret="wrong-secret")
    packed = requests_of([batch(i) for i in range(5000)])
    assert len(packed) == 50
    with pytest.raises(CredentialsRefused) as error:
        list(client.send(packed))
    assert "403" in str(error.value) and "wrong-secret" not in str(error.value)
    # No retries, no further requests: at most the ones the 4 workers had already started.
    assert stats(emulator)["requests"] <= client.settings.max_workers
    assert stats(emulator).get("batches_accepted", 0) == 0


def test_missing_auth_is_401(emulator):
    response = requests.post(f"{emulator.url}/v2/bulkevents", json=[], timeout=5)
    assert response.status_code == 401


def test_one_invalid_batch_among_100_is_isolated(emulator):
    batches = [batch(i) for i in range(100)]
    bad = copy.deepcopy(batches[37])
    del bad.payload["events"][0]["data"]["event_name"]
    batches[37] = bad
    (request,) = requests_of(batches)
    (result,) = client_for(emulator.url).send([request])
    assert len(result.accepted) == 99
    ((rejected, message),) = result.rejected
    assert rejected.ref == RecordRef("k", 37)
    assert "custom_event without required data.event_name" in message
    assert stats(emulator)["batches_accepted"] == 99


def test_crash_half_way_then_resend_delivers_each_batch_once(emulator):
    requests_to_send = requests_of([batch(i) for i in range(500)])
    client = client_for(emulator.url, max_workers=1)
    sent = client.send(requests_to_send)
    next(sent), next(sent)  # the run dies after two requests
    sent.close()
    assert 200 <= stats(emulator)["batches_accepted"] < 500
    list(client_for(emulator.url).send(requests_to_send))  # the retry sends everything again
    counts = stats(emulator)
    assert counts["batches_accepted"] == 500
    assert counts["duplicates_dropped"] >= 200


def test_retries_exhausted_raise_a_transient_error():
    with (
        EventsApiEmulator(KEY, SECRET, fail_rate=1.0) as emulator,
        pytest.raises(TransientSendError, match="after 3 attempts"),
    ):
        list(client_for(emulator.url, max_retries=2).send(requests_of([batch(1)])))


def test_pacing_holds_the_configured_rate(emulator):
    import time

    started = time.monotonic()
    list(client_for(emulator.url, batches_per_second=400).send(requests_of([batch(i) for i in range(800)])))
    elapsed = time.monotonic() - started
    # 800 batches at 400/s: the first second's burst passes, the rest is paced.
    assert elapsed >= 0.9


def test_emulator_is_strict(emulator):
    auth = (KEY, SECRET)
    url = f"{emulator.url}/v2/bulkevents"
    ok = batch(1).payload
    cases = {
        "not json": (b"[{", 400),
        "object for bulk": (jsonio.dumps(ok), 400),
        "101 batches": (jsonio.dumps([batch(i).payload for i in range(101)]), 400),
        "two users": (jsonio.dumps([{**ok, "user_identities": {"email": ["a@example.com", "b@example.com"]}}]), 400),
        "unknown event type": (jsonio.dumps([{**ok, "events": [{"event_type": "party", "data": {}}]}]), 400),
        "bad environment": (jsonio.dumps([{**ok, "environment": "staging"}]), 400),
        "string timestamp": (
            jsonio.dumps(
                [
                    {
                        **ok,
                        "events": [
                            {"event_type": "screen_view", "data": {"screen_name": "s", "timestamp_unixtime_ms": "1"}}
                        ],
                    }
                ]
            ),
            400,
        ),
        "too big batch": (jsonio.dumps([{**ok, "user_attributes": {f"a{i}": "x" * 1500 for i in range(90)}}]), 400),
        "valid": (jsonio.dumps([ok]), 202),
    }
    for name, (body, status) in cases.items():
        response = requests.post(url, data=body, auth=auth, headers={"Content-Type": "application/json"}, timeout=5)
        assert response.status_code == status, name
        if status == 400:
            assert response.json()["errors"][0]["message"], name
    response = requests.post(url, data=b"[]", auth=auth, headers={"Content-Type": "text/plain"}, timeout=5)
    assert response.status_code == 415  # Unsupported Media Type
    assert (
        "X-mp-rate-limit-percentage-used"
        in requests.post(url, data=b"[]", auth=auth, headers={"Content-Type": "application/json"}, timeout=5).headers
    )


def test_emulator_rate_limit_answers_429_with_retry_after():
    with EventsApiEmulator(KEY, SECRET, rate=100) as emulator:
        body = jsonio.dumps([batch(i).payload for i in range(100)])
        headers = {"Content-Type": "application/json"}
        first = requests.post(
            f"{emulator.url}/v2/bulkevents", data=body, auth=(KEY, SECRET), headers=headers, timeout=5
        )
        second = requests.post(
            f"{emulator.url}/v2/bulkevents", data=body, auth=(KEY, SECRET), headers=headers, timeout=5
        )
    assert first.status_code == 202 and first.headers["X-mp-rate-limit-percentage-used"] == "100"
    assert second.status_code == 429 and second.headers["Retry-After"] == "1"


@pytest.mark.parametrize("status", [404, 405, 413, 415, 422])
def test_answers_no_retry_can_fix_fail_at_once_with_the_status(emulator, status):
    force(emulator, status)
    with pytest.raises(RequestRefused, match=f"HTTP {status}.*No retry can fix this"):
        list(client_for(emulator.url, max_retries=8).send(requests_of([batch(i) for i in range(5)])))
    assert stats(emulator)["requests"] == 1  # not retried 9 times


def test_the_breaker_stops_when_the_api_refuses_nearly_everything(emulator):
    refused = []
    for i in range(1000):
        bad = batch(i)
        bad.payload["events"][0]["event_type"] = "not_a_type"
        refused.append(bad)
    client = client_for(emulator.url, max_workers=2, breaker_min_batches=200)
    answered = []
    with pytest.raises(TooManyRejections, match=r"refused .* of the first .* batches.*One refusal:"):
        for result in client.send(requests_of(refused)):
            answered.append(result)
    rejected = sum(len(r.rejected) for r in answered)
    assert rejected < 400  # stopped soon after 200 answers, not narrowed down to all 1,000
    assert stats(emulator)["requests"] < 2 * 400  # isolation of all 1,000 would take ~2,000 requests
    assert stats(emulator).get("batches_accepted", 0) == 0


def test_a_failure_while_narrowing_a_400_keeps_what_was_already_accepted(emulator):
    batches = [batch(i) for i in range(100)]
    del batches[80].payload["events"][0]["data"]["event_name"]  # the second half holds the bad one
    # 1st answer: the real 400; 2nd: the first half goes through; then the API stays down.
    force(emulator, None, None, 503, 503, 503)
    client = client_for(emulator.url, max_workers=1, max_retries=2)
    results = []
    with pytest.raises(TransientSendError):
        for result in client.send(requests_of(batches)):
            results.append(result)
    accepted = [b for r in results for b in r.accepted]
    assert len(accepted) == 50 and stats(emulator)["batches_accepted"] == 50
    assert {b.ref.line for b in accepted} == set(range(50))


def test_an_unexpected_worker_error_stops_every_worker(emulator):
    requests_to_send = requests_of([batch(i) for i in range(1000)])
    broken = requests_to_send[0].batches[0]
    requests_to_send[0].batches[0] = type(broken)(broken.ref, broken.replay_keys, None)  # cannot be encoded
    with pytest.raises(TypeError):
        list(client_for(emulator.url, max_workers=2).send(requests_to_send))
    assert stats(emulator).get("requests", 0) <= 3  # the workers in flight finished; nothing more was sent
