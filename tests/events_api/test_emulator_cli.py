"""The emulator as users start it: python -m tools.emulator."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]
HIGGS = ROOT / "tools" / "schemas" / "mparticle.data_plan_version.higgs_shop_v1.json"


@contextlib.contextmanager
def running(*options: str) -> Iterator[str]:
    """Start ``python -m tools.emulator`` with ``options`` on a free port; yield its URL once it answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "tools.emulator", "--port", str(port), "--api-key", "k", "--api-secret", "s"]
    process = subprocess.Popen([*command, *options], cwd=ROOT)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                requests.get(f"{url}/_emulator/stats", timeout=1)
                break
            except requests.ConnectionError:
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_emulator_command_line_records_accepted_batches(tmp_path):
    record = tmp_path / "received.jsonl"
    batch = {
        "environment": "production",
        "mpid": 1,
        "events": [{"event_type": "screen_view", "data": {"screen_name": "Home"}}],
    }
    with running("--rate", "500", "--record", str(record)) as url:
        response = requests.post(f"{url}/v2/events", json=batch, auth=("k", "s"), timeout=5)
        assert response.status_code == 202
        assert requests.post(f"{url}/v2/events", json=batch, auth=("k", "x"), timeout=5).status_code == 403
        assert requests.get(f"{url}/_emulator/stats", timeout=5).json()["batches_accepted"] == 1
    assert [json.loads(line) for line in record.read_text().splitlines()] == [batch]


def test_emulator_command_line_checks_batches_against_a_data_plan():
    plan = {"plan_id": "higgs_shop_basic_data_plan", "plan_version": 1}
    batch = {
        "environment": "development",
        "mpid": 1,
        "context": {"data_plan": plan},
        "user_identities": {"other_id_2": "o2"},
        "events": [
            {"event_type": "screen_view", "data": {"screen_name": "Shop", "event_id": 1}},
            {"event_type": "screen_view", "data": {"screen_name": "Admin", "event_id": 2}},
        ],
    }
    with running("--data-plan", str(HIGGS), "--block", "events") as url:
        assert requests.post(f"{url}/v2/bulkevents", json=[batch], auth=("k", "s"), timeout=5).status_code == 202
        stats = requests.get(f"{url}/_emulator/stats", timeout=5).json()
        records = requests.get(f"{url}/_emulator/quarantined", timeout=5).json()
    assert (stats["events_forwarded"], stats["events_quarantined"]) == (1, 1)
    assert stats.get("user_identities_quarantined", 0) == 0  # identities are not blocked by this input
    assert [(r["batch"], r["blocked_event_ids"]) for r in records] == [(0, ["2"])]


def test_emulator_command_line_refuses_a_file_that_is_not_a_plan(tmp_path):
    not_a_plan = tmp_path / "plan.json"
    not_a_plan.write_text('{"data_points": []}')
    command = [sys.executable, "-m", "tools.emulator", "--api-key", "k", "--api-secret", "s"]
    done = subprocess.run([*command, "--data-plan", str(not_a_plan)], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 2
    assert "not a data plan" in done.stderr and str(not_a_plan) in done.stderr
