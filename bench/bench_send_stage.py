"""Benchmark: the send task's main thread on its stage file, per replay, for this tree and another in one run.

What it times is what a send task does before its HTTP workers: read the shard's stage file (zstd msgpack
frames, as the dedupe_check task wrote it), decode each replay as the send stage does, coalesce the
replays of one slice (``SLICE_REPLAYS`` records of one shard, as ``ShardSlices`` cuts them) and pack the
merged batches into bulk requests (``skip_accepted``, ``SendTracker`` + ``pack_groups``) and, in a tree
that has it, write each batch to the send journal before it goes (``JournalWriter.journaled``: msgpack +
zstd, the S3 PUT left out); plus what writing that stage file cost the task before (``encode_replay`` +
zstd). No HTTP: the requests are built and dropped.

The partition is ``tools/synthetic_users.py`` (users with several batches a day, as ``bench_coalesce``
explains), run through extract -> filter_by_age -> transform -> dedupe_check once per tree, in that
tree's code. Each tree runs in its own subprocess with ``PYTHONPATH=<root>/include:<root>`` (ahead of
the editable install) and ``cwd=<root>``; the subprocess reports where ``mparticle_backfill`` was
imported from and the driver checks it. The collector runs with the send task's thresholds
(``bulk_collection``, as the task does). Per tree: CPU µs per replay to encode the stage file, to read
and decode it, to coalesce and pack (separately and together, the best of ``--repeat`` passes), batches
sent, and the Python heap peak while one slice is coalesced (tracemalloc, its own pass: tracing slows
everything, so it is never timed). Compare the trees' columns of one run only.

    git worktree add /tmp/old f3e6103
    .venv/bin/python bench/bench_send_stage.py --compare /tmp/old            # 40,000 records
    .venv/bin/python bench/bench_send_stage.py --records 100000 --compare /tmp/old --json bench/out/send-stage.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DAY_MS = 1_763_596_800_000  # 2025-11-20T00:00:00Z


def child(records: int, seed: int, repeat: int) -> dict:
    """Measure the tree this process imports (its ``PYTHONPATH``)."""
    import gc
    import io
    import random
    import tracemalloc
    from collections import Counter
    from datetime import date

    import zstandard

    import mparticle_backfill
    from mparticle_backfill import stage_codec
    from mparticle_backfill.accounting import Summary
    from mparticle_backfill.coalesce import SLICE_REPLAYS, CoalesceSettings, coalesce
    from mparticle_backfill.dedupe_check import DedupeCheck, dedupe_replays
    from mparticle_backfill.extract import extract_records
    from mparticle_backfill.filter_by_age import filter_replays
    from mparticle_backfill.select import SelectionSettings
    from mparticle_backfill.send import SendTracker, pack_groups, skip_accepted
    from mparticle_backfill.transform import TransformSettings, transform_replays
    from mparticle_backfill_airflow.gc_policy import bulk_collection
    from tools.synthetic_users import partition_lines

    read_for_send = getattr(stage_codec, "iter_replays_for_send", stage_codec.iter_replays)
    lines = list(partition_lines(random.Random(seed), DAY_MS, records))
    summary, dead = Summary(), []
    objects = [("q/2025-11-20/part-00000.txt", io.BytesIO(b"\n".join(lines) + b"\n"))]
    replays = extract_records(objects, SelectionSettings(), summary, dead.append)
    replays = transform_replays(filter_replays(replays, DAY_MS, summary), TransformSettings(), summary, dead.append)
    replays = list(dedupe_replays(replays, DedupeCheck(), summary))
    # One slice's records: the first SLICE_REPLAYS records of a shard are users' records in arrival
    # order; here the partition's first users (synthetic_users emits a user's records together), which
    # merge as they would in a slice.
    count = len(replays)

    def encode() -> bytes:
        compressor = zstandard.ZstdCompressor(level=1)
        return compressor.compress(b"".join(stage_codec.encode_replay(replay) for replay in replays))

    def decode(data: bytes) -> list:
        stream = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data))
        return list(read_for_send(stream))

    try:  # a tree with the send journal writes each batch down before it is sent (here: to nowhere)
        from mparticle_backfill_airflow.send_journal import JournalWriter
    except ImportError:
        JournalWriter = None

    class NoS3:
        def put_bytes(self, bucket: str, key: str, body: bytes, content_type: str = "") -> None:
            pass

    def send(decoded: list) -> tuple[int, int]:
        summary = Summary()
        tracker = SendTracker(summary, lambda letter: None)
        counts: Counter[str] = Counter()
        batches = requests = 0
        journal = None
        if JournalWriter is not None:
            from mparticle_backfill.settings import StatePaths

            paths = StatePaths("state", date(2025, 11, 20), "bench")
            journal = JournalWriter(NoS3(), "bucket", paths, 0, 1, "try1-bench")
        for start in range(0, len(decoded), SLICE_REPLAYS):
            # As the operator: what a retry skips (nothing here), then coalesce, pack, write down.
            replays = skip_accepted(decoded[start : start + SLICE_REPLAYS], set(), summary)
            packed = pack_groups(coalesce(replays, CoalesceSettings(), counts), tracker)
            for request in journal.journaled(packed, "") if journal is not None else packed:
                requests += 1
                batches += len(request.batches)
                request.body  # noqa: B018 - built as the client would build it
        return batches, requests

    best: dict[str, float] = {}

    def timed(name: str, function, *args):
        gc.collect()
        started = time.process_time()
        result = function(*args)
        elapsed = time.process_time() - started
        best[name] = min(best.get(name, elapsed), elapsed)
        return result

    with bulk_collection():
        for _ in range(repeat):
            data = timed("encode", encode)
            decoded = timed("decode", decode, data)
            batches, requests = timed("coalesce_pack", send, decoded)
            del decoded
            started = time.process_time()
            batches, requests = send(decode(data))
            elapsed = time.process_time() - started
            best["read_to_requests"] = min(best.get("read_to_requests", elapsed), elapsed)

    one_slice = decode(data)[:SLICE_REPLAYS]
    gc.collect()
    tracemalloc.start()
    sliced = decode(data)[:SLICE_REPLAYS]
    held = tracemalloc.get_traced_memory()[0]
    del sliced
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    list(pack_groups(coalesce(one_slice, CoalesceSettings(), Counter()), SendTracker(Summary(), lambda letter: None)))
    coalesce_peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    return {
        "module": str(Path(mparticle_backfill.__file__).resolve()),
        "records": records,
        "replays": count,
        "stage_bytes": len(data),
        "batches": batches,
        "requests": requests,
        "us_per_replay": {name: value / count * 1e6 for name, value in best.items()},
        "decoded_replays_mb": held / 1e6 * SLICE_REPLAYS / min(SLICE_REPLAYS, count),
        "coalesce_peak_mb": coalesce_peak / 1e6,
    }


def measure(root: Path, args: argparse.Namespace) -> dict:
    env = {**os.environ, "PYTHONPATH": f"{root / 'include'}:{root}"}
    command = [sys.executable, str(Path(__file__).resolve()), "--child", "--records", str(args.records)]
    command += ["--seed", str(args.seed), "--repeat", str(args.repeat)]
    output = subprocess.run(command, cwd=root, env=env, check=True, capture_output=True, text=True).stdout
    result = json.loads(output.strip().splitlines()[-1])
    expected = (root / "include" / "mparticle_backfill").resolve()
    if not result["module"].startswith(str(expected)):
        raise SystemExit(f"{root}: imported {result['module']}, not that tree's code")
    result["root"] = str(root)
    return result


def print_table(results: list[dict]) -> None:
    rows = [
        ("replays", lambda r: f"{r['replays']:,}"),
        ("stage file, bytes per replay", lambda r: f"{r['stage_bytes'] / r['replays']:,.0f}"),
        ("batches sent / requests", lambda r: f"{r['batches']:,} / {r['requests']:,}"),
        ("encode the stage file (transform, dedupe)", lambda r: f"{r['us_per_replay']['encode']:.1f}"),
        ("read and decode it for send", lambda r: f"{r['us_per_replay']['decode']:.1f}"),
        ("coalesce and pack", lambda r: f"{r['us_per_replay']['coalesce_pack']:.1f}"),
        ("read to requests, in one pass", lambda r: f"{r['us_per_replay']['read_to_requests']:.1f}"),
        (
            "read to requests, µs per batch sent",
            lambda r: f"{r['us_per_replay']['read_to_requests'] * r['replays'] / r['batches']:.1f}",
        ),
        ("one slice's decoded replays, MB", lambda r: f"{r['decoded_replays_mb']:.1f}"),
        ("coalescing it, heap peak MB", lambda r: f"{r['coalesce_peak_mb']:.1f}"),
    ]
    print(
        "| CPU µs per replay (best of passes) | "
        + " | ".join(Path(r["root"]).name or r["root"] for r in results)
        + " |"
    )
    print("|---|" + "---:|" * len(results))
    for name, cell in rows:
        print(f"| {name} | " + " | ".join(cell(r) for r in results) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=40_000)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--repeat", type=int, default=3, help="passes per tree; the best is reported")
    parser.add_argument("--root", type=Path, default=ROOT)
    parser.add_argument("--compare", type=Path, default=None, metavar="OLD_ROOT")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--show", type=Path, default=None, help="print the table of a --json file")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.records, args.seed, args.repeat)))
        return
    if args.show:
        print_table(json.loads(args.show.read_text()))
        return
    results = []
    for root in [args.root] + ([args.compare] if args.compare else []):
        print(f"measuring {root} (load {os.getloadavg()[0]:.2f})", flush=True)
        results.append(measure(root.resolve(), args))
    print(f"\n{args.records:,} records (tools/synthetic_users.py, seed {args.seed}), best of {args.repeat} passes\n")
    print_table(results)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
