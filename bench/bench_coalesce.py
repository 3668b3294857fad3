"""Benchmark: replay batches per record, and delivery time at mParticle's rate limit, with and without coalescing.

The partition comes from ``tools/synthetic_users.py``: users who upload many batches a day, as mParticle's
SDKs do (DOMAIN.md section 9). That is the distribution coalescing is for, and the one a real quarantine
partition has: the web SDK uploads what is queued every 5 s, so a web session makes one batch per 5 s slot
that has an event; the iOS and Android SDKs upload every 10 minutes in production and at backgrounding, so
an app session makes one batch per started 10 minutes. Half the users are on the web, a quarter on each
app, 15% also on a second device; sessions per day are heavy-tailed (most users come once, a few many
times); a batch is quarantined when it carries a blocked event (35% of events) or, for some devices, a
blocked user attribute or identity (every batch). ``tools/synthetic.py``, which draws every record from a
new user, would show no coalescing at all; it is not used here.

In ONE run:

(a) on the whole partition (``--records``, default 100,000): the records go through the core stages
    (extract -> filter_by_age -> transform -> dedupe_check), are cut into shards by user context as the
    DAG does (one shard per 10,000-record object), and each shard is coalesced: replay batches sent per
    replayed record, without coalescing (one group per record, exactly the transform's batches) and with;
(b) wall-clock of delivering a random sample of USERS' records (``--sample`` records, whole users: every
    record of a sampled user, so their batches can merge as in the full partition) through the project's
    Events API client (its defaults: 250 batches/s, 4 workers) to the emulator on 127.0.0.1 rate-limited
    to 270 batches/s, without and with coalescing. The time includes coalescing itself (it runs lazily
    while the requests are packed, as in the send task). A full 100,000 without coalescing would take
    ~6 minutes at this rate; the default sample keeps the whole script under ~4 minutes. Beside each time
    the script prints the floor the pace alone sets (batches / 250 per second): with coalescing the run is
    bound by local CPU instead (the emulator validates every event against mParticle's JSON schema, in
    this process, on a 2-core machine), so the measured ratio is below the ratio of batches.

    .venv/bin/python bench/bench_coalesce.py                      # 100,000 records, sample 25,000
    .venv/bin/python bench/bench_coalesce.py --records 20000 --sample 5000
"""

from __future__ import annotations

import argparse
import io
import random
import resource
import sys
import time
from collections import Counter
from collections.abc import Iterator
from itertools import chain
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mparticle_backfill import limits  # noqa: E402
from mparticle_backfill.accounting import Summary  # noqa: E402
from mparticle_backfill.coalesce import (  # noqa: E402
    CoalescedGroup,
    CoalesceSettings,
    coalesce,
    replay_shard,
    shard_count_for,
)
from mparticle_backfill.dedupe_check import DedupeCheck, dedupe_replays  # noqa: E402
from mparticle_backfill.extract import extract_records  # noqa: E402
from mparticle_backfill.filter_by_age import filter_replays  # noqa: E402
from mparticle_backfill.model import Replay, ReplayBatch  # noqa: E402
from mparticle_backfill.select import SelectionSettings  # noqa: E402
from mparticle_backfill.send import SendTracker, pack_groups  # noqa: E402
from mparticle_backfill.transform import TransformSettings, transform_replays  # noqa: E402
from mparticle_backfill_airflow.events_api_client import ClientSettings, EventsApiClient  # noqa: E402
from tools.emulator import EventsApiEmulator  # noqa: E402
from tools.synthetic_users import partition_lines  # noqa: E402

DAY_MS = 1_763_596_800_000  # 2025-11-20T00:00:00Z
RATE_LIMIT = 270.0  # mParticle's default Events API limit, batches per second
API_KEY, API_SECRET = "bench-key", "bench-secret"


class Shard:
    """One shard's replays, and their batches as the transform built them (coalescing consumes them)."""

    def __init__(self) -> None:
        self.replays: list[Replay] = []
        self.built: list[tuple[list[ReplayBatch], list[tuple[str, str]]]] = []

    def add(self, replay: Replay) -> None:
        self.replays.append(replay)
        self.built.append((list(replay.batches), list(replay.trail)))

    def fresh(self) -> list[Replay]:
        """The replays as the send stage reads them: their batches and trail as the stages left them."""
        for replay, (batches, trail) in zip(self.replays, self.built, strict=True):
            replay.batches, replay.trail = list(batches), list(trail)
        return self.replays


def generate(records: int, per_object: int, seed: int) -> list[tuple[str, bytes]]:
    lines = list(partition_lines(random.Random(seed), DAY_MS, records))
    return [
        (f"q/2025-11-20/part-{index:05d}.txt", b"\n".join(lines[start : start + per_object]) + b"\n")
        for index, start in enumerate(range(0, records, per_object))
    ]


def stages(objects: list[tuple[str, bytes]], shard_count: int) -> tuple[list[Shard], Summary, int]:
    """extract -> filter_by_age -> transform -> dedupe_check, every replay to the shard of its user context."""
    summary = Summary()
    dead: list = []
    replays = extract_records(
        ((key, io.BytesIO(body)) for key, body in objects), SelectionSettings(), summary, dead.append
    )
    replays = transform_replays(filter_replays(replays, DAY_MS, summary), TransformSettings(), summary, dead.append)
    shards = [Shard() for _ in range(shard_count)]
    for replay in dedupe_replays(replays, DedupeCheck(), summary):
        shards[replay_shard(replay, shard_count)].add(replay)
    return shards, summary, len(dead)


def groups_of(shards: list[Shard], coalescing: bool, counts: Counter[str]) -> Iterator[CoalescedGroup]:
    """Each shard coalesced on its own, as the send task of each shard does."""
    return chain.from_iterable(
        coalesce(shard.fresh(), CoalesceSettings(coalesce=coalescing), counts) for shard in shards
    )


def count_batches(shards: list[Shard], coalescing: bool) -> tuple[Counter[str], Counter[str], float]:
    """Batches per platform, and coalesce's counts; every batch checked against the Events API limits."""
    counts: Counter[str] = Counter()
    per_platform: Counter[str] = Counter()
    started = time.process_time()
    for group in groups_of(shards, coalescing, counts):
        platform = group.replays[0].batch["device_info"]["platform"]
        per_platform[f"records:{platform}"] += len(group.replays)
        per_platform[f"batches:{platform}"] += len(group.batches)
        for batch in group.batches:
            assert batch.size <= limits.MAX_BATCH_BYTES, batch.size
            per_platform["bytes"] += batch.size
            per_platform["largest"] = max(per_platform["largest"], batch.size)
            assert len(batch.payload.get("user_attributes") or ()) <= limits.MAX_USER_ATTRIBUTES
    return per_platform, counts, time.process_time() - started


def sample_users(shards: list[Shard], records: int, seed: int) -> list[Shard]:
    """Whole users (an mpid, every device of it) drawn at random until their records reach ``records``."""
    by_user: dict[str, list[tuple[int, int]]] = {}
    for shard_index, shard in enumerate(shards):
        for index, replay in enumerate(shard.replays):
            by_user.setdefault(str(replay.batch.get("mpid")), []).append((shard_index, index))
    users = sorted(by_user)
    random.Random(seed).shuffle(users)
    sampled = [Shard() for _ in shards]
    taken = 0
    for user in users:
        if taken >= records:
            break
        for shard_index, index in by_user[user]:
            sampled[shard_index].replays.append(shards[shard_index].replays[index])
            sampled[shard_index].built.append(shards[shard_index].built[index])
            taken += 1
    for shard in sampled:  # back in partition order within each shard
        order = sorted(
            range(len(shard.replays)), key=lambda i: (shard.replays[i].ref.object_key, shard.replays[i].ref.line)
        )
        shard.replays = [shard.replays[i] for i in order]
        shard.built = [shard.built[i] for i in order]
    return sampled


def deliver(shards: list[Shard], coalescing: bool) -> dict[str, float]:
    """Send every batch to the emulator (rate-limited) through the client; time it."""
    summary = Summary()
    rejected: list = []
    tracker = SendTracker(summary, rejected.append)
    counts: Counter[str] = Counter()
    requests = retries = throttled = 0
    with EventsApiEmulator(API_KEY, API_SECRET, rate=RATE_LIMIT) as emulator:
        client = EventsApiClient(ClientSettings(emulator.url, API_KEY, API_SECRET))
        pace = client.settings.batches_per_second
        started, cpu_started = time.perf_counter(), time.process_time()
        for result in client.send(pack_groups(groups_of(shards, coalescing, counts), tracker)):
            requests += 1
            retries += result.retries
            throttled += result.throttled
            for batch in result.accepted:
                tracker.accepted(batch)
            for batch, message in result.rejected:
                tracker.rejected(batch, message)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        client.close()
        stats = dict(emulator.state.stats)
    assert tracker.waiting == 0, "every record ends once all its batches are answered"
    return {
        "records": sum(summary.outcomes.values()),
        "batches": counts["batches_after_coalescing"],
        "seconds": elapsed,
        "cpu": cpu,
        "floor": counts["batches_after_coalescing"] / pace,
        "requests": requests,
        "retries": retries,
        "throttled": throttled,
        "status_429": stats.get("status_429", 0),
        "accepted": stats.get("batches_accepted", 0),
        "rejected": len(rejected),
        "events": stats.get("events_accepted", 0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=100_000, help="records in the partition")
    parser.add_argument("--per-object", type=int, default=10_000, help="records per object (one shard per object)")
    parser.add_argument(
        "--sample",
        type=int,
        default=25_000,
        help="records (whole users, drawn at random) delivered to the emulator in each mode; 0: all",
    )
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    run_started = time.perf_counter()

    started = time.perf_counter()
    objects = generate(args.records, args.per_object, args.seed)
    generated = time.perf_counter() - started
    started = time.process_time()
    shard_count = shard_count_for(len(objects))
    shards, summary, dead = stages(objects, shard_count)
    staged = time.process_time() - started
    del objects
    replayed = sum(len(shard.replays) for shard in shards)
    users = len({str(r.batch.get("mpid")) for shard in shards for r in shard.replays})
    print(f"partition          {summary.records_read:>10,} records (tools/synthetic_users.py, seed {args.seed}), "
          f"generated in {generated:.1f} s")  # fmt: skip
    print(f"replayed records   {replayed:>10,} of {users:,} users, in {shard_count} shards "
          f"(stages {staged:.1f} s CPU; {dead} dead letters)")  # fmt: skip

    # (a) Batches per replayed record, on the whole partition.
    before_platform, before, _ = count_batches(shards, coalescing=False)
    after_platform, after, coalesce_cpu = count_batches(shards, coalescing=True)
    assert before["batches_after_coalescing"] == after["batches_before_coalescing"]
    without, with_ = before["batches_after_coalescing"], after["batches_after_coalescing"]
    print("\n(a) replay batches per replayed record, whole partition")
    print(f"  without coalescing {without:>10,} batches = {without / replayed:.3f} per record")
    print(f"  with coalescing    {with_:>10,} batches = {with_ / replayed:.3f} per record "
          f"({after['records_coalesced']:,} records share a batch; "
          f"{after['user_attributes_superseded']:,} older user attribute values not sent)")  # fmt: skip
    print(f"  batch size         {before_platform['bytes'] / without:>10,.0f} bytes on average without, "
          f"{after_platform['bytes'] / with_:,.0f} with (largest {after_platform['largest']:,})")  # fmt: skip
    print(f"  ratio              {with_ / without:>10.3f} (target <= 0.333); coalesce {coalesce_cpu:.1f} s CPU "
          f"= {coalesce_cpu / replayed * 1e6:.0f} us per record")  # fmt: skip
    for platform in sorted(name.split(":", 1)[1] for name in before_platform if name.startswith("records:")):
        records = before_platform[f"records:{platform}"]
        b, a = before_platform[f"batches:{platform}"], after_platform[f"batches:{platform}"]
        print(f"  {platform:<18} {records:>10,} records: {b:,} -> {a:,} batches = {b / records:.3f} -> "
              f"{a / records:.3f} per record ({a / b:.3f})")  # fmt: skip

    # (b) Delivery time against the rate-limited emulator, on a sample of whole users.
    sampled = sample_users(shards, args.sample, args.seed) if 0 < args.sample < replayed else shards
    sampled_records = sum(len(shard.replays) for shard in sampled)
    sampled_users = len({str(r.batch.get("mpid")) for shard in sampled for r in shard.replays})
    print(f"\n(b) delivery to the emulator on 127.0.0.1, limit {RATE_LIMIT:.0f} batches/s, client defaults "
          f"(250 batches/s, 4 workers)")  # fmt: skip
    print(f"  sample             {sampled_records:>10,} records of {sampled_users:,} users, drawn at random "
          f"(seed {args.seed}) from the {replayed:,} replayed")  # fmt: skip
    results = {}
    for label, coalescing in (("without coalescing", False), ("with coalescing", True)):
        result = deliver(sampled, coalescing)
        results[coalescing] = result
        print(f"  {label:<18} {result['batches']:>10,.0f} batches in {result['seconds']:6.1f} s "
              f"(pace floor {result['floor']:.1f} s) = {result['batches'] / result['seconds']:5.0f} batches/s; "
              f"{result['requests']:,.0f} requests, "
              f"429s {result['status_429']:.0f}, retries {result['retries']:.0f}; accepted {result['accepted']:,.0f}, "
              f"rejected {result['rejected']:.0f}; events {result['events']:,.0f}; "
              f"records ended {result['records']:,.0f}; process CPU {result['cpu']:.1f} s "
              f"(client and emulator)")  # fmt: skip
        assert result["rejected"] == 0 and result["accepted"] == result["batches"]
        assert result["records"] == sampled_records
    assert results[False]["events"] == results[True]["events"], "both deliver the same events"
    speedup = results[False]["seconds"] / results[True]["seconds"]
    print(f"  time ratio         {speedup:>10.2f}x fewer seconds with coalescing (target >= 3x); "
          f"batch ratio {results[False]['batches'] / results[True]['batches']:.2f}x")  # fmt: skip
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\nwhole run          {time.perf_counter() - run_started:>10.1f} s, peak RSS {peak:,.0f} MB")


if __name__ == "__main__":
    main()
