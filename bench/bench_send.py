"""Benchmark: sustained batches/s from the client to the emulator on loopback.

Two runs: no rate limit (the client must not be the bottleneck) and a 1,000 batches/s limit
(client paced at 1,000/s: how much of it is sustained, and how many 429s).

    .venv/bin/python bench/bench_send.py --batches 30000
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mparticle_backfill.model import RecordRef, ReplayBatch  # noqa: E402
from mparticle_backfill.send import OutgoingBatch, pack  # noqa: E402
from mparticle_backfill.transform import source_request_id  # noqa: E402
from mparticle_backfill_airflow.events_api_client import ClientSettings, EventsApiClient  # noqa: E402
from tools.emulator import EventsApiEmulator  # noqa: E402


def batches(count: int):
    for n in range(count):
        payload = {
            "environment": "production",
            "mpid": 1000 + n,
            "user_identities": {"customer_id": f"cust-{n}"},
            "events": [
                {"event_type": "custom_event", "data": {"event_name": "checkout", "custom_event_type": "transaction",
                 "timestamp_unixtime_ms": 1_763_600_000_000 + n, "custom_attributes": {"plan": "pro", "seats": n}}}
            ],
        }  # fmt: skip
        payload["source_request_id"] = source_request_id(str(n), payload)
        yield OutgoingBatch.of(RecordRef("bench", n), ReplayBatch((f"{n}:e",), payload, 0))


def run(label: str, count: int, *, server_rate: float | None, client_rate: float, workers: int) -> None:
    with EventsApiEmulator("k", "s", rate=server_rate) as emulator:
        client = EventsApiClient(
            ClientSettings(emulator.url, "k", "s", batches_per_second=client_rate, max_workers=workers)
        )
        started = time.perf_counter()
        accepted = throttled = 0
        for result in client.send(pack(batches(count))):
            accepted += len(result.accepted)
            throttled += result.throttled
        elapsed = time.perf_counter() - started
        stats = dict(emulator.state.stats)
    print(f"{label:<36} {accepted:>7,} batches in {elapsed:6.1f} s = {accepted / elapsed:8,.0f} batches/s; "
          f"429s: {stats.get('status_429', 0)}, requests: {stats.get('requests', 0)}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=30_000)
    args = parser.parse_args()
    run("no limit (client paced at 100k/s)", args.batches, server_rate=None, client_rate=100_000, workers=4)
    run(
        "limit 1,000/s (client paced at 1,000/s)",
        min(args.batches, 15_000),
        server_rate=1000,
        client_rate=1000,
        workers=4,
    )


if __name__ == "__main__":
    main()
