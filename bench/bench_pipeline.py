"""Benchmark: read -> select -> filter -> transform -> dedupe -> pack, one process, one core.

Generates a synthetic partition (mixed record sizes, gzip and plain objects, some bad lines) on disk,
then runs the whole core pipeline over it and reports records/s and peak RSS.

    .venv/bin/python bench/bench_pipeline.py --records 1000000
"""

from __future__ import annotations

import argparse
import hashlib
import random
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mparticle_backfill import jsonio  # noqa: E402
from mparticle_backfill.dedupe_check import DedupeCheck  # noqa: E402
from mparticle_backfill.extract import open_object  # noqa: E402
from mparticle_backfill.plan_check import BlockingCategories, load_plan  # noqa: E402
from mparticle_backfill.plan_gate import PlanGate  # noqa: E402
from mparticle_backfill.select import SelectionSettings  # noqa: E402
from mparticle_backfill.transform import TransformSettings  # noqa: E402
from tools import synthetic  # noqa: E402
from tools.one_process import run_in_one_process  # noqa: E402

DAY_MS = 1_763_596_800_000  # 2025-11-20T00:00:00Z


def generate(folder: Path, records: int, per_object: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / f"done-{records}-{per_object}"
    paths = sorted(folder.glob("part-*.txt"))
    if marker.exists():
        return paths
    for path in paths:
        path.unlink()
    rng = random.Random(42)
    written = []
    for index, start in enumerate(range(0, records, per_object)):
        count = min(per_object, records - start)
        lines = list(synthetic.partition_lines(rng, DAY_MS, count, bad_every=1000))
        path = folder / f"part-{index:05d}.txt"
        path.write_bytes(synthetic.object_body(lines, compress=index % 2 == 0))
        written.append(path)
    marker.touch()
    return written


def c_floor(paths: list[Path]) -> tuple[int, float]:
    """CPU seconds of the work no Python code can avoid: split lines, decode, encode and hash each record.

    The pipeline's records/s divided by this floor's says how much of its time is its own logic.
    """
    records = 0
    started = time.process_time()
    for path in paths:
        with path.open("rb") as stream:
            reader, _ = open_object(stream)
            for line in reader:
                try:
                    document = jsonio.loads(line)
                except jsonio.DecodeError:
                    continue
                hashlib.sha256(jsonio.dumps(document)).digest()
                records += 1
    return records, time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--per-object", type=int, default=10_000)
    parser.add_argument("--data", type=Path, default=ROOT / "bench" / "out" / "partition")
    parser.add_argument(
        "--selection",
        choices=("all", "default"),
        default="all",
        help="all: blocked events, attribute-restored events and user attributes; default: the settings' defaults",
    )
    parser.add_argument("--floor", action="store_true", help="also time the C-level work alone, for the ratio")
    parser.add_argument(
        "--plan-check",
        action="store_true",
        help="also run the pipeline with the plan check (hold) against a 200-point plan, in the same run, for the ratio",
    )
    args = parser.parse_args()
    paths = generate(args.data, args.records, args.per_object)
    size = sum(p.stat().st_size for p in paths)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    requests = batches = 0

    def on_request(request) -> None:
        nonlocal requests, batches
        requests += 1
        batches += len(request.batches)

    started = time.perf_counter()
    cpu_started = time.process_time()
    summary = run_in_one_process(
        ((p.name, p.open("rb")) for p in paths),
        selection=SelectionSettings(replay_blocked_event_attributes=args.selection == "all"),
        cutoff_ms=DAY_MS + 6 * 3_600_000,  # about a quarter of the day is "too old"
        transform_settings=TransformSettings(),
        dedupe=DedupeCheck(),
        dead_letter=lambda letter: None,
        on_request=on_request,
    )
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert summary.reconciles(), summary.render()
    print(f"selection          {args.selection:>12}")
    print(f"records            {summary.records_read:>12,}")
    print(f"objects            {len(paths):>12,} ({size / 1e6:,.0f} MB on disk, half gzip)")
    print(f"wall time          {elapsed:>12.1f} s")
    print(f"records/s (wall)   {summary.records_read / elapsed:>12,.0f}")
    print(f"records/s (cpu)    {summary.records_read / cpu:>12,.0f}")
    print(f"batches packed     {batches:>12,} in {requests:,} requests")
    print(f"peak RSS           {peak:>12,.0f} MB (before run {rss_before:,.0f} MB)")
    if args.plan_check:
        document = synthetic.data_plan(extra_points=200 - 17)  # 17 points for the synthetic events + 183 others
        plan = load_plan(document, "synthetic")
        gate = PlanGate(plan, BlockingCategories(True, True, True, True), "hold")
        points = len(plan.versions[3].points)
        gated_cpu = time.process_time()
        gated = run_in_one_process(
            ((p.name, p.open("rb")) for p in paths),
            selection=SelectionSettings(replay_blocked_event_attributes=args.selection == "all"),
            cutoff_ms=DAY_MS + 6 * 3_600_000,
            transform_settings=TransformSettings(plan_version="omit", plan_gate=gate),
            dedupe=DedupeCheck(),
            dead_letter=lambda letter: None,
        )
        gated_cpu = time.process_time() - gated_cpu
        assert gated.reconciles(), gated.render()
        checked = gated.counts["plan_checked_events"]
        print(
            f"plan check         {points:>12,} data points; {checked:,} events checked, {gated.counts['events_held']:,} held"
        )
        print(f"records/s (cpu)    {gated.records_read / gated_cpu:>12,.0f} with the plan check")
        print(f"plan check cost    {(gated_cpu - cpu) / max(checked, 1) * 1e6:>12.1f} us per event checked")
        print(f"throughput kept    {cpu / gated_cpu:>12.0%} of the pipeline without it")
    if args.floor:
        floor_records, floor_cpu = c_floor(paths)
        floor_rate = floor_records / floor_cpu
        print(f"C floor records/s  {floor_rate:>12,.0f} (split + decode + encode + sha256 only)")
        print(f"pipeline / floor   {summary.records_read / cpu / floor_rate:>12.0%}")
    print(summary.render("outcomes"))


if __name__ == "__main__":
    main()
