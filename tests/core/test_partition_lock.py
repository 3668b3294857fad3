"""Who may take a partition's lock."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from mparticle_backfill.partition_lock import FREE, HELD, OURS, STALE, LockHolder, decide, held_message

NOW = datetime(2026, 11, 21, 6, tzinfo=timezone.utc)
TTL = timedelta(hours=12)


def test_decisions():
    mine = LockHolder("run-a", "run a", NOW - timedelta(hours=1))
    assert decide(None, False, "run-a", NOW, TTL) == FREE
    assert decide(mine, True, "run-a", NOW, TTL) == OURS
    assert decide(mine, True, "run-b", NOW, TTL) == HELD
    assert decide(mine, True, "run-b", NOW + timedelta(hours=11), TTL) == STALE
    assert decide(None, True, "run-b", NOW, TTL) == STALE  # unreadable: nobody can be holding it


@pytest.mark.parametrize(
    ("state", "hours_silent", "expected"),
    [
        pytest.param("running", 100, HELD, id="alive-run-never-taken-over-whatever-its-age"),
        pytest.param("queued", 100, HELD, id="queued-run-waiting-behind-the-pool-keeps-it"),
        pytest.param("success", 0, STALE, id="finished-run-frees-it-at-once"),
        pytest.param("failed", 0, STALE, id="failed-run-frees-it-at-once"),
        pytest.param("missing", 0, STALE, id="run-airflow-does-not-know"),
        pytest.param(None, 11, HELD, id="unknown-state-recent-heartbeat"),
        pytest.param(None, 13, STALE, id="unknown-state-silent-past-the-ttl"),
    ],
)
def test_the_holders_airflow_state_decides_before_the_ttl(state, hours_silent, expected):
    started = NOW - timedelta(hours=200)
    holder = LockHolder("run-a", "run a", started, NOW - timedelta(hours=hours_silent), "dag")
    assert decide(holder, True, "run-b", NOW, TTL, state) == expected


def test_a_heartbeat_keeps_an_old_lock_alive():
    holder = LockHolder("run-a", "run a", NOW - timedelta(hours=30))
    assert decide(holder, True, "run-b", NOW, TTL) == STALE
    assert decide(holder.renewed(NOW - timedelta(hours=1)), True, "run-b", NOW, TTL) == HELD


def test_lock_content_round_trips_and_garbage_is_none():
    holder = LockHolder("run-a", "manual__2026-11-21T06:00:00+00:00", NOW)
    assert LockHolder.from_bytes(holder.to_bytes()) == holder
    renewed = LockHolder("run-a", "x", NOW, NOW + timedelta(hours=2), "mparticle_quarantine_backfill")
    assert LockHolder.from_bytes(renewed.to_bytes()) == renewed
    for body in (b"", b"{}", b"[1]", b'{"run_key": "a", "run_id": "b", "acquired_at": "2026-11-21T06:00:00"}'):
        assert LockHolder.from_bytes(body) is None


def test_message_says_who_and_what_to_do():
    message = held_message(LockHolder("k", "backfill__x", NOW), "s3://b/lock.json", "2026-11-20", TTL)
    assert "backfill__x" in message and "s3://b/lock.json" in message and "12 h" in message
